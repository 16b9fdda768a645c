"""One Tune trial: the sampled point -> a validated TrainConfig -> `bickd.run.fit`.

Two ways to run the same training function, chosen by `resources.num_workers` in the YAML:
- 0: inside the Tune trial itself (cheap to start; one device);
- N: a Ray Train `TorchTrainer` with N DDP workers launched from the trial (the Train-in-Tune pattern
  Ray 2.60 supports), its metrics forwarded to Tune by `TuneReportCallback`.
Both checkpoint every epoch (or at most every `runtime.checkpoint_every_s`, and always the last) and
resume from the last checkpoint when Tune restarts the trial.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback

from bickd.config import TrainConfig
from bickd.run import fit
from bickd_tune.data_copy import on_this_node
from bickd_tune.storage import Storage, is_remote, join, without_query

STATE_FILE = "state.pt"
QUIET_LOGGERS = ("ray.train", "ray.tune")  # a line per checkpoint from every trial would drown the console


SeedOverrides = dict[int, dict[str, Any]]


def trial_overrides(point: dict[str, Any], arms: dict[str, dict[str, Any]] | None,
                    seed_overrides: SeedOverrides | None = None) -> dict[str, Any]:
    """Search: the sampled dotted paths. A grid (ablation, confirmation): the arm's overrides plus the seed and
    what that seed draws (its views' seed and logit cache, its split: `seed_overrides`)."""
    if arms is None:
        return dict(point)
    seed = point["seed"]
    return {**arms[point["arm"]], **(seed_overrides or {}).get(seed, {}), "seed": seed}


def trial_config(base: TrainConfig, point: dict[str, Any], arms: dict[str, dict[str, Any]] | None,
                 seed_overrides: SeedOverrides | None = None) -> TrainConfig:
    return base.with_overrides(trial_overrides(point, arms, seed_overrides))


def local_teacher_cache(config: TrainConfig) -> TrainConfig:
    """`config` reading its teacher-logit cache from this node's disk: a cache in remote storage is fetched
    once per node (into $BICKD_CACHE_DIR, default ~/.cache/bickd) and verified by its checksums when opened."""
    path = config.teacher_cache.path
    if not config.teacher_cache.enabled or path is None or not is_remote(path):
        return config
    root = os.path.expanduser(os.environ.get("BICKD_CACHE_DIR", "~/.cache/bickd"))
    local = os.path.join(root, "teacher_cache", os.path.basename(without_query(path).rstrip("/")))
    if not os.path.isdir(local):
        Storage(path).download("", local)
    return config.with_overrides({"teacher_cache.path": local})


def _report_with(report_fn, checkpoint_cls):
    """Adapts bickd's `report(metrics, state)` to Ray's `report(metrics, checkpoint=...)`."""
    def report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            report_fn(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, STATE_FILE))
            report_fn(metrics, checkpoint=checkpoint_cls.from_directory(folder))
    return report


def _load_state(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


def run_trial(point: dict[str, Any], *, base: TrainConfig, arms: dict[str, dict[str, Any]] | None,
              seed_overrides: SeedOverrides | None, teacher_state: dict[str, torch.Tensor] | None,
              num_workers: int, worker_resources: dict[str, float],
              storage_path: str, max_failures: int) -> None:
    """The Tune trainable (wrapped with `tune.with_parameters` by the driver). `worker_resources` is what
    the trial trains on: its own (num_workers 0) or each DDP worker's."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    config = on_this_node(local_teacher_cache(trial_config(base, point, arms, seed_overrides)))
    if num_workers == 0:
        if config.runtime.threads is None:
            torch.set_num_threads(max(1, int(worker_resources["CPU"])))
        fit(config, report=_report_with(tune.report, Checkpoint), resume=_load_state(tune.get_checkpoint()),
            teacher_state=teacher_state)
        return
    _run_torch_trainer(config, teacher_state, num_workers, worker_resources, storage_path, max_failures)


def _run_torch_trainer(config: TrainConfig, teacher_state, num_workers: int, worker_resources: dict[str, float],
                       storage_path: str, max_failures: int) -> None:
    context = tune.get_context()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "teacher_state": teacher_state},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=worker_resources.get("GPU", 0) > 0,
                                               resources_per_worker=worker_resources),
        run_config=ray.train.RunConfig(
            # A stable name per trial: when Tune restarts the trial, Train finds its checkpoints again.
            name=f"{context.get_experiment_name()}-{context.get_trial_id()}",
            storage_path=join(storage_path, "train_runs"),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=0)),
    )
    trainer.fit()


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every DDP worker; Ray Train has set up the torch.distributed process group."""
    config = on_this_node(local_teacher_cache(TrainConfig.model_validate(loop_config["config"])))
    fit(config, report=_report_with(ray.train.report, ray.train.Checkpoint),
        resume=_load_state(ray.train.get_checkpoint()), device=ray.train.torch.get_device(),
        teacher_state=loop_config["teacher_state"])
