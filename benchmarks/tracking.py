"""Tracking at the size of a real search: what logging a trial to MLflow costs the driver at trial 10 and at
trial 1,000, on a SQLite store and on an MLflow server backed by PostgreSQL.

    python -m benchmarks.tracking                    # 1,000 trials x 3 epochs, every arm (~10 min on 2 CPUs)
    python -m benchmarks.tracking --trials 100 --no-postgres

No Ray and no training: the trials are Tune's own `Trial` objects with the config, params (the demo's resolved
trial config, 66 params) and results (23 metrics and Tune's bookkeeping fields per epoch) of real trials, fed to
the callbacks the way Tune's driver loop calls them, two trials at a time: start, then per epoch a result and
its checkpoint, then completion. Each arm writes to a fresh store:
  (a) direct: what the driver did before the background writer (kept here as the baseline): per trial a
      search for an existing run by its tag, then creating it; per result one `log_batch` in the callback;
  (b) batched: `bickd_tune.tracking.TrialLogger`: callbacks queue, one thread writes, the driver drains at a
      checkpoint and at a trial's end;
  (c) batched, to an `mlflow server` on PostgreSQL (127.0.0.1, started and stopped here; needs the test extra's
      `pgserver` and `psycopg`), PostgreSQL with its default durability.
Figures are medians over a window of 10 trials: "@10" is trials 1-10, "@N" the last 10. "driver per result" is
the time in `on_trial_result`, "at checkpoint" the time in `on_checkpoint` (the drain), "driver per trial" all
of a trial's callbacks, "wall per trial" the time between consecutive trial completions.
The last line is machine-readable for tracking over time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ray.tune import Checkpoint
from ray.tune.experiment import Trial

from benchmarks.throughput import cpu_name
from bickd_tune.experiment import load_experiment
from bickd_tune.tracking import (TAG_EXPERIMENT, TAG_KIND, TAG_TRIAL_ID, Tracker, TrialLogger, flatten, git_commit,
                                 metrics_of)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 10         # trials per window: "at trial 10" is trials 1-10, "at trial N" the last 10
SLOTS = 2           # trials at a time, as the platform's benchmarks run them on 2 CPUs
DEMO = os.path.join(REPO, "search_spaces", "demo.yaml")


def describer() -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    """A trial's run name and params, as the runner makes them: the demo's whole resolved trial config."""
    base = load_experiment(DEMO).base_train_config()

    def describe(point: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"tau={point['loss.tau']:.3g}", flatten(base.with_overrides(point).train_dict())
    return describe


def result_of(trial: int, epoch: int) -> dict[str, Any]:
    """An epoch's result as a trial reports it (bickd.run.fit's keys) with Tune's bookkeeping fields."""
    loss = 2.0 / epoch + trial * 1e-6
    train = {f"train/{k}": loss * w for k, w in (("loss", 1.0), ("ce", 0.1), ("kl", 0.6), ("bc", 0.3),
                                                   ("row", 0.2), ("col", 0.1), ("top1", 30.0))}
    evaluation = {f"{split}/{k}": v for split in ("val", "test")
                  for k, v in (("top1", 60.0 + epoch), ("top5", 90.0 + epoch / 10), ("loss", loss))}
    return {"epoch": epoch, "lr": 0.05 / epoch, "time/train_s": 1.2, "time/started_at": time.time(),
            "time/img_per_s": 900.0, "time/eval_s": 0.3, "val/top1_best": 60.0 + epoch, **train, **evaluation,
            "training_iteration": epoch, "trial_id": f"t{trial:05d}", "pid": 4242, "done": False,
            "time_this_iter_s": 1.5, "time_total_s": 1.5 * epoch, "timestamp": int(time.time())}


class DirectLogger:
    """Arm (a), the baseline: the driver writes each thing itself before the callback returns (the previous
    `TrialLogger`: a search by tag per trial, then the run; one `log_batch` per result)."""

    def __init__(self, tracker: Tracker, parent: str, describe, max_epochs: int):
        self.tracker, self.parent, self.describe, self.max_epochs = tracker, parent, describe, max_epochs
        self.runs: dict[str, str] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.tracker.find_run(**{TAG_TRIAL_ID: trial.trial_id})
        if run_id is None:
            name, params = self.describe(trial.config)
            run_id = self.tracker.client.create_run(self.tracker.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.parent, TAG_EXPERIMENT: self.tracker.identity, TAG_KIND: "trial",
                TAG_TRIAL_ID: trial.trial_id, "git_commit": git_commit()}).info.run_id
            self.tracker.log_params(run_id, params)
        self.runs[trial.trial_id] = run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.log_metrics(self.runs[trial.trial_id], metrics_of(result), int(result["epoch"]))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs[trial.trial_id]
        final = {f"final/{k}": v for k, v in metrics_of(trial.last_result).items() if k.startswith(("val/", "test/"))}
        self.tracker.log_metrics(run_id, final, self.max_epochs)
        self.tracker.client.set_tag(run_id, "stop_reason", "completed")
        self.tracker.finish(run_id)

    def on_experiment_end(self, trials, **info):
        pass


