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
PROJECT_CODE = ("bickd/", "platform/", "search_spaces/", "pyproject.toml")

# GPU instance families per cloud (the schema accepts any string here).
AWS_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e"}
GCP_GPU_MACHINE_PREFIXES = ("a2-", "a3-", "g2-")          # GPUs come with the machine type
AZURE_GPU_SIZE = re.compile(r"^Standard_N[CDV]", re.IGNORECASE)
# (vCPUs, GPUs) of the instance types these configs use or could use; unknown types skip the count checks.
INSTANCES = {
    "m6i.2xlarge": (8, 0), "g4dn.xlarge": (4, 1), "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4), "g5.48xlarge": (192, 8), "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1),
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


def test_trials_fit_the_worker_types():
    """A cifar.yaml trial fits the single-GPU type twice; an imagenet.yaml DDP trial fits the 4-GPU type."""
    def needs(name: str) -> tuple[float, float]:
        r = yaml.safe_load((ROOT / "search_spaces" / name).read_text(encoding="utf-8"))["resources"]
        workers = max(r.get("num_workers", 0), 1)
        return workers * r["cpus_per_trial"] + (0.5 if r.get("num_workers") else 0), workers * r["gpus_per_trial"]

    cifar, imagenet = needs("cifar.yaml"), needs("imagenet.yaml")
    for cloud in CLOUDS:
        types = [t["resources"] for t in worker_types(load(cloud)).values()]
        single = [r for r in types if r["GPU"] == 1]
        multi = [r for r in types if r["GPU"] >= 4]
        assert any(r["CPU"] >= 2 * cifar[0] and r["GPU"] >= 2 * cifar[1] for r in single), (cloud, single, cifar)
        assert any(r["CPU"] >= imagenet[0] and r["GPU"] >= imagenet[1] for r in multi), (cloud, multi, imagenet)


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

def _readme_code() -> tuple[list[str], list[str]]:
    """(lines of the bash code blocks with continuations joined, inline `code` spans) of the guide."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return lines, inline


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
        for match in re.finditer(r"python -m platform\.tune [^\"'`\n]*", part):
            command = match.group(0).split(" #")[0].strip()
            args = command.split()[3:]
            if "..." not in command and args and not args[0].startswith("<"):
                found.append(command)  # not the generic `python -m platform.tune <experiment.yaml>`
    return found


def _validate_platform_command(command: str):
    from platform.experiment import load_experiment
    from platform.tune import build_parser, cli_overrides

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
        assert args.address == "auto", command
        assert experiment.is_remote and experiment.tracking.tracking_uri.startswith("http"), command


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

    from platform.ray_env import worker_env

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
    # merges with the runtime env the platform's own ray.init passes (PYTHONPATH) instead of conflicting.
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        runtime_env = RuntimeEnv(**env)
        if not env.get("working_dir"):
            problems.append("runtimeEnvYAML needs a working_dir: the project's code on every node")
        packages = env.get("pip") if isinstance(env.get("pip"), list) else (env.get("pip") or {}).get("packages", [])
        if not any("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in p for p in packages):
            problems.append("runtimeEnvYAML pip must install the project from the working dir")
        if _merge_runtime_env(runtime_env, RuntimeEnv(env_vars=worker_env())) is None:
            problems.append("runtimeEnvYAML conflicts with the platform's ray.init runtime env (PYTHONPATH)")
    except (ValueError, TypeError, yaml.YAMLError) as err:
        problems.append(f"runtimeEnvYAML is not a valid Ray runtime env: {err}")

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
    problems += credential_problems(yaml.safe_dump(job), strict_words=True)
    return problems


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
    "PYTHONPATH in the job's env": (lambda j: j["spec"].update(runtimeEnvYAML=j["spec"]["runtimeEnvYAML"]
                                                               + "env_vars: {PYTHONPATH: /app}\n"), "conflicts"),
    "dashboard on loopback": (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
        {"dashboard-host": "127.0.0.1"}), "dashboard"),
}


@pytest.mark.parametrize("case", sorted(KUBERAY_BROKEN))
def test_kuberay_broken_copy_is_caught(case):
    job = copy.deepcopy(load_kuberay())
    mutate, expected = KUBERAY_BROKEN[case]
    mutate(job)
    problems = kuberay_problems(job)
    assert any(expected in p for p in problems), problems
