"""Starting or joining Ray, the one way this project does it.

Code reaches Ray workers as an installed package (`pip install -e .`, as every node of the shipped clusters
does), so nothing depends on the checkout's path or on PYTHONPATH. A joined cluster also gets the driver's
`bickd` and `bickd_tune` as runtime-env `py_modules`, so every node runs exactly the driver's code even when
its own install is older.

A Ray on this machine (the CLI's own instance, or a cluster joined at 127.0.0.1) is talked to over the loopback
interface. By default Ray addresses even a single-node instance by the machine's outward IP, and it rewrites a
loopback address given to `ray.init(address="127.0.0.1:P")` to that IP too (`resolve_ip_for_localhost`), so
a driver would dial `<outward IP>:P`, which can be filtered (ray-project/ray#15780) and then retries forever.
Ray only reads its switch for this (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: every node of this machine uses
127.0.0.1) when it is imported, so `use_loopback()` must run before the first `import ray` of the process:
Ray is imported lazily.

Token authentication (Ray 2.59+): Ray turns it on for a cluster that `ray.init()` or `ray start --head` starts
while a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN), and a driver that finds a
local cluster by itself (`address="auto"`) uses that token; a driver given an explicit address does not, and
is refused. A cluster on this machine is the same case as "auto", so `use_loopback()` also switches token
mode on when this machine has a token and RAY_AUTH_MODE is not set.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import bickd
from bickd.config_io import ConfigError
from bickd_tune.processes import is_alive, kill, parent_of, processes_under

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding bickd_tune/
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE = "RAY_AUTH_MODE"
COORDINATOR, COORDINATOR_SLOTS = "coordinator", 64  # as cluster/*.yaml's heads advertise


def use_loopback() -> bool:
    """Makes this process (and its children) reach a Ray on this machine at 127.0.0.1, with this machine's
    token when it has one (see the module's docstring).

    Returns whether the loopback switch took effect: False when Ray was already imported or the user set it.
    """
    if "ray" in sys.modules:
        return False
    if AUTH_MODE not in os.environ and machine_token() is not None:
        os.environ[AUTH_MODE] = "token"
    if LOOPBACK_SWITCH in os.environ:
        return False
    os.environ[LOOPBACK_SWITCH] = "0"
    return True


def machine_token() -> str | None:
    """Where this machine's Ray token is, in Ray's own order of lookup (RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return path if os.path.isfile(path) and os.path.getsize(path) > 0 else None


def code_modules() -> list[str]:
    """The project's packages, as folders for runtime_env `py_modules`."""
    return [os.path.dirname(os.path.abspath(bickd.__file__)), os.path.join(PACKAGE_ROOT, "bickd_tune")]


def local_temp_dir(paths) -> str:
    """The Ray temp folder of an experiment's local instances: its processes are found by it (processes.py)."""
    digest = hashlib.sha1(paths.identity.encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"bickd-ray-{digest}")  # short: Ray's socket paths must fit


def stop_leftovers_of(paths) -> None:
    """Stops the local Ray processes a killed driver of this experiment left behind (a SIGKILLed driver's
    raylet, GCS and agents outlive it); refuses while a driver of this experiment is still running."""
    folder = local_temp_dir(paths)
    if not os.path.isdir(folder):
        return
    found = processes_under(folder)
    drivers = {parent_of(pid) for pid in found} - found - {0, 1, os.getpid()}
    drivers = {pid for pid in drivers if is_alive(pid)}
    if drivers:
        raise ConfigError(f"experiment '{paths.name}' is running (driver process {min(drivers)}); "
                          "stop it (Ctrl+C) or wait for it before starting it again")
    if found:
        print(f"stopping {len(found)} Ray processes left behind by an earlier driver of this experiment", flush=True)
        kill(found)


FORWARDED = ("BICKD_CACHE_DIR",)  # read by trials on other nodes (trial.local_teacher_cache)


def joined_runtime_env() -> dict:
    """What the driver adds to a joined cluster's runtime env: its code, and the settings trials read.

    Workers on other nodes see their node's environment, not the driver's. Only what trials need is passed:
    a variable that a Ray job's own runtime env also sets (e.g. BICKD_GIT_COMMIT on KubeRay) would make Ray
    refuse to merge the two.
    """
    settings = {key: os.environ[key] for key in FORWARDED if key in os.environ}
    return {"py_modules": code_modules(), **({"env_vars": settings} if settings else {})}


def init_ray(address: str | None = None, num_cpus: float | None = None, temp_dir: str | None = None) -> None:
    """Joins `address` (e.g. "auto" on a cluster node) or, without one, starts a private local instance
    (in `temp_dir` if given, so that its processes can be found again).

    "local" is explicit so that a `ray start` cluster left running on this machine, or RAY_ADDRESS, is not
    joined by surprise: joining is what --address is for.
    """
    import ray  # not at the top: use_loopback() must run before the process's first `import ray` (module docstring)

    from bickd_tune.ray_internals import LOCAL_SETUP_HOOK, no_prestarted_workers  # imports ray: the same reason

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kwargs = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, runtime_env=joined_runtime_env(), **kwargs)
    else:
        # `coordinator` slots, as the clusters' heads have: a DDP trial's driver asks for one by default.
        # No dashboard locally (README, Security), hence no State API: LOCAL_SETUP_HOOK says what that silences.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                 resources={COORDINATOR: COORDINATOR_SLOTS},
                 runtime_env={"worker_process_setup_hook": LOCAL_SETUP_HOOK}, **no_prestarted_workers(), **kwargs)


def cluster_resources() -> dict[str, float]:
    import ray  # not at the top: use_loopback() must run before the process's first `import ray` (module docstring)

    return {k: float(v) for k, v in ray.cluster_resources().items()}
