"""Runs a validated experiment, step by step: checks, Ray, the teacher, the trials, the results."""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import yaml

from bickd.config_io import ConfigError
from bickd_tune import confirm, draws, preflight, tuner
from bickd_tune.ablation import write_table
from bickd_tune.confirm import saved_plan
from bickd_tune.data_copy import keep_in_storage
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.paths import ExperimentPaths
from bickd_tune.progress import Progress
from bickd_tune.ray_env import cluster_resources, init_ray, local_temp_dir, stop_leftovers_of
from bickd_tune.report import write_experiment_report
from bickd_tune.results import interrupted, result_rows, short, summary_lines, trial_of_this_run
from bickd_tune.search import exhausted, retire_running_trials
from bickd_tune.teacher import (TeacherStage, load_teacher_state, prepare_teacher_cache, prepare_teacher_caches,
                                remote_options)
from bickd_tune.tracking import Tracker, TrialLogger, flatten
from bickd_tune.trial import trial_config
from bickd_tune.tune import EXIT_INTERRUPTED
from bickd_tune.tuner import check_resources, storage_has_state


def run_experiment(experiment: ExperimentConfig, paths: ExperimentPaths, address: str | None = None,
                   num_cpus: float | None = None, resume: bool = False, write_report: bool = True) -> int:
    exists = storage_has_state(paths)
    if exists and not resume:
        raise ConfigError(f"name: experiment '{experiment.name}' already exists in {paths.experiment_uri}; "
                          "pass --resume to continue it, or choose another name")
    if resume and not exists:
        raise ConfigError(f"--resume: no experiment '{experiment.name}' in {paths.experiment_uri} to resume")
    preflight.check_storage(paths)
    preflight.check_tracking(paths.tracking_uri)
    num_classes = preflight.check_data(experiment, address)  # on a cluster: where the trials run
    preflight.check_teacher_checkpoint(experiment, num_classes)
    if resume:
        _check_primary_unchanged(experiment, paths)
    teacher_ids = draws.teacher_ids(experiment, _given_teacher_weights(experiment, num_classes))
    shared = draws.check_independent(experiment, paths, teacher_ids)
    if address is None:
        stop_leftovers_of(paths)  # the Ray processes of a driver of this experiment that was killed
    init_ray(address, num_cpus=num_cpus, temp_dir=local_temp_dir(paths) if address is None else None)
    if address is None:  # a joined cluster may autoscale from zero GPU workers: Tune waits for them
        check_resources(experiment, cluster_resources())

    # Everything below may create files: all checks have passed.
    experiment = keep_in_storage(experiment, paths)  # a downloaded data set: into the bucket, once
    created = not os.path.exists(paths.local_dir)
    os.makedirs(paths.local_dir, exist_ok=True)
    try:
        return _run(experiment, paths, num_classes, resume, write_report, joined=address is not None,
                    teacher_ids=teacher_ids, shared=shared)
    except BaseException:
        if created and not storage_has_state(paths):
            shutil.rmtree(paths.local_dir, ignore_errors=True)  # nothing half-written from a failed start
        raise


def _given_teacher_weights(experiment: ExperimentConfig, num_classes: int):
    """The weights of a teacher given as a checkpoint (checked by the preflight), else None."""
    if experiment.teacher is None or experiment.teacher.checkpoint is None:
        return None
    return load_teacher_state(experiment.teacher.model, num_classes, experiment.teacher.checkpoint)


def _check_primary_unchanged(experiment: ExperimentConfig, paths: ExperimentPaths) -> None:
    """Primary comparisons are declared before any trial runs: a resume may not change them."""
    storage = paths.storage()
    if not storage.exists("experiment.yaml"):
        return
    saved = (yaml.safe_load(storage.read_bytes("experiment.yaml")) or {}).get("analysis") or {}
    before = saved.get("primary", [])
    if before != experiment.analysis.primary:
        raise ConfigError(f"analysis.primary: {experiment.analysis.primary} differs from {before}, declared when "
                          "this experiment started; primary comparisons are fixed before any trial runs (put new "
                          "questions in a new experiment, or restore the declared list)")


