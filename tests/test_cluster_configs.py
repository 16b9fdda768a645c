"""Offline checks of the cluster configs in cluster/: the Ray cluster launcher YAMLs and the KubeRay RayJob.

There is no `ray up --dry-run`; Ray's own tests validate its example YAMLs with
`ray.autoscaler._private.util.prepare_config` + `validate_config` (Ray's defaults.yaml merged in, then Ray's
JSON schema and checks such as head_node_type being one of available_node_types). These tests do the same
with the installed Ray, run a plain jsonschema check against the `ray-schema.json` Ray ships (the fallback
if the private API moves), and add what the schema leaves out: GPU node types on GPU instance families with
matching `resources`, spot/preemptible workers on a named VM image, the image tag of the installed Ray, every
command parsing in bash, the project installed from the synced checkout, MLflow on 127.0.0.1 at the port
cluster/README.md names, token auth, and no credentials. The README's `ray ...` commands are checked against Ray's real CLI and its
`python -m platform.tune ...` commands against the platform's real parser and experiment validation.

The node types are also checked against the shipped experiments (search_spaces/*.yaml): every GPU type
advertises one custom resource named after its shape (`gpu1: 1`, `gpu4: 4`), each experiment asks for the
shape it needs, its trials pack onto that type as its GPUs allow, a DDP trial's driver fits only the head
(`coordinator`), the GPUs run the experiments' autocast dtype, and data that cannot be downloaded is
mounted where the experiment reads it; the same on AWS, Google Cloud, Azure and KubeRay.

Nothing is mocked and nothing is started: no Ray cluster, no cloud SDK call.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml

import ray
import ray.autoscaler

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
KUBERAY = CLUSTER / "kuberay.yaml"
CLOUDS = ("aws", "gcp", "azure")
PROJECT_MOUNT = "~/bickd-tune"          # where file_mounts puts the checkout on every node
PYTHON_TAG = "py311"                    # pyproject: requires-python >= 3.11
IMAGE = f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
ARTIFACT_SCHEME = {"aws": "s3://", "gcp": "gs://", "azure": "wasbs://"}
PROJECT_CODE = ("bickd/", "bickd_tune/", "platform/", "search_spaces/", "pyproject.toml")

# GPU instance families per cloud (the schema accepts any string here).
AWS_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e"}
GCP_GPU_MACHINE_PREFIXES = ("a2-", "a3-", "g2-")          # GPUs come with the machine type
AZURE_GPU_SIZE = re.compile(r"^Standard_N[CDV]", re.IGNORECASE)
# (vCPUs, GPUs) of the instance types these configs use or could use; unknown types skip the count checks.
INSTANCES = {
    "m6i.2xlarge": (8, 0), "g4dn.xlarge": (4, 1), "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1),
    "g4dn.2xlarge": (8, 1), "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8), "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1),
    "g6.12xlarge": (48, 4), "p4d.24xlarge": (96, 8),
    "n2-standard-8": (8, 0), "n1-standard-8": (8, None), "g2-standard-8": (8, 1), "a2-highgpu-1g": (12, 1),
    "a2-highgpu-2g": (24, 2), "a2-highgpu-4g": (48, 4), "a2-highgpu-8g": (96, 8),
    "Standard_D8s_v5": (8, 0), "Standard_NC4as_T4_v3": (4, 1), "Standard_NC8as_T4_v3": (8, 1),
    "Standard_NC64as_T4_v3": (64, 4), "Standard_NC24ads_A100_v4": (24, 1), "Standard_NC48ads_A100_v4": (48, 2),
    "Standard_NC96ads_A100_v4": (96, 4), "Standard_ND96asr_v4": (96, 8),
}

# Credentials must never be written into these files.
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(r"aws_secret_access_key|aws_session_token", re.IGNORECASE),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "service-account key JSON": re.compile(r"\"private_key(?:_id)?\"\s*:"),
    "Azure storage key or SAS": re.compile(r"AccountKey=|DefaultEndpointsProtocol=|SharedAccessSignature=|[?&]sig=",
                                           re.IGNORECASE),
    "Ray token value": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
}
# In the YAMLs even the words are out: a field or comment naming one is where a value ends up.
CREDENTIAL_WORDS = re.compile(r"secret|password|passwd|api[_-]?key", re.IGNORECASE)
GUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
PLACEHOLDER_GUID = "00000000-0000-0000-0000-000000000000"

# The GPU of each GPU instance type (on Google Cloud: of the machine type, or the attached accelerator type),
# and its CUDA compute capability: bf16 autocast needs Ampere (8.0) or newer. An unknown type is an error.
GPU_MODEL = {
    "g4dn.xlarge": "T4", "g4dn.2xlarge": "T4", "g5.xlarge": "A10G", "g5.2xlarge": "A10G", "g5.12xlarge": "A10G",
    "g5.48xlarge": "A10G", "g6.xlarge": "L4", "g6.2xlarge": "L4", "g6.12xlarge": "L4", "p4d.24xlarge": "A100",
    "g2-standard-8": "L4", "a2-highgpu-1g": "A100", "a2-highgpu-2g": "A100", "a2-highgpu-4g": "A100",
    "a2-highgpu-8g": "A100", "nvidia-tesla-t4": "T4", "nvidia-tesla-v100": "V100", "nvidia-l4": "L4",
    "Standard_NC4as_T4_v3": "T4", "Standard_NC8as_T4_v3": "T4", "Standard_NC64as_T4_v3": "T4",
    "Standard_NC24ads_A100_v4": "A100", "Standard_NC48ads_A100_v4": "A100", "Standard_NC96ads_A100_v4": "A100",
    "Standard_ND96asr_v4": "A100",
}
COMPUTE_CAPABILITY = {"T4": 7.5, "V100": 7.0, "A10G": 8.6, "L4": 8.9, "A100": 8.0}
AMP_NEEDS = {"bf16": 8.0}                   # fp16 and fp32 run on every GPU above

# Ray resources per node type (cluster/README.md, "How the clusters are built").
SHIPPED = ROOT / "search_spaces"
PLATFORMS = CLOUDS + ("kuberay",)
SHAPE = re.compile(r"gpu(\d+)")             # a GPU type advertises gpu<N>: N, N its GPU count
COORDINATOR = "coordinator"                 # the head's slots for Tune trials that only drive DDP workers
RAY_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}
# A Kubernetes node keeps CPU for the kubelet, system daemons and DaemonSets (CNI, device plugin, logging):
# a pod that asks for all of the node's vCPUs never schedules.
NODE_RESERVED_CPUS = 1
# Where PROJECT_MOUNT lands inside the rayproject/ray containers (HOME=/home/ray), and a file that shows
# whether .git travelled with it.
CHECKOUT_IN_CONTAINER = "/home/ray/bickd-tune"
GIT_FILE = ".git/HEAD"
# AWS: the role `ray up` creates; the GPU workers' instance profile has the same name.
IAM_ROLE = "ray-autoscaler-v1"
PASSROLE_POLICY = CLUSTER / "aws-passrole-policy.json"
# RayJob submission modes that do not pass the runtime env through a shell.
SHELL_FREE_SUBMISSION = ("HTTPMode",)


# ---------------------------------------------------------------------------------------------- helpers

def load(cloud: str) -> dict[str, Any]:
    with open(CLUSTER / f"{cloud}.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@functools.lru_cache(maxsize=None)
def ray_schema() -> dict[str, Any]:
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json"), encoding="utf-8") as f:
        return json.load(f)


def schema_validate(config: dict[str, Any]) -> None:
    """The fallback: Ray's shipped JSON schema plus the node-type checks validate_config makes."""
    jsonschema.validate(config, ray_schema())
    if "available_node_types" in config:
        if config.get("head_node_type") not in config["available_node_types"]:
            raise ValueError("`head_node_type` must be one of `available_node_types`.")
        if sum(t.get("min_workers", 0) for t in config["available_node_types"].values()) > config["max_workers"]:
            raise ValueError("global max_workers is smaller than the sum of min_workers")


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it talks to a cloud; returns the config with Ray's defaults merged in."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a private API: if a Ray upgrade moves it, the shipped schema still applies
        schema_validate(config)
        return config
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config.get("available_node_types") or {}


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in node_types(config).items() if name != config.get("head_node_type")}


def instance_type(cloud: str, node_config: dict[str, Any]) -> str:
    if cloud == "aws":
        return str(node_config.get("InstanceType", ""))
    if cloud == "gcp":
        return str(node_config.get("machineType", "")).rsplit("/", 1)[-1]
    return str(node_config.get("azure_arm_parameters", {}).get("vmSize", ""))


def instance_gpus(cloud: str, node_config: dict[str, Any]) -> int | None:
    """GPUs the instance really has: 0 for a CPU instance, None when the count is not known here."""
    name = instance_type(cloud, node_config)
    if cloud == "gcp":
        attached = sum(int(a.get("acceleratorCount", 0)) for a in node_config.get("guestAccelerators") or [])
        if attached:
            return attached
        if not name.startswith(GCP_GPU_MACHINE_PREFIXES):
            return 0
    elif cloud == "aws" and name.split(".")[0] not in AWS_GPU_FAMILIES:
        return 0
    elif cloud == "azure" and not AZURE_GPU_SIZE.match(name):
        return 0
    known = INSTANCES.get(name)
    return known[1] if known else None


