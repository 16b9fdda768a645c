"""The Ray Tune run of an experiment, built in one place: the trainable and its resources, the searcher and
scheduler, the callbacks, a new Tuner or one restored from the experiment's storage."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from bickd.config import TrainConfig
from bickd.config_io import ConfigError
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.paths import ExperimentPaths
from bickd_tune.ray_env import cluster_resources
from bickd_tune.search import build_searcher
from bickd_tune.storage import Storage, join
from bickd_tune.trial import run_trial

OPTUNA_DB = "optuna.db"
# Slots are whole, and float division is not exact: 0.3 GPUs over 0.1 per trial is 2.9999999999999996, three slots.
FIT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Stage:
    """One Tune run of an experiment: its search, its ablation grid, or the confirmation after a search."""
    name: str                                # "search", "ablation" or "confirm": the trials' MLflow `stage` tag
    arms: dict[str, dict[str, Any]] | None   # a grid's arms (name -> overrides); None for a search
    seeds: list[int] | None                  # a grid's seeds
    storage_path: str                        # Tune's storage_path and name: the stage's state lives in
    tune_name: str                           # <storage_path>/<tune_name>
    max_epochs: int                          # the longest trial (a shorter one was stopped early)
    seed_overrides: dict[int, dict[str, Any]] | None = None  # a grid's seed -> what that seed's trials override

    @property
    def uri(self) -> str:
        return join(self.storage_path, self.tune_name)

    @property
    def planned(self) -> int | None:
        return None if self.arms is None else len(self.arms) * len(self.seeds)


def main_stage(experiment: ExperimentConfig, paths: ExperimentPaths) -> Stage:
    """The experiment's own Tune run, whose state is the experiment folder itself."""
    ablation = experiment.ablation
    return Stage(experiment.kind, ablation.arms if ablation else None, ablation.seeds if ablation else None,
                 paths.storage_root, experiment.name, experiment.max_epochs)


def confirm_stage(experiment: ExperimentConfig, paths: ExperimentPaths, plan) -> Stage:
    """The confirmation after a search: its own Tune run in `<experiment>/confirm`, the full recipe."""
    return Stage("confirm", plan.arms, plan.seeds, paths.experiment_uri, "confirm", experiment.recipe.epochs)


def worker_resources(experiment: ExperimentConfig) -> dict[str, float]:
    """What one trial trains on (num_workers 0), or each of its DDP workers: Ray resource names."""
    r = experiment.resources
    return {"CPU": r.cpus_per_trial, **({"GPU": r.gpus_per_trial} if r.gpus_per_trial else {}), **r.custom_resources}


def trial_resources(experiment: ExperimentConfig) -> dict[str, Any]:
    """What one Tune trial asks Ray for."""
    resources = experiment.resources
    if resources.num_workers == 0:
        return {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial,
                "custom_resources": dict(resources.custom_resources)}
    # The trial only drives a TorchTrainer; its workers ask for the real resources.
    coordinator = dict(resources.coordinator_resources)
    return {"cpu": coordinator.pop("CPU", 0.0), "gpu": coordinator.pop("GPU", 0.0), "custom_resources": coordinator}


def slots(experiment: ExperimentConfig, available: dict[str, float]) -> int:
    """How many trials fit at once; for TorchTrainer trials Tune cannot see the workers' needs itself."""
    r = experiment.resources
    workers = max(r.num_workers, 1)
    need_cpu = workers * r.cpus_per_trial + (r.coordinator_resources.get("CPU", 0.0) if r.num_workers else 0)
    fits = [available.get("CPU", 0) / need_cpu]
    if r.gpus_per_trial:
        fits.append(available.get("GPU", 0) / (workers * r.gpus_per_trial))
    return max(1, math.floor(min(fits) + FIT_TOLERANCE))


def check_resources(experiment: ExperimentConfig, available: dict[str, float]) -> None:
    r = experiment.resources
    workers = max(r.num_workers, 1)
    if r.gpus_per_trial and available.get("GPU", 0) < r.gpus_per_trial * workers:
        raise ConfigError(f"resources.gpus_per_trial: {r.gpus_per_trial:g} x {workers} worker(s) needs "
                          f"{r.gpus_per_trial * workers:g} GPUs; the cluster has {available.get('GPU', 0):g}")
    if available.get("CPU", 0) < r.cpus_per_trial * workers:
        raise ConfigError(f"resources.cpus_per_trial: {r.cpus_per_trial:g} x {workers} worker(s) needs more "
                          f"CPUs than the cluster's {available.get('CPU', 0):g}")


