"""The teacher stage: trained (or loaded and checked) once per experiment, before any trial.

Training checkpoints into the experiment's storage (every epoch, or at most every `runtime.checkpoint_every_s`).
It runs as a Ray task on a cluster or a GPU (a lost node re-runs the task, `max_retries`) and in the driver on a
local CPU instance (`in_this_process`); either way a `--resume` after a lost driver continues from the last
checkpoint instead of from epoch 0. The finished weights stay in storage as
`teacher/<model>.pt`, so a resume (from any head) does not train again. Weights reach the trials through
Ray's object store (`tune.with_parameters`).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import ray
import torch

from bickd.config import TrainConfig
from bickd.models import create_model, load_checkpoint
from bickd.run import build_teacher_cache, evaluate_weights, fit, print_report
from bickd.runtime import apply_threads
from bickd.teacher_cache import MANIFEST, cache_key, cache_name
from bickd_tune.data_copy import on_this_node
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.paths import ExperimentPaths
from bickd_tune.storage import Storage, is_remote
from bickd_tune.tracking import Tracker

PROGRESS, HISTORY = "teacher/progress.pt", "teacher/history.json"
# A lost node re-runs a teacher task (training continues from its last checkpoint); three losses in a row are a
# broken cluster, not bad luck, and end the run with Ray's error.
TASK_RETRIES = 3


def weights_name(model: str) -> str:
    return f"teacher/{model}.pt"


def remote_options(experiment: ExperimentConfig, local_cpus: float | None = None) -> dict[str, Any]:
    """What the teacher stage asks Ray for. Nothing else runs while it trains, so it gets a machine's worth: one
    whole GPU (if trials use GPUs) on the node type trials use (their custom resources, scaled to it) and
    `resources.teacher_cpus`, else every CPU of the local instance (`local_cpus`), else one trial's CPUs scaled
    to a whole GPU."""
    r = experiment.resources
    gpus = 1 if r.gpus_per_trial > 0 else 0
    scale = gpus / r.gpus_per_trial if r.gpus_per_trial else 1.0
    cpus = r.teacher_cpus or local_cpus or r.cpus_per_trial * scale
    return {"num_cpus": cpus, "num_gpus": gpus,
            "resources": {name: amount * scale for name, amount in r.custom_resources.items()}}


def describe_options(options: dict[str, Any]) -> str:
    """`2 CPUs (2 threads)`, `8 CPUs, 1 GPU (8 threads)`: what the teacher stage got."""
    cpus = options["num_cpus"]
    gpus = f", {options['num_gpus']:g} GPU" if options["num_gpus"] else ""
    extra = "".join(f", {name} {amount:g}" for name, amount in options["resources"].items())
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''}{gpus}{extra} ({max(1, int(cpus))} threads)"


def with_threads(config_json: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The teacher stage's config with torch threads for every CPU it was given (the trials' `runtime.threads`
    is one trial's share)."""
    return {**config_json, "runtime": {**config_json["runtime"], "threads": max(1, int(options["num_cpus"]))}}


def in_this_process(options: dict[str, Any], joined: bool) -> bool:
    """Where the stage runs. On a local instance without GPUs: in the driver, which has torch and the project
    imported and the data loaded by the preflight, and only waits meanwhile (a Ray task first starts a process
    that imports them again: 5-8 s on 2 cores, a third of a sweep's fixed cost). On a joined cluster (the teacher
    belongs on a GPU node of the trials' type) or with a GPU (the driver would keep a CUDA context for the
    whole sweep): a Ray task."""
    return not joined and not options["num_gpus"] and not torch.cuda.is_available()


class _InThisProcess:
    """A stage step run in the driver when its result is first asked for, as `ray.get` waits for a task (each
    step sets torch's threads from its config, `with_threads`)."""

    def __init__(self, function, options: dict[str, Any], *args):
        self.function, self.args = function, args

    def result(self):
        return self.function(*self.args)


