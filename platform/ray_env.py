"""Starting or joining Ray, the one way this project does it.

Ray workers import the stdlib `platform` before Ray puts the job's directory on their path, so without
the repository root on PYTHONPATH they fail with "'platform' is not a package". Every `ray.init` in the
project goes through `init_ray`, which always passes it.

A local instance talks over the loopback interface. By default Ray addresses even a single-node instance
by the machine's outward IP, and connections to that address can be filtered (Ray's own note cites
ray-project/ray#15780): one CI run spent ten minutes on "Failed to connect to GCS at 192.0.2.2". Ray only
reads its switch for this (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: no second node may join) when it is
imported, so `use_loopback()` must run before the first `import ray` of the process. Ray is therefore
imported lazily here.
"""
from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback() -> bool:
    """Makes a local Ray instance started by this process (and its children) use 127.0.0.1.

    Returns whether it took effect: False when Ray was already imported or the user set the switch.
    """
    if "ray" in sys.modules or LOOPBACK_SWITCH in os.environ:
        return False
    os.environ[LOOPBACK_SWITCH] = "0"
    return True


def worker_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    parts = [REPO_ROOT] + [p for p in path.split(os.pathsep) if p and p != REPO_ROOT]
    return {"PYTHONPATH": os.pathsep.join(parts)}


def init_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
             quiet: bool = True) -> None:
    """Joins `address` (e.g. "auto" on a cluster node) or, without one, starts a private local instance.

    "local" is explicit so that a `ray start` cluster left running on this machine, or RAY_ADDRESS, is not
    joined by surprise: joining is what --address is for.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kwargs = dict(runtime_env={"env_vars": worker_env()}, log_to_driver=True,
                  configure_logging=True, logging_level="WARNING" if quiet else "INFO")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)


def cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}
