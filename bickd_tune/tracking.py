"""MLflow tracking from the driver: one parent run per experiment, one nested run per trial.

Why not Ray's MLflowLoggerCallback: it creates no parent run, logs Tune's bookkeeping fields, drops
non-float metrics silently, and after `Tuner.restore` opens a second run for a trial that was running.
Here every run is found again by tags (experiment folder, trial id) before one is created, and a metric
step already in the store is never logged twice, so a resume neither duplicates runs nor steps.
All logging goes through `MlflowClient` with explicit run ids: no fluent, process-global active run.

At the size of a real search (a thousand trials, tens of results a second) the driver must not wait on the store
for every result: trial runs are written by one background thread (`store_writer.BackgroundWriter`) that groups
what piled up per run into `log_batch` calls, and the driver waits for it only where an order must hold (see
`TrialLogger`). Every query that can return many runs pages through them (`search_all_runs`): no silent cap.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from bickd_tune.mlflow_store import prepare_tracking_store
from bickd_tune.ray_env import PACKAGE_ROOT
from bickd_tune.store_writer import BackgroundWriter

OUR_METRIC_PREFIXES = ("train/", "val/", "test/", "time/", "teacher/")
# MLflow 3 opens an experiment without this tag in its GenAI view; ours are model-training experiments.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TAG_EXPERIMENT = "bickd.experiment"  # the experiment's storage location: the same from any head
TAG_KIND = "bickd.kind"
TAG_TRIAL_ID = "ray.trial_id"
TAG_STAGE = "stage"  # a trial's Tune run: search, ablation or confirm (the confirmation after a search)

# Runs per page of a search. MLflow's own default page size; one page of our trial runs (each with ~70 params)
# is a few MB, and a server refuses pages over 50,000. The loop in `search_all_runs`, not the size, is what
# makes every run count: read at call time, so a test can force a small page.
RUNS_PAGE_SIZE = 1000
MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE_LENGTH = 6000  # MLflow refuses a longer param value (a long config value is cut, not refused)
# A trial's error in its tags (MLflow allows 8,000 characters a tag value): the stop reason keeps most of the
# error's last line; the restart note, a column of the runs table, only its start.
STOP_REASON_MAX_CHARS = 5000
LAST_FAILURE_MAX_CHARS = 500
GIT_TIMEOUT_S = 10  # a git that hangs (a network file system) costs the run its commit id ("unknown"), not a stall
# The writer's queue holds whole results (~25 metrics each): 10,000 are minutes of a busy sweep's results, a
# few MB. Past that the driver waits for the store instead of holding more.
WRITER_MAX_QUEUED = 10_000
WRITER_MAX_BATCH = 1_000  # results taken from the queue at once (then grouped per run into log_batch calls)
# With a tracking server MLflow prints two lines for every run it marks finished, and reads the run back to do
# so: 2,000 console lines and 1,000 extra requests at 1,000 trials. The summary prints the runs page once.
QUIET_RUN_URLS = ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def stage_of(run, main: str) -> str:
    """A trial run's stage; runs logged before stages were tagged belong to the experiment's `main` stage
    (its search or ablation: confirmation runs were always tagged)."""
    return run.data.tags.get(TAG_STAGE) or main


def _now_ms() -> int:
    """Now in MLflow's timestamp unit: milliseconds since the epoch."""
    return int(time.time() * 1000)


