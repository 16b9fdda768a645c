"""Checks a Ray cluster-launcher YAML or a KubeRay RayJob before `ray up` or `kubectl apply` spends money.

    python cluster/check.py cluster/aws.mine.yaml            # your filled copy (cluster/README.md)
    python cluster/check.py cluster/*.yaml                   # the templates: only their placeholders are left

Prints `path: problem` for each problem, or `path: ok`. Exit status 0 when every file is clean, 1 when a file
has a problem, 2 when a file cannot be read. Nothing is started and no cloud is called.

Ray checks a launcher YAML itself, with the functions `ray up` runs (its JSON schema, its defaults, its node-type
checks). On top of that, only the rules that guard a breakage users of this project met:
- a placeholder (REPLACE-...) left in the file;
- node shapes against the experiments in search_spaces/: each GPU node type advertises gpu<N>: N, each GPU
  experiment's trials fill their node type as its GPUs allow, a DDP trial's workers fit on one node and its
  driver (a `coordinator` slot by default) on the head, never on a GPU node (alone there it would start one);
- bf16 experiments on GPUs without bf16 (pre-Ampere instance families);
- `.git` reaching the head (the runs' git_commit tag);
- KubeRay: the submission mode that keeps the runtime env intact, CPU and memory requests within the
  allocatable share of the nodes cluster/README.md names, `num-cpus` equal to the pod's CPU request;
- credentials written into the file (CREDENTIAL_PATTERNS, which tests/test_security.py applies to every file).
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import functools
import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from ray.runtime_env import RuntimeEnv

from bickd_tune.ray_env import joined_runtime_env

try:
    from bickd_tune.ray_internals import prepare_config, validate_config
except ImportError:  # a Ray release moved its private functions: Ray's shipped JSON schema still applies
    prepare_config = validate_config = None

CHECKOUT = Path(__file__).resolve().parents[1]
EXPERIMENTS = CHECKOUT / "search_spaces"
# cluster/local.yaml: "nodes" are processes on this machine (Ray's fake provider, or the project's version of it)
LOCAL_PROVIDERS = ("fake_multinode", "bickd_tune.local_provider.LocalNodeProvider")

# A credential's value written into a file. The one definition: tests/test_security.py scans every file with it.
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Azure storage key": re.compile(r"(?i)AccountKey=[A-Za-z0-9+/=]{20,}"),
    "Ray token": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[0-9a-f]{16,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "password": re.compile(r"(?i)password\s*[:=]\s*['\"][^'\"]+['\"]"),
}
PLACEHOLDER = re.compile(r"\bREPLACE(?:-?[A-Z0-9]+)+\b")

SHAPE = re.compile(r"gpu(\d+)")     # a GPU node type advertises gpu<N>: N, N its GPU count
RAY_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}

# GPUs without bf16 (before Ampere): the instance families and accelerators that carry them. New instance
# types carry newer GPUs, so this list does not go stale; an unknown type passes.
PRE_AMPERE = {
    "aws": re.compile(r"^(g4dn|g4ad|g3s?|p2|p3dn|p3)\."),
    "gcp": re.compile(r"nvidia-tesla-(t4|v100|p100|p4|k80)"),
    "azure": re.compile(r"^Standard_(N[CV]\d+as_T4_v3|NC\d+r?s_v[23]|NC\d+r?|ND\d+r?s|NV\d+s?(_v3)?)$", re.I),
}
BF16_AMP = "bf16"

# KubeRay: the nodes cluster/README.md tells users to give each group, (vCPUs, GiB of memory).
KUBERAY_NODES = {"head": (8, 32), "gpu1": (8, 32), "gpu4": (48, 192)}
# What Kubernetes keeps of a node, GKE's published reservation (the largest of EKS, GKE and AKS): memory
# 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next 112, 2% above, plus a 100 MiB
# eviction threshold; CPU 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% above.
MEMORY_RESERVED = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02))
CPU_RESERVED = ((1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025))
EVICTION_GIB = 100 / 1024
DAEMONSETS = (0.5, 1.0)   # (CPUs, GiB) the node's DaemonSets request: CNI, kube-proxy, GPU plugin, logging
SHELL_FREE_SUBMISSION = ("HTTPMode",)


class Unreadable(Exception):
    """A file that is not a launcher YAML or a RayJob at all."""


# ---------------------------------------------------------------------------------------------- reading

def read(path: str | Path) -> tuple[dict[str, Any], str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Unreadable(f"{path}: cannot read it as YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict) or not ({"provider", "kind"} & set(config)):
        raise Unreadable(f"{path}: neither a Ray cluster launcher YAML (no provider) nor a KubeRay RayJob (no kind)")
    return config, text


def check_file(path: str | Path) -> list[str]:
    config, text = read(path)
    return check(config, text)


def check(config: dict[str, Any], text: str = "") -> list[str]:
    """Every problem of a launcher YAML or a RayJob; `text` (the file as written, comments included) is also
    scanned for placeholders and credentials."""
    text = text or yaml.safe_dump(config)
    problems = [f"placeholder {p} left: fill in your copy (cluster/README.md)"
                for p in dict.fromkeys(PLACEHOLDER.findall(text))]
    problems += [f"credential in the file: {what}" for what, rx in CREDENTIAL_PATTERNS.items() if rx.search(text)]
    try:
        problems += kuberay_problems(config) if "kind" in config else launcher_problems(config)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        problems.append(f"a field of an unexpected type: {type(err).__name__}: {err}")
    return problems


# ----------------------------------------------------------------------------------------- launcher YAMLs

def ray_refusal(config: dict[str, Any]) -> str | None:
    """What Ray's own validation says (None: accepted). There is no `ray up --dry-run`: these are the private
    functions `ray up` and Ray's tests of its example YAMLs call (Ray is pinned); if they move, Ray's shipped
    JSON schema still applies."""
    if validate_config is None:
        return schema_refusal(config)
    try:
        if on_this_machine(config):  # no defaults shipped for it: validation only
            validate_config(copy.deepcopy(config))
        else:
            validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as err:  # noqa: BLE001 - Ray refuses with whatever its code raises on the config
        return (str(err).strip().splitlines() or [type(err).__name__])[0]
    return None


def schema_refusal(config: dict[str, Any]) -> str | None:
    import jsonschema  # the fallback's own dependencies, only if Ray's functions moved
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text(encoding="utf-8"))
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as err:
        return err.message
    return None


def launcher_problems(config: dict[str, Any]) -> list[str]:
    refusal = ray_refusal(config)
    if refusal:
        return [f"Ray refuses it: {refusal}"]
    types = config["available_node_types"]
    head_name = config["head_node_type"]
    head = dict(types[head_name].get("resources") or {})
    workers = {name: dict(t.get("resources") or {}) for name, t in types.items() if name != head_name}
    problems = shape_problems(workers) + experiment_problems(head, workers)
    if not on_this_machine(config):  # fake nodes share this machine's files: nothing is synced
        problems += bf16_problems(config["provider"].get("type"), config) + git_problems(config)
    return problems


def on_this_machine(config: dict[str, Any]) -> bool:
    provider = config["provider"]
    return provider.get("type") in LOCAL_PROVIDERS or provider.get("module") in LOCAL_PROVIDERS


def bf16_problems(cloud: str, config: dict[str, Any]) -> list[str]:
    """A node type whose GPU has no bf16 must not host an experiment that trains in bf16."""
    rule = PRE_AMPERE.get(cloud)
    if rule is None:
        return []
    problems = []
    for name, node in config["available_node_types"].items():
        node_config = node.get("node_config") or {}
        named = [node_config.get("InstanceType", ""), str(node_config.get("machineType", "")),
                 (node_config.get("azure_arm_parameters") or {}).get("vmSize", "")]
        named += [str(a.get("acceleratorType", "")) for a in node_config.get("guestAccelerators") or []]
        old = [n for n in named if n and rule.search(n.rsplit("/", 1)[-1])]
        shape = node_shape(node.get("resources") or {})
        users = [e for e, experiment in gpu_experiments().items()
                 if experiment_shape(experiment) == shape and experiment.runtime.amp == BF16_AMP]
        if old and users:
            problems.append(f"{name}: {old[0]} has a GPU without bf16 (before Ampere), which {', '.join(users)} "
                            "train in; use an A10G, L4, A100 or newer")
    return problems


def git_problems(config: dict[str, Any]) -> list[str]:
    """The checkout's .git reaches the head and git there may read it: else every run is tagged 'unknown'."""
    patterns = [(f"rsync_exclude {p!r}", p) for p in config.get("rsync_exclude") or []]
    for ignore_file in config.get("rsync_filter") or []:
        path = CHECKOUT / ignore_file
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        patterns += [(f"{ignore_file} line {line.strip()!r}", line.strip()) for line in lines
                     if line.strip() and not line.startswith(("#", "!"))]
    problems = [f"{where} leaves .git out of the sync: runs would be tagged git_commit 'unknown'"
                for where, pattern in patterns if drops_git(pattern)]
    head_setup = (config.get("setup_commands") or []) + (config.get("head_setup_commands") or [])
    if not any("safe.directory" in command for command in head_setup):
        problems.append("head setup must add the synced checkout to git's safe.directory: it belongs to the VM's "
                        "user, and git refuses to read it otherwise (runs tagged git_commit 'unknown')")
    return problems


