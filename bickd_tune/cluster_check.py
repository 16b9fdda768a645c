"""Checks a Ray cluster-launcher YAML or a KubeRay RayJob before `ray up` or `kubectl apply` spends money:
Ray's own config validation, then this project's rules (GPU node shapes that fit search_spaces/*.yaml, the
pinned Ray's image, spot GPU workers, MLflow on the head, no credentials). Nothing is started, no cloud called.

    python -m bickd_tune.cluster_check cluster/aws.yaml [more files...]

Prints `path: problem` for each problem, or `path: ok`. Exit status: 0 when every file is clean, 1 when a
file has a problem, 2 when a file cannot be read as YAML.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import functools
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bickd.config_io import ConfigError

# The checkout this package runs from (`pip install -e .`): the experiments, the shipped cluster configs, and
# the files `ray up` syncs from it.
CHECKOUT = Path(__file__).resolve().parents[1]
EXPERIMENTS = CHECKOUT / "search_spaces"
SHIPPED_CLUSTER = CHECKOUT / "cluster"
CLOUDS = ("aws", "gcp", "azure")
FAKE_PROVIDER = "fake_multinode"        # cluster/local.yaml: "nodes" are processes on this machine
PROJECT_MOUNT = "~/bickd-tune"          # where file_mounts puts the checkout on every node
PYTHON_TAG = "py311"                    # pyproject: requires-python >= 3.11
ARTIFACT_SCHEME = {"aws": "s3://", "gcp": "gs://", "azure": "wasbs://"}
PROJECT_CODE = ("bickd/", "bickd_tune/", "platform/", "search_spaces/", "pyproject.toml")

# GPU instance families per cloud (Ray's schema accepts any string here).
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
# The GPU of each GPU instance type (on Google Cloud: of the machine type, or the attached accelerator type),
# and its CUDA compute capability: bf16 autocast needs Ampere (8.0) or newer. An unknown type is a problem.
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
# In a cluster YAML even the words are out: a field or comment naming one is where a value ends up.
CREDENTIAL_WORDS = re.compile(r"secret|password|passwd|api[_-]?key", re.IGNORECASE)
GUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
PLACEHOLDER_GUID = "00000000-0000-0000-0000-000000000000"

# Ray resources per node type (cluster/README.md, "How the clusters are built").
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
# AWS: the policy the guide attaches to the head's role so that it may hand a role to the GPU workers.
PASSROLE_POLICY = SHIPPED_CLUSTER / "aws-passrole-policy.json"
EXAMPLE_ACCOUNT = "123456789012"   # the policy must allow the role in whatever account runs `ray up`
# RayJob submission modes that do not pass the runtime env through a shell.
SHELL_FREE_SUBMISSION = ("HTTPMode",)
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def expected_image() -> str:
    """The rayproject/ray image of the installed (pinned) Ray; ray-ml images stop at Ray 2.30."""
    return f"rayproject/ray:{importlib.metadata.version('ray')}-{PYTHON_TAG}-gpu"


# ---------------------------------------------------------------------------------------------- reading

def read_config(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """(the parsed mapping, the text as written); a ConfigError naming the file when it is not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(config).__name__}")
    if not is_kubernetes_object(config) and not is_launcher(config):
        raise ConfigError(f"{path}: neither a Ray cluster launcher YAML (no provider) nor a KubeRay RayJob (no kind)")
    return config, text


def is_kubernetes_object(config: dict[str, Any]) -> bool:
    return "kind" in config or "apiVersion" in config       # only a RayJob passes the checks


def is_launcher(config: dict[str, Any]) -> bool:
    return "provider" in config or "available_node_types" in config


def load_shipped(name: str) -> dict[str, Any]:
    """One of the cluster configs in the checkout's cluster/ ("aws", "kuberay", ...)."""
    return read_config(SHIPPED_CLUSTER / f"{name}.yaml")[0]


def check_file(path: str | os.PathLike) -> list[str]:
    config, text = read_config(path)
    return check_config(config, text)