def _run(experiment: ExperimentConfig, paths: ExperimentPaths, num_classes: int, resume: bool,
         write_report: bool, joined: bool, teacher_ids: list[str], shared: dict[str, list[str]]) -> int:
    config_text = yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False).encode()
    paths.storage().write_bytes("experiment.yaml", config_text)
    if paths.remote:  # the report reads it from the driver's working folder too
        with open(os.path.join(paths.local_dir, "experiment.yaml"), "wb") as handle:
            handle.write(config_text)
    draws.write_record(experiment, paths, teacher_ids, shared)
    # On a cluster the teacher's Ray task starts first and runs while the driver opens the MLflow store.
    # Nothing else runs while the teacher trains: locally it gets the whole instance.
    options = remote_options(experiment, None if joined else cluster_resources().get("CPU"))
    teacher = TeacherStage(experiment, paths, num_classes, options, joined)
    tracker = Tracker(paths.tracking_uri, experiment.tracking.experiment_name or experiment.name, paths.identity,
                      paths.local_dir)
    parent = tracker.parent_run(experiment.name, experiment.model_dump(mode="json"),
                                {"experiment_kind": experiment.kind, "experiment": experiment.name})
    try:
        teacher_state = teacher.finish(tracker, parent)
        draws.write_record(experiment, paths, draws.teacher_ids(experiment, teacher_state), shared)
        base = prepare_teacher_cache(experiment, experiment.base_train_config(), teacher_state, paths, options,
                                     joined)
        stages = _Stages(experiment, paths, tracker, parent, base, teacher_state, joined, resume, options)
        results = stages.main()
        confirmed = None
        if results is not None and experiment.confirm is not None:
            confirmed = stages.confirm(results)
        if results is None or (experiment.confirm is not None and confirmed is None):
            # Tune caught Ctrl+C, saved its state and returned: say so, do not summarise
            tracker.finish_open_trial_runs("KILLED")
            tracker.finish(parent, "KILLED")
            print("\ninterrupted: the state is saved; continue with\n  python -m platform.tune <yaml> --resume",
                  flush=True)
            return EXIT_INTERRUPTED
        summary = _summarise(experiment, paths, results, tracker, parent, confirmed)
        if write_report:
            write_experiment_report(paths.local_dir, tracking_uri=paths.tracking_uri, quiet=False)
        if paths.remote:
            _keep_outputs_in_storage(paths)
        tracker.finish(parent, "FINISHED")
        print(summary, flush=True)
        return 0
    except KeyboardInterrupt:
        tracker.finish(parent, "KILLED")
        print("\ninterrupted: continue with  python -m platform.tune <yaml> --resume", flush=True)
        return EXIT_INTERRUPTED
    except BaseException:
        tracker.finish(parent, "FAILED")
        raise


class _Stages:
    """The experiment's Tune runs in order: the search or ablation, then a search's confirmation."""

    def __init__(self, experiment: ExperimentConfig, paths: ExperimentPaths, tracker, parent: str, base,
                 teacher_state, joined: bool, resume: bool, teacher_options: dict[str, Any]):
        self.experiment, self.paths, self.tracker, self.parent = experiment, paths, tracker, parent
        self.base, self.teacher_state, self.joined, self.resume = base, teacher_state, joined, resume
        self.teacher_options = teacher_options  # what the logit caches are built with

    def main(self):
        """Runs (or resumes) the search or ablation; its ResultGrid, or None when the run was interrupted. A
        search whose confirmation has begun is finished: its results are read back, nothing runs again."""
        stage = self._drawing_per_seed(tuner.main_stage(self.experiment, self.paths), self.experiment.ablation)
        if self.experiment.confirm is not None and saved_plan(self.paths) is not None:
            return tuner.finished_results(stage, self._function(stage))
        tuner.restore_working_files(self.paths)
        results = self._fit(stage)
        if results is not None and self.resume:
            self._retire_orphans(stage, results)
            if self.experiment.search is not None:
                retire_running_trials(self.paths.optuna_storage, self.experiment.name)
        return results

    def confirm(self, search_results):
        """Trains the search's winners, the control and the default over fresh seeds; their ResultGrid and
        plan, or None when interrupted."""
        plan = confirm.load_or_choose(self.experiment, self.paths, self.base, search_results)
        print(f"[confirm] {len(plan.arms)} settings x {len(plan.seeds)} fresh seeds = {plan.trials} trials at the "
              f"full recipe, each compared with {plan.control}"
              + (f" and the search's winners with {plan.reference}" if plan.reference else "")
              + f": {', '.join(plan.arms)}", flush=True)
        stage = self._drawing_per_seed(tuner.confirm_stage(self.experiment, self.paths, plan),
                                       self.experiment.confirm)
        results = self._fit(stage)
        if results is None:
            return None
        if self.resume:
            self._retire_orphans(stage, results)
        return plan, results

    def _drawing_per_seed(self, stage, section):
        """The stage with each seed's overrides: what it draws afresh (`per_seed`), and that seed's logit cache."""
        if stage.seeds is None:
            return stage
        per_seed = list(section.per_seed) if section is not None else []
        configs = {seed: self.base.with_overrides(draws.seed_overrides(self.base, seed, per_seed))
                   for seed in stage.seeds}
        cached = dict(zip(configs, prepare_teacher_caches(self.experiment, list(configs.values()),
                                                          self.teacher_state, self.paths, self.teacher_options,
                                                          self.joined)))
        overrides = {seed: {**draws.seed_overrides(self.base, seed, per_seed),
                            **({"teacher_cache.path": cached[seed].teacher_cache.path}
                               if cached[seed].teacher_cache.enabled else {})}
                     for seed in stage.seeds}
        return dataclasses.replace(stage, seed_overrides=overrides)

    def _function(self, stage):
        return tuner.trainable(self.experiment, self.paths, self.base, self.teacher_state, stage)

    def _fit(self, stage):
        describe = _describer(self.base, stage)
        logger = TrialLogger(self.tracker, self.parent, describe, stage.max_epochs,
                             {"experiment": self.experiment.name, "stage": stage.name})
        planned = stage.planned if stage.planned is not None else self.experiment.search.num_samples
        progress = Progress(stage.name, lambda point: describe(point)[0], planned, *self.experiment.objective,
                            stage.max_epochs)
        results = tuner.tuner_for(self.experiment, self.paths, self._function(stage), [logger, progress], self.base,
                                  self.joined, stage).fit()
        exhausted = stage.arms is None and _search_exhausted(self.experiment, self.paths)
        return None if interrupted(results, planned, exhausted) else results

    def _retire_orphans(self, stage, results) -> None:
        """After a resume from a hard kill, trials that started after Tune's last state snapshot ran again
        under new ids: their first records are retired in MLflow (and in the Optuna study), so each counts once."""
        self.tracker.retire_runs_of_other_trials(trial_of_this_run(results), stage.name)


