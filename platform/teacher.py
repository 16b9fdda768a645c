"""The teacher stage: trained (or loaded and checked) once per experiment, before any trial.

Its weights go to the trials through Ray's object store (`tune.with_parameters`), so every node gets them
without a shared file system; a copy stays in the experiment folder so `--resume` does not retrain it.
"""
from __future__ import annotations

import os
from typing import Any

import ray
import torch

from bickd.models import create_model, load_checkpoint, save_checkpoint
from bickd.run import evaluate_weights, train_teacher
from platform.experiment import ExperimentConfig
from platform.tracking import Tracker


def _remote_options(experiment: ExperimentConfig) -> dict[str, Any]:
    gpus = 1 if experiment.resources.gpus_per_trial > 0 else 0
    return {"num_cpus": experiment.resources.cpus_per_trial, "num_gpus": gpus}


@ray.remote
def _train(config_json: dict[str, Any]):
    from bickd.config import TrainConfig
    state, history = train_teacher(TrainConfig.model_validate(config_json))
    return {k: v.cpu() for k, v in state.items()}, history


@ray.remote
def _evaluate(config_json: dict[str, Any], model_name: str, state: dict[str, torch.Tensor]):
    from bickd.config import TrainConfig
    return evaluate_weights(TrainConfig.model_validate(config_json), model_name, state)


def load_teacher_state(model_name: str, num_classes: int, path: str) -> dict[str, torch.Tensor]:
    """Loads and checks a teacher checkpoint (CheckpointError names the file and the mismatch)."""
    model = create_model(model_name, num_classes)
    load_checkpoint(model, path)
    return model.state_dict()


def prepare_teacher(experiment: ExperimentConfig, checkpoint_path: str, num_classes: int, tracker: Tracker,
                    parent_run_id: str) -> dict[str, torch.Tensor] | None:
    """The teacher's weights, from teacher.checkpoint, the experiment's saved copy, or a fresh training."""
    if experiment.teacher is None:
        return None
    base = experiment.base_train_config()
    options = _remote_options(experiment)
    source = experiment.teacher.checkpoint or (checkpoint_path if os.path.exists(checkpoint_path) else None)
    if source is None:
        print(f"[teacher] training {experiment.teacher.model} "
              f"({(experiment.teacher.recipe or experiment.recipe).epochs} epochs) before the trials", flush=True)
        state, history = ray.get(_train.options(**options).remote(base.model_dump(mode="json")))
        for metrics in history:
            tracker.log_metrics(parent_run_id, {f"teacher/{k}": v for k, v in metrics.items()
                                                if isinstance(v, float) and "/" in k}, int(metrics["epoch"]))
        save_checkpoint(state, checkpoint_path)
        source = checkpoint_path
    state = load_teacher_state(experiment.teacher.model, num_classes, source)
    metrics = ray.get(_evaluate.options(**options).remote(base.model_dump(mode="json"),
                                                          experiment.teacher.model, state))
    tracker.log_metrics(parent_run_id, {f"teacher/test_{k}": v for k, v in metrics.items()}, 0)
    tracker.client.set_tag(parent_run_id, "teacher_checkpoint", source)
    print(f"[teacher] {experiment.teacher.model} from {source}: test top-1 {metrics['top1']:.2f}%", flush=True)
    return state



@ray.remote
def _build_cache(config_json: dict[str, Any], state: dict[str, torch.Tensor], folder: str) -> str:
    from bickd.config import TrainConfig
    from bickd.run import build_teacher_cache
    return build_teacher_cache(TrainConfig.model_validate(config_json), state, folder)


def prepare_teacher_cache(experiment: ExperimentConfig, base, state: dict[str, torch.Tensor] | None,
                          experiment_dir: str):
    """Builds the experiment's teacher-logit cache once (if enabled) and points the trials' config at it.

    The cache lives in the experiment folder: on several nodes that folder must be on a shared file system.
    """
    if not base.teacher_cache.enabled or state is None or base.loss.name == "ce":
        return base
    from bickd.teacher_cache import cache_key, state_hash
    key = cache_key(base, state)
    folder = os.path.join(experiment_dir, "teacher_cache", state_hash(state)[:12] + f"-s{key['view_seed']}-e{key['view_epochs']}")
    if not os.path.isdir(folder):
        print(f"[teacher] caching logits for {base.teacher_cache.epochs} augmented epochs", flush=True)
        ray.get(_build_cache.options(**_remote_options(experiment)).remote(base.model_dump(mode="json"), state, folder))
    return base.with_overrides({"teacher_cache.path": folder})