class _InRayTask:
    """The same step as a Ray task with the stage's resources, started at once."""

    def __init__(self, function, options: dict[str, Any], *args):
        self.ref = _AS_TASK[function].options(**options).remote(*args)

    def result(self):
        return ray.get(self.ref)


def stage_step(options: dict[str, Any], joined: bool):
    return _InThisProcess if in_this_process(options, joined) else _InRayTask


def train_weights(config_json: dict[str, Any], storage: Storage) -> tuple[dict[str, torch.Tensor], list[dict]]:
    config = on_this_node(TrainConfig.model_validate(config_json)).teacher_training_config()
    progress = storage.read_torch(PROGRESS) if storage.exists(PROGRESS) else None
    history: list[dict[str, float]] = []
    if progress is not None:
        history = [m for m in storage.read_json(HISTORY) if m["epoch"] <= progress["epoch"] + 1]
        print(f"[teacher] resuming after epoch {progress['epoch'] + 1} from {storage.uri}", flush=True)
    last: dict[str, Any] = {}

    def report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        print_report(metrics, state)
        history.append(dict(metrics))
        storage.write_json(HISTORY, history)  # before the checkpoint: a resume never lacks its epochs
        if state is not None:
            storage.write_torch(PROGRESS, state)
            last["state"] = state

    fit(config, report=report, resume=progress)
    weights = (last.get("state") or progress)["student"]
    storage.write_torch(weights_name(config.student.model), {"model": weights})
    return weights, history


def evaluate(config_json: dict[str, Any], model_name: str, state: dict[str, torch.Tensor]) -> dict[str, float]:
    config = on_this_node(TrainConfig.model_validate(config_json))
    apply_threads(config.runtime)  # fit() does this for training; here in the driver or a task alike
    return evaluate_weights(config, model_name, state)


def load_teacher_state(model_name: str, num_classes: int, path: str) -> dict[str, torch.Tensor]:
    """Loads and checks a teacher checkpoint (CheckpointError names the file and the mismatch)."""
    model = create_model(model_name, num_classes)
    load_checkpoint(model, path)
    return model.state_dict()


class TeacherStage:
    """The teacher's weights: from teacher.checkpoint, from the experiment's storage, or trained now.

    A Ray task is started before the MLflow store is opened (a worker imports torch meanwhile); in the driver
    the work waits for `finish`.
    """

    def __init__(self, experiment: ExperimentConfig, paths: ExperimentPaths, num_classes: int,
                 options: dict[str, Any], joined: bool):
        self.experiment, self.storage, self.options = experiment, paths.storage(), options
        step = stage_step(options, joined)
        self.where = "in this process" if step is _InThisProcess else "in a Ray task"
        self.training = self.evaluation = self.state = self.history = None
        if experiment.teacher is None:
            return
        base = with_threads(experiment.base_train_config().model_dump(mode="json"), options)
        name = weights_name(experiment.teacher.model)
        self.source = experiment.teacher.checkpoint or paths.in_storage(name)
        if experiment.teacher.checkpoint is not None:
            self.state = load_teacher_state(experiment.teacher.model, num_classes, experiment.teacher.checkpoint)
            self.evaluation = step(evaluate, options, base, experiment.teacher.model, self.state)
        elif self.storage.exists(name):  # trained by an earlier run of this experiment
            self.state, self.history = self.storage.read_torch(name)["model"], self.storage.read_json(HISTORY)
        else:
            print(f"[teacher] training {experiment.teacher.model} "
                  f"({(experiment.teacher.recipe or experiment.recipe).epochs} epochs) before the trials on "
                  f"{describe_options(options)}, {self.where}", flush=True)
            self.training = step(train_weights, options, base, self.storage)

    def finish(self, tracker: Tracker, parent_run_id: str) -> dict[str, torch.Tensor] | None:
        """Waits for the stage, logs it to the parent run and returns the weights (None: no teacher)."""
        if self.experiment.teacher is None:
            return None
        if self.training is not None:
            self.state, self.history = self.training.result()
        if self.history is not None:
            logged = tracker.last_step(parent_run_id, "teacher/train/loss")
            for metrics in self.history:  # each epoch once, also across resumes
                if metrics["epoch"] > logged:
                    tracker.log_metrics(parent_run_id, {f"teacher/{k}": v for k, v in metrics.items()
                                                        if isinstance(v, float) and "/" in k}, int(metrics["epoch"]))
            # fit() evaluates after the last epoch: the weights just trained need no second evaluation
            metrics = self.history[-1]
        else:
            metrics = self.evaluation.result()
            tracker.log_metrics(parent_run_id, {f"teacher/{k}": v for k, v in metrics.items()}, 0)
        tracker.client.set_tag(parent_run_id, "teacher_checkpoint", self.source)
        print(f"[teacher] {self.experiment.teacher.model} from {self.source}: validation top-1 "
              f"{metrics['val/top1']:.2f}%, test top-1 {metrics['test/top1']:.2f}%", flush=True)
        return self.state