def run_arm(logger_class, tracking_uri: str, folder: str, trials: int, epochs: int, describe) -> dict[str, Any]:
    """Feeds `trials` trials through the logger, SLOTS at a time; the timings per trial."""
    tracker = Tracker(tracking_uri, "tracking-bench", os.path.join(folder, "experiment"), folder)
    parent = tracker.parent_run("tracking-bench", {"trials": trials}, {})
    if logger_class is TrialLogger:
        logger = TrialLogger(tracker, parent, describe, epochs, {"stage": "search"})
    else:
        logger = DirectLogger(tracker, parent, describe, epochs)
    os.makedirs(os.path.join(folder, "checkpoint"), exist_ok=True)
    checkpoint = Checkpoint.from_directory(os.path.join(folder, "checkpoint"))
    population = [Trial("run_trial", config={"loss.name": "bickd", "loss.tau": 0.05 + 0.45 * n / trials},
                        trial_id=f"t{n:05d}", stub=True) for n in range(trials)]
    per_result: dict[int, list[float]] = {n: [] for n in range(trials)}
    per_checkpoint: dict[int, list[float]] = {n: [] for n in range(trials)}
    per_trial = [0.0] * trials
    finished_at = [0.0] * trials

    def timed(n: int, call, *args) -> float:
        started = time.perf_counter()
        call(0, population, population[n], *args)
        took = time.perf_counter() - started
        per_trial[n] += took
        return took

    started = time.perf_counter()
    for first in range(0, trials, SLOTS):
        running = list(range(first, min(first + SLOTS, trials)))
        for n in running:
            timed(n, logger.on_trial_start)
        for epoch in range(1, epochs + 1):
            for n in running:
                result = result_of(n, epoch)
                population[n].update_last_result(result)
                per_result[n].append(timed(n, logger.on_trial_result, result))
                per_checkpoint[n].append(timed(n, logger.on_checkpoint, checkpoint))
        for n in running:
            timed(n, logger.on_trial_complete)
            finished_at[n] = time.perf_counter() - started
    ended = time.perf_counter()
    logger.on_experiment_end(population)
    drained = time.perf_counter() - ended
    read_started = time.perf_counter()
    stored = tracker.trial_runs()  # what a resumed sweep reads back once (every page)
    read_back = time.perf_counter() - read_started
    assert len(stored) == trials, (len(stored), trials)
    return {"per_result": per_result, "per_checkpoint": per_checkpoint, "per_trial": per_trial,
            "finished_at": finished_at, "wall": ended - started + drained, "read_back": read_back}


def metric_points(trials: int, epochs: int) -> int:
    """Metric points an arm stores: every epoch's metrics, then the final validation and test figures."""
    metrics = metrics_of(result_of(0, 1))
    return trials * (epochs * len(metrics) + sum(k.startswith(("val/", "test/")) for k in metrics) + 1)


def window(values_by_trial, trials: list[int]) -> float:
    return statistics.median(v for n in trials for v in (values_by_trial[n] if isinstance(values_by_trial[n], list)
                                                         else [values_by_trial[n]]))


def wall_per_trial(finished_at: list[float], trials: list[int]) -> float:
    return statistics.median(finished_at[n] - finished_at[n - 1] if n else finished_at[0] for n in trials)


def sqlite_size(path: str) -> int:
    return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal", "-journal") if os.path.exists(path + suffix))