def trainable(experiment: ExperimentConfig, paths: ExperimentPaths, base: TrainConfig, teacher_state, stage: Stage):
    r = experiment.resources
    function = tune.with_parameters(
        run_trial, base=base, arms=stage.arms, seed_overrides=stage.seed_overrides, teacher_state=teacher_state,
        num_workers=r.num_workers,
        worker_resources=worker_resources(experiment), storage_path=paths.storage_root, max_failures=r.max_failures)
    return tune.with_resources(function, trial_resources(experiment))


class MirrorToStorage(Callback):
    """Copies the driver's working files (the Optuna study) into the experiment's remote storage whenever a
    trial ends and when the run ends, so a head that is replaced resumes with them."""

    def __init__(self, paths: ExperimentPaths):
        self.paths = paths

    def _mirror(self) -> None:
        if os.path.exists(self.paths.optuna_db):
            self.paths.storage().upload(self.paths.optuna_db, OPTUNA_DB)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._mirror()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._mirror()

    def on_experiment_end(self, trials, **info):
        self._mirror()


def restore_working_files(paths: ExperimentPaths) -> None:
    """A replaced head: fetch the Optuna study from the experiment's storage before Tune restores."""
    storage = paths.storage()
    if paths.remote and not os.path.exists(paths.optuna_db) and storage.exists(OPTUNA_DB):
        storage.download(OPTUNA_DB, paths.optuna_db)


def new_tuner(experiment: ExperimentConfig, paths: ExperimentPaths, function, callbacks: list[Callback],
              base: TrainConfig, joined: bool, stage: Stage) -> tune.Tuner:
    search_alg, scheduler, param_space, num_samples = None, None, {}, 1
    if stage.arms is None:
        search_alg = build_searcher(experiment.search, paths.optuna_storage, experiment.name, base,
                                    experiment.scheduler.max_t)
        num_samples = experiment.search.num_samples
        if experiment.scheduler.type == "asha":
            metric, mode = experiment.objective
            scheduler = ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=experiment.max_epochs,
                                      grace_period=experiment.scheduler.grace_period,
                                      reduction_factor=experiment.scheduler.reduction_factor)
    else:
        # A grid trains every trial to the end: nothing is chosen between arms, so nothing stops early.
        param_space = {"arm": tune.grid_search(list(stage.arms)), "seed": tune.grid_search(list(stage.seeds))}
    concurrent = experiment.resources.max_concurrent_trials
    if concurrent is None and not (joined and experiment.resources.num_workers == 0):
        # Local: what fits now. Joined clusters autoscale, and Tune queues single-device trials on their
        # resources by itself; TorchTrainer trials hide their workers' needs from Tune, so they are capped.
        concurrent = slots(experiment, cluster_resources())
    if paths.remote:
        callbacks = [*callbacks, MirrorToStorage(paths)]
    return tune.Tuner(
        function, param_space=param_space,
        # metric/mode live on the searcher and the scheduler (Tune refuses them in both places).
        # reuse_actors: the next trial starts in a finished trial's process (torch already imported);
        # fit() sets its seeds and threads itself, so nothing leaks between trials.
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, reuse_actors=True,
                                    num_samples=num_samples, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=stage.tune_name, storage_path=stage.storage_path, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=experiment.resources.max_failures),
            # verbose 0: Tune's tables per trial event (~40 lines a trial) give way to bickd_tune.progress
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=0),
    )


def tuner_for(experiment: ExperimentConfig, paths: ExperimentPaths, function, callbacks: list[Callback],
              base: TrainConfig, joined: bool, stage: Stage) -> tune.Tuner:
    """The stage's Tuner: restored from its storage when Tune saved a state there (a resumed run; Tune
    restores its own pickled callbacks then), else new (a first run, or one killed before its trials)."""
    if tune.Tuner.can_restore(stage.uri):
        print(f"resuming the {stage.name} trials from {stage.uri}", flush=True)
        return tune.Tuner.restore(stage.uri, trainable=function, resume_unfinished=True, resume_errored=True)
    return new_tuner(experiment, paths, function, callbacks, base, joined, stage)


def finished_results(stage: Stage, function):
    """The ResultGrid of a stage that already ran to its end, read back without running anything."""
    return tune.Tuner.restore(stage.uri, trainable=function).get_results()


def storage_has_state(paths: ExperimentPaths) -> bool:
    """Whether an earlier run of this experiment wrote anything to its storage (a YAML, or Tune's state)."""
    return Storage(paths.experiment_uri).exists("experiment.yaml") or tune.Tuner.can_restore(paths.experiment_uri)
