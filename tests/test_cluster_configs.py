"""Cluster YAMLs validated offline, as Ray's own tests do, plus the checks Ray's schema leaves out."""
from __future__ import annotations

import copy
import json
import os
import re

import jsonschema
import pytest
import ray
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ["aws", "gcp", "azure"]
MLFLOW_PORT = 5000
GPU_FAMILIES = {  # instance families that carry NVIDIA GPUs
    "aws": re.compile(r"^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\."),
    "gcp": re.compile(r"^(a2|a3|g2)-"),
    "azure": re.compile(r"^Standard_N[CDV]"),
}
SECRET_PATTERNS = [re.compile(p, re.I) for p in (
    r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"password\s*[:=]",
    r"secret\s*[:=]", r"AccountKey=", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")]


def load(name: str) -> dict:
    with open(os.path.join(REPO, "cluster", f"{name}.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def check_launcher(cloud: str, config: dict) -> None:
    """Everything a broken launcher YAML must fail; raises AssertionError or Ray's validation error."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's schema + its own semantic checks
    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(schema_path, encoding="utf-8") as handle:
        jsonschema.validate(config, json.load(handle))  # the plain schema, should the private API move

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0, "the head runs no trials"
    gpu_types = [name for name, spec in types.items() if spec["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) >= 2, "a single-GPU type for CIFAR and a multi-GPU type for ImageNet DDP"
    assert any(types[t]["resources"]["GPU"] > 1 for t in gpu_types)
    for name in gpu_types:
        node = types[name]["node_config"]
        instance = {"aws": lambda: node["InstanceType"], "gcp": lambda: node["machineType"],
                    "azure": lambda: node["azure_arm_parameters"]["vmSize"]}[cloud]()
        assert GPU_FAMILIES[cloud].match(instance), f"{name}: {instance} is not a GPU instance type"
        if cloud == "gcp" and not instance.startswith(("a2-", "a3-")):
            assert node["guestAccelerators"][0]["acceleratorCount"] == types[name]["resources"]["GPU"]
    for name, spec in types.items():  # a type that asks for GPUs must be one of the GPU types
        assert spec["resources"].get("GPU", 0) == 0 or name in gpu_types
    spot = {"aws": lambda n: n.get("InstanceMarketOptions", {}).get("MarketType") == "spot",
            "gcp": lambda n: any(s.get("preemptible") for s in n.get("scheduling", [])),
            "azure": lambda n: n.get("azure_arm_parameters", {}).get("priority") == "Spot"}[cloud]
    assert all(spot(types[t]["node_config"]) for t in gpu_types), "GPU workers should be spot/preemptible"

    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "ray-ml" not in image
    assert image.split(":")[1].startswith(f"{ray.__version__}-py311"), f"{image} does not match Ray {ray.__version__}"
    assert any("--shm-size" in option for option in config["docker"]["run_options"])
    assert "." in config["file_mounts"].values(), "the local checkout is synced to the nodes"
    assert any(re.search(r"pip install .*-e ~/bickd-tune", c) for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert re.search(rf"mlflow server --host 127\.0\.0\.1 --port {MLFLOW_PORT}\b", head)


@pytest.mark.parametrize("cloud", LAUNCHERS)
def test_launcher_yaml_is_valid(cloud):
    check_launcher(cloud, load(cloud))


@pytest.mark.parametrize("cloud", LAUNCHERS)
def test_broken_launcher_yamls_fail(cloud):
    config = load(cloud)
    broken_head = {**copy.deepcopy(config), "head_node_type": "nowhere"}
    with pytest.raises(Exception):
        check_launcher(cloud, broken_head)
    cpu_gpu = copy.deepcopy(config)
    gpu_type = next(n for n, s in cpu_gpu["available_node_types"].items() if s["resources"].get("GPU"))
    node = cpu_gpu["available_node_types"][gpu_type]["node_config"]
    if cloud == "aws":
        node["InstanceType"] = "m6i.xlarge"
    elif cloud == "gcp":
        node["machineType"] = "n2-standard-8"
    else:
        node["azure_arm_parameters"]["vmSize"] = "Standard_D4s_v5"
    with pytest.raises(AssertionError, match="not a GPU instance"):
        check_launcher(cloud, cpu_gpu)
    old_image = copy.deepcopy(config)
    old_image["docker"]["image"] = "rayproject/ray-ml:2.30.0-py311-gpu"
    with pytest.raises(AssertionError):
        check_launcher(cloud, old_image)


@pytest.mark.parametrize("name", LAUNCHERS + ["kuberay"])
def test_no_credentials_in_cluster_files(name):
    with open(os.path.join(REPO, "cluster", f"{name}.yaml"), encoding="utf-8") as handle:
        text = handle.read()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{name}.yaml matches {pattern.pattern}"


def test_kuberay_job_runs_the_platform():
    job = load("kuberay")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert re.search(r"python -m platform\.tune search_spaces/\S+\.yaml", spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["image"].split(":")[1].startswith(f"{ray.__version__}-py311")
        shm = [v for v in pod["spec"]["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert shm and mounted[shm[0]["name"]] == "/dev/shm"
    workers = cluster["workerGroupSpecs"]
    assert all(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
               for g in workers)


def test_cluster_guide_names_the_mlflow_port():
    with open(os.path.join(REPO, "cluster", "README.md"), encoding="utf-8") as handle:
        guide = handle.read()
    assert f"{MLFLOW_PORT}" in guide and "ray up cluster/aws.yaml" in guide and "--resume" in guide
