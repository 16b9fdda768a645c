"""Starting or joining Ray, the one way this project does it.

Ray workers import the stdlib `platform` before Ray puts the job's directory on their path, so without
the repository root on PYTHONPATH they fail with "'platform' is not a package". Every `ray.init` in the
project goes through `init_ray`, which always passes it.
"""
from __future__ import annotations

import os

import ray

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    parts = [REPO_ROOT] + [p for p in path.split(os.pathsep) if p and p != REPO_ROOT]
    return {"PYTHONPATH": os.pathsep.join(parts)}


def init_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
             quiet: bool = True) -> None:
    """Joins `address` (e.g. "auto" on a cluster node) or starts a local instance."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kwargs = dict(runtime_env={"env_vars": worker_env()}, log_to_driver=not quiet or True,
                  configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)


def cluster_resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}