@functools.cache  # once per process, not once per trial run
def git_commit() -> str:
    """The commit being run: BICKD_GIT_COMMIT where the code came without .git (a KubeRay archive), else git's."""
    if os.environ.get("BICKD_GIT_COMMIT"):
        return os.environ["BICKD_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "-C", PACKAGE_ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
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


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
                    page_size: int | None = None) -> list[Run]:
    """Every run matching `filter_string`, page after page (MLflow's `search_runs` returns at most one page).

    Oldest first: runs created while the pages are read land after those already read, so none is skipped.
    A list, not a generator: callers that change runs (delete, retag) must not do so between pages.
    """
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, order_by=["attributes.start_time ASC"],
                                  max_results=page_size or RUNS_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Our own numeric metrics of a result (Tune's bookkeeping fields left out)."""
    return {k: float(v) for k, v in result.items()
            if (k == "lr" or k.startswith(OUR_METRIC_PREFIXES)) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


class Tracker:
    """The experiment's MLflow experiment and parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, identity: str, local_dir: str):
        os.environ.setdefault(*QUIET_RUN_URLS)
        prepare_tracking_store(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.identity = identity
        # With a SQLite store, artifacts would default to ./mlruns under the current folder: keep them
        # beside the experiment instead. A tracking server decides for itself.
        artifacts = (None if tracking_uri.startswith(("http://", "https://"))
                     else "file://" + os.path.join(local_dir, "mlartifacts"))
        existing = self.client.get_experiment_by_name(experiment_name)
        if existing is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifacts,
                                                                   tags=dict([EXPERIMENT_KIND]))
                return
            except MlflowException as err:  # two drivers sharing a store, both creating it at once: the other won
                if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            existing = self.client.get_experiment_by_name(experiment_name)
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

    def trial_runs(self) -> list[Run]:
        """Every trial run of this experiment (all pages)."""
        query = f"tags.`{TAG_EXPERIMENT}` = '{self.identity}' and tags.`{TAG_KIND}` = 'trial'"
        return search_all_runs(self.client, [self.experiment_id], query)

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
        items = [Param(k, str(v)[:MAX_PARAM_VALUE_LENGTH]) for k, v in flatten(params).items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = _now_ms()
        self.write_metrics(run_id, [Metric(k, v, now, step) for k, v in metrics.items()])

    def write_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])

    def write_tags(self, run_id: str, tags: dict[str, str]) -> None:
        items = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), MAX_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start:start + MAX_TAGS_PER_BATCH])

    def last_step(self, run_id: str, metric: str = "train/loss") -> int:
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=0)

    def log_artifact(self, run_id: str, path: str, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path=folder)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class TrialLogger(Callback):
    """Tune callback: a nested MLflow run per trial, every epoch as a step, final metrics and status.

    The callbacks run in Tune's driver loop and only queue what to write; `_TrialRuns` writes it from a
    background thread. The driver waits for the writes of a trial (drains) where Tune is about to make them
    part of what a resume relies on:
    - `on_checkpoint`: Tune registers a trial's checkpoint right after this callback, and the next experiment
      state it saves names it. A resume restarts the trial from that checkpoint and never reports the epochs
      before it again, so those epochs must be in the store first. (A resume reads the last stored step back,
      so steps written beyond the checkpoint are not logged twice either.)
    - `on_trial_complete` / `on_trial_error`: a finished trial is never run again, so its final metrics and
      status must be stored before Tune's state says it finished.
    - `on_experiment_end` (the end, Ctrl+C, or an error in Tune's loop): everything, then the thread stops,
      before the runner reads the runs back or marks unfinished ones KILLED.
    A write that failed in the thread is raised here, at the next callback.
    """

    def __init__(self, tracker: Tracker, parent_run_id: str, describe: Callable[[dict[str, Any]], tuple[str, dict]],
                 max_epochs: int, tags: dict[str, str]):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.describe = describe  # trial config -> (run name, full trial config as a dict)
        self.max_epochs = max_epochs
        self.tags = tags
        self.last_result: dict[str, dict[str, Any]] = {}
        self._writer: BackgroundWriter | None = None
        self._last_write: dict[str, int] = {}  # trial id -> sequence number of its last queued write

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment. A thread and a queue cannot be pickled, and after a
        # resume the runs and logged steps are read back from the store, not from a stale pickle.
        return {**self.__dict__, "last_result": {}, "_writer": None, "_last_write": {}}

    def _queue(self, trial, op: str, *args: Any) -> None:
        if self._writer is None:
            runs = _TrialRuns(self.tracker, self.parent_run_id, self.describe, self.tags)
            self._writer = BackgroundWriter(runs.apply, name="mlflow-trial-writer", max_queued=WRITER_MAX_QUEUED,
                                            max_batch=WRITER_MAX_BATCH)
        self._last_write[trial.trial_id] = self._writer.submit((op, trial.trial_id, trial.config, *args))

    def _drain(self, trial) -> None:
        """Waits until every write queued for `trial` is in the store."""
        if self._writer is not None and trial.trial_id in self._last_write:
            self._writer.wait(self._last_write[trial.trial_id])

    def on_trial_start(self, iteration, trials, trial, **info):
        self._queue(trial, "open")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_result[trial.trial_id] = result
        self._queue(trial, "metrics", step, _now_ms(), metrics_of(result))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._drain(trial)  # before Tune registers this checkpoint: see the class's docstring

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune restarts from its last checkpoint (FailureConfig.max_failures)."""
        self._queue(trial, "tags", {"restarts": str(trial.num_failures),
                                    "last_failure": _error_line(trial)[:LAST_FAILURE_MAX_CHARS]})

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = self.last_result.pop(trial.trial_id, None) or trial.last_result or {}
        epochs = int(result.get("epoch", 0))
        # The final model's validation and test figures: what the summary and report compare trials by.
        final = {f"final/{k}": v for k, v in metrics_of(result).items() if k.startswith(("val/", "test/"))}
        final["final/epochs"] = float(epochs)
        reason = "completed" if epochs >= self.max_epochs else "stopped early by the scheduler"
        self._queue(trial, "finish", epochs, _now_ms(), final, {"stop_reason": reason}, "FINISHED")
        self._drain(trial)
        self._last_write.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.last_result.pop(trial.trial_id, None)
        reason = f"failed: {_error_line(trial)}"[:STOP_REASON_MAX_CHARS]
        self._queue(trial, "finish", 0, _now_ms(), {}, {"stop_reason": reason}, "FAILED")
        self._drain(trial)
        self._last_write.pop(trial.trial_id, None)

    def on_experiment_end(self, trials, **info):
        writer, self._writer = self._writer, None
        self._last_write = {}
        if writer is not None:
            writer.close()


class _TrialRuns:
    """The writer thread's side of `TrialLogger`: finds or creates each trial's run and writes what was queued.

    Runs are found again by the trial-id tag (a resumed experiment), read once per Tune run from the store;
    a step at or below the last one stored for a run is not written again (a trial restarted from an earlier
    checkpoint reports it a second time).
    """

    def __init__(self, tracker: Tracker, parent_run_id: str, describe, tags: dict[str, str]):
        self.tracker, self.parent_run_id, self.describe, self.tags = tracker, parent_run_id, describe, tags
        self.runs: dict[str, str] = {}           # trial id -> run id
        self.logged_up_to: dict[str, int] = {}   # trial id -> last step in the store
        self._stored: dict[str, str] | None = None  # trial id -> run id of runs already in the store

    def apply(self, items: list[tuple]) -> None:
        """Writes `items` in order; consecutive metrics of a run go out together, and a run's pending metrics
        are written before anything else of that run (so a status never precedes the steps before it)."""
        pending: dict[str, list[Metric]] = {}
        for op, trial_id, config, *args in items:
            run_id = self._run_for(trial_id, config)
            if op == "metrics":
                step, timestamp, metrics = args
                if step <= self.logged_up_to[trial_id]:
                    continue  # already in the store (the trial was restarted from an earlier checkpoint)
                pending.setdefault(run_id, []).extend(Metric(k, v, timestamp, step) for k, v in metrics.items())
                self.logged_up_to[trial_id] = step
                continue
            self.tracker.write_metrics(run_id, pending.pop(run_id, []))
            if op == "tags":
                self.tracker.write_tags(run_id, args[0])
            elif op == "finish":
                step, timestamp, metrics, tags, status = args
                self.tracker.write_metrics(run_id, [Metric(k, v, timestamp, step) for k, v in metrics.items()])
                self.tracker.write_tags(run_id, tags)
                self.tracker.finish(run_id, status)
        for run_id, metrics in pending.items():
            self.tracker.write_metrics(run_id, metrics)

    def _run_for(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id in self.runs:
            return self.runs[trial_id]
        if self._stored is None:  # one paged read instead of a search per trial
            self._stored = {run.data.tags.get(TAG_TRIAL_ID): run.info.run_id for run in self.tracker.trial_runs()}
        run_id = self._stored.get(trial_id)
        if run_id is None:
            name, params = self.describe(config)
            run = self.tracker.client.create_run(self.tracker.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.parent_run_id, TAG_EXPERIMENT: self.tracker.identity,
                TAG_KIND: "trial", TAG_TRIAL_ID: trial_id, "git_commit": git_commit(), **self.tags})
            run_id = run.info.run_id
            self.tracker.log_params(run_id, params)
            self.logged_up_to[trial_id] = 0
        else:  # a resumed experiment: keep the run, continue after its last step
            self.tracker.client.update_run(run_id, status="RUNNING")
            self.logged_up_to[trial_id] = self.tracker.last_step(run_id)
        self.runs[trial_id] = run_id
        return run_id


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
