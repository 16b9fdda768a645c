"""Root conftest: make `platform.<submodule>` importable under plain `pytest` too.

Plain `pytest` (unlike `python -m pytest`) imports the stdlib `platform` before it reads this file, so the
repository's `platform/` folder is grafted onto that already-imported module's package path here.
"""
import os
import sys

import platform as _platform

_PLATFORM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "platform")
if not hasattr(_platform, "__path__"):
    _platform.__path__ = [_PLATFORM_DIR]
    if _platform.__spec__ is not None:
        _platform.__spec__.submodule_search_locations = [_PLATFORM_DIR]
if os.path.dirname(_PLATFORM_DIR) not in sys.path:
    sys.path.insert(0, os.path.dirname(_PLATFORM_DIR))
