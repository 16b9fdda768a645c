"""The cluster path on one machine, as cluster/README.md's walkthrough runs it: a multi-node cluster started from
cluster/local.yaml (Ray's fake multi-node provider, autoscaling from zero workers) with Ray's token
authentication on, after a local run has written this machine's token; S3 storage on a real local S3 server, a
real MLflow server on a real PostgreSQL with its artifacts in that bucket, a node listed and lost through the
guide's commands, and a resume from a head with an empty disk. ImageNet-format data that only the 4-GPU node type holds.

Every address is 127.0.0.1; the cluster's processes are stopped through its own Ray temp folder. HOME is a
temporary folder: the machine's own ~/.ray is never touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from bickd.data.cifar import write_cifar100
from bickd_tune.local_cluster import down
from bickd_tune.processes import processes_under, stop_processes_under
from tests.conftest import TINY, deep_update
from tests.servers import CREDENTIALS, bucket_keys, free_port, mlflow_server, postgres_server, s3_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "cluster")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
# What `local_cluster up` tells a user's own Ray driver to set (the platform's commands set it themselves).
OWN_DRIVER = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME where a local run has happened, as README command 1 leaves a user's: its `ray.init()` wrote the
    machine's Ray token (~/.ray/auth_token)."""
    home = tmp_path_factory.mktemp("home")
    temp_dir = tempfile.mkdtemp(prefix="bickd-t-")
    demo = ("from bickd_tune.ray_env import init_ray, use_loopback\nuse_loopback()\nimport ray\n"
            f"init_ray(num_cpus=1, temp_dir={temp_dir!r})\nray.shutdown()")
    try:
        ran = subprocess.run([sys.executable, "-c", demo], env=_env(home), capture_output=True, text=True,
                             timeout=180)
        assert ran.returncode == 0, ran.stderr[-3000:]
    finally:
        stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    return home


def _env(home, **extra: str) -> dict[str, str]:
    """A user's shell: no PYTHONPATH, no Ray settings of the test run (token authentication is Ray's default)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _cli(home, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bickd_tune.local_cluster", *args], env=_env(home, **extra),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cluster(tmp_path, home):
    """cluster/local.yaml brought up from another folder, without PYTHONPATH, as a user would."""
    if ray.is_initialized():
        ray.shutdown()  # an earlier test's instance in this worker would share the CPUs
    temp_dir = tempfile.mkdtemp(prefix="bickd-t-")  # short: Ray's socket paths must fit
    port = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Every node holds bucket credentials, as cloud nodes do through their instance profile.
    started = subprocess.run([sys.executable, "-m", "bickd_tune.local_cluster", "up", "--port", str(port),
                              "--temp-dir", temp_dir], cwd=elsewhere, env=_env(home, **CREDENTIALS),
                             capture_output=True, text=True, timeout=240)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"address": f"127.0.0.1:{port}", "port": port, "temp_dir": temp_dir, "home": home}
    finally:
        down(temp_dir)
        assert not processes_under(temp_dir), "the cluster's processes outlived `down`"
        shutil.rmtree(temp_dir, ignore_errors=True)


PLACEMENT = r"""
import json, sys, time
import ray
from ray.util.placement_group import placement_group, placement_group_table
from bickd_tune.experiment import load_experiment
from bickd_tune.local_cluster import node_types, type_of
from bickd_tune.tuner import trial_resources, worker_resources

ray.init(address=sys.argv[1], logging_level="ERROR")  # a second driver of the user's own
types = node_types(sys.argv[2])

def bundle(resources):  # what Tune asks for one trial, as a placement-group bundle
    named = {"CPU": resources["cpu"], "GPU": resources["gpu"], **resources["custom_resources"]}
    return {k: v for k, v in named.items() if v}

def nodes_of(pg):
    return list(placement_group_table(pg)["bundles_to_node_id"].values())

