"""Interrupt a real `python -m platform.tune` run, then `--resume` it: nothing lost, duplicated or left running.

One sweep: the driver is SIGKILLed while it trains its teacher, SIGKILLed during the trials and gets Ctrl+C
(SIGINT) during the trials, resumed after each. Runs the CLI in subprocesses (each starts its own local Ray),
one at a time (a start refused before it touches anything runs beside a resume).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from bickd_tune.experiment import load_experiment
from bickd_tune.paths import ExperimentPaths
from bickd_tune.processes import processes_under
from bickd_tune.ray_env import local_temp_dir
from bickd_tune.search import ORPHANS_ATTR
from bickd_tune.tracking import TAG_KIND

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _cli(*args: str, output=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "platform.tune", *args, "--no-report", "--num-cpus", "2"],
                            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def _trial_checkpoint_paths(experiment_dir: str) -> set[str]:
    """Every trial checkpoint folder now on disk (Tune keeps each trial's last two: a new one replaces an old)."""
    if not os.path.isdir(experiment_dir):
        return set()
    return {os.path.join(folder, name) for folder, dirs, _ in os.walk(experiment_dir) for name in dirs
            if name.startswith("checkpoint_")}


def _trial_checkpoints(experiment_dir: str) -> int:
    return len(_trial_checkpoint_paths(experiment_dir))


def _command(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:  # ended meanwhile
        return b""


def _teacher_epochs_saved(experiment_dir: str) -> int:
    progress = os.path.join(experiment_dir, "teacher", "progress.pt")
    return torch.load(progress, weights_only=True)["epoch"] + 1 if os.path.exists(progress) else 0


def _wait(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read() if process.stdout else process.args


TEACHER_EPOCHS = 4  # the kill comes after its second epoch; the resume trains the rest
TRIALS, EPOCHS = 3, 4


def _stop(process: subprocess.Popen, how: signal.Signals, ray_folder: str) -> str:
    """Stops the driver; a hard kill leaves its local Ray instance behind for the resume to clean up."""
    process.send_signal(how)
    out, _ = process.communicate(timeout=120)
    if how == signal.SIGKILL:  # no chance to clean up: the runs stay RUNNING, the local Ray outlives its driver
        assert process.returncode == -signal.SIGKILL, out[-3000:]
        assert processes_under(ray_folder), "nothing of the killed run's Ray instance was left to clean up"
    return out


def test_interrupted_driver_then_resume_completes_every_trial_once(write_experiment, tmp_path):
    """One sweep stopped three ways, each followed by `--resume`: SIGKILL while the driver trains its teacher
    (the teacher goes on from its last checkpoint), SIGKILL during the trials (a trial the kill caught before
    Tune's last snapshot is re-run and its first study record retired), Ctrl+C (SIGINT) during the trials (exit
    130, the runs KILLED, the way to resume printed). Starting again without `--resume` is refused. At the end
    nothing is lost, duplicated or left running: one finished parent run, every teacher epoch logged once,
    every trial once with each epoch once, one complete study trial per trial."""
    if ray.is_initialized():
        ray.shutdown()  # an earlier test's instance in this worker would share the CPUs
    path = write_experiment(
        "resumable", recipe={"epochs": EPOCHS},
        teacher={"model": "resnet8", "recipe": {"epochs": TEACHER_EPOCHS, "batch_size": 16, "schedule": "constant"}},
        search={"num_samples": TRIALS, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    experiment_dir = str(tmp_path / "experiments" / "resumable")
    ray_folder = local_temp_dir(ExperimentPaths.of(load_experiment(path)))

    # 1. SIGKILL while the teacher trains.
    first = _cli(path)
    _wait(lambda: _teacher_epochs_saved(experiment_dir) >= 2, first)
    saved_teacher_epochs = _teacher_epochs_saved(experiment_dir)
    # The teacher trains in the driver (a local CPU instance), and the instance started no idle worker for a task
    # that never comes (ray_internals.no_prestarted_workers): only Ray's own processes (its agents among them).
    assert not [pid for pid in processes_under(ray_folder) if _command(pid).startswith(b"ray::IDLE")]
    _stop(first, signal.SIGKILL, ray_folder)
    # 2. Resumed: the teacher goes on from its last checkpoint, not from epoch 0; SIGKILL during the first two
    # trials (they run side by side), once two epochs have checkpoints: most of their epochs are still to come.
    # Starting again without --resume, meanwhile, is refused before it touches anything.
    again, second = _cli(path), _cli(path, "--resume")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 2 and "--resume" in out
    _wait(lambda: _trial_checkpoints(experiment_dir) >= 2, second)
    out = _stop(second, signal.SIGKILL, ray_folder)
    resumed_after = re.search(r"\[teacher\] resuming after epoch (\d+)", out)
    # (its task may finish one more epoch before the killed driver's Ray notices that the driver is gone)
    assert resumed_after and int(resumed_after.group(1)) >= saved_teacher_epochs >= 2, out[-3000:]

    # 3. Resumed again: Ctrl+C once Tune has resumed the trials and one of them saved a new checkpoint (not
    # one the killed run's leftover trial process wrote before the resume stopped it).
    log_path = tmp_path / "third.log"
    with open(log_path, "w", encoding="utf-8") as log:
        third = _cli(path, "--resume", output=log)
        at_resume = []

        def trained_after_resuming() -> bool:
            if not at_resume and "resuming the search trials" in log_path.read_text(encoding="utf-8"):
                at_resume.append(_trial_checkpoint_paths(experiment_dir))
            return bool(at_resume) and bool(_trial_checkpoint_paths(experiment_dir) - at_resume[0])
        _wait(trained_after_resuming, third)
        _stop(third, signal.SIGINT, ray_folder)
    out = log_path.read_text(encoding="utf-8")
    assert third.returncode == 130, out[-3000:]
    assert "--resume" in out
    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("resumable").experiment_id
    parent = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")[0]
    assert parent.info.status == "KILLED"  # a graceful stop: Tune saves its state, the runs say KILLED

    # 4. Resumed to the end.
    resumed = _cli(path, "--resume")
    out, _ = resumed.communicate(timeout=360)
    assert resumed.returncode == 0, out
    deadline = time.time() + 30
    while processes_under(ray_folder) and time.time() < deadline:
        time.sleep(0.5)
    assert not processes_under(ray_folder), "Ray processes of the interrupted or resumed runs are still running"

    parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    teacher_steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "teacher/train/loss")]
    assert sorted(teacher_steps) == list(range(1, TEACHER_EPOCHS + 1))  # every teacher epoch logged once
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert len(trials) == TRIALS, [t.info.run_name for t in trials]
    assert len({t.data.tags["ray.trial_id"] for t in trials}) == TRIALS
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)  # every epoch once
    results = pd.read_csv(os.path.join(experiment_dir, "trials.csv"))
    assert len(results) == TRIALS and results.trial_id.nunique() == TRIALS
    assert (results.error.isna() | (results.error == "")).all()
    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{experiment_dir}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS
    # a trial a hard kill caught before Tune's last state snapshot was re-run; its first record is retired
    retired = [t for t in study.trials if t not in complete]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in retired)
    assert sorted(t.number for t in retired) == study.user_attrs.get(ORPHANS_ATTR, [])
