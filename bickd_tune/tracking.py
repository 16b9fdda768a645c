"""MLflow tracking from the driver: one parent run per experiment, one nested run per trial.

Why not Ray's MLflowLoggerCallback: it creates no parent run, logs Tune's bookkeeping fields, drops
non-float metrics silently, and after `Tuner.restore` opens a second run for a trial that was running.
Here every run is found again by tags (experiment folder, trial id) before one is created, and a metric
step already in the store is never logged twice, so a resume neither duplicates runs nor steps.
All logging goes through `MlflowClient` with explicit run ids: no fluent, process-global active run.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from bickd_tune.ray_env import PACKAGE_ROOT

OUR_METRIC_PREFIXES = ("train/", "val/", "test/", "time/", "teacher/")
# MLflow 3 opens an experiment without this tag in its GenAI view; ours are model-training experiments.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TAG_EXPERIMENT = "bickd.experiment"  # the experiment's storage location: the same from any head
TAG_KIND = "bickd.kind"
TAG_TRIAL_ID = "ray.trial_id"
TAG_STAGE = "stage"  # a trial's Tune run: search, ablation or confirm (the confirmation after a search)


def stage_of(run, main: str) -> str:
    """A trial run's stage; runs logged before stages were tagged belong to the experiment's `main` stage
    (its search or ablation: confirmation runs were always tagged)."""
    return run.data.tags.get(TAG_STAGE) or main


def git_commit() -> str:
    """The commit being run: BICKD_GIT_COMMIT where the code came without .git (a KubeRay archive), else git's."""
    if os.environ.get("BICKD_GIT_COMMIT"):
        return os.environ["BICKD_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "-C", PACKAGE_ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Our own numeric metrics of a result (Tune's bookkeeping fields left out)."""
    return {k: float(v) for k, v in result.items()
            if (k == "lr" or k.startswith(OUR_METRIC_PREFIXES)) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


class Tracker:
    """The experiment's MLflow experiment and parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, identity: str, local_dir: str):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.identity = identity
        existing = self.client.get_experiment_by_name(experiment_name)
        # With a SQLite store, artifacts would default to ./mlruns under the current folder: keep them
        # beside the experiment instead. A tracking server decides for itself.
        artifacts = (None if tracking_uri.startswith(("http://", "https://"))
                     else "file://" + os.path.join(local_dir, "mlartifacts"))
        if existing is None:
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifacts,
                                                               tags=dict([EXPERIMENT_KIND]))
        else:
            self.experiment_id = existing.experiment_id
            if existing.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment (for --resume); a client is rebuilt from its URI.
        return {"tracking_uri": self.tracking_uri, "identity": self.identity, "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)

    def runs_page_hint(self) -> str:
        """How to open this experiment's runs in the MLflow UI."""
        page = f"#/experiments/{self.experiment_id}/runs"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{page}"
        return (f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000, "
                f"then open http://127.0.0.1:5000/{page}")

    def find_run(self, **tags: str) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {TAG_EXPERIMENT: self.identity, **tags}.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run_id = self.find_run(**{TAG_KIND: "experiment"})
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={
                TAG_EXPERIMENT: self.identity, TAG_KIND: "experiment", "git_commit": git_commit(), **tags})
            run_id = run.info.run_id
            self.log_params(run_id, params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def finish_open_trial_runs(self, status: str) -> None:
        """Marks this experiment's trial runs still RUNNING (an interrupted experiment) with `status`."""
        for run in self.trial_runs():
            if run.info.status == "RUNNING":
                self.finish(run.info.run_id, status)

    def trial_runs(self):
        query = f"tags.`{TAG_EXPERIMENT}` = '{self.identity}' and tags.`{TAG_KIND}` = 'trial'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=5000)

    def retire_runs_of_other_trials(self, is_ours: Callable[[str], bool], stage: str) -> int:
        """After a resume from a hard kill: trials started after Tune's last state snapshot were run again
        under new ids. Their first, abandoned runs (of this stage) are retired so each trial is counted once:
        tagged `orphaned`, marked KILLED and deleted (MLflow keeps deleted runs restorable)."""
        retired = 0
        for run in self.trial_runs():
            if stage_of(run, stage) == stage and not is_ours(run.data.tags.get(TAG_TRIAL_ID, "")):
                self.client.set_tag(run.info.run_id, "orphaned", "started before the driver died; re-run on resume")
                self.finish(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)
                retired += 1
        return retired

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def last_step(self, run_id: str, metric: str = "train/loss") -> int:
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=0)

    def log_artifact(self, run_id: str, path: str, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path=folder)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class TrialLogger(Callback):
    """Tune callback: a nested MLflow run per trial, every epoch as a step, final metrics and status."""

    def __init__(self, tracker: Tracker, parent_run_id: str, describe: Callable[[dict[str, Any]], tuple[str, dict]],
                 max_epochs: int, tags: dict[str, str]):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.describe = describe  # trial config -> (run name, full trial config as a dict)
        self.max_epochs = max_epochs
        self.tags = tags
        self.runs: dict[str, str] = {}
        self.logged_up_to: dict[str, int] = {}
        self.last_result: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # After a resume, runs and logged steps are read back from the store, not from a stale pickle.
        return {**self.__dict__, "runs": {}, "logged_up_to": {}, "last_result": {}}

    def _run_for(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        run_id = self.tracker.find_run(**{TAG_TRIAL_ID: trial.trial_id})
        if run_id is None:
            name, params = self.describe(trial.config)
            run = self.tracker.client.create_run(self.tracker.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.parent_run_id, TAG_EXPERIMENT: self.tracker.identity,
                TAG_KIND: "trial", TAG_TRIAL_ID: trial.trial_id, "git_commit": git_commit(), **self.tags})
            run_id = run.info.run_id
            self.tracker.log_params(run_id, params)
            self.logged_up_to[trial.trial_id] = 0
        else:  # a resumed experiment: keep the run, continue after its last step
            self.tracker.client.update_run(run_id, status="RUNNING")
            self.logged_up_to[trial.trial_id] = self.tracker.last_step(run_id)
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_result[trial.trial_id] = result
        if step <= self.logged_up_to.get(trial.trial_id, 0):
            return  # already in the store (the trial was restarted from an earlier checkpoint)
        self.tracker.log_metrics(run_id, metrics_of(result), step)
        self.logged_up_to[trial.trial_id] = step

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune restarts from its last checkpoint (FailureConfig.max_failures)."""
        run_id = self._run_for(trial)
        reason = _error_line(trial)[:500]
        self.tracker.client.set_tag(run_id, "restarts", str(trial.num_failures))
        self.tracker.client.set_tag(run_id, "last_failure", reason)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_for(trial)
        result = self.last_result.get(trial.trial_id) or trial.last_result or {}
        epochs = int(result.get("epoch", 0))
        # The final model's validation and test figures: what the summary and report compare trials by.
        final = {f"final/{k}": v for k, v in metrics_of(result).items() if k.startswith(("val/", "test/"))}
        final["final/epochs"] = float(epochs)
        self.tracker.log_metrics(run_id, final, epochs)
        reason = "completed" if epochs >= self.max_epochs else "stopped early by the scheduler"
        self.tracker.client.set_tag(run_id, "stop_reason", reason)
        self.tracker.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_for(trial)
        message = _error_line(trial)
        self.tracker.client.set_tag(run_id, "stop_reason", f"failed: {message}"[:5000])
        self.tracker.finish(run_id, "FAILED")


def _error_line(trial) -> str:
    """The last line of a trial's error (e.g. "NonFiniteLossError: loss is nan at epoch 0 step 3").

    Tune writes the error to the trial's driver-side folder first and syncs it to storage later, so the
    local file is read before `Trial.get_error()` (which reads storage).
    """
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.isfile(error_file):
        with open(error_file, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    if not text.strip():
        text = str(trial.get_error() or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