def build_cache(config_json: dict[str, Any], state: dict[str, torch.Tensor], storage: Storage, name: str) -> None:
    """Builds the cache where the stage runs and puts it into the experiment's storage."""
    config = on_this_node(TrainConfig.model_validate(config_json))
    apply_threads(config.runtime)
    if not is_remote(storage.uri):
        build_teacher_cache(config, state, os.path.join(storage.root, name))  # local storage: in place
        return
    with tempfile.TemporaryDirectory() as folder:
        build_teacher_cache(config, state, os.path.join(folder, "cache"))
        storage.upload(os.path.join(folder, "cache"), name)


_AS_TASK = {train_weights: ray.remote(max_retries=TASK_RETRIES)(train_weights), evaluate: ray.remote(evaluate),
            build_cache: ray.remote(max_retries=TASK_RETRIES)(build_cache)}


def prepare_teacher_cache(experiment: ExperimentConfig, base, state: dict[str, torch.Tensor] | None,
                          paths: ExperimentPaths, options: dict[str, Any], joined: bool):
    """Builds the experiment's teacher-logit cache once (if enabled) in its storage and points the trials'
    config at it; trials on other nodes fetch a verified copy (`trial.local_teacher_cache`)."""
    return prepare_teacher_caches(experiment, [base], state, paths, options, joined)[0]


def prepare_teacher_caches(experiment: ExperimentConfig, configs: list, state: dict[str, torch.Tensor] | None,
                           paths: ExperimentPaths, options: dict[str, Any], joined: bool) -> list:
    """`configs` each pointed at its teacher-logit cache (one per distinct views, data and teacher), the missing
    ones built at once as Ray tasks; configs without a cache come back unchanged."""
    if state is None:
        return list(configs)
    storage = paths.storage()
    names = [f"teacher_cache/{cache_name(cache_key(c, state))}" if c.teacher_cache.enabled else None for c in configs]
    missing = {name: config for name, config in zip(names, configs)
               if name is not None and not storage.exists(f"{name}/{MANIFEST}")}
    if missing:
        print(f"[teacher] caching logits for {configs[0].teacher_cache.epochs} augmented epochs "
              f"({len(missing)} view set{'s' if len(missing) > 1 else ''})", flush=True)
        step = stage_step(options, joined)
        shared = state if step is _InThisProcess else ray.put(state)  # one copy in the object store for every task
        steps = [step(build_cache, options, with_threads(config.model_dump(mode="json"), options), shared, storage,
                      name) for name, config in missing.items()]
        for each in steps:  # Ray tasks run side by side; in this process one after the other, on every CPU
            each.result()
    return [config if name is None else config.with_overrides({"teacher_cache.path": paths.in_storage(name)})
            for name, config in zip(names, configs)]