def host_image(cloud: str, node_config: dict[str, Any]) -> str:
    """The VM image a node boots, as the config names it ("" when left to Ray's default)."""
    if cloud == "aws":
        return str(node_config.get("ImageId") or "")
    if cloud == "gcp":
        boot = [d for d in node_config.get("disks") or [] if d.get("boot")]
        return str(boot[0].get("initializeParams", {}).get("sourceImage") or "") if boot else ""
    arm = node_config.get("azure_arm_parameters") or {}
    return str(arm.get("imageId") or ":".join(str(arm.get(k) or "") for k in ("imagePublisher", "imageOffer",
                                                                               "imageSku")).strip(":"))


def is_spot(cloud: str, node_config: dict[str, Any]) -> bool:
    if cloud == "aws":
        return (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    if cloud == "gcp":
        scheduling = node_config.get("scheduling")
        return isinstance(scheduling, dict) and (scheduling.get("preemptible") is True
                                                 or scheduling.get("provisioningModel") == "SPOT")
    return (node_config.get("azure_arm_parameters") or {}).get("priority") == "Spot"


def docker_options(config: dict[str, Any], node_type: str) -> list[str]:
    """The docker run options a node of this type gets, merged the way Ray's autoscaler merges them."""
    docker = copy.deepcopy(config.get("docker") or {})
    is_head = node_type == config.get("head_node_type")
    if not is_head:
        docker.update(node_types(config).get(node_type, {}).get("docker") or {})
    return list(docker.get("run_options") or []) + list(docker.get("head_run_options" if is_head
                                                                    else "worker_run_options") or [])


def setup_commands(config: dict[str, Any], node_type: str) -> list[str]:
    """The setup commands that run on a node of this type (a node type's own list replaces the global ones)."""
    if node_type == config.get("head_node_type"):
        return list(config.get("setup_commands") or []) + list(config.get("head_setup_commands") or [])
    own = node_types(config).get(node_type, {}).get("worker_setup_commands")
    if own is not None:
        return list(own)
    return list(config.get("setup_commands") or []) + list(config.get("worker_setup_commands") or [])


def shm_bytes(option: str) -> float:
    match = re.search(r"--shm-size[= ]'?(\d+(?:\.\d+)?)([bkmg]?)", option, re.IGNORECASE)
    assert match, option
    return float(match.group(1)) * {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def mlflow_command(config: dict[str, Any]) -> tuple[int, str] | None:
    for index, command in enumerate(config.get("head_start_ray_commands") or []):
        if "mlflow server" in command:
            return index, " ".join(command.split())
    return None


def flag(command: str, name: str) -> str | None:
    match = re.search(rf"{re.escape(name)}[ =](\S+)", command)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=None)
def tracked_project_files() -> tuple[str, ...]:
    try:
        out = subprocess.run(["git", "ls-files", *PROJECT_CODE], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if not out:  # no git here: the files on disk
        out = [str(p.relative_to(ROOT)) for c in PROJECT_CODE for p in (ROOT / c).rglob("*") if p.is_file()]
        out += [c for c in PROJECT_CODE if (ROOT / c).is_file()]
    return tuple(sorted(out))


def rsync_excludes(pattern: str, path: str) -> bool:
    """Does an rsync --exclude pattern drop this path (or a folder on its way)? Close to rsync's rules."""
    pattern = pattern.rstrip("/")
    parts = path.split("/")
    if "/" not in pattern:  # matched against each path component
        return any(fnmatch.fnmatchcase(part, pattern) for part in parts)
    anchored = pattern.lstrip("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("/"):
        return any(fnmatch.fnmatchcase(p, anchored) for p in prefixes)
    if pattern.startswith("**"):  # rsync matches these against "/" + path too: "**/x" also matches a top-level x
        prefixes += ["/" + p for p in prefixes]
    return any(fnmatch.fnmatchcase(p, anchored) or fnmatch.fnmatchcase(p, "*/" + anchored) for p in prefixes)


def credential_problems(text: str, strict_words: bool) -> list[str]:
    problems = [f"credential in file: {what}" for what, rx in CREDENTIAL_PATTERNS.items() if rx.search(text)]
    problems += [f"Azure subscription/tenant id {g} (only {PLACEHOLDER_GUID} is allowed)"
                 for g in GUID.findall(text) if g != PLACEHOLDER_GUID]
    if strict_words:
        problems += [f"credential word {m.group(0)!r} in a cluster YAML" for m in CREDENTIAL_WORDS.finditer(text)]
    return problems


COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def shell_problems(config: dict[str, Any]) -> list[str]:
    """Ray runs every command list through bash on the nodes: each command must at least parse (bash -n)."""
    bash = shutil.which("bash")
    if bash is None:
        return []
    commands = [(key, c) for key in COMMAND_LISTS for c in config.get(key) or []]
    commands += [(f"{name}.{key}", c) for name, node in node_types(config).items()
                 for key in ("initialization_commands", "worker_setup_commands") for c in node.get(key) or []]
    return [f"{where}: bash cannot parse {command[:60]!r}: {error}"
            for where, command in commands if (error := _bash_syntax_error(bash, command))]


@functools.lru_cache(maxsize=None)
def _bash_syntax_error(bash: str, command: str) -> str:
    result = subprocess.run([bash, "-n", "-c", command], capture_output=True, text=True, timeout=20)
    return result.stderr.strip()[:200] or "syntax error" if result.returncode != 0 else ""


def project_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """Everything this project requires of a launcher YAML that Ray's schema does not check."""
    problems: list[str] = []
    types = node_types(config)
    head_name = config.get("head_node_type")
    head = types.get(head_name)
    if head is None:
        problems.append(f"head_node_type {head_name!r} is not one of available_node_types {sorted(types)}")
    if not config.get("cluster_name"):
        problems.append("cluster_name missing")
    if not (isinstance(config.get("idle_timeout_minutes"), (int, float)) and config["idle_timeout_minutes"] > 0):
        problems.append("idle_timeout_minutes must be set (> 0) so idle GPU nodes go away")

    # Node types: resources declared, GPU types on GPU instances with the GPUs they really have, spot workers.
    gpu_counts = []
    for name, node in types.items():
        node_config = node.get("node_config") or {}
        resources = node.get("resources") or {}
        itype = instance_type(cloud, node_config)
        known = INSTANCES.get(itype)
        if "CPU" not in resources or "GPU" not in resources:
            problems.append(f"{name}: resources must declare CPU and GPU (got {resources})")
        if known and resources.get("CPU", 0) > known[0]:
            problems.append(f"{name}: resources CPU {resources['CPU']} > {known[0]} vCPUs of {itype}")
        real = instance_gpus(cloud, node_config)
        if name == head_name:
            if resources.get("GPU", 0) or real:
                problems.append(f"{name}: the head is a CPU node (got {itype}, resources {resources})")
            if is_spot(cloud, node_config):
                problems.append(f"{name}: the head must not be spot/preemptible")
            continue
        if node.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (GPU nodes only while trials need them)")
        if not node.get("max_workers", 0) >= 1:
            problems.append(f"{name}: max_workers must be >= 1")
        gpus = resources.get("GPU", 0)
        if gpus < 1:
            problems.append(f"{name}: a worker type must declare resources GPU >= 1 (got {resources})")
            continue
        gpu_counts.append(gpus)
        if real == 0:
            problems.append(f"{name}: requests {gpus} GPU(s) but {itype or '?'} is not a GPU instance "
                            f"({'guestAccelerators or a2/a3/g2' if cloud == 'gcp' else 'GPU instance family'})")
        elif real is not None and real != gpus:
            problems.append(f"{name}: resources GPU {gpus} but {itype} has {real}")
        if not host_image(cloud, node_config):
            problems.append(f"{name}: name the VM image (GPU hosts need an NVIDIA driver >= 580 for torch's CUDA "
                            "13 wheels; Ray's default AWS AMI is far older)")
        if not is_spot(cloud, node_config):
            problems.append(f"{name}: GPU workers must be spot/preemptible")
        if cloud == "gcp":
            scheduling = node_config.get("scheduling")
            if not isinstance(scheduling, dict):
                problems.append(f"{name}: GCP scheduling must be an object, not {type(scheduling).__name__}")
            elif scheduling.get("onHostMaintenance") != "TERMINATE" or scheduling.get("automaticRestart") is not False:
                problems.append(f"{name}: GPU/preemptible VMs need onHostMaintenance TERMINATE, automaticRestart false")
    if gpu_counts and (min(gpu_counts) != 1 or max(gpu_counts) < 4):
        problems.append(f"need a single-GPU type (CIFAR) and a multi-GPU type (ImageNet DDP); got {gpu_counts}")
    if cloud == "azure":  # node_config.azure_arm_parameters are passed as ARM template parameters
        with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "_private", "_azure",
                               "azure-vm-template.json"), encoding="utf-8") as f:
            allowed = set(json.load(f)["parameters"])
        for name, node in types.items():
            unknown = set((node.get("node_config") or {}).get("azure_arm_parameters") or {}) - allowed
            if unknown:
                problems.append(f"{name}: {sorted(unknown)} are not parameters of Ray's Azure VM template")

    # Docker: the installed Ray's image, shared memory on every node, token auth in every container.
    docker = config.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if key in docker and docker[key] != IMAGE:
            problems.append(f"docker.{key} is {docker[key]!r}; expected {IMAGE!r} (ray-ml images stop at 2.30)")
    if "image" not in docker:
        problems.append(f"docker.image missing (expected {IMAGE})")
    for name in types:
        options = docker_options(config, name)
        shm = [o for o in options if "--shm-size" in o]
        if len(shm) != 1:
            problems.append(f"{name}: needs exactly one --shm-size in its docker run options (got {shm})")
        elif shm_bytes(shm[0]) < 2**30:
            problems.append(f"{name}: --shm-size {shm[0]} is too small for the object store")
        if not any(re.search(r"RAY_AUTH_MODE=token\b", o) for o in options):
            problems.append(f"{name}: docker run options must set RAY_AUTH_MODE=token")
        own_image = (types[name].get("docker") or {}).get("worker_image")
        if own_image is not None and own_image != IMAGE:
            problems.append(f"{name}: docker.worker_image {own_image!r} != {IMAGE!r}")

    # The checkout on every node, installed there; the token file mounted, not inlined.
    mounts = config.get("file_mounts") or {}
    if str(mounts.get(PROJECT_MOUNT, "")).rstrip("/") not in (".", "./"):
        problems.append(f"file_mounts must sync the checkout: {PROJECT_MOUNT!r}: '.' (got {mounts})")
    if mounts.get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("file_mounts must copy the local token file: '~/.ray/auth_token': '~/.ray/auth_token'")
    install = re.compile(rf"\bpip install\b.*\s-e\s+{re.escape(PROJECT_MOUNT)}/?(\s|$)")
    for name in types:
        if not any(install.search(c) for c in setup_commands(config, name)):
            problems.append(f"{name}: setup must `pip install -e {PROJECT_MOUNT}` (the synced checkout)")
    for pattern in config.get("rsync_exclude") or []:
        dropped = [p for p in tracked_project_files() if rsync_excludes(pattern, p)]
        if dropped:
            problems.append(f"rsync_exclude {pattern!r} drops project code, e.g. {dropped[:3]}")

    # MLflow on the head: after `ray start --head`, backgrounded, 127.0.0.1 only, SQLite on a host volume.
    starts = config.get("head_start_ray_commands") or []
    ray_start = next((i for i, c in enumerate(starts) if re.search(r"\bray start\b.*--head", c)), None)
    found = mlflow_command(config)
    if ray_start is None:
        problems.append("head_start_ray_commands must run `ray start --head`")
    if any("--dashboard-host=0.0.0.0" in c or "--dashboard-host 0.0.0.0" in c for c in starts):
        problems.append("the Ray dashboard must not listen on 0.0.0.0 (use port forwarding)")
    if found is None:
        problems.append("head_start_ray_commands must start `mlflow server`")
    else:
        index, command = found
        if ray_start is not None and index <= ray_start:
            problems.append("mlflow server must start after `ray start --head`")
        if "nohup" not in command or not re.search(r"&\s*\)*\s*$", command):
            problems.append("mlflow server must run in the background (nohup ... &)")
        if flag(command, "--host") != "127.0.0.1":
            problems.append(f"mlflow server must listen on 127.0.0.1 only (got --host {flag(command, '--host')})")
        if not (flag(command, "--port") or "").isdigit():
            problems.append("mlflow server needs an explicit --port")
        store = flag(command, "--backend-store-uri") or ""
        if not store.startswith("sqlite:////"):
            problems.append(f"mlflow --backend-store-uri must be an absolute sqlite://// path (got {store!r})")
        else:
            db_dir = os.path.dirname(store.removeprefix("sqlite:///"))
            if not any(re.search(rf"-v\s+\S+:{re.escape(db_dir)}\b", o)
                       for o in docker_options(config, head_name or "")):
                problems.append(f"MLflow's database folder {db_dir} must be a host volume (head_run_options)")
        artifacts = flag(command, "--artifacts-destination") or ""
        if not artifacts.startswith(ARTIFACT_SCHEME[cloud]):
            problems.append(f"mlflow --artifacts-destination must be {ARTIFACT_SCHEME[cloud]}... (got {artifacts!r})")

    problems += shell_problems(config)
    problems += credential_problems(yaml.safe_dump(config), strict_words=True)
    problems += node_resource_problems(cloud, config)
    problems += commit_problems(config)
    return problems


# --------------------------------------------------- Ray resources per node type, and what the experiments need

@functools.lru_cache(maxsize=None)
def shipped_experiments() -> dict[str, Any]:
    """File name -> validated experiment, for every experiment YAML in search_spaces/."""
    from bickd_tune.experiment import load_experiment

    return {path.name: load_experiment(str(path)) for path in sorted(SHIPPED.glob("*.yaml"))}


def gpu_experiments() -> dict[str, Any]:
    return {name: e for name, e in shipped_experiments().items() if e.resources.gpus_per_trial > 0}


def raw_data_section(name: str) -> dict[str, Any]:
    """The experiment's `data:` as written (a loader may resolve paths; the YAML says where the data is)."""
    return (yaml.safe_load((SHIPPED / name).read_text(encoding="utf-8")) or {}).get("data") or {}


def node_shape(resources: dict[str, Any]) -> str | None:
    """The gpu<N> resource a node type advertises, if exactly one."""
    shapes = [name for name in resources if SHAPE.fullmatch(name)]
    return shapes[0] if len(shapes) == 1 else None


def experiment_shape(experiment) -> str | None:
    return node_shape(experiment.resources.custom_resources)


def launcher_nodes(config: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(the head's Ray resources, worker type -> Ray resources) of a launcher YAML."""
    head = (node_types(config).get(config.get("head_node_type")) or {}).get("resources") or {}
    return dict(head), {name: dict(t.get("resources") or {}) for name, t in worker_types(config).items()}


def cpu_quantity(value: Any) -> float:
    """A Kubernetes CPU quantity ("7", "7500m", 7) in CPUs."""
    text = str(value).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def start_param_resources(value: str) -> dict[str, float]:
    """rayStartParams `resources` in KubeRay's documented form '"{\\"gpu1\\": 1}"': a shell word holding JSON."""
    words = shlex.split(value)
    if len(words) != 1:
        raise ValueError(f"rayStartParams resources {value!r} must be one quoted JSON map")
    parsed = json.loads(words[0])
    if not isinstance(parsed, dict):
        raise ValueError(f"rayStartParams resources {value!r} is not a JSON map")
    return parsed


def kuberay_group_resources(group_spec: dict[str, Any], pod: dict[str, Any]) -> dict[str, float]:
    """What `ray start` advertises in a group's pods: num-cpus/num-gpus, else (as KubeRay does) the container's
    limits, plus the custom `resources`."""
    params = group_spec.get("rayStartParams") or {}
    container = (pod.get("containers") or [{}])[0]
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    resources = {"CPU": cpu_quantity(params.get("num-cpus", limits.get("cpu", requests.get("cpu", 0)))),
                 "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
    if params.get("resources"):
        resources.update(start_param_resources(params["resources"]))
    return resources


def kuberay_nodes(job: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(the head's Ray resources, worker group -> Ray resources) of the RayJob."""
    groups = {group: kuberay_group_resources(spec, pod) for group, spec, pod in pod_specs(job)}
    return groups.pop("head"), groups


def platform_nodes(platform: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    return kuberay_nodes(load_kuberay()) if platform == "kuberay" else launcher_nodes(load(platform))


def copies_that_fit(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of a resource bundle one node holds (Ray's logical resources)."""
    needs = {name: amount for name, amount in bundle.items() if amount > 0}
    if not needs:
        return 10**6
    return int(min(node.get(name, 0) / amount for name, amount in needs.items()) + 1e-9)


def trial_bundles(resources) -> tuple[dict[str, float], int, dict[str, float]]:
    """(one device worker's bundle, device workers per trial, the bundle of the trial driving them or {}),
    as bickd_tune/runner.py and bickd_tune/trial.py ask Ray for them."""
    device = {"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial, **resources.custom_resources}
    if resources.num_workers == 0:
        return device, 1, {}
    return device, resources.num_workers, dict(resources.coordinator_resources)


def shape_problems(head: dict[str, float], workers: dict[str, dict[str, float]]) -> list[str]:
    """Each GPU type advertises exactly gpu<N>: N for its N GPUs; the head no CPU, and `coordinator` slots."""
    problems = []
    for name, resources in workers.items():
        custom = {k: v for k, v in resources.items() if k not in RAY_BUILTIN}
        gpus = resources.get("GPU", 0)
        if custom != {f"gpu{gpus:g}": gpus}:
            problems.append(f"{name}: advertise exactly one shape resource, gpu{gpus:g}: {gpus:g} (its GPU count); "
                            f"got {custom}")
    if head.get("CPU") != 0:
        problems.append(f"head: must advertise CPU 0 so that no trial runs there (got {head.get('CPU')})")
    if head.get(COORDINATOR, 0) < 1:
        problems.append(f"head: must advertise `{COORDINATOR}` for the Tune trials that drive DDP workers")
    return problems


def experiment_fit_problems(head: dict[str, float], workers: dict[str, dict[str, float]]) -> list[str]:
    """Every GPU experiment names a shape some worker type has; its trials fill that type as its GPUs allow
    (CPUs never the limit); a DDP trial's workers fit one node; the trial driving them fits the head only."""
    problems = []
    for name, experiment in gpu_experiments().items():
        r = experiment.resources
        device, workers_per_trial, driver = trial_bundles(r)
        shape = experiment_shape(experiment)
        if shape is None:
            problems.append(f"{name}: resources.custom_resources must name one node shape gpu<N> "
                            f"(got {r.custom_resources}); else Ray may pack its trials onto any GPU type")
            continue
        if r.custom_resources[shape] != r.gpus_per_trial:
            problems.append(f"{name}: ask for as much {shape} as GPU ({r.custom_resources[shape]:g} != "
                            f"{r.gpus_per_trial:g})")
        hosts = {t: res for t, res in workers.items() if res.get(shape)}
        if not hosts:
            problems.append(f"{name}: no worker type advertises {shape}")
        for node_type, resources in hosts.items():
            held = copies_that_fit(resources, device)
            if workers_per_trial == 1 and held < copies_that_fit(resources, {"GPU": r.gpus_per_trial}):
                problems.append(f"{node_type}: holds {held} trials of {name} while its GPUs hold "
                                f"{copies_that_fit(resources, {'GPU': r.gpus_per_trial})} "
                                f"({resources.get('CPU', 0):g} CPUs for {r.cpus_per_trial:g} per trial)")
            if workers_per_trial > 1 and held < workers_per_trial:
                problems.append(f"{node_type}: holds {held} of the {workers_per_trial} DDP workers of {name}")
        if driver:
            if copies_that_fit(head, driver) < 1:
                problems.append(f"{name}: the head cannot hold the trial that drives the DDP workers ({driver}); "
                                "the autoscaler would start a GPU node for it")
            problems += [f"{name}: the trial that drives the DDP workers ({driver}) fits {t}: alone it starts "
                         "that GPU node" for t, res in workers.items() if copies_that_fit(res, driver) >= 1]
    return problems


def amp_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """Every GPU type's GPU is known, and runs the autocast dtype of the experiments sent to it."""
    problems = []
    for name, node in worker_types(config).items():
        model = gpu_model(cloud, node.get("node_config") or {})
        if model is None:
            problems.append(f"{name}: unknown GPU instance type {instance_type(cloud, node.get('node_config') or {})!r}"
                            " (add its GPU to GPU_MODEL)")
            continue
        shape = node_shape(node.get("resources") or {})
        for experiment_name, experiment in gpu_experiments().items():
            amp = experiment.base_train_config().runtime.amp
            if experiment_shape(experiment) == shape and COMPUTE_CAPABILITY[model] < AMP_NEEDS.get(amp, 0):
                problems.append(f"{name}: {model} has no {amp} (compute capability {COMPUTE_CAPABILITY[model]}), "
                                f"which {experiment_name} uses")
    return problems


def gpu_model(cloud: str, node_config: dict[str, Any]) -> str | None:
    attached = (node_config.get("guestAccelerators") or []) if cloud == "gcp" else []
    if attached:
        return GPU_MODEL.get(str(attached[0].get("acceleratorType", "")).rsplit("/", 1)[-1])
    return GPU_MODEL.get(instance_type(cloud, node_config))


def fixed_data_roots() -> dict[str, set[str]]:
    """Shape -> data roots its experiments read and never download (e.g. ImageNet): they must be mounted."""
    roots: dict[str, set[str]] = {}
    for name, experiment in gpu_experiments().items():
        data = raw_data_section(name)
        root = str(data.get("root") or "")
        if os.path.isabs(root) and not data.get("download"):
            roots.setdefault(experiment_shape(experiment) or "?", set()).add(root.rstrip("/"))
    return roots


def bind_mounts(options: list[str]) -> dict[str, str]:
    """Container path -> host path of the `-v host:container[:mode]` docker run options."""
    mounts = {}
    for option in options:
        for spec in re.findall(r"(?:^|\s)(?:-v|--volume)[ =](\S+)", option):
            host, _, rest = spec.partition(":")
            mounts[rest.split(":")[0].rstrip("/")] = host.rstrip("/")
    return mounts


def data_problems(config: dict[str, Any]) -> list[str]:
    """The worker types an experiment runs on mount its data root, from a host folder their own
    initialization_commands fill."""
    problems = []
    roots = fixed_data_roots()
    for name, node in worker_types(config).items():
        mounts = bind_mounts(docker_options(config, name))
        for root in sorted(roots.get(node_shape(node.get("resources") or {}), ())):
            if root not in mounts:
                problems.append(f"{name}: mount the data root {root} into the container (docker run option "
                                f"-v <host folder>:{root}:ro); got mounts {mounts}")
                continue
            commands = node.get("initialization_commands") or config.get("initialization_commands") or []
            if not any(mounts[root] in command for command in commands):
                problems.append(f"{name}: nothing in its initialization_commands fills {mounts[root]}, the host "
                                f"folder behind {root}")
    return problems


def init_problems(config: dict[str, Any]) -> list[str]:
    """A node type's own initialization_commands replace the global ones (Ray's autoscaler): keep them all."""
    shared = config.get("initialization_commands") or []
    problems = []
    for name, node in node_types(config).items():
        own = node.get("initialization_commands")
        missing = [c for c in shared if own is not None and c not in own]
        if missing:
            problems.append(f"{name}: its initialization_commands replace the global ones; repeat {missing}")
    return problems


def node_resource_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    head, workers = launcher_nodes(config)
    return (shape_problems(head, workers) + experiment_fit_problems(head, workers) + amp_problems(cloud, config)
            + data_problems(config) + init_problems(config))


def ignore_file_patterns(name: str) -> list[str]:
    path = ROOT / name
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "!"))]


def commit_problems(config: dict[str, Any]) -> list[str]:
    """.git reaches the nodes, and git there reads it: else every run's git_commit tag is "unknown"."""
    problems = [f"rsync_exclude {p!r} drops .git: the runs' git_commit tag would be 'unknown'"
                for p in config.get("rsync_exclude") or [] if rsync_excludes(p, GIT_FILE)]
    problems += [f"rsync_filter {f}: {p!r} drops .git: the runs' git_commit tag would be 'unknown'"
                 for f in config.get("rsync_filter") or [] for p in ignore_file_patterns(f)
                 if rsync_excludes(p, GIT_FILE)]
    safe = re.compile(rf"safe\.directory\s+{re.escape(CHECKOUT_IN_CONTAINER)}/?(\s|$)")
    if not any(safe.search(c) for c in setup_commands(config, config.get("head_node_type") or "")):
        problems.append(f"head setup must add {CHECKOUT_IN_CONTAINER} to git's safe.directory: the synced "
                        "checkout belongs to the VM's user, and git refuses to read it otherwise")
    return problems


def all_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """Ray's validation and the project's checks together, as the tests of a broken copy use them."""
    problems = []
    for check in (ray_validate, schema_validate):
        try:
            check(copy.deepcopy(config))
        except (ValueError, RuntimeError, KeyError, jsonschema.ValidationError) as err:
            problems.append(f"{check.__name__}: {str(err).splitlines()[0]}")
    return problems + project_problems(cloud, config)


# ------------------------------------------------------------------------------------------ launcher YAMLs

@pytest.mark.parametrize("cloud", CLOUDS)
def test_ray_validates_launcher_yaml(cloud):
    prepared = ray_validate(load(cloud))
    head = prepared["head_node_type"]
    assert head in prepared["available_node_types"]
    # prepare_config caps the head type at 0 extra nodes and keeps every worker type.
    assert prepared["available_node_types"][head]["max_workers"] == 0
    assert set(prepared["available_node_types"]) == set(load(cloud)["available_node_types"])


@pytest.mark.parametrize("cloud", CLOUDS)
def test_shipped_ray_schema_accepts_launcher_yaml(cloud):
    schema_validate(load(cloud))


@pytest.mark.parametrize("cloud", CLOUDS)
def test_launcher_yaml_follows_project_rules(cloud):
    assert project_problems(cloud, load(cloud)) == []


def test_launchers_pin_the_installed_ray_and_pyproject():
    pinned = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pinned and pinned.group(1) == ray.__version__, "pyproject's Ray pin and the installed Ray differ"
    for cloud in CLOUDS:
        assert load(cloud)["docker"]["image"] == IMAGE


@pytest.mark.parametrize("platform", PLATFORMS)
def test_trials_fit_the_worker_types(platform):
    """On every cloud and on KubeRay: two CIFAR trials (cifar.yaml, cifar_ablation.yaml) per single-GPU node,
    one 4-worker ImageNet trial per 4-GPU node, its driver on the head; steered there by the shape resource."""
    head, workers = platform_nodes(platform)
    assert experiment_fit_problems(head, workers) == []
    placed = {name: [t for t, res in workers.items() if res.get(experiment_shape(e))]
              for name, e in gpu_experiments().items()}
    assert {"cifar.yaml", "cifar_ablation.yaml", "imagenet.yaml"} <= set(placed), sorted(placed)
    for name in ("cifar.yaml", "cifar_ablation.yaml"):
        device, _, _ = trial_bundles(gpu_experiments()[name].resources)
        assert placed[name] and all(workers[t]["GPU"] == 1 and copies_that_fit(workers[t], device) == 2
                                    for t in placed[name]), (name, placed[name])
    imagenet = gpu_experiments()["imagenet.yaml"].resources
    assert placed["imagenet.yaml"] and all(workers[t]["GPU"] == imagenet.num_workers for t in placed["imagenet.yaml"])


def test_fit_check_catches_what_the_old_configs_did():
    """4-CPU CIFAR trials on a 7-CPU pod hold one trial per GPU; the default 0.5-CPU DDP driver fits no
    0-CPU head but fits every GPU node; no shape resource at all lets Ray put any trial anywhere."""
    head, workers = platform_nodes("kuberay")
    cifar = gpu_experiments()["cifar.yaml"].resources.model_copy(update={"cpus_per_trial": 4})
    device, _, _ = trial_bundles(cifar)
    assert copies_that_fit(workers["gpu1"], device) == 1 < copies_that_fit(workers["gpu1"], {"GPU": 0.5})
    default_driver = {"CPU": 0.5}
    assert copies_that_fit(head, default_driver) == 0 and copies_that_fit(workers["gpu4"], default_driver) >= 1
    bare = {name: {k: v for k, v in res.items() if k in RAY_BUILTIN} for name, res in workers.items()}
    assert any("advertise exactly one shape resource" in p for p in shape_problems(head, bare))
    assert any("no worker type advertises" in p for p in experiment_fit_problems(head, bare))


def test_node_shapes_agree_across_platforms():
    """The same node shapes, GPU counts and head slots on AWS, Google Cloud, Azure and KubeRay (and so the
    same experiment YAMLs run on each)."""
    def summary(platform):
        head, workers = platform_nodes(platform)
        shapes = sorted((node_shape(res), res["GPU"]) for res in workers.values())
        return head.get("CPU"), head.get(COORDINATOR), tuple(shapes)

    summaries = {platform: summary(platform) for platform in PLATFORMS}
    assert len(set(summaries.values())) == 1, summaries
    assert summaries["aws"][2] == (("gpu1", 1), ("gpu4", 4))


@pytest.mark.parametrize("name", sorted(n for n, e in shipped_experiments().items() if e.resources.gpus_per_trial))
def test_gpu_experiments_name_a_shape_every_platform_has(name):
    experiment = shipped_experiments()[name]
    shape = experiment_shape(experiment)
    assert shape, f"{name}: resources.custom_resources must name gpu<N>"
    for platform in PLATFORMS:
        _, workers = platform_nodes(platform)
        gpus = {res["GPU"] for res in workers.values() if res.get(shape)}
        assert gpus == {int(SHAPE.fullmatch(shape).group(1))}, (platform, shape, gpus)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_no_t4_under_bf16(cloud):
    """bf16 autocast needs Ampere or newer: no T4 (or other pre-Ampere) type serves the bf16 experiments."""
    config = load(cloud)
    amps = {e.base_train_config().runtime.amp for e in gpu_experiments().values()}
    assert "bf16" in amps, "the shipped GPU experiments use bf16; if that changes, revisit this test"
    models = {name: gpu_model(cloud, t.get("node_config") or {}) for name, t in worker_types(config).items()}
    assert None not in models.values(), models
    assert all(COMPUTE_CAPABILITY[m] >= AMP_NEEDS["bf16"] for m in models.values()), models
    assert amp_problems(cloud, config) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_imagenet_data_is_mounted_on_its_nodes(cloud):
    config = load(cloud)
    root = raw_data_section("imagenet.yaml")["root"].rstrip("/")
    assert root in fixed_data_roots()["gpu4"]
    hosts = [name for name, t in worker_types(config).items() if node_shape(t["resources"]) == "gpu4"]
    assert hosts and all(root in bind_mounts(docker_options(config, name)) for name in hosts)
    assert data_problems(config) == []


def test_kuberay_mounts_imagenet_from_the_claim_the_guide_names():
    job = load_kuberay()
    assert kuberay_data_problems(job) == []
    claims = kuberay_data_claims(job)
    assert claims, "the ImageNet group must mount a PersistentVolumeClaim"
    assert all(f"name: {claim}" in readme_sections()["KubeRay"] for claim in claims), claims  # the guide creates it


@pytest.mark.parametrize("cloud", CLOUDS)
def test_git_metadata_reaches_the_head(cloud):
    """.git is synced with the checkout and git may read it there, so runs carry their real commit."""
    config = load(cloud)
    assert commit_problems(config) == []
    assert not any(rsync_excludes(p, GIT_FILE) for p in config.get("rsync_exclude") or [])
    # the check itself: the old exclusion is caught
    assert rsync_excludes("**/.git", GIT_FILE) and rsync_excludes(".git", GIT_FILE)


def test_passrole_policy_lets_the_head_hand_its_role_to_workers():
    policy = json.loads(PASSROLE_POLICY.read_text(encoding="utf-8"))
    assert policy.get("Version") == "2012-10-17"
    profiles = {t["node_config"].get("IamInstanceProfile", {}).get("Name")
                for t in worker_types(load("aws")).values()}
    assert profiles == {IAM_ROLE}, profiles
    role_arn = f"arn:aws:iam::123456789012:role/{IAM_ROLE}"
    assert policy_allows(policy, "iam:PassRole", role_arn)
    # Least privilege: passing any other role (an admin one) stays denied.
    assert not policy_allows(policy, "iam:PassRole", "arn:aws:iam::123456789012:role/admin")
    assert not policy_allows(policy, "iam:CreateRole", role_arn)


def policy_allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Does an identity policy allow `action` on `resource`? (IAM wildcards * and ?, case-insensitive actions)."""
    statements = policy.get("Statement")
    statements = [statements] if isinstance(statements, dict) else statements or []

    def listed(value):
        return [value] if isinstance(value, str) else list(value or [])

    return any(s.get("Effect") == "Allow"
               and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in listed(s.get("Action")))
               and any(fnmatch.fnmatchcase(resource, r) for r in listed(s.get("Resource")))
               for s in statements)


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.iterdir() if p.is_file()))
def test_no_credentials_in_cluster_files(path):
    text = (CLUSTER / path).read_text(encoding="utf-8")
    assert credential_problems(text, strict_words=path.endswith((".yaml", ".yml"))) == []


@pytest.mark.parametrize("leak", [
    "# password: hunter2",
    "  aws_secret_access_key: wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "  subscription_id: 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "    - -e RAY_AUTH_TOKEN=0123456789abcdef",
])
def test_credential_scan_reads_comments_too(leak):
    """The file scan sees what YAML parsing drops (comments), so a pasted key is caught wherever it is."""
    text = (CLUSTER / "aws.yaml").read_text(encoding="utf-8")
    assert credential_problems(text, strict_words=True) == []
    assert credential_problems(text + "\n" + leak + "\n", strict_words=True) != []


def test_mlflow_port_is_the_one_the_guide_names():
    readme = README.read_text(encoding="utf-8")
    ports = {flag(mlflow_command(load(cloud))[1], "--port") for cloud in CLOUDS}
    assert len(ports) == 1, ports
    port = ports.pop()
    assert f"--tracking-uri http://127.0.0.1:{port}" in readme
    assert f"http://localhost:{port}" in readme
    assert f"-p {port}" in readme or f"-L {port}:127.0.0.1:{port}" in readme


# Broken copies: each must be caught by Ray's validation or by the project's checks.
def _gpu1(config):
    return next(t for t in worker_types(config).values() if t["resources"]["GPU"] == 1)


def _to_cpu_instance(cloud, config):
    node_config = _gpu1(config)["node_config"]
    if cloud == "aws":
        node_config["InstanceType"] = "m6i.2xlarge"
    elif cloud == "gcp":
        node_config["machineType"] = "n2-standard-8"
        node_config.pop("guestAccelerators", None)
    else:
        node_config["azure_arm_parameters"]["vmSize"] = "Standard_D8s_v5"


def _on_demand(cloud, config):
    node_config = _gpu1(config)["node_config"]
    if cloud == "aws":
        node_config.pop("InstanceMarketOptions")
    elif cloud == "gcp":
        node_config["scheduling"].pop("preemptible")
    else:
        node_config["azure_arm_parameters"].pop("priority")


def _default_image(cloud, config):
    node_config = _gpu1(config)["node_config"]
    if cloud == "aws":
        node_config.pop("ImageId")
    elif cloud == "gcp":
        node_config["disks"][0]["initializeParams"].pop("sourceImage")
    else:
        for key in ("imagePublisher", "imageOffer", "imageSku", "imageVersion"):
            node_config["azure_arm_parameters"].pop(key)


def _gpu4(config):
    return next(t for t in worker_types(config).values() if t["resources"]["GPU"] == 4)


def _to_t4(cloud, config):
    node = _gpu1(config)
    node["resources"]["CPU"] = 8
    if cloud == "aws":
        node["node_config"]["InstanceType"] = "g4dn.2xlarge"
    elif cloud == "gcp":
        node["node_config"]["machineType"] = "n1-standard-8"
        node["node_config"]["guestAccelerators"] = [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    else:
        node["node_config"]["azure_arm_parameters"]["vmSize"] = "Standard_NC8as_T4_v3"


def _to_unknown_gpu(cloud, config):
    node_config = _gpu1(config)["node_config"]
    if cloud == "aws":
        node_config["InstanceType"] = "g5.4xlarge"
    elif cloud == "gcp":
        node_config["machineType"] = "g2-standard-16"
    else:
        node_config["azure_arm_parameters"]["vmSize"] = "Standard_NV36ads_A10_v5"


def _drop_data_mount(cloud, config):
    docker = _gpu4(config)["docker"]
    docker["worker_run_options"] = [o for o in docker["worker_run_options"] if not o.startswith("-v ")]


def _mlflow_edit(config, old, new):
    index, _ = mlflow_command(config)
    config["head_start_ray_commands"][index] = config["head_start_ray_commands"][index].replace(old, new)


BROKEN: dict[str, tuple[Callable[[str, dict], None], str]] = {
    "head type pointing nowhere": (lambda c, x: x.update(head_node_type="ray.head.nowhere"), "head_node_type"),
    "unknown top-level key": (lambda c, x: x.update(head_nodes={}), "Additional properties"),
    "GPU type on a CPU instance": (_to_cpu_instance, "not a GPU instance"),
    "GPU type without GPU resources": (lambda c, x: _gpu1(x)["resources"].pop("GPU"), "resources"),
    "GPU count not the instance's": (lambda c, x: _gpu1(x)["resources"].update(GPU=2), "has 1"),
    "more CPUs than the instance": (lambda c, x: _gpu1(x)["resources"].update(CPU=64), "vCPUs"),
    "on-demand GPU workers": (_on_demand, "spot/preemptible"),
    "GPU host image left to Ray": (_default_image, "VM image"),
    "always-on GPU workers": (lambda c, x: _gpu1(x).update(min_workers=1), "min_workers"),
    "image of another Ray": (lambda c, x: x["docker"].update(image="rayproject/ray:2.59.0-py311-gpu"), "docker.image"),
    "frozen ray-ml image": (lambda c, x: x["docker"].update(image=f"rayproject/ray-ml:{ray.__version__}-gpu"),
                            "ray-ml"),
    "no --shm-size on workers": (lambda c, x: _gpu1(x)["docker"].update(worker_run_options=[]), "--shm-size"),
    "token auth off": (lambda c, x: x["docker"].update(run_options=["--ulimit nofile=65536:65536"]), "RAY_AUTH_MODE"),
    "project not installed": (lambda c, x: x.update(setup_commands=["pip install -q mlflow"]), "pip install -e"),
    "checkout not synced": (lambda c, x: x["file_mounts"].pop(PROJECT_MOUNT), "file_mounts"),
    "rsync drops package code": (lambda c, x: x["rsync_exclude"].append("data/"), "drops project code"),
    "MLflow on all interfaces": (lambda c, x: _mlflow_edit(x, "--host 127.0.0.1", "--host 0.0.0.0"), "127.0.0.1"),
    "MLflow before ray start": (lambda c, x: x["head_start_ray_commands"].reverse(), "after `ray start --head`"),
    "MLflow in the foreground": (lambda c, x: _mlflow_edit(x, "2>&1 &", "2>&1"), "background"),
    "shell syntax error": (lambda c, x: _mlflow_edit(x, "2>&1 &))", "2>&1 &)"), "bash cannot parse"),
    "relative SQLite path": (lambda c, x: _mlflow_edit(x, "sqlite:////home/ray/mlflow", "sqlite:///mlflow"), "sqlite"),
    "leaked access key": (lambda c, x: x["provider"].update(note="AKIAABCDEFGHIJKLMNOP"), "AWS access key"),
    "leaked subscription id": (lambda c, x: x["provider"].update(
        subscription_id="3f2504e0-4f89-11d3-9a0c-0305e82c3301"), "subscription"),
    # Node types and the experiments they host.
    "T4 under bf16 experiments": (_to_t4, "has no bf16"),
    "GPU instance of unknown model": (_to_unknown_gpu, "GPU_MODEL"),
    "no shape resource": (lambda c, x: _gpu1(x)["resources"].pop("gpu1"), "shape resource"),
    "shape resource not the GPU count": (lambda c, x: _gpu4(x)["resources"].update(gpu4=1), "shape resource"),
    "head runs trials": (lambda c, x: node_types(x)[x["head_node_type"]]["resources"].update(CPU=8), "CPU 0"),
    "head without coordinator slots": (lambda c, x: node_types(x)[x["head_node_type"]]["resources"].pop(COORDINATOR),
                                       "coordinator"),
    "one CIFAR trial per GPU node": (lambda c, x: _gpu1(x)["resources"].update(CPU=5), "trials of cifar.yaml"),
    "ImageNet node without its data": (_drop_data_mount, "/data/imagenet"),
    "ImageNet data never copied": (lambda c, x: _gpu4(x)["initialization_commands"].pop(), "fills"),
    "node type drops the global init": (lambda c, x: _gpu4(x)["initialization_commands"].pop(0), "replace"),
    ".git not synced": (lambda c, x: x["rsync_exclude"].extend(["**/.git", "**/.git/**"]), "git_commit"),
    "git refuses the checkout": (lambda c, x: x.update(setup_commands=x["setup_commands"][:1]), "safe.directory"),
}


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_is_caught(cloud, case):
    config = load(cloud)
    assert all_problems(cloud, config) == []  # the real file passes the very same checks
    broken = copy.deepcopy(config)
    mutate, expected = BROKEN[case]
    mutate(cloud, broken)
    problems = all_problems(cloud, broken)
    assert any(expected in p for p in problems), problems


def test_gcp_scheduling_list_is_caught():
    """Ray's older GCP examples wrote `scheduling` as a list; the Compute API wants an object."""
    config = load("gcp")
    node = _gpu1(config)["node_config"]
    node["scheduling"] = [{"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]
    assert any("scheduling must be an object" in p for p in project_problems("gcp", config))


def test_azure_unknown_arm_parameter_is_caught():
    config = load("azure")
    _gpu1(config)["node_config"]["azure_arm_parameters"]["billingProfileMaxPrice"] = -1
    assert any("Azure VM template" in p for p in project_problems("azure", config))


# ---------------------------------------------------------------------------------------- cluster/README.md

def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```bash / ```sh / plain ``` fenced blocks, fences paired in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and language is None:
            language, body = fence.group(1) or "plain", []
        elif fence:
            if language in ("bash", "sh", "plain"):
                blocks.append("\n".join(body) + "\n")
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def _readme_code(text: str | None = None) -> tuple[list[str], list[str]]:
    """(lines of the bash code blocks with continuations joined, inline `code` spans) of the guide."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks = shell_blocks(text)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return lines, inline


def readme_sections() -> dict[str, str]:
    """`## ` heading -> the text under it, up to the next `## ` heading."""
    sections: dict[str, str] = {}
    heading = ""
    for line in README.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line
    return sections


def _ray_commands() -> list[str]:
    lines, inline = _readme_code()
    found = [line for line in lines if line.startswith("ray ")]
    found += [m for line in lines for m in re.findall(r"\$\((ray [^)]*)\)", line)]
    found += [span for span in inline if span.startswith("ray ")]
    return found


def test_readme_ray_commands_exist_in_ray_cli():
    import click
    from ray.scripts.scripts import cli

    commands = _ray_commands()
    assert len(commands) >= 10 and any(c.startswith("ray up cluster/") for c in commands)
    for line in commands:
        tokens = shlex.split(line, comments=True)
        command: click.Command = cli
        position = 1
        while isinstance(command, click.Group) and position < len(tokens):
            assert tokens[position] in command.commands, f"`{line}`: no such command {tokens[position]!r}"
            command = command.commands[tokens[position]]
            position += 1
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for token in tokens[position:]:
            if token == "--":
                break
            if token.startswith("-") and not token.lstrip("-").isdigit():
                assert token.split("=")[0] in known, f"`{line}`: {token} is not an option of `{command.name}`"
            elif token.endswith(".yaml"):
                assert (ROOT / token).is_file(), f"`{line}`: {token} does not exist"


def _platform_commands(text_parts: list[str]) -> list[str]:
    found = []
    for part in text_parts:
        for match in re.finditer(r"python -m platform\.tune (?:[^\"'`\n]|\"[^\"\n]*\")*", part):
            command = match.group(0).split(" #")[0].strip()
            args = command.split()[3:]
            if "..." not in command and args and not args[0].startswith("<"):
                found.append(command)  # not the generic `python -m platform.tune <experiment.yaml>`
    return found


def _validate_platform_command(command: str):
    from bickd_tune.experiment import load_experiment
    from bickd_tune.tune import build_parser, cli_overrides

    tokens = shlex.split(command)
    assert tokens[:3] == ["python", "-m", "platform.tune"], command
    try:
        args = build_parser().parse_args(tokens[3:])
    except SystemExit as exit_:  # the CLI's one-line error for bad flags
        pytest.fail(f"`{command}` is refused by the CLI parser (exit {exit_.code})")
    experiment = load_experiment(str(ROOT / args.config), cli_overrides(args))
    return args, experiment


def test_readme_platform_commands_parse_and_validate():
    lines, inline = _readme_code()
    commands = _platform_commands(lines + inline)
    assert len(commands) >= 3
    for command in commands:
        args, experiment = _validate_platform_command(command)
        assert args.address == "auto" or args.address.startswith("127.0.0.1:"), command  # a cluster or the local one
        assert experiment.is_remote and experiment.tracking.tracking_uri.startswith("http"), command


# Remote commands must start in the synced checkout: `platform` is importable only from the repository root.
CHECKOUT_CD = re.compile(r"^\s*cd\s+(?:~|\$HOME|/home/ray)/bickd-tune/?\s*&&")
LOCAL_SECTION = "Try the cluster path on one machine"   # commands there run on the laptop, from the repo root
CLOUD_SECTIONS = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Azure"}
CLOUD_LOGIN = {"aws": "aws configure", "gcp": "gcloud auth application-default login", "azure": "az login"}


def checkout_problem(line: str, on_laptop: bool = False) -> str | None:
    """Why a guide line that runs the platform would not find it, or None: a command sent to a node (`ray exec`,
    `ray job submit`, ...) must `cd ~/bickd-tune &&` first; a bare one runs only in the laptop section."""
    if "python -m platform." not in line or CHECKOUT_CD.match(line):
        return None
    if line.startswith("python -m platform."):
        return None if on_laptop else f"`{line[:70]}`: runs the platform outside the checkout"
    try:
        remote = [word for word in shlex.split(line) if "python -m platform." in word]
    except ValueError as err:
        return f"`{line[:70]}`: {err}"
    if not remote:
        return f"`{line[:70]}`: quote the remote command, starting with `cd ~/bickd-tune && `"
    if not all(CHECKOUT_CD.match(word) for word in remote):
        return f"`{line[:70]}`: the remote command must start with `cd ~/bickd-tune && ` (platform.* exists only there)"
    return None


def test_readme_platform_commands_run_from_the_checkout():
    problems = []
    for heading, text in readme_sections().items():
        lines, inline = _readme_code(text)
        for line in lines + [span for span in inline if span.startswith("ray ")]:
            problem = checkout_problem(line, on_laptop=heading == LOCAL_SECTION)
            if problem:
                problems.append(f"{heading}: {problem}")
    assert problems == []
    assert checkout_problem("ray exec cluster/aws.yaml 'cd ~/bickd-tune && python -m platform.tune x.yaml'") is None


@pytest.mark.parametrize("line", [
    "ray exec cluster/aws.yaml --tmux 'python -m platform.tune search_spaces/cifar.yaml --address auto'",
    "ray exec cluster/aws.yaml python -m platform.tune search_spaces/cifar.yaml --address auto",
    "ray job submit --address http://127.0.0.1:8265 -- python -m platform.tune search_spaces/cifar.yaml",
    "ray exec cluster/gcp.yaml 'cd bickd-tune; python -m platform.tune search_spaces/cifar.yaml'",
    "python -m platform.tune search_spaces/cifar.yaml --address auto",
])
def test_checkout_check_catches_commands_run_from_home(line):
    assert checkout_problem(line) is not None


def _first(lines: list[str], pattern: str) -> int:
    """Index of the first line matching a regex, or -1."""
    return next((i for i, line in enumerate(lines) if re.search(pattern, line)), -1)


def _last(lines: list[str], pattern: str) -> int:
    return max((i for i, line in enumerate(lines) if re.search(pattern, line)), default=-1)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_readme_walks_each_cloud_from_nothing_to_a_finished_sweep(cloud):
    """Log in, `ray up`, run the sweep from the checkout, watch MLflow through a forwarded port, resume,
    `ray down`: in that order, in the cloud's own section, with that cloud's YAML."""
    lines, _ = _readme_code(readme_sections()[CLOUD_SECTIONS[cloud]])
    yaml_file = re.escape(f"cluster/{cloud}.yaml")
    steps = {
        "log in": _first(lines, re.escape(CLOUD_LOGIN[cloud])),
        "ray up": _first(lines, rf"^ray up {yaml_file}\b"),
        "sweep": _first(lines, rf"^ray exec {yaml_file} .*python -m platform\.tune (?!.*--resume)"),
        "MLflow port": _first(lines, rf"^ray attach {yaml_file} .*-p 5000\b"),
        "resume": _first(lines, rf"^ray exec {yaml_file} .*python -m platform\.tune .*--resume"),
        "ray down": _first(lines, rf"^ray down {yaml_file}\b"),
    }
    assert all(index >= 0 for index in steps.values()), steps
    assert list(steps.values()) == sorted(steps.values()), steps


def test_readme_walks_kuberay_from_operator_to_cleanup():
    lines, _ = _readme_code(readme_sections()["KubeRay"])
    steps = {
        "operator": _first(lines, r"^helm install kuberay-operator "),
        "MLflow server": _first(lines, r"kubectl apply .*-f -"),
        "apply": _first(lines, r"^kubectl apply -f cluster/kuberay\.yaml"),
        "job logs": _first(lines, r"^ray job logs "),
        "MLflow port": _first(lines, r"^kubectl port-forward -n mlflow svc/mlflow 5000:5000"),
        "resume": _first(lines, r"--resume"),
        "clean up": _last(lines, r"^kubectl delete rayjob bickd-tune-cifar"),
    }
    assert all(index >= 0 for index in steps.values()), steps
    assert list(steps.values()) == sorted(steps.values()), steps
    job = load_kuberay()
    claims = {v["persistentVolumeClaim"]["claimName"] for _, _, pod in pod_specs(job)
              for v in pod.get("volumes") or [] if v.get("persistentVolumeClaim")}
    text = readme_sections()["KubeRay"]
    assert all(f"name: {claim}" in text for claim in claims), claims  # the guide creates every claim


def test_readme_scripts_the_aws_passrole_step():
    """After the first `ray up` (which creates the role) and before any sweep, the guide grants the role
    iam:PassRole on itself, from the committed policy document."""
    lines, _ = _readme_code(readme_sections()["AWS"])
    up = _first(lines, r"^ray up cluster/aws\.yaml\b")
    put = _first(lines, r"^aws iam put-role-policy ")
    sweep = _first(lines, r"python -m platform\.tune")
    assert -1 < up < put < sweep, (up, put, sweep)
    words = shlex.split(lines[put])
    options = dict(zip(words[3::2], words[4::2]))
    assert options.get("--role-name") == IAM_ROLE and options.get("--policy-name"), options
    document = options.get("--policy-document", "")
    assert document.startswith("file://") and (ROOT / document.removeprefix("file://")).resolve() == PASSROLE_POLICY


def test_readme_shell_blocks_parse_in_bash():
    """Placeholders such as <bucket> outside quotes are redirections in bash: every block must parse."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    blocks = shell_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    errors = [(block[:80], _bash_syntax_error(bash, block)) for block in blocks if _bash_syntax_error(bash, block)]
    assert errors == []
    assert _bash_syntax_error(bash, "aws s3 mb s3://<bucket>\n")  # the check itself


def test_readme_leaves_room_for_the_local_cluster():
    section = readme_sections().get(LOCAL_SECTION)
    assert section is not None and "cluster/local.yaml" in section


# ----------------------------------------------------------------------------------------- KubeRay RayJob

def load_kuberay() -> dict[str, Any]:
    with open(KUBERAY, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def pod_specs(job: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group, group spec, pod spec) for the head group and every worker group."""
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    return [("head", head, head["template"]["spec"])] + [
        (g["groupName"], g, g["template"]["spec"]) for g in cluster.get("workerGroupSpecs") or []]


def kuberay_problems(job: dict[str, Any]) -> list[str]:
    from ray.runtime_env import RuntimeEnv
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from bickd_tune.ray_env import code_modules

    problems = []
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        problems.append(f"expected apiVersion ray.io/v1, kind RayJob (got {job.get('apiVersion')}, {job.get('kind')})")
    spec = job.get("spec") or {}
    entrypoint = " ".join(str(spec.get("entrypoint", "")).split())
    if not entrypoint.startswith("python -m platform.tune ") or "--address auto" not in entrypoint:
        problems.append(f"entrypoint must run `python -m platform.tune ... --address auto` (got {entrypoint!r})")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true")
    cluster = spec.get("rayClusterSpec") or {}
    if str(cluster.get("rayVersion")) != ray.__version__:
        problems.append(f"rayVersion {cluster.get('rayVersion')!r} != installed Ray {ray.__version__}")

    # The runtime env: a valid Ray runtime env that carries the code and installs the project, and that
    # merges with the runtime env the platform's own ray.init passes (py_modules) instead of conflicting.
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        runtime_env = RuntimeEnv(**env)
        if not env.get("working_dir"):
            problems.append("runtimeEnvYAML needs a working_dir: the project's code on every node")
        packages = env.get("pip") if isinstance(env.get("pip"), list) else (env.get("pip") or {}).get("packages", [])
        if not any("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in p for p in packages):
            problems.append("runtimeEnvYAML pip must install the project from the working dir")
        if _merge_runtime_env(runtime_env, RuntimeEnv(py_modules=code_modules())) is None:
            problems.append("runtimeEnvYAML conflicts with the platform's ray.init runtime env (py_modules)")
    except (ValueError, TypeError, yaml.YAMLError) as err:
        problems.append(f"runtimeEnvYAML is not a valid Ray runtime env: {err}")
    # Every other submission mode hands the runtime env to `ray job submit` inside `bash -c "..."`, where
    # ${VAR} becomes "" before Ray sees it (ray issue 59343).
    if "${" in str(spec.get("runtimeEnvYAML") or "") and spec.get("submissionMode") not in SHELL_FREE_SUBMISSION:
        problems.append(f"submissionMode {spec.get('submissionMode', 'K8sJobMode (default)')}: the submitter's shell "
                        "expands ${...} in runtimeEnvYAML to an empty string; use HTTPMode")

    gpu_groups = 0
    for group, group_spec, pod in pod_specs(job):
        params = group_spec.get("rayStartParams") or {}
        if any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{group}: rayStartParams values must be strings (got {params})")
        if group == "head" and params.get("dashboard-host") == "127.0.0.1":
            problems.append("head: the job submitter must reach the dashboard; drop dashboard-host 127.0.0.1")
        containers = pod.get("containers") or []
        ray_container = containers[0] if containers else {}
        for container in containers:
            image = container.get("image", "")
            if image.startswith("rayproject/") and image != IMAGE:
                problems.append(f"{group}: image {image!r}; expected {IMAGE!r}")
        shm_volumes = {v["name"] for v in pod.get("volumes") or []
                       if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        if not any(m.get("mountPath") == "/dev/shm" and m.get("name") in shm_volumes
                   for m in ray_container.get("volumeMounts") or []):
            problems.append(f"{group}: mount an emptyDir with medium Memory at /dev/shm")
        if group != "head":
            limits = (ray_container.get("resources") or {}).get("limits") or {}
            requests = (ray_container.get("resources") or {}).get("requests") or {}
            gpus = int(str(limits.get("nvidia.com/gpu", 0)))
            if gpus >= 1:
                gpu_groups += 1
            if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(limits.get("nvidia.com/gpu")):
                problems.append(f"{group}: nvidia.com/gpu requests must equal limits")
            if group_spec.get("minReplicas", 0) != 0:
                problems.append(f"{group}: minReplicas must be 0")
    if gpu_groups == 0:
        problems.append("a worker group must request nvidia.com/gpu (limits)")
    try:
        head, workers = kuberay_nodes(job)
        problems += shape_problems(head, workers) + experiment_fit_problems(head, workers)
    except (ValueError, KeyError) as err:
        problems.append(f"rayStartParams: {err}")
    problems += kuberay_cpu_problems(job) + kuberay_data_problems(job)
    problems += credential_problems(yaml.safe_dump(job), strict_words=True)
    return problems


def launcher_vcpus_by_shape() -> dict[str, int]:
    """Shape -> the fewest vCPUs of a launcher node type of that shape: the node a KubeRay group must fit."""
    vcpus: dict[str, int] = {}
    for cloud in CLOUDS:
        for node in worker_types(load(cloud)).values():
            shape = node_shape(node.get("resources") or {})
            known = INSTANCES.get(instance_type(cloud, node.get("node_config") or {}))
            if shape and known:
                vcpus[shape] = min(vcpus.get(shape, known[0]), known[0])
    return vcpus


def kuberay_cpu_problems(job: dict[str, Any]) -> list[str]:
    """Each worker pod requests fewer CPUs than its node has (some stay with Kubernetes), limits equal to
    requests, and Ray advertises exactly what the pod has."""
    problems = []
    node_vcpus = launcher_vcpus_by_shape()
    for group, spec, pod in pod_specs(job)[1:]:
        container = (pod.get("containers") or [{}])[0]
        requests = (container.get("resources") or {}).get("requests") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        request = cpu_quantity(requests.get("cpu", 0))
        if "cpu" not in limits or cpu_quantity(limits["cpu"]) != request:
            problems.append(f"{group}: CPU limits must equal requests ({limits.get('cpu')} != {request:g})")
        num_cpus = (spec.get("rayStartParams") or {}).get("num-cpus")
        if num_cpus is None or cpu_quantity(num_cpus) != request:
            problems.append(f"{group}: rayStartParams num-cpus must be the pod's CPU request {request:g} "
                            f"(got {num_cpus})")
        try:
            shape = node_shape(kuberay_group_resources(spec, pod))
        except ValueError:
            shape = None  # reported by the shape check
        vcpus = node_vcpus.get(shape or "")
        if vcpus is None:
            problems.append(f"{group}: no launcher node type of shape {shape} to size the pod against")
        elif request > vcpus - NODE_RESERVED_CPUS:
            problems.append(f"{group}: requests {request:g} CPUs; a {vcpus}-vCPU node of shape {shape} must keep a "
                            f"reserve of {NODE_RESERVED_CPUS} for Kubernetes, so at most {vcpus - NODE_RESERVED_CPUS}")
    return problems


def kuberay_data_problems(job: dict[str, Any]) -> list[str]:
    """The groups an experiment runs on mount its data root from a volume (a PersistentVolumeClaim)."""
    problems = []
    roots = fixed_data_roots()
    for group, spec, pod in pod_specs(job)[1:]:
        try:
            shape = node_shape(kuberay_group_resources(spec, pod))
        except ValueError:
            continue
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mounts = {m.get("mountPath", "").rstrip("/"): m.get("name")
                  for m in ((pod.get("containers") or [{}])[0].get("volumeMounts") or [])}
        for root in sorted(roots.get(shape or "", ())):
            volume = volumes.get(mounts.get(root)) or {}
            if not (volume.get("persistentVolumeClaim") or {}).get("claimName"):
                problems.append(f"{group}: mount the data root {root} from a PersistentVolumeClaim (got {volume})")
    return problems


def kuberay_data_claims(job: dict[str, Any]) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for _, _, pod in pod_specs(job)[1:]
            for v in pod.get("volumes") or [] if (v.get("persistentVolumeClaim") or {}).get("claimName")}


def test_kuberay_rayjob_follows_project_rules():
    assert kuberay_problems(load_kuberay()) == []


def test_kuberay_entrypoint_parses_and_validates():
    args, experiment = _validate_platform_command(" ".join(load_kuberay()["spec"]["entrypoint"].split()))
    assert args.address == "auto" and (ROOT / args.config).is_file()
    assert experiment.is_remote, "the RayJob's cluster is deleted after the job: storage must be a bucket"
    assert experiment.tracking.tracking_uri.startswith("http"), "MLflow must outlive the RayJob's cluster"


def _first_worker_container(job):
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


KUBERAY_BROKEN: dict[str, tuple[Callable[[dict], None], str]] = {
    "not a RayJob": (lambda j: j.update(kind="RayCluster"), "RayJob"),
    "cluster kept after the job": (lambda j: j["spec"].update(shutdownAfterJobFinishes=False),
                                   "shutdownAfterJobFinishes"),
    "other entrypoint": (lambda j: j["spec"].update(entrypoint="python train.py"), "platform.tune"),
    "image of another Ray": (lambda j: _first_worker_container(j).update(image="rayproject/ray:2.59.0-py311-gpu"),
                             "image"),
    "no GPU requested": (lambda j: _first_worker_container(j)["resources"]["limits"].pop("nvidia.com/gpu"),
                         "nvidia.com/gpu"),
    "no /dev/shm": (lambda j: _first_worker_container(j).pop("volumeMounts"), "/dev/shm"),
    "py_modules in the job's env": (lambda j: j["spec"].update(runtimeEnvYAML=j["spec"]["runtimeEnvYAML"]
                                                               + "py_modules: [\"s3://bucket/bickd.zip\"]\n"), "conflicts"),
    "dashboard on loopback": (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
        {"dashboard-host": "127.0.0.1"}), "dashboard"),
    "default submitter shell": (lambda j: j["spec"].pop("submissionMode"), "submissionMode"),
    "K8sJobMode submitter shell": (lambda j: j["spec"].update(submissionMode="K8sJobMode"), "submissionMode"),
    "pod asks for the whole node": (lambda j: _kuberay_cpus(j, "gpu1", "8"), "reserve"),
    "Ray advertises more CPUs than the pod has": (lambda j: _kuberay_group(j, "gpu1")["rayStartParams"].update(
        {"num-cpus": "8"}), "num-cpus"),
    "4-CPU CIFAR trials on a 7-CPU pod": (lambda j: _kuberay_cpus(j, "gpu1", "5"), "trials of cifar.yaml"),
    "no shape resource": (lambda j: _kuberay_group(j, "gpu1")["rayStartParams"].pop("resources"), "shape"),
    "head runs trials": (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": "4"}), "CPU 0"),
    "unquoted resources": (lambda j: _kuberay_group(j, "gpu4")["rayStartParams"].update(
        {"resources": '{"gpu4": 4}'}), "rayStartParams"),
    "ImageNet group without its data": (lambda j: _kuberay_group(j, "gpu4")["template"]["spec"]["containers"][0][
        "volumeMounts"].pop(), "/data/imagenet"),
}


def _kuberay_group(job, name):
    return next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == name)


def _kuberay_cpus(job, group, cpus):
    spec = _kuberay_group(job, group)
    spec["rayStartParams"]["num-cpus"] = cpus
    for key in ("requests", "limits"):
        spec["template"]["spec"]["containers"][0]["resources"][key]["cpu"] = cpus


@pytest.mark.parametrize("case", sorted(KUBERAY_BROKEN))
def test_kuberay_broken_copy_is_caught(case):
    job = copy.deepcopy(load_kuberay())
    mutate, expected = KUBERAY_BROKEN[case]
    mutate(job)
    problems = kuberay_problems(job)
    assert any(expected in p for p in problems), problems
