"""`platform/` shadows the stdlib module from the repo root; the stdlib API must keep working everywhere, and the
platform's code (`bickd_tune`) imports from anywhere, whatever imported the stdlib `platform` first."""
import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB_CALLS = "platform.system(), platform.machine(), platform.python_version(), platform.uname().system"


WITH_REPO_ON_PATH = {**os.environ, "PYTHONPATH": REPO}


def _run(args, **kwargs):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=WITH_REPO_ON_PATH, timeout=120,
                          **kwargs)


def _side_by_side(commands: list[tuple[list[str], str, dict]]) -> list[subprocess.CompletedProcess]:
    """(args, folder, env) each, run at once: their imports (torch, Ray, MLflow) take seconds each on one core."""
    started = [subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for args, folder, env in commands]
    outputs = [process.communicate(timeout=120) for process in started]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(started, outputs)]


def test_stdlib_api_and_submodules_in_this_process():
    # these imports are what the test checks: in this process, `platform` is both the stdlib and our folder
    import platform
    import platform.tune  # the CLI entry point, a submodule of the project's folder
    import bickd_tune.tune  # what platform.tune hands over to
    assert platform.system() == os.uname().sysname
    assert platform.python_version() == ".".join(map(str, sys.version_info[:3]))
    assert platform.tune.run_cli is bickd_tune.tune.run_cli


def test_the_platform_code_imports_where_the_stdlib_platform_came_first(tmp_path):
    """What a Jupyter/IPython kernel, a debugger or a Ray worker does: the stdlib `platform` is imported before
    anything of ours, in the repository or anywhere else, without PYTHONPATH."""
    code = ("import platform; platform.system(); import bickd_tune.runner, bickd_tune.trial, bickd_tune.report; "
            "from bickd_tune.tune import build_parser; print(build_parser().prog, platform.machine())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    folders = (REPO, str(tmp_path))
    for folder, result in zip(folders, _side_by_side([([sys.executable, "-c", code], folder, env)
                                                      for folder in folders])):
        assert result.returncode == 0, (folder, result.stderr[-2000:])
        assert result.stdout.split()[:3] == ["python", "-m", "platform.tune"]


def test_python_dash_m_entry_point_and_libraries_that_call_platform():
    code = ("import platform, torch, mlflow, ray; "
            f"print({STDLIB_CALLS}); import platform.tune; print('tune', platform.tune.run_cli.__name__)")
    result, help_text = _side_by_side([([sys.executable, "-c", code], REPO, WITH_REPO_ON_PATH),
                                       ([sys.executable, "-m", "platform.tune", "--help"], REPO, WITH_REPO_ON_PATH)])
    assert result.returncode == 0, result.stderr
    assert "tune run_cli" in result.stdout
    assert help_text.returncode == 0, help_text.stderr
    assert "--dry-run" in help_text.stdout


def test_plain_pytest_imports_stdlib_platform_first():
    """Plain `pytest` imports the stdlib module before conftest.py: the root conftest grafts the package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pytest_bin = os.path.join(os.path.dirname(sys.executable), "pytest")
    result = subprocess.run([pytest_bin, "-q", "-p", "no:cacheprovider", "-n", "0",  # in pytest's own process
                             "tests/test_platform_shim.py::test_stdlib_api_and_submodules_in_this_process"],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert "1 passed" in result.stdout, result.stdout + result.stderr


def test_subprocess_started_from_repo_root_keeps_stdlib():
    result = _run([sys.executable, "-c", f"import platform; print({STDLIB_CALLS})"])
    assert result.returncode == 0, result.stderr
    assert "Linux" in result.stdout or "Darwin" in result.stdout