def check_config(config: dict[str, Any], text: str = "") -> list[str]:
    """Every problem of a launcher YAML or RayJob; `text`, the file as written, is scanned for credentials too
    (comments included)."""
    if is_kubernetes_object(config):
        problems, rules = [], kuberay_problems
    else:
        problems, rules = ray_problems(config), launcher_problems
    try:
        problems += rules(config)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        # A field of another type than the rules read (Ray's schema leaves many free-form).
        problems.append(f"cannot apply the project's rules: {type(err).__name__}: {err}")
    problems += credential_problems(text + "\n" + yaml.safe_dump(config), strict_words=True)
    return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------------- Ray's own validation

def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json"), encoding="utf-8") as f:
        return json.load(f)


def schema_validate(config: dict[str, Any]) -> None:
    """Ray's shipped JSON schema plus the node-type checks validate_config makes (the public fallback)."""
    import jsonschema

    jsonschema.validate(config, ray_schema())
    if "available_node_types" in config:
        if config.get("head_node_type") not in config["available_node_types"]:
            raise ValueError("`head_node_type` must be one of `available_node_types`.")
        if sum(t.get("min_workers", 0) for t in config["available_node_types"].values()) > config["max_workers"]:
            raise ValueError("global max_workers is smaller than the sum of min_workers")


def ray_prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What Ray checks before it starts a node; returns the config as Ray would use it (defaults merged in).

    There is no `ray up --dry-run`: this calls the private functions `ray up` (and Ray's own tests of its
    example YAMLs) use. If a Ray upgrade moves them, the JSON schema Ray ships still applies.
    """
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        schema_validate(config)
        return config
    if provider_type(config) == FAKE_PROVIDER:  # never `ray up`, no defaults shipped: its autoscaler only validates
        validate_config(copy.deepcopy(config))
        return config
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_problems(config: dict[str, Any]) -> list[str]:
    """Ray's refusal of a launcher YAML, as one problem (Ray stops at the first)."""
    try:
        ray_prepared(config)
    except Exception as err:  # noqa: BLE001 - Ray refuses a config with whatever its code raises on it
        return [f"Ray refuses it: {(str(err).strip().splitlines() or [type(err).__name__])[0]}"]
    return []


def runtime_envs_conflict(job_env: dict[str, Any], driver_env: dict[str, Any]) -> bool:
    """Would Ray refuse the driver's ray.init runtime env inside this job? Ray merges them with a private
    function; if that moves, its documented rule: no field (and no env var) set by both."""
    from ray.runtime_env import RuntimeEnv

    try:
        from ray.runtime_env.runtime_env import _merge_runtime_env
    except ImportError:
        shared = (set(job_env) & set(driver_env)) - {"env_vars"}
        return bool(shared or set(job_env.get("env_vars") or {}) & set(driver_env.get("env_vars") or {}))
    return _merge_runtime_env(RuntimeEnv(**job_env), RuntimeEnv(**driver_env)) is None


# ------------------------------------------------------------------------------- launcher YAML: helpers

def provider_type(config: dict[str, Any]) -> str:
    return str((config.get("provider") or {}).get("type") or "")


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


def gpu_model(cloud: str, node_config: dict[str, Any]) -> str | None:
    attached = (node_config.get("guestAccelerators") or []) if cloud == "gcp" else []
    if attached:
        return GPU_MODEL.get(str(attached[0].get("acceleratorType", "")).rsplit("/", 1)[-1])
    return GPU_MODEL.get(instance_type(cloud, node_config))


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


def shm_bytes(option: str) -> float | None:
    match = re.search(r"--shm-size[= ]'?(\d+(?:\.\d+)?)([bkmg]?)", option, re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def mlflow_command(config: dict[str, Any]) -> tuple[int, str] | None:
    """(its index in head_start_ray_commands, the command on one line) of the MLflow server's start."""
    for index, command in enumerate(config.get("head_start_ray_commands") or []):
        if "mlflow server" in command:
            return index, " ".join(command.split())
    return None


def flag(command: str, name: str) -> str | None:
    match = re.search(rf"{re.escape(name)}[ =](\S+)", command)
    return match.group(1) if match else None


def bind_mounts(options: list[str]) -> dict[str, str]:
    """Container path -> host path of the `-v host:container[:mode]` docker run options."""
    mounts = {}
    for option in options:
        for spec in re.findall(r"(?:^|\s)(?:-v|--volume)[ =](\S+)", option):
            host, _, rest = spec.partition(":")
            mounts[rest.split(":")[0].rstrip("/")] = host.rstrip("/")
    return mounts


@functools.lru_cache(maxsize=None)
def tracked_project_files() -> tuple[str, ...]:
    """The project's code as `ray up` would sync it: git's tracked files, else the files on disk."""
    try:
        out = subprocess.run(["git", "ls-files", *PROJECT_CODE], cwd=CHECKOUT, capture_output=True, text=True,
                             check=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if not out:
        out = [str(p.relative_to(CHECKOUT)) for c in PROJECT_CODE for p in (CHECKOUT / c).rglob("*") if p.is_file()]
        out += [c for c in PROJECT_CODE if (CHECKOUT / c).is_file()]
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


def ignore_file_patterns(name: str) -> list[str]:
    """The exclude patterns of an rsync_filter file (a .gitignore) in the checkout."""
    path = CHECKOUT / name
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "!"))]


