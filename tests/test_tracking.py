"""MLflow tracking at the size of a real search, on a real SQLite store and Tune's own Trial objects: every run
is found past one page, and trial logging never makes the driver wait on the store for a result, yet loses,
doubles and reorders nothing."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from ray.tune import Checkpoint
from ray.tune.experiment import Trial

from bickd_tune import tracking
from bickd_tune.report import trial_runs
from bickd_tune.store_writer import StoreWriteError
from bickd_tune.tracking import TAG_TRIAL_ID, Tracker, TrialLogger, search_all_runs

EPOCHS = 3
DRIVERS_AT_ONCE = 6
LOCK_HELD_S = 1.0  # well under SQLite's 5 s busy timeout: a blocked writer waits instead of failing


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (creating MLflow's tables costs seconds); one experiment per test."""
    return tmp_path_factory.mktemp("store") / "mlflow.db"


@pytest.fixture
def store(database, tmp_path, request):
    """(tracker, parent run id, database path): a fresh experiment in the module's SQLite store."""
    name = request.node.name
    tracker = Tracker(f"sqlite:///{database}", name, str(tmp_path / name), str(tmp_path))
    return tracker, tracker.parent_run(name, {"seed": 0}, {}), database


def _trial(number: int) -> Trial:
    return Trial("run_trial", config={"loss.tau": 0.01 * (number + 1)}, trial_id=f"trial{number:05d}", stub=True)


def _logger(tracker: Tracker, parent: str) -> TrialLogger:
    return TrialLogger(tracker, parent, lambda config: (f"tau={config['loss.tau']}", dict(config)), EPOCHS,
                       {"stage": "search"})


def _result(epoch: int, extra_metrics: int = 0) -> dict:
    """What a trial reports for an epoch, Tune's bookkeeping fields included (they are not logged)."""
    return {"epoch": epoch, "training_iteration": epoch, "pid": 4242, "done": False, "lr": 0.05 / epoch,
            "train/loss": 2.0 / epoch, "val/top1": 50.0 + epoch, "test/top1": 49.0 + epoch,
            **{f"train/part{i}": float(i) for i in range(extra_metrics)}}


def _steps(tracker: Tracker, trial: Trial, metric: str = "train/loss") -> list[int]:
    run_id = tracker.find_run(**{TAG_TRIAL_ID: trial.trial_id})
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, metric))


def _run(tracker: Tracker, trial: Trial):
    return tracker.client.get_run(tracker.find_run(**{TAG_TRIAL_ID: trial.trial_id}))


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    return Checkpoint.from_directory(str(folder))


def test_every_run_is_found_past_one_page(store, monkeypatch):
    tracker, parent, _ = store
    monkeypatch.setattr(tracking, "RUNS_PAGE_SIZE", 3)  # 7 runs: three pages
    logger = _logger(tracker, parent)
    trials = [_trial(n) for n in range(7)]
    for trial in trials:
        logger.on_trial_start(0, trials, trial)
        logger.on_trial_result(0, trials, trial, _result(1))
        logger.on_trial_complete(0, trials, trial)
    logger.on_experiment_end(trials)

    assert sorted(run.data.tags[TAG_TRIAL_ID] for run in tracker.trial_runs()) == [t.trial_id for t in trials]
    assert sorted(trial_runs(tracker).trial) == sorted(f"tau={t.config['loss.tau']}" for t in trials)
    assert len({tracker.find_run(**{TAG_TRIAL_ID: t.trial_id}) for t in trials}) == 7
    everything = search_all_runs(tracker.client, [tracker.experiment_id])
    assert len(everything) == 8 and len({run.info.run_id for run in everything}) == 8  # the parent too, once each
    # A resumed sweep's logger reads the stored runs (all pages) and finds each trial's run: none is created.
    resumed = cloudpickle.loads(cloudpickle.dumps(logger))
    for trial in trials:
        resumed.on_trial_start(0, trials, trial)
    resumed.on_experiment_end(trials)
    assert len(tracker.trial_runs()) == 7


def test_a_result_does_not_wait_for_the_store_but_a_checkpoint_does(store, checkpoint):
    tracker, parent, database = store
    logger = _logger(tracker, parent)
    trial = _trial(0)
    logger.on_trial_start(0, [trial], trial)
    logger.on_checkpoint(0, [trial], trial, checkpoint)  # waits for the run to exist

    lock = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    logger.on_trial_result(0, [trial], trial, _result(1))  # returns while the store is locked
    released = threading.Event()

    def release():
        time.sleep(LOCK_HELD_S)
        lock.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    logger.on_checkpoint(0, [trial], trial, checkpoint)
    # Tune registers the checkpoint when on_checkpoint returns: only after the step was written.
    assert released.is_set()
    assert _steps(tracker, trial) == [1]
    lock.close()
    logger.on_experiment_end([trial])


