"""`platform` is both the folder of this project's entry points and, transparently, Python's stdlib module.

Run from the repository root, this folder shadows the stdlib `platform` that torch, ray, mlflow, pandas and
pytest import for `platform.system()` and friends. So this file loads the real stdlib module from its own
file, grafts this folder onto it as a package path (`platform.tune` still resolves as a submodule) and puts
that module in `sys.modules`. The platform's code itself is the package `bickd_tune` (README, "The platform
package").
"""
import importlib.util
import os
import sys
import sysconfig

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB_FILE = os.path.join(sysconfig.get_paths()["stdlib"], "platform.py")

_spec = importlib.util.spec_from_file_location("platform", _STDLIB_FILE)
_stdlib_platform = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_stdlib_platform)
_stdlib_platform.__path__ = [_PACKAGE_DIR]
# The import system reads submodule locations from the module's spec.
_stdlib_platform.__spec__.submodule_search_locations = [_PACKAGE_DIR]
sys.modules["platform"] = _stdlib_platform
