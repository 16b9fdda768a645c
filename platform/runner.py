"""Runs a validated experiment: preflight, teacher stage, the Tune run, the results and the summary."""
from __future__ import annotations

import math
import os
import shutil
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bickd.config_io import ConfigError
from platform import preflight
from platform.experiment import ExperimentConfig

STATE_FILE = "tuner.pkl"  # written by Tune in the experiment folder; its presence means "can resume"


def run_experiment(experiment: ExperimentConfig, paths: dict[str, str], address: str | None = None,
                   num_cpus: float | None = None, resume: bool = False, write_report: bool = True) -> int:
    experiment_dir = paths["experiment_dir"]
    exists = os.path.exists(os.path.join(experiment_dir, STATE_FILE)) or os.path.exists(
        os.path.join(experiment_dir, "experiment.yaml"))
    if experiment.is_remote and not exists:
        from ray import tune  # Tune's state lives in the bucket even when this head's disk is new
        exists = tune.Tuner.can_restore(paths["tune_path"])
    if exists and not resume:
        raise ConfigError(f"name: experiment '{experiment.name}' already exists in {experiment_dir}; "
                          "pass --resume to continue it, or choose another name")
    if resume and not exists:
        raise ConfigError(f"--resume: no experiment '{experiment.name}' in {experiment_dir} to resume")
    preflight.check_storage(experiment_dir, experiment.is_remote)
    preflight.check_tracking(paths["tracking_uri"])
    num_classes = preflight.check_data(experiment)
    preflight.check_teacher_checkpoint(experiment, num_classes)
    from platform.ray_env import cluster_resources, init_ray
    init_ray(address, num_cpus=num_cpus)  # Ray's own session files live outside the experiment folder
    if address is None:  # a joined cluster may autoscale from zero GPU workers: Tune waits for them
        _check_resources(experiment, cluster_resources())

    # Everything below may create files: all checks have passed.
    created = not os.path.exists(experiment_dir)
    os.makedirs(experiment_dir, exist_ok=True)
    try:
        return _run(experiment, paths, num_classes, resume, write_report, joined=address is not None)
    except BaseException:
        if created and not os.path.exists(os.path.join(experiment_dir, STATE_FILE)):
            shutil.rmtree(experiment_dir, ignore_errors=True)  # nothing half-written from a failed start
        raise