@functools.lru_cache(maxsize=None)
def bash_syntax_error(command: str) -> str:
    """What `bash -n` says about a command ("" when it parses, or when there is no bash here)."""
    bash = shutil.which("bash")
    if bash is None:
        return ""
    result = subprocess.run([bash, "-n", "-c", command], capture_output=True, text=True, timeout=20)
    return result.stderr.strip()[:200] or "syntax error" if result.returncode != 0 else ""


# ------------------------------------------------------------------------------- launcher YAML: rules

def launcher_problems(config: dict[str, Any]) -> list[str]:
    """Everything this project requires of a launcher YAML that Ray's validation does not check. The fake
    provider's nodes are processes on this machine: the rules about VMs, images and syncing do not apply."""
    cloud = provider_type(config)
    problems = cluster_problems(config) + node_type_problems(config) + shell_problems(config)
    head, workers = launcher_nodes(config)
    problems += shape_problems(head, workers) + experiment_fit_problems(head, workers) + init_problems(config)
    if cloud in CLOUDS:
        for rules in (instance_problems, docker_problems, code_sync_problems, mlflow_problems, amp_problems):
            problems += rules(cloud, config)
        problems += data_problems(config) + commit_problems(config) + passrole_problems(cloud, config)
    elif cloud != FAKE_PROVIDER:
        problems.append(f"provider type {cloud!r}: this checker knows {', '.join(CLOUDS)} and {FAKE_PROVIDER}")
    return problems


def cluster_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    head_name, types = config.get("head_node_type"), node_types(config)
    if head_name not in types:
        problems.append(f"head_node_type {head_name!r} is not one of available_node_types {sorted(types)}")
    if not config.get("cluster_name"):
        problems.append("cluster_name missing")
    if not (isinstance(config.get("idle_timeout_minutes"), (int, float)) and config["idle_timeout_minutes"] > 0):
        problems.append("idle_timeout_minutes must be set (> 0) so idle GPU nodes go away")
    return problems


def node_type_problems(config: dict[str, Any]) -> list[str]:
    """Resources declared; a CPU head; GPU workers that scale from zero, one single-GPU and one multi-GPU type."""
    problems, gpu_counts = [], []
    for name, node in node_types(config).items():
        resources = node.get("resources") or {}
        if "CPU" not in resources or "GPU" not in resources:
            problems.append(f"{name}: resources must declare CPU and GPU (got {resources})")
        if name == config.get("head_node_type"):
            if resources.get("GPU", 0):
                problems.append(f"{name}: the head is a CPU node (got resources {resources})")
            continue
        if node.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (GPU nodes only while trials need them)")
        if not node.get("max_workers", 0) >= 1:
            problems.append(f"{name}: max_workers must be >= 1")
        if resources.get("GPU", 0) < 1:
            problems.append(f"{name}: a worker type must declare resources GPU >= 1 (got {resources})")
        else:
            gpu_counts.append(resources["GPU"])
    if gpu_counts and (min(gpu_counts) != 1 or max(gpu_counts) < 4):
        problems.append(f"need a single-GPU type (CIFAR) and a multi-GPU type (ImageNet DDP); got {gpu_counts}")
    return problems


