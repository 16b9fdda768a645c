"""Interrupt a real `python -m platform.tune` run, then `--resume` it: nothing lost, duplicated or left running.

The driver gets Ctrl+C (SIGINT) or is SIGKILLed during the trials, or SIGKILLed while it trains its teacher.
Runs the CLI in subprocesses (each starts its own local Ray), one at a time.
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
pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "platform.tune", *args, "--no-report", "--num-cpus", "2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trial_checkpoints(experiment_dir: str) -> int:
    if not os.path.isdir(experiment_dir):
        return 0
    return sum(name.startswith("checkpoint_") for _, dirs, _ in os.walk(experiment_dir) for name in dirs)


def _teacher_epochs_saved(experiment_dir: str) -> int:
    progress = os.path.join(experiment_dir, "teacher", "progress.pt")
    return torch.load(progress, weights_only=True)["epoch"] + 1 if os.path.exists(progress) else 0


def _wait(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read()


CASES = {  # how the driver is stopped, and when
    "SIGINT": (signal.SIGINT, lambda folder: _trial_checkpoints(folder) >= 3),
    "SIGKILL": (signal.SIGKILL, lambda folder: _trial_checkpoints(folder) >= 3),
    "SIGKILL-teacher": (signal.SIGKILL, lambda folder: _teacher_epochs_saved(folder) >= 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_driver_then_resume_completes_every_trial_once(case, write_experiment, tmp_path):
    if ray.is_initialized():
        ray.shutdown()  # one Ray cluster at a time on this machine
    stop, ready = CASES[case]
    teacher_epochs = 6
    path = write_experiment(
        "resumable", recipe={"epochs": 4},
        teacher={"model": "resnet8", "recipe": {"epochs": teacher_epochs, "batch_size": 16, "schedule": "constant"}},
        search={"num_samples": 3, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 1, "max_failures": 0})
    experiment_dir = str(tmp_path / "experiments" / "resumable")
    ray_folder = local_temp_dir(ExperimentPaths.of(load_experiment(path)))

    first = _cli(path)
    _wait(lambda: ready(experiment_dir), first)
    saved_teacher_epochs = _teacher_epochs_saved(experiment_dir)
    first.send_signal(stop)
    out, _ = first.communicate(timeout=120)
    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("resumable").experiment_id
    parent = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")[0]
    if stop == signal.SIGINT:  # a graceful stop: Tune saves its state, the runs say KILLED
        assert first.returncode == 130, out
        assert "--resume" in out
        assert parent.info.status == "KILLED"
    else:  # no chance to clean up: the runs stay RUNNING, the local Ray instance outlives its driver
        assert first.returncode == -signal.SIGKILL
        assert processes_under(ray_folder), "nothing of the killed run's Ray instance was left to clean up"

    # Starting again without --resume is refused; with it the experiment finishes.
    again = _cli(path)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 2 and "--resume" in out
    resumed = _cli(path, "--resume")
    out, _ = resumed.communicate(timeout=360)
    assert resumed.returncode == 0, out
    if case == "SIGKILL-teacher":  # the teacher went on from its last checkpoint, not from epoch 0
        resumed_after = re.search(r"\[teacher\] resuming after epoch (\d+)", out)
        # (its task may finish one more epoch before the killed driver's Ray notices that the driver is gone)
        assert resumed_after and int(resumed_after.group(1)) >= saved_teacher_epochs >= 2, out[-3000:]
    deadline = time.time() + 30
    while processes_under(ray_folder) and time.time() < deadline:
        time.sleep(0.5)
    assert not processes_under(ray_folder), "Ray processes of the interrupted or resumed run are still running"

    parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    teacher_steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "teacher/train/loss")]
    assert sorted(teacher_steps) == list(range(1, teacher_epochs + 1))  # every teacher epoch logged once
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert len(trials) == 3, [t.info.run_name for t in trials]
    assert len({t.data.tags["ray.trial_id"] for t in trials}) == 3
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == [1, 2, 3, 4], (run.info.run_name, steps)  # every epoch exactly once
    results = pd.read_csv(os.path.join(experiment_dir, "trials.csv"))
    assert len(results) == 3 and results.trial_id.nunique() == 3 and (results.error.isna() | (results.error == "")).all()
    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{experiment_dir}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # a trial the hard kill caught before Tune's last state snapshot was re-run; its first record is retired
    retired = [t for t in study.trials if t not in complete]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in retired)
    assert sorted(t.number for t in retired) == study.user_attrs.get(ORPHANS_ATTR, [])
