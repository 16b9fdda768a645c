"""Interrupt a real `python -m platform.tune` run (SIGINT), then `--resume` it: nothing lost or duplicated.

Runs the CLI in subprocesses (each starts its own local Ray), one at a time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient

from platform.tracking import TAG_KIND

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "platform.tune", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _checkpoints(experiment_dir: str) -> int:
    if not os.path.isdir(experiment_dir):
        return 0
    return sum(name.startswith("checkpoint_") for _, dirs, _ in os.walk(experiment_dir) for name in dirs)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_driver_then_resume_completes_every_trial_once(stop, write_experiment, tmp_path):
    if ray.is_initialized():
        ray.shutdown()  # one Ray cluster at a time on this machine
    path = write_experiment(
        "resumable", recipe={"epochs": 4},
        search={"num_samples": 3, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 1, "max_failures": 0})
    experiment_dir = str(tmp_path / "experiments" / "resumable")

    first = _cli(path, "--no-report", "--num-cpus", "2")
    deadline = time.time() + 240
    while _checkpoints(experiment_dir) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)  # wait until some epochs are checkpointed, then interrupt mid-experiment
    assert first.poll() is None, first.stdout.read()
    first.send_signal(stop)
    out, _ = first.communicate(timeout=120)
    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("resumable").experiment_id
    parent = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")[0]
    if stop == signal.SIGINT:  # a graceful stop: Tune saves its state, the runs say KILLED
        assert first.returncode == 130, out
        assert "--resume" in out
        assert parent.info.status == "KILLED"
    else:  # no chance to clean up: the runs stay RUNNING until the resume takes them over
        assert first.returncode == -signal.SIGKILL
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"],
                       capture_output=True, timeout=120)  # what a killed head leaves behind

    # Starting again without --resume is refused; with it the experiment finishes.
    again = _cli(path, "--no-report", "--num-cpus", "2")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 2 and "--resume" in out
    resumed = _cli(path, "--no-report", "--num-cpus", "2", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert len(trials) == 3, [t.info.run_name for t in trials]
    assert len({t.data.tags["ray.trial_id"] for t in trials}) == 3
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == [1, 2, 3, 4], (run.info.run_name, steps)  # every epoch exactly once
    import pandas as pd
    results = pd.read_csv(os.path.join(experiment_dir, "trials.csv"))
    assert len(results) == 3 and results.trial_id.nunique() == 3 and (results.error.isna() | (results.error == "")).all()
    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{experiment_dir}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # a trial the hard kill caught before Tune's last state snapshot was re-run; its first record is retired
    assert all(t.state == optuna.trial.TrialState.FAIL and "orphaned" in t.user_attrs
               for t in study.trials if t not in complete)