def type_by_node():
    return {n["NodeID"]: type_of(n["Resources"], types) for n in ray.nodes()}

out = {}
single = load_experiment("search_spaces/cifar.yaml", {"resources.gpus_per_trial": 1.0,
                                                      "resources.custom_resources": {"gpu1": 1.0}})
groups = [placement_group([bundle(trial_resources(single))]) for _ in range(5)]
ready, _ = ray.wait([g.ready() for g in groups], num_returns=4, timeout=300)
time.sleep(10)  # the fifth single-GPU trial waits for a 1-GPU node: bin-packed, it would have started a 4-GPU one
# within one of the autoscaler's 5-s updates (it has seen that demand since the first of them); this is two
kinds = type_by_node()
out["single"] = [kinds[n] for g in groups for n in nodes_of(g) if n]
out["types_after_single"] = sorted(set(kinds.values()))
for g in groups:
    ray.util.remove_placement_group(g)

fractional = load_experiment("search_spaces/cifar.yaml")
groups = [placement_group([bundle(trial_resources(fractional))]) for _ in range(2)]
ray.get([g.ready() for g in groups], timeout=300)
kinds = type_by_node()
out["fractional"] = [kinds[n] for g in groups for n in nodes_of(g)]
for g in groups:
    ray.util.remove_placement_group(g)

