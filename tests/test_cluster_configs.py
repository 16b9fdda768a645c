"""The cluster checker (cluster/check.py) on every config in cluster/: a template is refused for its placeholders
alone and passes once they are filled in; each breakage users met is refused with its own line. Nothing is
started and no cloud is called."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import check as checker

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(path.name for path in CLUSTER.glob("*.yaml"))
# What a user fills in; a value of the right form where the form matters (Ray reads the code archive's URL).
FILLED = {"REPLACE-WITH-CODE-ARCHIVE-URL": "https://github.com/my-org/bickd-tune/archive/0123abc.zip",
          "REPLACE-WITH-STORAGE-URI": "s3://my-bucket/experiments"}


def filled(name: str) -> tuple[dict, str]:
    """A shipped config with its placeholders filled in, as the guide's step does it."""
    text = (CLUSTER / name).read_text(encoding="utf-8")
    text = checker.PLACEHOLDER.sub(lambda m: FILLED.get(m.group(0), "filled-in-value"), text)
    return yaml.safe_load(text), text


@pytest.mark.parametrize("name", CONFIGS)
def test_a_template_is_refused_for_its_placeholders_only_and_passes_filled_in(name):
    text = (CLUSTER / name).read_text(encoding="utf-8")
    problems = checker.check(yaml.safe_load(text), text)
    placeholders = set(checker.PLACEHOLDER.findall(text))
    assert {p for p in problems if p.startswith("placeholder ")} == {
        f"placeholder {p} left: fill in your copy (cluster/README.md)" for p in placeholders}
    assert [p for p in problems if not p.startswith("placeholder ")] == []
    assert checker.check(*filled(name)) == []