def instance_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """The instances behind the node types: as many vCPUs and GPUs as declared, a named VM image with a new
    enough NVIDIA driver, spot GPU workers, an on-demand CPU head."""
    problems = []
    for name, node in node_types(config).items():
        node_config, resources = node.get("node_config") or {}, node.get("resources") or {}
        itype, real = instance_type(cloud, node_config), instance_gpus(cloud, node_config)
        known = INSTANCES.get(itype)
        if known and resources.get("CPU", 0) > known[0]:
            problems.append(f"{name}: resources CPU {resources['CPU']} > {known[0]} vCPUs of {itype}")
        if name == config.get("head_node_type"):
            if real:
                problems.append(f"{name}: the head is a CPU node (got {itype}, resources {resources})")
            if is_spot(cloud, node_config):
                problems.append(f"{name}: the head must not be spot/preemptible")
            continue
        gpus = resources.get("GPU", 0)
        if gpus < 1:
            continue  # reported by node_type_problems
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
            problems += gcp_scheduling_problems(name, node_config)
    if cloud == "azure":
        problems += azure_template_problems(config)
    return problems


def gcp_scheduling_problems(name: str, node_config: dict[str, Any]) -> list[str]:
    """Ray's older GCP examples wrote `scheduling` as a list; the Compute API wants an object."""
    scheduling = node_config.get("scheduling")
    if not isinstance(scheduling, dict):
        return [f"{name}: GCP scheduling must be an object, not {type(scheduling).__name__}"]
    if scheduling.get("onHostMaintenance") != "TERMINATE" or scheduling.get("automaticRestart") is not False:
        return [f"{name}: GPU/preemptible VMs need onHostMaintenance TERMINATE, automaticRestart false"]
    return []


def azure_template_problems(config: dict[str, Any]) -> list[str]:
    """node_config.azure_arm_parameters are passed as parameters of Ray's ARM template: only its own."""
    import ray.autoscaler

    template = os.path.join(os.path.dirname(ray.autoscaler.__file__), "_private", "_azure", "azure-vm-template.json")
    with open(template, encoding="utf-8") as f:
        allowed = set(json.load(f)["parameters"])
    problems = []
    for name, node in node_types(config).items():
        unknown = set((node.get("node_config") or {}).get("azure_arm_parameters") or {}) - allowed
        if unknown:
            problems.append(f"{name}: {sorted(unknown)} are not parameters of Ray's Azure VM template")
    return problems


def docker_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """The installed Ray's image, shared memory for the object store on every node, token auth everywhere."""
    problems, image = [], expected_image()
    docker = config.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if key in docker and docker[key] != image:
            problems.append(f"docker.{key} is {docker[key]!r}; expected {image!r} (ray-ml images stop at 2.30)")
    if "image" not in docker:
        problems.append(f"docker.image missing (expected {image})")
    for name, node in node_types(config).items():
        options = docker_options(config, name)
        shm = [o for o in options if "--shm-size" in o]
        if len(shm) != 1:
            problems.append(f"{name}: needs exactly one --shm-size in its docker run options (got {shm})")
        elif (shm_bytes(shm[0]) or 0) < 2**30:
            problems.append(f"{name}: --shm-size {shm[0]} is too small for the object store")
        if not any(re.search(r"RAY_AUTH_MODE=token\b", o) for o in options):
            problems.append(f"{name}: docker run options must set RAY_AUTH_MODE=token")
        own_image = (node.get("docker") or {}).get("worker_image")
        if own_image is not None and own_image != image:
            problems.append(f"{name}: docker.worker_image {own_image!r} != {image!r}")
    return problems


def code_sync_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """The checkout on every node, installed there; the token file mounted, not inlined."""
    problems = []
    mounts = config.get("file_mounts") or {}
    if str(mounts.get(PROJECT_MOUNT, "")).rstrip("/") not in (".", "./"):
        problems.append(f"file_mounts must sync the checkout: {PROJECT_MOUNT!r}: '.' (got {mounts})")
    if mounts.get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("file_mounts must copy the local token file: '~/.ray/auth_token': '~/.ray/auth_token'")
    install = re.compile(rf"\bpip install\b.*\s-e\s+{re.escape(PROJECT_MOUNT)}/?(\s|$)")
    for name in node_types(config):
        if not any(install.search(c) for c in setup_commands(config, name)):
            problems.append(f"{name}: setup must `pip install -e {PROJECT_MOUNT}` (the synced checkout)")
    for pattern in config.get("rsync_exclude") or []:
        dropped = [p for p in tracked_project_files() if rsync_excludes(pattern, p)]
        if dropped:
            problems.append(f"rsync_exclude {pattern!r} drops project code, e.g. {dropped[:3]}")
    return problems