def test_a_finished_trial_has_each_step_once_then_its_final_metrics_and_status(store, checkpoint):
    tracker, parent, _ = store
    logger = _logger(tracker, parent)
    done, failed = _trial(0), _trial(1)
    trials = [done, failed]
    for trial in trials:
        logger.on_trial_start(0, trials, trial)
    for epoch in (1, 2):
        logger.on_trial_result(0, trials, done, _result(epoch))
    logger.on_trial_recover(0, trials, done)  # restarted from its epoch-1 checkpoint: reports epoch 2 again
    for epoch in (2, 3):
        logger.on_trial_result(0, trials, done, _result(epoch))
    logger.on_trial_result(0, trials, failed, _result(1))
    logger.on_trial_complete(0, trials, done)  # stored when it returns, before Tune's state says TERMINATED
    logger.on_trial_error(0, trials, failed)

    run = _run(tracker, done)
    assert _steps(tracker, done) == [1, 2, 3] and _steps(tracker, done, "val/top1") == [1, 2, 3]
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert run.data.metrics["final/epochs"] == EPOCHS and run.data.metrics["final/test/top1"] == 49.0 + EPOCHS
    assert "restarts" in run.data.tags
    assert "pid" not in run.data.metrics and "training_iteration" not in run.data.metrics
    lost = _run(tracker, failed)
    assert lost.info.status == "FAILED" and lost.data.tags["stop_reason"].startswith("failed:")
    assert _steps(tracker, failed) == [1]
    logger.on_experiment_end(trials)


def test_the_end_or_ctrl_c_writes_everything_queued_and_stops_the_writer(store):
    tracker, parent, database = store
    logger = _logger(tracker, parent)
    trial = _trial(0)
    logger.on_trial_start(0, [trial], trial)
    lock = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    # 60 results pile up while the store is busy: ~420 metrics, grouped into few log_batch calls on release
    for epoch in range(1, 61):
        logger.on_trial_result(0, [trial], trial, _result(epoch, extra_metrics=20))
    threading.Timer(LOCK_HELD_S, lambda: lock.execute("COMMIT")).start()
    logger.on_experiment_end([trial])  # Tune calls this at the end and after Ctrl+C

    assert _steps(tracker, trial) == list(range(1, 61)) and _steps(tracker, trial, "train/part19") == list(range(1, 61))
    assert _run(tracker, trial).info.status == "RUNNING"  # the runner marks it KILLED after an interruption
    assert not [t for t in threading.enumerate() if t.name == "mlflow-trial-writer"]
    lock.close()


def test_a_pickled_logger_resumes_without_a_second_run_or_step(store, checkpoint):
    """Tune pickles its callbacks with the experiment, mid-sweep; the copy it restores continues the same runs."""
    tracker, parent, _ = store
    logger = _logger(tracker, parent)
    trial = _trial(0)
    logger.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        logger.on_trial_result(0, [trial], trial, _result(epoch))
    logger.on_checkpoint(0, [trial], trial, checkpoint)
    saved = cloudpickle.dumps(logger)  # with its writer thread running
    logger.on_experiment_end([trial])

    restored = cloudpickle.loads(saved)  # the driver died; a resume restarts the trial from its epoch-1 checkpoint
    restored.on_trial_start(0, [trial], trial)
    for epoch in (2, 3):
        restored.on_trial_result(0, [trial], trial, _result(epoch))
    restored.on_trial_complete(0, [trial], trial)
    restored.on_experiment_end([trial])
    assert len(tracker.trial_runs()) == 1
    assert _steps(tracker, trial) == [1, 2, 3]
    assert _run(tracker, trial).info.status == "FINISHED"


def test_a_failed_write_is_raised_in_the_driver(store, checkpoint):
    tracker, parent, _ = store
    logger = _logger(tracker, parent)
    trial = _trial(0)
    logger.on_trial_start(0, [trial], trial)
    logger.on_trial_result(0, [trial], trial, _result(1))
    logger.on_checkpoint(0, [trial], trial, checkpoint)
    MlflowClient(tracker.tracking_uri).delete_run(_run(tracker, trial).info.run_id)  # MLflow refuses writes now

    logger.on_trial_result(0, [trial], trial, _result(2))
    with pytest.raises(StoreWriteError, match="must be in the 'active' state"):
        logger.on_checkpoint(0, [trial], trial, checkpoint)  # Tune does not register this checkpoint
    with pytest.raises(StoreWriteError):
        logger.on_trial_result(0, [trial], trial, _result(3))  # and the sweep stops at its next result
    with pytest.raises(StoreWriteError):
        logger.on_experiment_end([trial])


def _start_driver(database: str, folder: str, number: int, starting, ids) -> None:
    starting.wait()
    try:
        ids.put(Tracker(f"sqlite:///{database}", "shared at once", f"driver{number}", folder).experiment_id)
    except Exception as err:  # noqa: BLE001 - any failure of a driver's start is what the test reports
        ids.put(repr(err))


def test_drivers_that_start_at_once_on_one_store_share_one_experiment(database, tmp_path):
    """Experiments sharing a tracking store and an experiment name (tests/test_cluster_run.py runs two such
    drivers): each looks it up, finds nothing and creates it at the same moment; one creation wins, the others
    use the experiment it made."""
    context = multiprocessing.get_context("fork")  # this process's imports: the drivers start in milliseconds
    starting, ids = context.Barrier(DRIVERS_AT_ONCE), context.Queue()
    drivers = [context.Process(target=_start_driver, args=(str(database), str(tmp_path), number, starting, ids))
               for number in range(DRIVERS_AT_ONCE)]
    for driver in drivers:
        driver.start()
    started = [ids.get(timeout=60) for _ in drivers]
    for driver in drivers:
        driver.join(timeout=60)
    assert len(set(started)) == 1 and started[0].isdigit(), started