def _run(experiment: ExperimentConfig, paths: dict[str, str], num_classes: int, resume: bool,
         write_report: bool, joined: bool) -> int:
    from platform.teacher import TeacherStage, prepare_teacher_cache

    experiment_dir = paths["experiment_dir"]
    with open(os.path.join(experiment_dir, "experiment.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(experiment.model_dump(mode="json"), handle, sort_keys=False)
    # The teacher's Ray task starts first and runs while the driver imports MLflow and opens its store.
    teacher = TeacherStage(experiment, paths["teacher_checkpoint"], num_classes)

    from ray import tune

    from platform.tracking import TrialLogger, Tracker, flatten
    from platform.trial import run_trial, trial_config

    tracker = Tracker(paths["tracking_uri"], experiment.tracking.experiment_name or experiment.name, experiment_dir)
    parent = tracker.parent_run(experiment.name, experiment.model_dump(mode="json"),
                                {"mode": experiment.mode, "experiment": experiment.name})
    try:
        teacher_state = teacher.finish(tracker, parent)
        base = prepare_teacher_cache(experiment, experiment.base_train_config(), teacher_state, experiment_dir)
        arms = experiment.ablation.arms if experiment.ablation is not None else None
        resources = experiment.resources
        trainable = tune.with_parameters(
            run_trial, base=base, arms=arms, teacher_state=teacher_state, num_workers=resources.num_workers,
            cpus_per_worker=resources.cpus_per_trial, gpus_per_worker=resources.gpus_per_trial,
            storage_path=paths["storage_path"], max_failures=resources.max_failures,
            custom_resources=dict(resources.custom_resources))
        trainable = tune.with_resources(trainable, _trial_resources(experiment))

        def describe(point: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            config = trial_config(base, point, arms)
            name = (f"{point['arm']}-seed{point['seed']}" if arms is not None else
                    ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in point.items()) or "defaults")
            return name, {**flatten(config.train_dict()), **({"arm": point["arm"]} if arms else {})}

        logger = TrialLogger(tracker, parent, describe, experiment.max_epochs, {"experiment": experiment.name})
        # On --resume Tune restores the experiment's own pickled callbacks (a TrialLogger like this one).
        tuner = _restore_tuner(paths, trainable) if resume else _new_tuner(
            experiment, paths, trainable, logger, base, joined)
        results = tuner.fit()
        if _interrupted(results, _planned_trials(experiment), _search_exhausted(experiment, paths)):
            # Tune catches Ctrl+C itself, saves its state and returns normally: say so, do not summarise.
            tracker.finish_open_trial_runs("KILLED")
            tracker.finish(parent, "KILLED")
            print("\ninterrupted: the state is saved; continue with\n  python -m platform.tune <yaml> --resume",
                  flush=True)
            return 130
        if resume:
            _retire_orphans(results, tracker, experiment, paths)
        rows = _result_rows(results, arms)
        summary = _summarise(experiment, paths, rows, tracker, parent)
        if write_report:
            from platform.report import write_experiment_report
            write_experiment_report(experiment_dir, tracking_uri=paths["tracking_uri"], quiet=False)
        tracker.finish(parent, "FINISHED")
        print(summary, flush=True)
        return 0
    except KeyboardInterrupt:
        tracker.finish(parent, "KILLED")
        print("\ninterrupted: continue with  python -m platform.tune <yaml> --resume", flush=True)
        return 130
    except BaseException:
        tracker.finish(parent, "FAILED")
        raise


def _retire_orphans(results, tracker, experiment: ExperimentConfig, paths: dict[str, str]) -> None:
    """After a resume from a hard kill: trials started after Tune's last state snapshot were run again under
    new ids. Their first, abandoned records are retired so each planned trial is counted once: the MLflow
    run is deleted (MLflow keeps it restorable, tagged `orphaned`) and the Optuna trial marked FAIL."""
    known = {trial.trial_id for trial in results._experiment_analysis.trials}
    query = f"tags.`bickd.experiment_dir` = '{paths['experiment_dir']}' and tags.`bickd.kind` = 'trial'"
    for run in tracker.client.search_runs([tracker.experiment_id], filter_string=query, max_results=5000):
        if run.data.tags.get("ray.trial_id") not in known:
            tracker.client.set_tag(run.info.run_id, "orphaned", "started before the driver died; re-run on resume")
            tracker.finish(run.info.run_id, "KILLED")
            tracker.client.delete_run(run.info.run_id)
    if experiment.search is not None:
        import optuna
        storage = optuna.storages.RDBStorage(paths["optuna_storage"])
        study = optuna.load_study(study_name=experiment.name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(trial._trial_id, "orphaned", "started before the driver died")
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def _planned_trials(experiment: ExperimentConfig) -> int:
    if experiment.search is not None:
        return experiment.search.num_samples
    return len(experiment.ablation.arms) * len(experiment.ablation.seeds)


def _search_exhausted(experiment: ExperimentConfig, paths: dict[str, str]) -> bool:
    if experiment.search is None:
        return False
    from platform.search import exhausted
    return exhausted(paths["optuna_storage"], experiment.name)


def _interrupted(results, planned: int, exhausted: bool) -> bool:
    """True when Tune returned before every planned trial reached a final state (e.g. after SIGINT); a
    search whose space ran out of new configurations ends early without being interrupted."""
    trials = results._experiment_analysis.trials  # ResultGrid exposes no trial status of its own
    done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
    return len(done) < len(trials) or (len(done) < planned and not exhausted)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)


def _trial_resources(experiment: ExperimentConfig) -> dict[str, float]:
    resources = experiment.resources
    if resources.num_workers == 0:
        return {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial,
                "custom_resources": dict(resources.custom_resources)}
    # The trial only drives a TorchTrainer; its workers ask for the real resources.
    coordinator = dict(resources.coordinator_resources)
    return {"cpu": coordinator.pop("CPU", 0.0), "gpu": coordinator.pop("GPU", 0.0), "custom_resources": coordinator}


def _slots(experiment: ExperimentConfig, available: dict[str, float]) -> int:
    """How many trials fit at once; for TorchTrainer trials Tune cannot see the workers' needs itself."""
    r = experiment.resources
    workers = max(r.num_workers, 1)
    need_cpu = workers * r.cpus_per_trial + (r.coordinator_resources.get("CPU", 0.0) if r.num_workers else 0)
    fits = [available.get("CPU", 0) / need_cpu]
    if r.gpus_per_trial:
        fits.append(available.get("GPU", 0) / (workers * r.gpus_per_trial))
    return max(1, math.floor(min(fits) + 1e-9))


def _check_resources(experiment: ExperimentConfig, available: dict[str, float]) -> None:
    r = experiment.resources
    workers = max(r.num_workers, 1)
    if r.gpus_per_trial and available.get("GPU", 0) < r.gpus_per_trial * workers:
        raise ConfigError(f"resources.gpus_per_trial: {r.gpus_per_trial:g} x {workers} worker(s) needs "
                          f"{r.gpus_per_trial * workers:g} GPUs; the cluster has {available.get('GPU', 0):g}")
    if available.get("CPU", 0) < r.cpus_per_trial * workers:
        raise ConfigError(f"resources.cpus_per_trial: {r.cpus_per_trial:g} x {workers} worker(s) needs more "
                          f"CPUs than the cluster's {available.get('CPU', 0):g}")


def _new_tuner(experiment, paths, trainable, logger, base, joined: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from platform.search import build_searcher

    search_alg, scheduler, param_space, num_samples = None, None, {}, 1
    if experiment.search is not None:
        search_alg = build_searcher(experiment.search, paths["optuna_storage"], experiment.name, base)
        num_samples = experiment.search.num_samples
        if experiment.scheduler.type == "asha":
            metric, mode = experiment.objective
            scheduler = ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=experiment.max_epochs,
                                      grace_period=experiment.scheduler.grace_period,
                                      reduction_factor=experiment.scheduler.reduction_factor)
    else:
        param_space = {"arm": tune.grid_search(list(experiment.ablation.arms)),
                       "seed": tune.grid_search(list(experiment.ablation.seeds))}
    from platform.ray_env import cluster_resources
    concurrent = experiment.resources.max_concurrent_trials
    if concurrent is None and not (joined and experiment.resources.num_workers == 0):
        # Local: what fits now. Joined clusters autoscale, and Tune queues single-device trials on their
        # resources by itself; TorchTrainer trials hide their workers' needs from Tune, so they are capped.
        concurrent = _slots(experiment, cluster_resources())
    return tune.Tuner(
        trainable, param_space=param_space,
        # metric/mode live on the searcher and the scheduler (Tune refuses them in both places).
        # reuse_actors: the next trial starts in a finished trial's process (6-11 s sooner per wave on 2 CPUs,
        # torch already imported). fit() sets its seeds and threads itself, so nothing leaks between trials.
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, reuse_actors=True,
                                    num_samples=num_samples, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=paths["storage_path"], callbacks=[logger],
            failure_config=tune.FailureConfig(max_failures=experiment.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1),
    )


def _restore_tuner(paths, trainable):
    from ray import tune
    if not tune.Tuner.can_restore(paths["tune_path"]):
        raise ConfigError(f"--resume: {paths['tune_path']} holds no Tune state to resume (was the run started at all?)")
    print(f"resuming {paths['tune_path']}", flush=True)
    return tune.Tuner.restore(paths["tune_path"], trainable=trainable, resume_unfinished=True, resume_errored=True)


FINAL_METRICS = ("val/top1", "val/top5", "val/loss", "test/top1", "test/top5", "test/loss")


def _column(metric: str) -> str:
    return metric.replace("/", "_")


def _result_rows(results, arms) -> pd.DataFrame:
    """One row per trial: its point (or arm and seed), epochs, final validation and test metrics, error."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = result.config or {}
        rows.append({
            "trial_id": metrics.get("trial_id"),
            **({"arm": config.get("arm"), "seed": config.get("seed")} if arms is not None else dict(config)),
            "epochs": metrics.get("epoch"),
            **{_column(m): metrics.get(m) for m in FINAL_METRICS},
            "error": str(result.error).strip().splitlines()[-1] if result.error else "",
        })
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "epochs", *map(_column, FINAL_METRICS), "error"])


def chosen_trial(rows: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The trial the objective picks (best final validation value), or None when none finished."""
    done = rows.dropna(subset=[_column(metric)])
    if not len(done):
        return None
    return done.sort_values(_column(metric), ascending=mode == "min", kind="stable").iloc[0]


def _summarise(experiment, paths, rows: pd.DataFrame, tracker, parent) -> str:
    from platform.ablation import write_table

    experiment_dir = paths["experiment_dir"]
    rows.to_csv(os.path.join(experiment_dir, "trials.csv"), index=False)
    tracker.log_artifact(parent, os.path.join(experiment_dir, "trials.csv"))
    ok = rows[rows.error == ""] if len(rows) else rows
    lines = ["", f"finished {experiment.name}: {len(ok)} of {len(rows)} trials completed"
             + (f", {len(rows) - len(ok)} failed" if len(rows) - len(ok) else "")]
    if experiment.ablation is not None and len(ok):
        written = write_table(ok.dropna(subset=["test_top1"]), os.path.join(experiment_dir, "results"),
                              experiment.ablation.reference, experiment.ablation.control, experiment.chooses_on_test)
        for path in written.values():
            tracker.log_artifact(parent, path, "ablation")
        with open(written["ablation.md"], encoding="utf-8") as handle:
            lines += ["", handle.read()]
    elif len(ok):
        metric, mode = experiment.objective
        best = chosen_trial(ok, metric, mode)
        if best is not None:
            shown = {"trial_id", "epochs", "error", *map(_column, FINAL_METRICS)}
            params = ", ".join(f"{k}={_short(v)}" for k, v in best.items() if k not in shown and v == v)
            lines.append(f"chosen trial {best.trial_id} ({params or 'the base config'}), by {mode} {metric} on "
                         f"the validation split: validation top-1 {best.val_top1:.2f}%, test top-1 "
                         f"{best.test_top1:.2f}% (final model after {int(best.epochs)} epochs; test was not used "
                         f"to choose)")
    if experiment.chooses_on_test:
        lines.append("note: data.val_fraction is 0, so there is no validation split: every choice above was "
                     "made on the test set and its test figures are optimistic")
    lines += [f"results   {experiment_dir}",
              f"mlflow    {tracker.runs_page_hint()}"]
    return "\n".join(lines)