def mlflow_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """MLflow on the head: after `ray start --head`, backgrounded, 127.0.0.1 only, SQLite on a host volume,
    artifacts in the cloud's bucket; the Ray dashboard not on every interface either."""
    problems = []
    starts = config.get("head_start_ray_commands") or []
    ray_start = next((i for i, c in enumerate(starts) if re.search(r"\bray start\b.*--head", c)), None)
    if ray_start is None:
        problems.append("head_start_ray_commands must run `ray start --head`")
    if any("--dashboard-host=0.0.0.0" in c or "--dashboard-host 0.0.0.0" in c for c in starts):
        problems.append("the Ray dashboard must not listen on 0.0.0.0 (use port forwarding)")
    found = mlflow_command(config)
    if found is None:
        return problems + ["head_start_ray_commands must start `mlflow server`"]
    index, command = found
    if ray_start is not None and index <= ray_start:
        problems.append("mlflow server must start after `ray start --head`")
    if "nohup" not in command or not re.search(r"&\s*\)*\s*$", command):
        problems.append("mlflow server must run in the background (nohup ... &)")
    if flag(command, "--host") != "127.0.0.1":
        problems.append(f"mlflow server must listen on 127.0.0.1 only (got --host {flag(command, '--host')})")
    if not (flag(command, "--port") or "").isdigit():
        problems.append("mlflow server needs an explicit --port")
    problems += mlflow_store_problems(config, command)
    artifacts = flag(command, "--artifacts-destination") or ""
    if not artifacts.startswith(ARTIFACT_SCHEME[cloud]):
        problems.append(f"mlflow --artifacts-destination must be {ARTIFACT_SCHEME[cloud]}... (got {artifacts!r})")
    return problems


def mlflow_store_problems(config: dict[str, Any], command: str) -> list[str]:
    """The SQLite database outlives the head's container: an absolute path in a host volume."""
    store = flag(command, "--backend-store-uri") or ""
    if not store.startswith("sqlite:////"):
        return [f"mlflow --backend-store-uri must be an absolute sqlite://// path (got {store!r})"]
    db_dir = os.path.dirname(store.removeprefix("sqlite:///"))
    head_options = docker_options(config, config.get("head_node_type") or "")
    if not any(re.search(rf"-v\s+\S+:{re.escape(db_dir)}\b", o) for o in head_options):
        return [f"MLflow's database folder {db_dir} must be a host volume (head_run_options)"]
    return []


def shell_problems(config: dict[str, Any]) -> list[str]:
    """Ray runs every command list through bash on the nodes: each command must at least parse (bash -n)."""
    commands = [(key, c) for key in COMMAND_LISTS for c in config.get(key) or []]
    commands += [(f"{name}.{key}", c) for name, node in node_types(config).items()
                 for key in ("initialization_commands", "worker_setup_commands") for c in node.get(key) or []]
    return [f"{where}: bash cannot parse {command[:60]!r}: {error}"
            for where, command in commands if (error := bash_syntax_error(command))]


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


def passrole_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """AWS: GPU workers need an instance profile (S3 for checkpoints) whose role the head may pass on when it
    launches them, as cluster/aws-passrole-policy.json allows (`ray up` names the profile after its role)."""
    if cloud != "aws":
        return []
    policy = json.loads(PASSROLE_POLICY.read_text(encoding="utf-8"))
    problems = []
    for name, node in worker_types(config).items():
        profile = ((node.get("node_config") or {}).get("IamInstanceProfile") or {}).get("Name")
        if not profile:
            problems.append(f"{name}: needs an IamInstanceProfile: trials write checkpoints to S3")
        elif not policy_allows(policy, "iam:PassRole", f"arn:aws:iam::{EXAMPLE_ACCOUNT}:role/{profile}"):
            problems.append(f"{name}: {PASSROLE_POLICY.name} does not let the head pass role {profile!r}")
    return problems


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