def postgres_size(database: str) -> int:
    import psycopg  # optional: the test extra's PostgreSQL driver

    with psycopg.connect(database) as connection:
        return connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite arms only")
    args = parser.parse_args(argv)
    if args.trials < 2 * WINDOW:
        parser.error(f"--trials: at least {2 * WINDOW} (two windows of {WINDOW})")
    early, late = list(range(WINDOW)), list(range(args.trials - WINDOW, args.trials))
    postgres = not args.no_postgres and all(importlib.util.find_spec(m) for m in ("pgserver", "psycopg"))
    describe = describer()
    print(f"tracking at {args.trials} trials x {args.epochs} epochs, {SLOTS} at a time, "
          f"{len(metrics_of(result_of(0, 1)))} metrics per result, {len(describe({'loss.tau': 0.1})[1])} params "
          f"per trial; {cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%d %b %Y')}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bickd-tracking-") as folder, ExitStack() as servers:
        def sqlite_store(name: str):
            database = os.path.join(folder, f"{name}.db")
            return f"sqlite:///{database}", lambda: sqlite_size(database)

        def server_store(name: str):
            sys.path.insert(0, REPO)  # tests.servers: the project's PostgreSQL and MLflow server helpers
            from tests.servers import mlflow_server, postgres_server  # tests/ is not installed: after the line above
            database = servers.enter_context(postgres_server(durable=True))
            os.makedirs(os.path.join(folder, name))
            url = servers.enter_context(mlflow_server(os.path.join(folder, name), os.path.join(folder, name, "artifacts"),
                                                      backend_store_uri=database))
            return url, lambda: postgres_size(database)

        arms = [("SQLite, direct (before)", DirectLogger, sqlite_store), ("SQLite, batched", TrialLogger, sqlite_store)]
        if postgres:
            arms.append(("MLflow server on PostgreSQL, batched", TrialLogger, server_store))
        else:
            print("  (no PostgreSQL arm: pgserver and psycopg are the test extra's, or --no-postgres)")
        for index, (label, logger_class, store) in enumerate(arms):
            uri, size = store(f"arm{index}")
            measured = run_arm(logger_class, uri, os.path.join(folder, f"arm{index}-run"), args.trials, args.epochs,
                               describe)
            stored = size()
            # The host drifts over minutes: the first trials again, on a fresh store, right after the last ones.
            uri, _ = store(f"arm{index}-again")
            again = run_arm(logger_class, uri, os.path.join(folder, f"arm{index}-again-run"), WINDOW, args.epochs,
                            describe)
            rows.append((label, measured, again, stored))
            print(f"  {label}: {measured['wall']:.1f} s", flush=True)

    n = args.trials
    print(f"\n{'arm':<38} {'driver per result (ms)':>22} {'at checkpoint (ms)':>19} {'driver per trial (ms)':>33} "
          f"{'wall per trial (ms)':>20} {'store':>7} {'read back':>9}")
    print(f"{'':<38} {'@10':>10} {f'@{n}':>11} {'@10':>9} {f'@{n}':>9} {'@10':>10} {f'@{n}':>11} {'@10 after':>10} "
          f"{'@10':>9} {f'@{n}':>10} {'(MB)':>7} {'(s)':>9}")
    ratios = []
    for label, m, again, size in rows:
        cells = [1000 * window(m["per_result"], early), 1000 * window(m["per_result"], late),
                 1000 * window(m["per_checkpoint"], early), 1000 * window(m["per_checkpoint"], late),
                 1000 * window(m["per_trial"], early), 1000 * window(m["per_trial"], late),
                 1000 * window(again["per_trial"], early),
                 1000 * wall_per_trial(m["finished_at"], early), 1000 * wall_per_trial(m["finished_at"], late)]
        print(f"{label:<38} {cells[0]:>10.2f} {cells[1]:>11.2f} {cells[2]:>9.2f} {cells[3]:>9.2f} {cells[4]:>10.1f} "
              f"{cells[5]:>11.1f} {cells[6]:>10.1f} {cells[7]:>9.1f} {cells[8]:>10.1f} {size / 1e6:>7.1f} "
              f"{m['read_back']:>9.2f}")
        ratios.append((label, cells[5] / cells[4], cells[5] / cells[6], cells[8] / cells[7]))
    print(f"\nstore: {metric_points(n, args.epochs):,} metric points per arm; '@10 after': trials 1-10 again on a fresh "
          f"store, right after trial {n} (the host's drift); 'read back': every trial run read once (paged), what a "
          f"resumed sweep does before its first trial")
    print(f"driver per trial @{n} / @10, / @10 after; wall per trial @{n} / @10: "
          + "; ".join(f"{label} {first:.2f}x, {after:.2f}x; {wall:.2f}x" for label, first, after, wall in ratios))
    batched = [r for r in ratios if "batched" in r[0]]
    print(f"tracking @{n}/@10: " + "  ".join(f"{'postgres' if 'PostgreSQL' in label else 'sqlite'} {first:.2f}x "
                                            f"({after:.2f}x after)" for label, first, after, _ in batched))
    return 0


if __name__ == "__main__":
    sys.exit(main())
