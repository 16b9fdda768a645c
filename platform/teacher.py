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
    """One whole GPU (if trials use GPUs) on the node type trials use: their custom resources, scaled to it."""
    r = experiment.resources
    gpus = 1 if r.gpus_per_trial > 0 else 0
    scale = gpus / r.gpus_per_trial if r.gpus_per_trial else 1.0
    return {"num_cpus": r.cpus_per_trial, "num_gpus": gpus,
            "resources": {name: amount * scale for name, amount in r.custom_resources.items()}}


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


class TeacherStage:
    """The teacher's weights, from teacher.checkpoint, the experiment's saved copy, or a fresh training.

    Started before the MLflow store is opened: the Ray task (a worker importing torch, then training or
    evaluating) runs while the driver creates the store's tables, instead of after it.
    """

    def __init__(self, experiment: ExperimentConfig, checkpoint_path: str, num_classes: int):
        self.experiment, self.checkpoint_path = experiment, checkpoint_path
        self.training = self.evaluation = self.state = None
        if experiment.teacher is None:
            return
        base = experiment.base_train_config().model_dump(mode="json")
        options = _remote_options(experiment)
        self.source = experiment.teacher.checkpoint or (checkpoint_path if os.path.exists(checkpoint_path) else None)
        if self.source is None:
            print(f"[teacher] training {experiment.teacher.model} "
                  f"({(experiment.teacher.recipe or experiment.recipe).epochs} epochs) before the trials", flush=True)
            self.training = _train.options(**options).remote(base)
        else:
            self.state = load_teacher_state(experiment.teacher.model, num_classes, self.source)
            self.evaluation = _evaluate.options(**options).remote(base, experiment.teacher.model, self.state)

    def finish(self, tracker: Tracker, parent_run_id: str) -> dict[str, torch.Tensor] | None:
        """Waits for the stage, logs it to the parent run and returns the weights (None: no teacher)."""
        if self.experiment.teacher is None:
            return None
        if self.training is not None:
            state, history = ray.get(self.training)
            for metrics in history:
                tracker.log_metrics(parent_run_id, {f"teacher/{k}": v for k, v in metrics.items()
                                                    if isinstance(v, float) and "/" in k}, int(metrics["epoch"]))
            save_checkpoint(state, self.checkpoint_path)
            self.source = self.checkpoint_path
            self.state = state
            # fit() evaluates after the last epoch: the weights just trained need no second evaluation
            metrics = history[-1]
        else:
            metrics = ray.get(self.evaluation)
            tracker.log_metrics(parent_run_id, {f"teacher/{k}": v for k, v in metrics.items()}, 0)
        tracker.client.set_tag(parent_run_id, "teacher_checkpoint", self.source)
        print(f"[teacher] {self.experiment.teacher.model} from {self.source}: validation top-1 "
              f"{metrics['val/top1']:.2f}%, test top-1 {metrics['test/top1']:.2f}%", flush=True)
        return self.state


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
    if not base.teacher_cache.enabled or state is None:
        return base
    from bickd.teacher_cache import cache_folder, cache_key
    folder = cache_folder(os.path.join(experiment_dir, "teacher_cache"), cache_key(base, state))
    if not os.path.isdir(folder):
        print(f"[teacher] caching logits for {base.teacher_cache.epochs} augmented epochs", flush=True)
        ray.get(_build_cache.options(**_remote_options(experiment)).remote(base.model_dump(mode="json"), state, folder))
    return base.with_overrides({"teacher_cache.path": folder})