def amp_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """Every GPU type's GPU is known, and runs the autocast dtype of the experiments sent to it."""
    problems = []
    for name, node in worker_types(config).items():
        node_config = node.get("node_config") or {}
        model = gpu_model(cloud, node_config)
        if model is None:
            problems.append(f"{name}: unknown GPU instance type {instance_type(cloud, node_config)!r}"
                            " (add its GPU to GPU_MODEL in bickd_tune/cluster_check.py)")
            continue
        shape = node_shape(node.get("resources") or {})
        for experiment_name, experiment in gpu_experiments().items():
            amp = experiment.base_train_config().runtime.amp
            if experiment_shape(experiment) == shape and COMPUTE_CAPABILITY[model] < AMP_NEEDS.get(amp, 0):
                problems.append(f"{name}: {model} has no {amp} (compute capability {COMPUTE_CAPABILITY[model]}), "
                                f"which {experiment_name} uses")
    return problems


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


# ------------------------------------------------------- node shapes and what the shipped experiments need

@functools.lru_cache(maxsize=None)
def shipped_experiments() -> dict[str, Any]:
    """File name -> validated experiment, for every experiment YAML in search_spaces/."""
    from bickd_tune.experiment import load_experiment

    return {path.name: load_experiment(str(path)) for path in sorted(EXPERIMENTS.glob("*.yaml"))}


def gpu_experiments() -> dict[str, Any]:
    return {name: e for name, e in shipped_experiments().items() if e.resources.gpus_per_trial > 0}


def raw_data_section(name: str) -> dict[str, Any]:
    """The experiment's `data:` as written (a loader may resolve paths; the YAML says where the data is)."""
    return (yaml.safe_load((EXPERIMENTS / name).read_text(encoding="utf-8")) or {}).get("data") or {}


def fixed_data_roots() -> dict[str, set[str]]:
    """Shape -> data roots its experiments read and never download (e.g. ImageNet): they must be mounted."""
    roots: dict[str, set[str]] = {}
    for name, experiment in gpu_experiments().items():
        data = raw_data_section(name)
        root = str(data.get("root") or "")
        if os.path.isabs(root) and not data.get("download"):
            roots.setdefault(experiment_shape(experiment) or "?", set()).add(root.rstrip("/"))
    return roots


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
        problems += [p for node_type, res in hosts.items() for p in packing_problems(name, r, node_type, res)]
        problems += driver_problems(name, r, head, workers)
    return problems


def packing_problems(name: str, r, node_type: str, resources: dict[str, float]) -> list[str]:
    """A node holds as many trials of the experiment as its GPUs allow, or all of a DDP trial's workers."""
    device, workers_per_trial, _ = trial_bundles(r)
    held = copies_that_fit(resources, device)
    by_gpus = copies_that_fit(resources, {"GPU": r.gpus_per_trial})
    if workers_per_trial == 1 and held < by_gpus:
        return [f"{node_type}: holds {held} trials of {name} while its GPUs hold {by_gpus} "
                f"({resources.get('CPU', 0):g} CPUs for {r.cpus_per_trial:g} per trial)"]
    if workers_per_trial > 1 and held < workers_per_trial:
        return [f"{node_type}: holds {held} of the {workers_per_trial} DDP workers of {name}"]
    return []


def driver_problems(name: str, r, head: dict[str, float], workers: dict[str, dict[str, float]]) -> list[str]:
    """The trial that only drives DDP workers fits the head, and no GPU node (alone it would start one)."""
    _, _, driver = trial_bundles(r)
    if not driver:
        return []
    problems = []
    if copies_that_fit(head, driver) < 1:
        problems.append(f"{name}: the head cannot hold the trial that drives the DDP workers ({driver}); "
                        "the autoscaler would start a GPU node for it")
    problems += [f"{name}: the trial that drives the DDP workers ({driver}) fits {t}: alone it starts "
                 "that GPU node" for t, res in workers.items() if copies_that_fit(res, driver) >= 1]
    return problems


# ---------------------------------------------------------------------------------------- KubeRay RayJob

def pod_specs(job: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group, group spec, pod spec) for the head group and every worker group."""
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    return [("head", head, head["template"]["spec"])] + [
        (g["groupName"], g, g["template"]["spec"]) for g in cluster.get("workerGroupSpecs") or []]


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return (pod.get("containers") or [{}])[0]


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
    limits = (ray_container(pod).get("resources") or {}).get("limits") or {}
    requests = (ray_container(pod).get("resources") or {}).get("requests") or {}
    resources = {"CPU": cpu_quantity(params.get("num-cpus", limits.get("cpu", requests.get("cpu", 0)))),
                 "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
    if params.get("resources"):
        resources.update(start_param_resources(params["resources"]))
    return resources


def kuberay_nodes(job: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(the head's Ray resources, worker group -> Ray resources) of the RayJob."""
    groups = {group: kuberay_group_resources(spec, pod) for group, spec, pod in pod_specs(job)}
    return groups.pop("head"), groups