def drops_git(pattern: str) -> bool:
    """Does an rsync exclude pattern match .git or a path inside it (one path component, or a path)?"""
    pattern = pattern.strip("/").removeprefix("**/")
    return any(fnmatch.fnmatchcase(candidate, pattern) for candidate in (".git", ".git/HEAD", ".git/objects"))


# ------------------------------------------------------------- node shapes and the experiments they host

def node_shape(resources: dict[str, Any]) -> str | None:
    shapes = [name for name in resources if SHAPE.fullmatch(name)]
    return shapes[0] if len(shapes) == 1 else None


@functools.cache
def gpu_experiments() -> dict[str, Any]:
    """File name -> validated experiment, for the experiments of search_spaces/ that train on GPUs."""
    from bickd_tune.experiment import load_experiment  # the project (and torch) only when a rule needs them

    loaded = {path.name: load_experiment(str(path)) for path in sorted(EXPERIMENTS.glob("*.yaml"))}
    return {name: e for name, e in loaded.items() if e.resources.gpus_per_trial > 0}


def experiment_shape(experiment) -> str | None:
    return node_shape(experiment.resources.custom_resources)


def fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of a resource bundle one node holds."""
    needs = {name: amount for name, amount in bundle.items() if amount > 0}
    return int(min((node.get(name, 0) / amount for name, amount in needs.items()), default=10**6) + 1e-9)


def shape_problems(workers: dict[str, dict[str, float]]) -> list[str]:
    """Each GPU type advertises exactly gpu<N>: N for its N GPUs: with GPU alone Ray's bin-packing would put
    seven waiting 1-GPU trials on a new 4-GPU node."""
    problems = []
    for name, resources in workers.items():
        custom = {k: v for k, v in resources.items() if k not in RAY_BUILTIN}
        gpus = resources.get("GPU", 0)
        if gpus and custom != {f"gpu{gpus:g}": gpus}:
            problems.append(f"{name}: advertise exactly one shape resource, gpu{gpus:g}: {gpus:g} (its GPU count), "
                            f"so that trials steer to it; got {custom}")
    return problems


def experiment_problems(head: dict[str, float], workers: dict[str, dict[str, float]]) -> list[str]:
    """Every GPU experiment names a shape a worker type has; its trials fill that type as its GPUs allow (CPUs
    are never the limit); a DDP trial's workers fit one node; the trial driving them fits the head only."""
    problems = []
    for name, experiment in gpu_experiments().items():
        r = experiment.resources
        shape = experiment_shape(experiment)
        hosts = {t: res for t, res in workers.items() if shape and res.get(shape)}
        if not hosts:
            problems.append(f"{name}: no worker type advertises the shape it asks for ({r.custom_resources})")
            continue
        worker = {"CPU": r.cpus_per_trial, "GPU": r.gpus_per_trial, **r.custom_resources}
        for node_type, resources in hosts.items():
            held, by_gpus = fits(resources, worker), fits(resources, {"GPU": r.gpus_per_trial})
            if r.num_workers <= 1 and held < by_gpus:
                problems.append(f"{node_type}: holds {held} trials of {name} while its GPUs hold {by_gpus} "
                                f"({resources.get('CPU', 0):g} CPUs for {r.cpus_per_trial:g} per trial)")
            if r.num_workers > 1 and held < r.num_workers:
                problems.append(f"{node_type}: holds {held} of the {r.num_workers} DDP workers of {name}")
        if r.num_workers:
            driver = dict(r.coordinator_resources)
            if fits(head, driver) < 1:
                problems.append(f"{name}: the head cannot hold the trial that drives its DDP workers ({driver}); "
                                "the autoscaler would start a node for it")
            problems += [f"{name}: the trial that drives its DDP workers ({driver}) fits {t}: alone it would start "
                         "that GPU node" for t, res in workers.items() if fits(res, driver) >= 1]
    return problems


