"""Shared fixtures: one real local Ray instance at a time per test worker, and tiny experiment YAMLs on offline
data."""
from __future__ import annotations

import os

import pytest
import yaml

# Fail fast instead of hanging CI if a Train worker group cannot start (ray issue 54305 and friends).
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Local instances on 127.0.0.1, as `python -m platform.tune` starts them (bickd_tune/ray_env.py says why); set
# before any test module imports Ray, which reads it once.
from bickd_tune.ray_env import init_ray, use_loopback  # noqa: E402  (imports no Ray)

use_loopback()

import ray  # noqa: E402  (after use_loopback(), which Ray reads when it is imported)
import torch  # noqa: E402

from bickd.models import create_model, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    """A real single-node Ray instance for the module (4 logical CPUs on a 2-core machine, as documented)."""
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=4)
    yield
    ray.shutdown()


TINY = {
    "data": {"name": "digits", "image_size": 16},
    "teacher": {"model": "resnet8"},
    "student": {"model": "resnet8"},
    "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "loss": {"name": "bickd", "warmup_epochs": 1},
    "runtime": {"device": "cpu", "channels_last": False, "threads": 1},  # a checkpoint every epoch (default)
    "resources": {"cpus_per_trial": 1, "max_failures": 0},
}


def deep_update(tree: dict, patch: dict) -> dict:
    out = dict(tree)
    for key, value in patch.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def given_teacher(tmp_path_factory) -> dict:
    """TINY's teacher given as a checkpoint (resnet8 at its initial weights, seed 0), for the end-to-end tests
    whose subject is not the teacher: their runs evaluate it and train none (a teacher epoch costs seconds)."""
    with torch.random.fork_rng():  # the seed stays in here: later tests see the random state they saw before
        torch.manual_seed(0)
        model = create_model(TINY["teacher"]["model"], 10)
    path = save_checkpoint(model, tmp_path_factory.mktemp("teacher") / "t.pt")
    return {"model": TINY["teacher"]["model"], "checkpoint": path}


@pytest.fixture
def write_experiment(tmp_path):
    """Writes a tiny experiment YAML (digits, resnet8 -> resnet8, 2 epochs) into tmp_path; returns its path."""
    def write(name: str = "tiny", **patch) -> str:
        tree = deep_update({"name": name, "storage_path": str(tmp_path / "experiments"), **TINY}, patch)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return str(path)
    return write
