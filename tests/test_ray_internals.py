"""What the project relies on in Ray's private modules, pinned (bickd_tune/ray_internals.py is the only place that
imports them). A Ray release that renames, moves or re-signs one of them fails here, not in a user's `ray up` or
local cluster. Nothing is started: no Ray instance, no node process."""
from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import NODE_KIND_HEAD, STATUS_UP_TO_DATE, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS

from bickd_tune import ray_internals
from bickd_tune.local_provider import LocalNodeProvider

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_adapter_names_the_ray_release_it_was_checked_against():
    assert ray.__version__ == ray_internals.CHECKED_RAY_VERSION


def test_the_fake_provider_is_a_node_provider_built_from_its_config_and_cluster_name():
    assert issubclass(ray_internals.FakeMultiNodeProvider, NodeProvider)
    assert parameters(ray_internals.FakeMultiNodeProvider.__init__) == ["self", "provider_config", "cluster_name"]
    assert parameters(ray_internals.FakeMultiNodeProvider.node_tags) == ["self", "node_id"]


def test_the_local_provider_keeps_the_fake_providers_tags_and_calls_a_node_up_to_date(monkeypatch):
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")  # the fake provider refuses to build without it; nothing starts
    provider = LocalNodeProvider({}, "pinned")
    (head,) = provider.non_terminated_nodes({})
    tags = provider.node_tags(head)
    assert tags[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD and tags[TAG_RAY_NODE_STATUS] == STATUS_UP_TO_DATE


def test_prepare_config_fills_in_a_cloud_config_which_validate_config_then_accepts():
    assert parameters(ray_internals.prepare_config) == ["config"]
    assert parameters(ray_internals.validate_config) == ["config"]
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text(encoding="utf-8"))
    prepared = ray_internals.prepare_config(dict(config))
    assert set(prepared) > set(config)  # Ray's defaults for the cloud are filled in
    assert ray_internals.validate_config(prepared) is None
    assert ray_internals.validate_config(yaml.safe_load((CLUSTER / "local.yaml").read_text(encoding="utf-8"))) is None


def test_validate_config_refuses_a_launcher_config_by_raising():
    config = yaml.safe_load((CLUSTER / "local.yaml").read_text(encoding="utf-8"))
    config["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - Ray raises whatever its schema check raises; cluster/check.py too
        ray_internals.validate_config(config)


def test_the_local_setup_hook_quiets_the_logger_ray_train_s_cleaner_uses():
    """The hook names its function by import path (workers import it) and Ray Train's cleaner module by logger name:
    both must still resolve, the cleaner must still log through that logger, and the hook must raise its level."""
    module, function = ray_internals.LOCAL_SETUP_HOOK.rsplit(".", 1)
    assert getattr(importlib.import_module(module), function) is ray_internals.quiet_placement_group_cleaner
    cleaner = importlib.import_module(ray_internals.PLACEMENT_GROUP_CLEANER_LOGGER)
    assert cleaner.logger.name == ray_internals.PLACEMENT_GROUP_CLEANER_LOGGER
    assert hasattr(cleaner, "PlacementGroupCleaner")
    ray_internals.quiet_placement_group_cleaner()
    assert not logging.getLogger(ray_internals.PLACEMENT_GROUP_CLEANER_LOGGER).isEnabledFor(logging.WARNING)