def group_shape(group_spec: dict[str, Any], pod: dict[str, Any]) -> str | None:
    try:
        return node_shape(kuberay_group_resources(group_spec, pod))
    except ValueError:
        return None  # reported by the shape check


def kuberay_problems(job: dict[str, Any]) -> list[str]:
    """Everything this project requires of the RayJob: the job itself, its runtime env, its pods, the Ray
    resources they advertise and the experiments that must fit them."""
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        return [f"expected apiVersion ray.io/v1, kind RayJob (got {job.get('apiVersion')}, {job.get('kind')})"]
    problems = rayjob_spec_problems(job) + runtime_env_problems(job.get("spec") or {}) + pod_problems(job)
    try:
        head, workers = kuberay_nodes(job)
        problems += shape_problems(head, workers) + experiment_fit_problems(head, workers)
    except (ValueError, KeyError) as err:
        problems.append(f"rayStartParams: {err}")
    return problems + kuberay_cpu_problems(job) + kuberay_data_problems(job)


def rayjob_spec_problems(job: dict[str, Any]) -> list[str]:
    problems = []
    spec = job.get("spec") or {}
    entrypoint = " ".join(str(spec.get("entrypoint", "")).split())
    if not entrypoint.startswith("python -m platform.tune ") or "--address auto" not in entrypoint:
        problems.append(f"entrypoint must run `python -m platform.tune ... --address auto` (got {entrypoint!r})")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true")
    version, pinned = importlib.metadata.version("ray"), (spec.get("rayClusterSpec") or {}).get("rayVersion")
    if str(pinned) != version:
        problems.append(f"rayVersion {pinned!r} != installed Ray {version}")
    return problems