# ---------------------------------------------------------------------------------------------- KubeRay

def kuberay_problems(job: dict[str, Any]) -> list[str]:
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        return [f"expected apiVersion ray.io/v1, kind RayJob (got {job.get('apiVersion')}, {job.get('kind')})"]
    spec = job["spec"]
    problems = runtime_env_problems(spec)
    groups = pod_groups(spec["rayClusterSpec"])
    resources = {name: ray_resources(group, pod) for name, (group, pod) in groups.items()}
    head = resources.pop("head")
    problems += shape_problems(resources) + experiment_problems(head, resources)
    for name, (group, pod) in groups.items():
        problems += pod_problems(name, group, pod)
    return problems


def runtime_env_problems(spec: dict[str, Any]) -> list[str]:
    """A runtime env Ray accepts, that the platform's own ray.init can add to, and that reaches Ray intact."""
    text = str(spec.get("runtimeEnvYAML") or "")
    problems = []
    try:
        env = yaml.safe_load(text) or {}
        if not PLACEHOLDER.search(text):  # a placeholder is no path yet; it is reported as such
            RuntimeEnv(**env)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        return [f"runtimeEnvYAML is not a Ray runtime env: {str(err).splitlines()[0]}"]
    driver = joined_runtime_env()   # Ray refuses a field, or an env var, that both set
    both = (set(env) & set(driver)) - {"env_vars"}
    both |= set(env.get("env_vars") or {}) & set(driver.get("env_vars") or {})
    if both:
        problems.append(f"runtimeEnvYAML sets {sorted(both)}, which the platform's ray.init sets too: Ray refuses both")
    # Every other mode hands the runtime env to `ray job submit` inside `bash -c "..."`, where ${VAR} becomes
    # "" before Ray sees it (ray issue 59343): the job then fails on `import torch`.
    if "${" in text and spec.get("submissionMode") not in SHELL_FREE_SUBMISSION:
        problems.append(f"submissionMode {spec.get('submissionMode', 'K8sJobMode (the default)')}: the submitter's "
                        "shell turns ${...} in runtimeEnvYAML into an empty string; use HTTPMode")
    return problems


