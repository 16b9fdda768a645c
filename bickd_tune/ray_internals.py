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
- `quiet_placement_group_cleaner()`: a worker setup hook (`runtime_env["worker_process_setup_hook"]`) that keeps
  Ray Train's `PlacementGroupCleaner` (logger in `ray.train.v2._internal`) to errors. It asks Ray's State API every
  second whether a DDP trial's controller is alive; a local instance runs no dashboard, so there is no State API
  and it warned once a second for the whole trial. It only removes a dead controller's placement group, which a
  local instance's end removes anyway.
"""
from __future__ import annotations

import logging

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler._private.util import prepare_config, validate_config

CHECKED_RAY_VERSION = "2.60.0"

__all__ = ["CHECKED_RAY_VERSION", "FakeMultiNodeProvider", "LOCAL_SETUP_HOOK", "no_prestarted_workers",
           "prepare_config", "quiet_placement_group_cleaner", "validate_config"]
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
LOCAL_SETUP_HOOK = "bickd_tune.ray_internals.quiet_placement_group_cleaner"  # by name: workers import it


def no_prestarted_workers() -> dict:
    """Keyword arguments for a `ray.init` that starts a new local instance (a joined cluster's config is its own)."""
    return {"_system_config": {"prestart_worker_first_driver": False}}


def quiet_placement_group_cleaner() -> None:
    """Runs once in each worker process of a local instance (see the module docstring)."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