def runtime_env_problems(spec: dict[str, Any]) -> list[str]:
    """A valid Ray runtime env that carries the code and installs the project, and that merges with the
    runtime env the platform's own ray.init passes (py_modules) instead of conflicting."""
    from ray.runtime_env import RuntimeEnv

    from bickd_tune.ray_env import joined_runtime_env

    problems = []
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        RuntimeEnv(**env)
        if not env.get("working_dir"):
            problems.append("runtimeEnvYAML needs a working_dir: the project's code on every node")
        packages = env.get("pip") if isinstance(env.get("pip"), list) else (env.get("pip") or {}).get("packages", [])
        if not any("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in p for p in packages):
            problems.append("runtimeEnvYAML pip must install the project from the working dir")
        if runtime_envs_conflict(env, joined_runtime_env()):
            problems.append("runtimeEnvYAML conflicts with the platform's ray.init runtime env (py_modules)")
    except (ValueError, TypeError, yaml.YAMLError) as err:
        problems.append(f"runtimeEnvYAML is not a valid Ray runtime env: {err}")
    # Every other submission mode hands the runtime env to `ray job submit` inside `bash -c "..."`, where
    # ${VAR} becomes "" before Ray sees it (ray issue 59343).
    if "${" in str(spec.get("runtimeEnvYAML") or "") and spec.get("submissionMode") not in SHELL_FREE_SUBMISSION:
        problems.append(f"submissionMode {spec.get('submissionMode', 'K8sJobMode (default)')}: the submitter's shell "
                        "expands ${...} in runtimeEnvYAML to an empty string; use HTTPMode")
    return problems


def pod_problems(job: dict[str, Any]) -> list[str]:
    """String rayStartParams, a reachable dashboard, the pinned image, /dev/shm in memory, GPU worker groups
    that scale from zero."""
    problems, gpu_groups, image = [], 0, expected_image()
    for group, group_spec, pod in pod_specs(job):
        params = group_spec.get("rayStartParams") or {}
        if any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{group}: rayStartParams values must be strings (got {params})")
        if group == "head" and params.get("dashboard-host") == "127.0.0.1":
            problems.append("head: the job submitter must reach the dashboard; drop dashboard-host 127.0.0.1")
        for container in pod.get("containers") or []:
            if container.get("image", "").startswith("rayproject/") and container["image"] != image:
                problems.append(f"{group}: image {container['image']!r}; expected {image!r}")
        shm_volumes = {v["name"] for v in pod.get("volumes") or []
                       if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        if not any(m.get("mountPath") == "/dev/shm" and m.get("name") in shm_volumes
                   for m in ray_container(pod).get("volumeMounts") or []):
            problems.append(f"{group}: mount an emptyDir with medium Memory at /dev/shm")
        if group == "head":
            continue
        limits = (ray_container(pod).get("resources") or {}).get("limits") or {}
        requests = (ray_container(pod).get("resources") or {}).get("requests") or {}
        gpu_groups += int(str(limits.get("nvidia.com/gpu", 0))) >= 1
        if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(limits.get("nvidia.com/gpu")):
            problems.append(f"{group}: nvidia.com/gpu requests must equal limits")
        if group_spec.get("minReplicas", 0) != 0:
            problems.append(f"{group}: minReplicas must be 0")
    if gpu_groups == 0:
        problems.append("a worker group must request nvidia.com/gpu (limits)")
    return problems


def launcher_vcpus_by_shape() -> dict[str, int]:
    """Shape -> the fewest vCPUs of a shipped launcher node type of that shape: the node a KubeRay group of
    that shape must fit on."""
    vcpus: dict[str, int] = {}
    for cloud in CLOUDS:
        for node in worker_types(load_shipped(cloud)).values():
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
        requests = (ray_container(pod).get("resources") or {}).get("requests") or {}
        limits = (ray_container(pod).get("resources") or {}).get("limits") or {}
        request = cpu_quantity(requests.get("cpu", 0))
        if "cpu" not in limits or cpu_quantity(limits["cpu"]) != request:
            problems.append(f"{group}: CPU limits must equal requests ({limits.get('cpu')} != {request:g})")
        num_cpus = (spec.get("rayStartParams") or {}).get("num-cpus")
        if num_cpus is None or cpu_quantity(num_cpus) != request:
            problems.append(f"{group}: rayStartParams num-cpus must be the pod's CPU request {request:g} "
                            f"(got {num_cpus})")
        shape = group_shape(spec, pod)
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
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mounts = {m.get("mountPath", "").rstrip("/"): m.get("name")
                  for m in ray_container(pod).get("volumeMounts") or []}
        for root in sorted(roots.get(group_shape(spec, pod) or "", ())):
            volume = volumes.get(mounts.get(root)) or {}
            if not (volume.get("persistentVolumeClaim") or {}).get("claimName"):
                problems.append(f"{group}: mount the data root {root} from a PersistentVolumeClaim (got {volume})")
    return problems


def kuberay_data_claims(job: dict[str, Any]) -> set[str]:
    """The PersistentVolumeClaims the worker groups mount (the guide must create them)."""
    return {v["persistentVolumeClaim"]["claimName"] for _, _, pod in pod_specs(job)[1:]
            for v in pod.get("volumes") or [] if (v.get("persistentVolumeClaim") or {}).get("claimName")}


# ------------------------------------------------------------------------------------------- credentials

def credential_problems(text: str, strict_words: bool) -> list[str]:
    """Keys, tokens and subscription ids in a file's text; with strict_words also the words that name them."""
    problems = [f"credential in file: {what}" for what, rx in CREDENTIAL_PATTERNS.items() if rx.search(text)]
    problems += [f"Azure subscription/tenant id {g} (only {PLACEHOLDER_GUID} is allowed)"
                 for g in GUID.findall(text) if g != PLACEHOLDER_GUID]
    if strict_words:
        problems += [f"credential word {m.group(0)!r} in a cluster YAML" for m in CREDENTIAL_WORDS.finditer(text)]
    return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------------------------- the CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bickd_tune.cluster_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="FILE", help="a launcher YAML or a KubeRay RayJob YAML")
    args = parser.parse_args(argv)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # Ray logs its default-filling at INFO
    status = 0
    for path in args.files:
        try:
            problems = check_file(path)
        except ConfigError as err:
            print(err, file=sys.stderr)
            status = 2
            continue
        print("\n".join(f"{path}: {problem}" for problem in problems) or f"{path}: ok", flush=True)
        status = max(status, 1 if problems else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
