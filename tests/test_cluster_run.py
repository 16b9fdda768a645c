"""The remote path on a real multi-process Ray cluster (`ray start --head` + a second `ray start --address`
on this machine): an experiment submitted with `--address`, surviving a trial process killed mid-trial
the way a lost spot worker kills it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from platform.tracking import TAG_KIND

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--node-ip-address=127.0.0.1"], env=ENV, check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([RAY, "start", f"--address={address}", "--num-cpus=2", "--node-ip-address=127.0.0.1"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def _trial_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ImplicitFunc"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_experiment_through_address_survives_a_killed_trial(two_node_cluster, write_experiment, tmp_path):
    path = write_experiment(
        "remote", recipe={"epochs": 4},
        search={"num_samples": 2, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 2})
    experiment_dir = tmp_path / "experiments" / "remote"
    driver = subprocess.Popen([sys.executable, "-m", "platform.tune", path, "--address", two_node_cluster,
                               "--no-report"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    # Wait for a first epoch checkpoint, then SIGKILL one trial process (what a lost node does to it).
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and driver.poll() is None and killed is None:
        checkpoints = list(experiment_dir.glob("run_trial_*/checkpoint_*")) if experiment_dir.exists() else []
        pids = _trial_pids()
        if checkpoints and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
    out, _ = driver.communicate(timeout=400)
    assert killed is not None, out
    assert driver.returncode == 0, out

    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("remote").experiment_id
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert len(trials) == 2  # the restarted trial kept its run
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert any(int(run.data.tags.get("restarts", 0)) >= 1 for run in trials), "no trial was restarted"
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == [1, 2, 3, 4], steps  # resumed after its checkpoint: no epoch twice