def test_the_command_line_reports_per_file_and_exits_by_the_worst(tmp_path):
    good, bad, broken = tmp_path / "aws.mine.yaml", tmp_path / "kuberay.mine.yaml", tmp_path / "broken.yaml"
    good.write_text(filled("aws.yaml")[1])
    bad.write_text(filled("kuberay.yaml")[1].replace("submissionMode: HTTPMode", "submissionMode: K8sJobMode"))
    broken.write_text("provider: [unclosed\n")
    run = [sys.executable, str(CLUSTER / "check.py")]
    ok = subprocess.run(run + [str(good)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: ok"), ok.stderr[-2000:]
    refused = subprocess.run(run + [str(good), str(bad)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and f"{bad}: submissionMode K8sJobMode" in refused.stdout, refused.stdout
    unreadable = subprocess.run(run + [str(broken)], capture_output=True, text=True, timeout=120)
    assert unreadable.returncode == 2 and str(broken) in unreadable.stderr


def _workers(config: dict, gpus: int) -> dict:
    return next(t for n, t in config["available_node_types"].items()
                if n != config["head_node_type"] and t["resources"]["GPU"] == gpus)


def _head(config: dict) -> dict:
    return config["available_node_types"][config["head_node_type"]]


def _group(job: dict, name: str) -> dict:
    cluster = job["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"] if name == "head" else next(
        g for g in cluster["workerGroupSpecs"] if g["groupName"] == name)


def _pod(job: dict, name: str) -> dict:
    return _group(job, name)["template"]["spec"]["containers"][0]["resources"]


def _runtime_env(job: dict, **changes) -> None:
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    env.update(changes)
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump(env)


# Case -> (config, its mutation, the line the checker must print). Each is a breakage a user met.
BROKEN = {
    "Ray refuses a head type it does not list": (
        "gcp.yaml", lambda c: c.update(head_node_type="ray_head_nowhere"), "Ray refuses it: "),
    "Ray refuses an unknown key": ("azure.yaml", lambda c: c.update(head_nodes={}), "Ray refuses it: "),
    "a T4 under the bf16 experiments": (
        "aws.yaml", lambda c: _workers(c, 1)["node_config"].update(InstanceType="g4dn.2xlarge"),
        "g4dn.2xlarge has a GPU without bf16"),
    "a V100 on Google Cloud": (
        "gcp.yaml", lambda c: _workers(c, 1)["node_config"].update(
            machineType="n1-standard-8", guestAccelerators=[{"acceleratorType": "nvidia-tesla-v100",
                                                             "acceleratorCount": 1}]), "without bf16"),
    "a GPU type without its shape resource": (
        "aws.yaml", lambda c: _workers(c, 1)["resources"].pop("gpu1"), "advertise exactly one shape resource"),
    "a head without coordinator slots": (
        "azure.yaml", lambda c: _head(c)["resources"].pop("coordinator"), "the head cannot hold the trial that drives"),
    "a DDP driver that fits a GPU node": (
        "local.yaml", lambda c: _workers(c, 4)["resources"].update(coordinator=1),
        "alone it would start that GPU node"),
    "one CIFAR trial per GPU node": (
        "aws.yaml", lambda c: _workers(c, 1)["resources"].update(CPU=5), "holds 1 trials of cifar.yaml"),
    "ImageNet's DDP workers split over nodes": (
        "gcp.yaml", lambda c: _workers(c, 4)["resources"].update(CPU=16), "holds 2 of the 4 DDP workers"),
    ".git left out of the sync": (
        "aws.yaml", lambda c: c.update(rsync_exclude=["**/.git"]), "leaves .git out of the sync"),
    "git refusing the synced checkout": (
        "gcp.yaml", lambda c: c.update(setup_commands=c["setup_commands"][:1]), "safe.directory"),
    "a pasted access key": (
        "aws.yaml", lambda c: c["provider"].update(note="AKIAABCDEFGHIJKLMNOP"), "credential in the file: AWS"),
    "KubeRay's default submitter": (
        "kuberay.yaml", lambda c: c["spec"].pop("submissionMode"), "use HTTPMode"),
    "a pod asking more memory than its node has": (
        "kuberay.yaml", lambda c: _pod(c, "gpu1")["requests"].update(memory="28Gi"), "gpu1: requests 28 GiB"),
    "a pod asking every vCPU of its node": (
        "kuberay.yaml", lambda c: _pod(c, "gpu4")["requests"].update(cpu="48"), "gpu4: requests 48 CPUs"),
    "Ray advertising more CPUs than the pod has": (
        "kuberay.yaml", lambda c: _group(c, "gpu1")["rayStartParams"].update({"num-cpus": "8"}), "num-cpus"),
    "a runtime env the platform's ray.init collides with": (
        "kuberay.yaml", lambda c: _runtime_env(c, py_modules=["s3://b/code.zip"]), "sets ['py_modules']"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_config_is_refused_with_its_line(case):
    name, mutate, expected = BROKEN[case]
    config = copy.deepcopy(filled(name)[0])
    mutate(config)
    problems = checker.check(config)
    assert any(expected in p for p in problems), problems


def test_a_placeholder_left_in_a_filled_copy_is_named():
    config, text = filled("gcp.yaml")
    text = text.replace("project_id: filled-in-value", "project_id: REPLACE-WITH-YOUR-PROJECT-ID")
    assert checker.check(yaml.safe_load(text), text) == [
        "placeholder REPLACE-WITH-YOUR-PROJECT-ID left: fill in your copy (cluster/README.md)"]


def test_the_local_cluster_mirrors_aws():
    """cluster/local.yaml's node types are cluster/aws.yaml's: the autoscaler decides on it as it would on AWS."""
    local, aws = (yaml.safe_load((CLUSTER / name).read_text()) for name in ("local.yaml", "aws.yaml"))
    assert ({n: t["resources"] for n, t in local["available_node_types"].items()}
            == {n: t["resources"] for n, t in aws["available_node_types"].items()})
    assert re.fullmatch(r"127\.0\.0\.1:\d+", local["provider"]["gcs_address"])