def pod_groups(cluster: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Group name ("head" for the head) -> (group spec, pod spec)."""
    groups = {"head": (cluster["headGroupSpec"], cluster["headGroupSpec"]["template"]["spec"])}
    groups.update({g["groupName"]: (g, g["template"]["spec"]) for g in cluster.get("workerGroupSpecs") or []})
    return groups


def container_resources(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = (pod.get("containers") or [{}])[0].get("resources") or {}
    return resources.get("requests") or {}, resources.get("limits") or {}


def quantity(value: Any, unit: str) -> float:
    """A Kubernetes quantity in CPUs ("7", "7500m") or GiB ("28Gi", "30G", "512Mi")."""
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value).strip()).groups()
    scale = {"cpu": {"": 1, "m": 1e-3},
             "GiB": {"": 2**-30, "k": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30, "T": 1e12 / 2**30,
                     "Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}}[unit]
    return float(number) * scale[suffix]


def ray_resources(group: dict[str, Any], pod: dict[str, Any]) -> dict[str, float]:
    """What `ray start` advertises in the group's pods: num-cpus / num-gpus, else (as KubeRay does) the container's
    limits, plus the custom `resources` (KubeRay's documented form: one shell word holding a JSON map)."""
    params = group.get("rayStartParams") or {}
    requests, limits = container_resources(pod)
    resources = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", requests.get("cpu", 0))), "cpu"),
                 "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
    if params.get("resources"):
        words = shlex.split(params["resources"])
        resources.update(json.loads(words[0]) if len(words) == 1 else {})
    return resources


def allocatable(total: float, reserved: tuple[tuple[float, float], ...]) -> float:
    left, kept = total, 0.0
    for size, share in reserved:
        kept += min(left, size) * share
        left -= min(left, size)
    return total - kept


def pod_problems(name: str, group: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """The pod fits the node cluster/README.md names for it, and Ray advertises the CPUs the pod has."""
    requests, _ = container_resources(pod)
    cpus, memory = quantity(requests.get("cpu", 0), "cpu"), quantity(requests.get("memory", 0), "GiB")
    shape = "head" if name == "head" else node_shape(ray_resources(group, pod))
    problems = []
    if shape not in KUBERAY_NODES:
        return [f"{name}: no node size for shape {shape} (cluster/README.md names them: {KUBERAY_NODES})"]
    vcpus, gib = KUBERAY_NODES[shape]
    cpu_room = allocatable(vcpus, CPU_RESERVED) - DAEMONSETS[0]
    memory_room = allocatable(gib, MEMORY_RESERVED) - EVICTION_GIB - DAEMONSETS[1]
    if cpus > cpu_room:
        problems.append(f"{name}: requests {cpus:g} CPUs; a {vcpus}-vCPU node has about {cpu_room:.1f} for pods, "
                        "so the pod may never schedule")
    if memory > memory_room:
        problems.append(f"{name}: requests {memory:g} GiB; a {gib} GiB node has about {memory_room:.1f} GiB for pods "
                        "(Kubernetes' reservation and its DaemonSets), so the pod may never schedule")
    num_cpus = (group.get("rayStartParams") or {}).get("num-cpus")
    if name != "head" and (num_cpus is None or quantity(num_cpus, "cpu") != cpus):
        problems.append(f"{name}: rayStartParams num-cpus must be the pod's CPU request {cpus:g} (got {num_cpus})")
    return problems


# --------------------------------------------------------------------------------------------- the CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python cluster/check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="FILE", help="a launcher YAML or a KubeRay RayJob YAML")
    args = parser.parse_args(argv)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # Ray logs its default-filling at INFO
    status = 0
    for path in args.files:
        try:
            problems = check_file(path)
        except Unreadable as err:
            print(err, file=sys.stderr)
            status = 2
            continue
        print("\n".join(f"{path}: {problem}" for problem in problems) or f"{path}: ok", flush=True)
        status = max(status, 1 if problems else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