def _describer(base, stage):
    def describe(point: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A trial's run name and its params: the whole resolved config."""
        config = trial_config(base, point, stage.arms, stage.seed_overrides)
        name = (f"{point['arm']}-seed{point['seed']}" if stage.arms is not None else
                ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in point.items()) or "defaults")
        if stage.name == "confirm":
            name = f"confirm-{name}"
        return name, {**flatten(config.train_dict()), **({"arm": point["arm"]} if stage.arms else {})}
    return describe


def _search_exhausted(experiment: ExperimentConfig, paths: ExperimentPaths) -> bool:
    if experiment.search is None:
        return False
    return exhausted(paths.optuna_storage, experiment.name)


def _summarise(experiment: ExperimentConfig, paths: ExperimentPaths, results, tracker, parent: str,
               confirmed) -> str:
    rows = result_rows(results, ablation=experiment.ablation is not None)
    trials_csv = os.path.join(paths.local_dir, "trials.csv")
    rows.to_csv(trials_csv, index=False)
    tracker.log_artifact(parent, trials_csv)
    ablation_markdown = None
    ok = rows[rows.error == ""] if len(rows) else rows
    if experiment.ablation is not None and len(ok):
        written = write_table(ok.dropna(subset=["test_top1"]), os.path.join(paths.local_dir, "results"), experiment,
                              draws.shared_draws(paths, "ablation"))
        for path in written.values():
            tracker.log_artifact(parent, path, "ablation")
        with open(written["ablation.md"], encoding="utf-8") as handle:
            ablation_markdown = handle.read()
    lines = summary_lines(experiment, rows, ablation_markdown)
    lines += [f"results   {paths.experiment_uri}", f"mlflow    {tracker.runs_page_hint()}"]
    if confirmed is not None:  # the claim comes last: the winners over fresh seeds against the control
        lines += ["", *_confirmation_lines(experiment, paths, tracker, parent, *confirmed)]
    return "\n".join(lines)


def _confirmation_lines(experiment: ExperimentConfig, paths: ExperimentPaths, tracker, parent: str, plan,
                        results) -> list[str]:
    rows = result_rows(results, ablation=True)
    csv = os.path.join(paths.local_dir, "confirm_trials.csv")
    rows.to_csv(csv, index=False)
    tracker.log_artifact(parent, csv)
    ok = rows[rows.error == ""] if len(rows) else rows
    failed = len(rows) - len(ok)
    lines = [f"confirmation over fresh seeds: {len(ok)} of {len(rows)} trials completed"
             + (f", {failed} failed" if failed else "")]
    if len(ok.dropna(subset=["test_top1"])):
        written = confirm.write_tables(ok, plan, experiment.analysis, os.path.join(paths.local_dir, "results"),
                                       experiment.search_seeds, experiment.chooses_on_test,
                                       draws.shared_draws(paths, "confirm"))
        for path in written.values():
            tracker.log_artifact(parent, path, "confirmation")
        with open(written["confirmation.md"], encoding="utf-8") as handle:
            lines += ["", handle.read()]
    return lines


def _keep_outputs_in_storage(paths: ExperimentPaths) -> None:
    """The tables and the report go to the experiment's storage too: the head's disk is not the record."""
    storage = paths.storage()
    for name in ("trials.csv", "confirm_trials.csv", "results", "report"):
        local = os.path.join(paths.local_dir, name)
        if os.path.exists(local):
            storage.upload(local, name)