ddp = load_experiment("search_spaces/imagenet.yaml")
coordinator = placement_group([bundle(trial_resources(ddp))])
workers = placement_group([worker_resources(ddp)] * ddp.resources.num_workers, strategy="PACK")
ray.get([coordinator.ready(), workers.ready()], timeout=300)
kinds = type_by_node()
out["coordinator"] = [kinds[n] for n in nodes_of(coordinator)]
out["ddp_workers"] = [kinds[n] for n in nodes_of(workers)]
out["ddp_worker_nodes"] = len(set(nodes_of(workers)))
print(json.dumps(out))
"""


def _image_folder(root, classes: int = 3, train: int = 8, val: int = 3) -> None:
    """An ImageNet-format tree (<root>/train/<class>/*.png, <root>/val/<class>/*.png) of small real images."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 70 * label, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


IMAGENET = {  # ImageNet's format and loader on tiny images; trials on the 4-GPU node type, like imagenet.yaml's
    "data": {"name": "imagenet", "image_size": 32, "val_fraction": 0.25},
    "teacher": None,
    "recipe": {"epochs": 1, "batch_size": 8, "lr": 0.05, "schedule": "constant"},
    "search": {"num_samples": 1, "space": {}}, "scheduler": {"type": "none"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 1, "custom_resources": {"gpu4": 1}, "max_failures": 0},
}


def test_the_autoscaler_starts_the_node_type_each_workload_needs(cluster, tmp_path):
    """The shipped experiments' resource requests (single-GPU, fractional-GPU and DDP trials), as the platform
    derives them, against the real autoscaler and cluster/local.yaml's node types (those of cluster/aws.yaml);
    then data that only the 4-GPU node type holds passes the preflight and trains there, and data missing there
    fails before anything trains."""
    result = subprocess.run([sys.executable, "-c", PLACEMENT, cluster["address"], os.path.join(CLUSTER, "local.yaml")],
                            cwd=REPO, env=_env(cluster["home"], **OWN_DRIVER), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    placed = json.loads(result.stdout.strip().splitlines()[-1])
    assert placed["single"] == ["ray.worker.gpu1"] * 4  # four 1-GPU nodes (local.yaml's most); the fifth waits
    assert "ray.worker.gpu4" not in placed["types_after_single"]  # no 4-GPU node for single-GPU trials
    assert placed["fractional"] == ["ray.worker.gpu1"] * 2
    assert placed["coordinator"] == ["ray.head.default"]  # a DDP trial's driver starts no GPU node of its own
    assert placed["ddp_workers"] == ["ray.worker.gpu4"] * 4 and placed["ddp_worker_nodes"] == 1

    # Each fake node's processes carry its type in RAY_NODE_TYPE_NAME: a root under disks/<node type>/ is a disk
    # only that node type has, as /data/imagenet is on cluster/aws.yaml's gpu4 VMs and not on the head.
    disks = tmp_path / "disks"
    _image_folder(disks / "ray.worker.gpu4" / "imagenet")
    commands = {}
    for name, folder in (("missing", "absent"), ("imagenet", "imagenet")):
        experiment = {**deep_update({"name": name, **TINY}, IMAGENET), "loss": {"name": "ce"}}
        experiment["data"]["root"] = str(disks) + "/${RAY_NODE_TYPE_NAME}/" + folder
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**experiment, "storage_path": str(tmp_path / "experiments")}, sort_keys=False))
        commands[name] = [sys.executable, "-m", "platform.tune", str(path), "--address", cluster["address"],
                          "--no-report"]
    # The guide's GPU probe (cluster/gpu_probe.py): a 1-GPU node is there, and its torch sees no GPU (a fake
    # node's GPU is advertised, not present); a node type that never comes up ends in its timeout. These two
    # and the two runs are drivers of their own, side by side on the cluster (the nodes they need are up).
    probe = [sys.executable, os.path.join(CLUSTER, "gpu_probe.py"), "--address", cluster["address"]]
    commands.update(seen=probe + ["gpu1", "--timeout", "240"], waited=probe + ["gpu8", "--timeout", "5"])
    started = {name: subprocess.Popen(command, cwd=REPO, env=_env(cluster["home"]), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, command in commands.items()}
    runs = {name: subprocess.CompletedProcess(process.args, *_communicate(process, timeout=400))
            for name, process in started.items()}
    seen, waited = runs["seen"], runs["waited"]
    assert seen.returncode == 1 and "sees no GPU on the gpu1 node" in seen.stderr, seen.stderr[-3000:]
    assert waited.returncode == 2 and "no node with gpu8" in waited.stderr, waited.stderr[-3000:]
    missing = runs["missing"]
    assert missing.returncode == 2, missing.stdout[-3000:] + missing.stderr[-3000:]
    error = missing.stderr.strip().splitlines()
    assert len(error) == 1 and "ray.worker.gpu4" in error[0] and str(disks / "ray.worker.gpu4" / "absent") in error[0]
    assert not (tmp_path / "experiments" / "missing").exists()  # nothing trained, nothing written
    trained = runs["imagenet"]
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    rows = (tmp_path / "experiments" / "imagenet" / "trials.csv").read_text().splitlines()
    assert len(rows) == 2 and "test_top1" in rows[0]  # one trial, trained on the data only a gpu4 node has


def _communicate(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Its exit code and output; read while it runs (a full pipe would block a chatty driver)."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


SWEEP = {
    "recipe": {"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "teacher": {"model": "resnet8", "recipe": {"epochs": 1, "batch_size": 64, "schedule": "constant"}},
    "teacher_cache": {"enabled": True, "epochs": 1},
    "search": {"num_samples": 2, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
    "scheduler": {"type": "none"},
    # then the winner against the default over two fresh seeds: a second Tune run whose state is in the bucket too
    "confirm": {"top_k": 1, "seeds": [1, 2], "control": "defaults"},
    # CPU trials that claim a fractional GPU and the 1-GPU node type, like search_spaces/cifar.yaml's
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.5, "custom_resources": {"gpu1": 0.5},
                  "max_failures": 2, "max_concurrent_trials": 2},
}


def _node_of(pid: int) -> str | None:
    """The Ray node a process runs on: the --node_id of the raylet it descends from."""
    while pid > 1:
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return None
        for part in command:
            if part.startswith("--node_id="):
                return part.split("=", 1)[1]
    return None


def _trial_processes(temp_dir: str) -> list[int]:
    return [pid for pid in processes_under(temp_dir)
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::ImplicitFunc")]


def test_a_sweep_on_s3_and_mlflow_on_postgresql_survives_a_lost_node_and_resumes_on_a_new_head(cluster, tmp_path):
    """The documented set-up for a big sweep, end to end: S3 storage, an MLflow server on PostgreSQL with its
    artifacts in the bucket, a node lost mid-trial, the confirmation stage, and a resume on a new head. Covers:
    every trial and epoch logged once (in PostgreSQL itself), a restart from the bucket's checkpoint, the
    experiment's state in the bucket, the autoscaler's node types, and the resume running nothing twice."""
    with s3_server("bickd") as (endpoint, uri), postgres_server() as database, \
            mlflow_server(str(tmp_path), "s3://bickd/mlflow", endpoint, backend_store_uri=database) as tracking:
        # CIFAR-100 as torchvision downloads it, on the head only (4 images per class: a few seconds per epoch,
        # time to lose a node mid-trial); with a bucket as storage the nodes copy it from there, never download it.
        head_data = tmp_path / "head-data"
        rng = np.random.default_rng(0)
        write_cifar100(str(head_data), rng.integers(0, 256, (400, 3, 32, 32)), list(range(100)) * 4,
                       rng.integers(0, 256, (100, 3, 32, 32)), list(range(100)), [f"c{i}" for i in range(100)])
        path = tmp_path / "remote.yaml"
        tree = {**deep_update({"name": "remote", **TINY}, SWEEP),
                "data": {"name": "cifar100", "root": str(head_data), "download": True}}
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        head, node_cache = tmp_path / "head", tmp_path / "node-cache"
        env = _env(cluster["home"], **CREDENTIALS, BICKD_STATE_DIR=str(head), BICKD_CACHE_DIR=str(node_cache))
        command = [sys.executable, "-m", "platform.tune", str(path), "--address", cluster["address"],
                   "--storage", uri("experiments"), "--tracking-uri", tracking]
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        # Once a trial's checkpoint is in the bucket, lose its node the way the guide does: find it in
        # `local_cluster nodes` (a second driver joining the running cluster), then `local_cluster kill-node`.
        lost, listed, deadline = None, [], time.time() + 400
        while lost is None and driver.poll() is None and time.time() < deadline:
            checkpoints = [k for k in bucket_keys(endpoint, "bickd", "experiments/remote/") if "/checkpoint_" in k]
            running = _trial_processes(cluster["temp_dir"])
            if checkpoints and running:
                lost = _node_of(running[0])
                shown = _cli(cluster["home"], "nodes", "--port", str(cluster["port"]))
                assert shown.returncode == 0, shown.stderr[-3000:]
                listed = json.loads(shown.stdout)
                killed = _cli(cluster["home"], "kill-node", lost)
                assert killed.returncode == 0, killed.stderr[-3000:]
            time.sleep(0.3)
        out, _ = driver.communicate(timeout=600)
        assert lost is not None, out[-5000:]
        assert driver.returncode == 0, out[-5000:]
        assert {"node_id": lost, "type": "ray.worker.gpu1", "alive": True} in listed, listed

        # Every trial once in MLflow, each epoch once, one of them restarted from its checkpoint in the bucket.
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("remote")
        trials = client.search_runs([experiment.experiment_id], filter_string="tags.`bickd.kind` = 'trial'")
        assert len(trials) == 2 + 4 and {t.info.status for t in trials} == {"FINISHED"}
        assert sorted(t.data.tags["stage"] for t in trials) == ["confirm"] * 4 + ["search"] * 2
        assert any(int(t.data.tags.get("restarts", 0)) >= 1 for t in trials), "no trial was restarted"
        assert "confirmation over fresh seeds: 4 of 4 trials completed" in out, out[-5000:]
        for run in trials:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
            assert steps == [1, 2, 3, 4], steps
            assert run.data.tags["git_commit"] != "unknown"
        parent = client.search_runs([experiment.experiment_id], filter_string="tags.`bickd.kind` = 'experiment'")[0]
        assert parent.data.tags["bickd.experiment"] == "s3://bickd/experiments/remote"
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"trials.csv", "report"}
        assert any(k.startswith("mlflow/") for k in bucket_keys(endpoint, "bickd"))  # artifacts went to the bucket

        # The experiment lives in the bucket, not on the head: Tune's state, the teacher, its logit cache, the
        # study, the tables and the report.
        keys = bucket_keys(endpoint, "bickd", "experiments/remote/")
        for expected in ("experiment.yaml", "teacher/resnet8.pt", "teacher/progress.pt", "optuna.db", "trials.csv",
                         "report/report.md", "confirm.json", "confirm_trials.csv", "results/confirmation.md"):
            assert f"experiments/remote/{expected}" in keys, expected
        assert any(k.endswith("tuner.pkl") for k in keys) and any("experiment_state" in k for k in keys)
        assert any(k.startswith("experiments/remote/confirm/experiment_state") for k in keys)
        assert any(k.startswith("experiments/remote/teacher_cache/") and k.endswith("manifest.json") for k in keys)
        assert os.listdir(node_cache / "teacher_cache")  # trials fetched the verified cache to their node
        # The data set went into the bucket once; the teacher's and the trials' nodes read their checked copy.
        assert len([k for k in keys if k.startswith("experiments/remote/data/") and k.endswith("/manifest.json")]) == 1
        assert len(os.listdir(node_cache / "data")) == 1
        kept = "s3://bickd/experiments/remote/data/cifar100-"
        assert all(t.data.params["data.root"].startswith(kept) for t in trials)

        # The autoscaler started 1-GPU nodes only (its own events, as the driver printed them), a second one
        # after the first was lost; the lost one is gone for good.
        launched = re.findall(r"Adding (\d+) node\(s\) of type ([\w.]+?)\.?\s", out)
        assert {kind for _, kind in launched} == {"ray.worker.gpu1"}, launched
        nodes = json.loads(_cli(cluster["home"], "nodes", "--port", str(cluster["port"])).stdout)
        assert [n["alive"] for n in nodes if n["node_id"] == lost] == [False]
        assert {n["type"] for n in nodes if n["alive"]} <= {"ray.head.default", "ray.worker.gpu1"}, nodes

        # A replaced head: nothing of the experiment on its disk. --resume rebuilds it from the bucket and the
        # MLflow server and reports the finished experiment, with no trial run twice.
        shutil.rmtree(head)
        resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-3000:]
        assert "finished remote: 2 of 2 trials completed" in resumed.stdout
        assert "chosen trial" in resumed.stdout and "training teacher" not in resumed.stdout
        assert "confirmation over fresh seeds: 4 of 4 trials completed" in resumed.stdout
        assert (head / "remote" / "report" / "report.md").exists()
        assert "## Confirmation over fresh seeds" in (head / "remote" / "report" / "report.md").read_text()
        again = client.search_runs([experiment.experiment_id], filter_string="tags.`bickd.kind` = 'trial'")
        assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in trials)

        # The runs live in PostgreSQL itself (the server kept nothing of them in a file of its own).
        with psycopg.connect(database) as connection:
            stored = connection.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                                        (int(experiment.experiment_id),)).fetchone()[0]
            points = connection.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss' AND run_uuid = ANY(%s)",
                                        ([run.info.run_id for run in trials],)).fetchone()[0]
        assert stored == 1 + len(trials) and points == len(trials) * SWEEP["recipe"]["epochs"]
        assert not os.path.exists(tmp_path / "mlflow-server.db")
    with pytest.raises(psycopg.OperationalError):  # the test's PostgreSQL is stopped
        psycopg.connect(database, connect_timeout=5)
