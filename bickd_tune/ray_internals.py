"""The only module of the project that touches Ray's private modules (`ray.*._private.*`); checked against Ray 2.60.0.

Nothing else in bickd, bickd_tune, platform, benchmarks, cluster or tests may import a private module of Ray,
Optuna or MLflow or read an underscore attribute of their objects (tests/test_code_rules.py holds that), so a Ray
release that moves one of these names breaks here and in tests/test_ray_internals.py, not somewhere in a run.

- `FakeMultiNodeProvider`: Ray's fake multi-node node provider (worker "nodes" are processes on this machine).
  Ray ships it only in a private module; bickd_tune/local_provider.py subclasses it for cluster/local.yaml.
- `prepare_config(config) -> config` and `validate_config(config) -> None`: the functions `ray up` runs on a
  launcher YAML (defaults filled in, then Ray's JSON schema and node-type checks; a refusal raises). There is no
  public `ray up --dry-run`; cluster/check.py calls them to let Ray itself judge a config without starting it.
- `no_prestarted_workers() -> dict`: `ray.init` keyword arguments (Ray's `_system_config` entry
  `prestart_worker_first_driver`) that stop a new local instance from starting a worker per CPU for its first
  driver. The platform's trials cannot use them (Tune gives every trial process a runtime environment of its
  own) and its teacher stage runs in the driver, so they only took CPU (~1 s each) and memory while the driver
  was busy.
"""
from __future__ import annotations

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler._private.util import prepare_config, validate_config

CHECKED_RAY_VERSION = "2.60.0"

__all__ = ["CHECKED_RAY_VERSION", "FakeMultiNodeProvider", "no_prestarted_workers", "prepare_config", "validate_config"]


def no_prestarted_workers() -> dict:
    """Keyword arguments for a `ray.init` that starts a new local instance (a joined cluster's config is its own)."""
    return {"_system_config": {"prestart_worker_first_driver": False}}
