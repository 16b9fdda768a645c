"""The remote path on a real multi-process Ray cluster (`ray start --head` + a second `ray start --address`
on this machine): an experiment submitted with `--address`, surviving a trial process killed mid-trial
the way a lost spot worker kills it."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from bickd_tune.processes import processes_under, stop_processes_under
from bickd_tune.tracking import TAG_KIND

# The first test's trials distil from a teacher trained first, in a Ray task; one epoch of it is enough here.
TEACHER = {"model": "resnet8", "recipe": {"epochs": 1, "schedule": "constant"}}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A real multi-node cluster: the loopback-only switch the other tests set would refuse the second node.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "RAY_AUTH_MODE": "disabled",
       "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster():
    """Two `ray start` nodes in a Ray temp folder of the module's own: stopped through it, never `ray stop`.
    Shared by the module's tests: each runs its own drivers and experiments on it, and a trial process killed
    by one is replaced by its node like any worker, so the next test finds the same two live nodes."""
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="bickd-t-")  # short: Ray's socket paths must fit
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"], env=ENV, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={address}", "--num-cpus=2", "--node-ip-address=127.0.0.1"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        yield {"address": address, "temp_dir": temp_dir}
    finally:
        stop_processes_under(temp_dir)
        assert not processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _trial_pids(temp_dir: str) -> list[int]:
    """This cluster's trial processes (never another Ray's on the machine)."""
    return [pid for pid in processes_under(temp_dir)
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::ImplicitFunc")]


def test_experiment_through_address_survives_a_killed_trial(two_node_cluster, write_experiment, tmp_path):
    path = write_experiment(
        "remote", recipe={"epochs": 4}, teacher=TEACHER,
        search={"num_samples": 2, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 2})
    experiment_dir = tmp_path / "experiments" / "remote"
    driver = subprocess.Popen([sys.executable, "-m", "platform.tune", path, "--address", two_node_cluster["address"],
                               "--no-report"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    # Wait for a first epoch checkpoint, then SIGKILL one trial process (what a lost node does to it).
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and driver.poll() is None and killed is None:
        checkpoints = list(experiment_dir.glob("run_trial_*/checkpoint_*")) if experiment_dir.exists() else []
        pids = _trial_pids(two_node_cluster["temp_dir"])
        if checkpoints and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
    out, _ = driver.communicate(timeout=400)
    assert killed is not None, out
    assert driver.returncode == 0, out
    assert re.search(r"\[teacher\] training .* in a Ray task", out), out[-3000:]  # on the cluster, not the driver

    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("remote").experiment_id
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert len(trials) == 2  # the restarted trial kept its run
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert any(int(run.data.tags.get("restarts", 0)) >= 1 for run in trials), "no trial was restarted"
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == [1, 2, 3, 4], steps  # resumed after its checkpoint: no epoch twice


def test_two_experiments_at_once_keep_to_themselves(two_node_cluster, write_experiment, given_teacher, tmp_path):
    """Two drivers on one cluster, one storage root and one MLflow store: nothing crosses over."""
    tracking = f"sqlite:///{tmp_path}/shared-mlflow.db"
    paths = [write_experiment(name, recipe={"epochs": 2}, teacher=given_teacher, search={"num_samples": 2, "space": {
        "loss.tau": {"loguniform": [0.05, 0.5]}}}, scheduler={"type": "none"},
        tracking={"tracking_uri": tracking, "experiment_name": "shared"},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 1, "max_failures": 0}) for name in ("left", "right")]
    # the shared store's schema is created once before the two drivers race to write to it
    MlflowClient(tracking).search_experiments()
    drivers = [subprocess.Popen([sys.executable, "-m", "platform.tune", path, "--address", two_node_cluster["address"],
                                 "--no-report"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for path in paths]
    outputs = [driver.communicate(timeout=400)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], [output[-4000:] for output in outputs]

    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name("shared").experiment_id
    runs = client.search_runs([experiment_id])
    for name in ("left", "right"):
        folder = str(tmp_path / "experiments" / name)
        mine = [r for r in runs if r.data.tags["bickd.experiment"] == folder]
        parents = [r for r in mine if r.data.tags[TAG_KIND] == "experiment"]
        trials = [r for r in mine if r.data.tags[TAG_KIND] == "trial"]
        assert len(parents) == 1 and len(trials) == 2
        assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
        trial_dirs = [d for d in os.listdir(folder) if d.startswith("run_trial_")]
        assert len(trial_dirs) == 2
    assert len(runs) == 6
