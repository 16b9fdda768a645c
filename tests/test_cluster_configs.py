"""The cluster configs in cluster/ pass bickd_tune.cluster_check, and the checker fails broken copies of them.

The checker (Ray's own validation plus the project's rules) lives in bickd_tune/cluster_check.py; here: every
shipped config passes it, each broken copy is caught, the command line works, the node shapes agree with the
shipped experiments on every platform, and cluster/README.md's commands match Ray's CLI, the platform's CLI
and the configs. Nothing is mocked and nothing is started: no Ray cluster, no cloud SDK call.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import jsonschema
import pytest
import yaml

import ray
from bickd_tune import cluster_check as cc

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
CLOUDS = cc.CLOUDS
LAUNCHERS = CLOUDS + ("local",)
PLATFORMS = CLOUDS + ("kuberay",)
SHIPPED_CONFIGS = LAUNCHERS + ("kuberay",)
IAM_ROLE = "ray-autoscaler-v1"   # the role `ray up` creates on AWS; the GPU workers' profile has its name


def load(name: str) -> dict:
    return cc.load_shipped(name)


def platform_nodes(platform: str):
    return cc.kuberay_nodes(load("kuberay")) if platform == "kuberay" else cc.launcher_nodes(load(platform))


# ------------------------------------------------------------------------------------ the shipped configs

@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_config_passes_the_checker(name):
    assert cc.check_file(CLUSTER / f"{name}.yaml") == []


@pytest.mark.parametrize("name", CLOUDS)
def test_ray_validates_launcher_yaml(name):
    prepared = cc.ray_prepared(load(name))
    head = prepared["head_node_type"]
    # prepare_config caps the head type at 0 extra nodes and keeps every worker type.
    assert prepared["available_node_types"][head]["max_workers"] == 0
    assert set(prepared["available_node_types"]) == set(load(name)["available_node_types"])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_shipped_ray_schema_accepts_launcher_yaml(name):
    cc.schema_validate(load(name))  # the checker's fallback when Ray's private API moves


def test_launchers_pin_the_installed_ray_and_pyproject():
    pinned = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pinned and pinned.group(1) == ray.__version__, "pyproject's Ray pin and the installed Ray differ"
    assert cc.expected_image() == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert all(load(cloud)["docker"]["image"] == cc.expected_image() for cloud in CLOUDS)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_trials_fit_the_worker_types(platform):
    """On every cloud and on KubeRay: two CIFAR trials (cifar.yaml, cifar_ablation.yaml) per single-GPU node,
    one 4-worker ImageNet trial per 4-GPU node, its driver on the head; steered there by the shape resource."""
    head, workers = platform_nodes(platform)
    experiments = cc.gpu_experiments()
    assert cc.experiment_fit_problems(head, workers) == []
    placed = {name: [t for t, res in workers.items() if res.get(cc.experiment_shape(e))]
              for name, e in experiments.items()}
    assert {"cifar.yaml", "cifar_ablation.yaml", "imagenet.yaml"} <= set(placed), sorted(placed)
    for name in ("cifar.yaml", "cifar_ablation.yaml"):
        device, _, _ = cc.trial_bundles(experiments[name].resources)
        assert placed[name] and all(workers[t]["GPU"] == 1 and cc.copies_that_fit(workers[t], device) == 2
                                    for t in placed[name]), (name, placed[name])
    imagenet = experiments["imagenet.yaml"].resources
    assert placed["imagenet.yaml"] and all(workers[t]["GPU"] == imagenet.num_workers for t in placed["imagenet.yaml"])


def test_fit_check_catches_what_the_old_configs_did():
    """4-CPU CIFAR trials on a 7-CPU pod hold one trial per GPU; the default 0.5-CPU DDP driver fits no
    0-CPU head but fits every GPU node; no shape resource at all lets Ray put any trial anywhere."""
    head, workers = platform_nodes("kuberay")
    cifar = cc.gpu_experiments()["cifar.yaml"].resources.model_copy(update={"cpus_per_trial": 4})
    device, _, _ = cc.trial_bundles(cifar)
    assert cc.copies_that_fit(workers["gpu1"], device) == 1 < cc.copies_that_fit(workers["gpu1"], {"GPU": 0.5})
    default_driver = {"CPU": 0.5}
    assert cc.copies_that_fit(head, default_driver) == 0 and cc.copies_that_fit(workers["gpu4"], default_driver) >= 1
    bare = {name: {k: v for k, v in res.items() if k in cc.RAY_BUILTIN} for name, res in workers.items()}
    assert any("advertise exactly one shape resource" in p for p in cc.shape_problems(head, bare))
    assert any("no worker type advertises" in p for p in cc.experiment_fit_problems(head, bare))


def test_node_shapes_agree_across_platforms():
    """The same node shapes, GPU counts and head slots on AWS, Google Cloud, Azure and KubeRay (and so the
    same experiment YAMLs run on each)."""
    def summary(platform):
        head, workers = platform_nodes(platform)
        return head.get("CPU"), head.get(cc.COORDINATOR), tuple(sorted((cc.node_shape(r), r["GPU"])
                                                                       for r in workers.values()))

    summaries = {platform: summary(platform) for platform in PLATFORMS}
    assert len(set(summaries.values())) == 1, summaries
    assert summaries["aws"][2] == (("gpu1", 1), ("gpu4", 4))


@pytest.mark.parametrize("name", sorted(cc.gpu_experiments()))
def test_gpu_experiments_name_a_shape_every_platform_has(name):
    shape = cc.experiment_shape(cc.gpu_experiments()[name])
    assert shape, f"{name}: resources.custom_resources must name gpu<N>"
    for platform in PLATFORMS:
        _, workers = platform_nodes(platform)
        gpus = {res["GPU"] for res in workers.values() if res.get(shape)}
        assert gpus == {int(cc.SHAPE.fullmatch(shape).group(1))}, (platform, shape, gpus)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_no_t4_under_bf16(cloud):
    """bf16 autocast needs Ampere or newer: no T4 (or other pre-Ampere) type serves the bf16 experiments."""
    config = load(cloud)
    amps = {e.base_train_config().runtime.amp for e in cc.gpu_experiments().values()}
    assert "bf16" in amps, "the shipped GPU experiments use bf16; if that changes, revisit this test"
    models = {name: cc.gpu_model(cloud, t.get("node_config") or {}) for name, t in cc.worker_types(config).items()}
    assert None not in models.values(), models
    assert all(cc.COMPUTE_CAPABILITY[m] >= cc.AMP_NEEDS["bf16"] for m in models.values()), models
    assert cc.amp_problems(cloud, config) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_imagenet_data_is_mounted_on_its_nodes(cloud):
    config = load(cloud)
    root = cc.raw_data_section("imagenet.yaml")["root"].rstrip("/")
    assert root in cc.fixed_data_roots()["gpu4"]
    hosts = [name for name, t in cc.worker_types(config).items() if cc.node_shape(t["resources"]) == "gpu4"]
    assert hosts and all(root in cc.bind_mounts(cc.docker_options(config, name)) for name in hosts)
    assert cc.data_problems(config) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_git_metadata_reaches_the_head(cloud):
    """.git is synced with the checkout and git may read it there, so runs carry their real commit."""
    config = load(cloud)
    assert cc.commit_problems(config) == []
    assert not any(cc.rsync_excludes(p, cc.GIT_FILE) for p in config.get("rsync_exclude") or [])
    assert cc.rsync_excludes("**/.git", cc.GIT_FILE) and cc.rsync_excludes(".git", cc.GIT_FILE)  # the old exclusion


def test_passrole_policy_lets_the_head_hand_its_role_to_workers():
    policy = json.loads(cc.PASSROLE_POLICY.read_text(encoding="utf-8"))
    assert policy.get("Version") == "2012-10-17"
    workers = cc.worker_types(load("aws")).values()
    profiles = {t["node_config"].get("IamInstanceProfile", {}).get("Name") for t in workers}
    assert profiles == {IAM_ROLE}, profiles
    role_arn = f"arn:aws:iam::123456789012:role/{IAM_ROLE}"
    assert cc.policy_allows(policy, "iam:PassRole", role_arn)
    # Least privilege: passing any other role (an admin one) stays denied.
    assert not cc.policy_allows(policy, "iam:PassRole", "arn:aws:iam::123456789012:role/admin")
    assert not cc.policy_allows(policy, "iam:CreateRole", role_arn)


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.iterdir() if p.is_file()))
def test_no_credentials_in_cluster_files(path):
    text = (CLUSTER / path).read_text(encoding="utf-8")
    assert cc.credential_problems(text, strict_words=path.endswith((".yaml", ".yml"))) == []


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
    assert cc.credential_problems(text, strict_words=True) == []
    assert cc.credential_problems(text + "\n" + leak + "\n", strict_words=True) != []


# ------------------------------------------------------------------------- broken copies must be caught

def _gpu1(config):
    return next(t for t in cc.worker_types(config).values() if t["resources"]["GPU"] == 1)


def _gpu4(config):
    return next(t for t in cc.worker_types(config).values() if t["resources"]["GPU"] == 4)


def _head(config):
    return cc.node_types(config)[config["head_node_type"]]


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
    index, _ = cc.mlflow_command(config)
    config["head_start_ray_commands"][index] = config["head_start_ray_commands"][index].replace(old, new)


# Case -> (mutation of a loaded launcher YAML, a phrase the checker's problems must contain).
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
    "checkout not synced": (lambda c, x: x["file_mounts"].pop(cc.PROJECT_MOUNT), "file_mounts"),
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
    "head runs trials": (lambda c, x: _head(x)["resources"].update(CPU=8), "CPU 0"),
    "head without coordinator slots": (lambda c, x: _head(x)["resources"].pop(cc.COORDINATOR), "coordinator"),
    "one CIFAR trial per GPU node": (lambda c, x: _gpu1(x)["resources"].update(CPU=5), "trials of cifar.yaml"),
    "ImageNet node without its data": (_drop_data_mount, "/data/imagenet"),
    "ImageNet data never copied": (lambda c, x: _gpu4(x)["initialization_commands"].pop(), "fills"),
    "node type drops the global init": (lambda c, x: _gpu4(x)["initialization_commands"].pop(0), "replace"),
    ".git not synced": (lambda c, x: x["rsync_exclude"].extend(["**/.git", "**/.git/**"]), "git_commit"),
    "git refuses the checkout": (lambda c, x: x.update(setup_commands=x["setup_commands"][:1]), "safe.directory"),
}
# The cases that break a rule of every provider, cluster/local.yaml's fake one included.
ANY_PROVIDER = ("head type pointing nowhere", "unknown top-level key", "GPU type without GPU resources",
                "always-on GPU workers", "leaked access key", "no shape resource", "shape resource not the GPU count",
                "head runs trials", "head without coordinator slots", "one CIFAR trial per GPU node")
RAY_REFUSES = ("head type pointing nowhere", "unknown top-level key")


def broken_copy(name: str, case: str) -> dict:
    config = copy.deepcopy(load(name))
    BROKEN[case][0](name, config)
    return config


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_is_caught(cloud, case):
    problems = cc.check_config(broken_copy(cloud, case))
    assert any(BROKEN[case][1] in p for p in problems), problems


@pytest.mark.parametrize("case", ANY_PROVIDER)
def test_broken_local_copy_is_caught(case):
    problems = cc.check_config(broken_copy("local", case))
    assert any(BROKEN[case][1] in p for p in problems), problems


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("case", RAY_REFUSES)
def test_schema_fallback_refuses_what_ray_refuses(cloud, case):
    with pytest.raises((ValueError, jsonschema.ValidationError), match="head_node_type|Additional properties"):
        cc.schema_validate(broken_copy(cloud, case))


def test_gcp_scheduling_list_is_caught():
    """Ray's older GCP examples wrote `scheduling` as a list; the Compute API wants an object."""
    config = load("gcp")
    _gpu1(config)["node_config"]["scheduling"] = [{"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]
    assert any("scheduling must be an object" in p for p in cc.check_config(config))


def test_azure_unknown_arm_parameter_is_caught():
    config = load("azure")
    _gpu1(config)["node_config"]["azure_arm_parameters"]["billingProfileMaxPrice"] = -1
    assert any("Azure VM template" in p for p in cc.check_config(config))


def test_workers_on_a_role_the_head_may_not_pass_are_caught():
    config = load("aws")
    _gpu1(config)["node_config"]["IamInstanceProfile"]["Name"] = "admin"
    assert any("pass role 'admin'" in p for p in cc.check_config(config))


def _kuberay_group(job, name):
    return next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == name)


def _first_worker_container(job):
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _head_params(job):
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def _kuberay_cpus(job, group, cpus):
    spec = _kuberay_group(job, group)
    spec["rayStartParams"]["num-cpus"] = cpus
    for key in ("requests", "limits"):
        spec["template"]["spec"]["containers"][0]["resources"][key]["cpu"] = cpus


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
    "py_modules in the job's env": (lambda j: j["spec"].update(
        runtimeEnvYAML=j["spec"]["runtimeEnvYAML"] + "py_modules: [\"s3://bucket/bickd.zip\"]\n"), "conflicts"),
    "dashboard on loopback": (lambda j: _head_params(j).update({"dashboard-host": "127.0.0.1"}), "dashboard"),
    "default submitter shell": (lambda j: j["spec"].pop("submissionMode"), "submissionMode"),
    "K8sJobMode submitter shell": (lambda j: j["spec"].update(submissionMode="K8sJobMode"), "submissionMode"),
    "pod asks for the whole node": (lambda j: _kuberay_cpus(j, "gpu1", "8"), "reserve"),
    "Ray advertises more CPUs than the pod has": (lambda j: _kuberay_group(j, "gpu1")["rayStartParams"].update(
        {"num-cpus": "8"}), "num-cpus"),
    "4-CPU CIFAR trials on a 7-CPU pod": (lambda j: _kuberay_cpus(j, "gpu1", "5"), "trials of cifar.yaml"),
    "no shape resource": (lambda j: _kuberay_group(j, "gpu1")["rayStartParams"].pop("resources"), "shape"),
    "head runs trials": (lambda j: _head_params(j).update({"num-cpus": "4"}), "CPU 0"),
    "unquoted resources": (lambda j: _kuberay_group(j, "gpu4")["rayStartParams"].update(
        {"resources": '{"gpu4": 4}'}), "rayStartParams"),
    "ImageNet group without its data": (lambda j: _kuberay_group(j, "gpu4")["template"]["spec"]["containers"][0][
        "volumeMounts"].pop(), "/data/imagenet"),
}


@pytest.mark.parametrize("case", sorted(KUBERAY_BROKEN))
def test_kuberay_broken_copy_is_caught(case):
    job = copy.deepcopy(load("kuberay"))
    mutate, expected = KUBERAY_BROKEN[case]
    mutate(job)
    problems = cc.check_config(job)
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------------------------------ the CLI

def run_checker(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bickd_tune.cluster_check", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_passes_a_shipped_file_and_names_the_problem_of_a_broken_copy(tmp_path):
    shipped = run_checker("cluster/aws.yaml")
    assert (shipped.returncode, shipped.stdout) == (0, "cluster/aws.yaml: ok\n"), shipped.stderr
    broken = tmp_path / "aws.yaml"
    broken.write_text(yaml.safe_dump(broken_copy("aws", "on-demand GPU workers")), encoding="utf-8")
    result = run_checker(str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"{broken}: ") and "spot/preemptible" in result.stdout


def test_cli_refuses_a_missing_file_in_one_line(tmp_path):
    result = run_checker(str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert (result.stdout + result.stderr).strip() == f"{tmp_path / 'nope.yaml'}: no such file"


# ---------------------------------------------------------------------------------- cluster/README.md

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
    lines = [line.strip() for block in shell_blocks(text) for line in block.replace("\\\n", " ").splitlines()
             if line.strip()]
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


def test_mlflow_port_is_the_one_the_guide_names():
    readme = README.read_text(encoding="utf-8")
    ports = {cc.flag(cc.mlflow_command(load(cloud))[1], "--port") for cloud in CLOUDS}
    assert len(ports) == 1, ports
    port = ports.pop()
    assert f"--tracking-uri http://127.0.0.1:{port}" in readme
    assert f"http://localhost:{port}" in readme
    assert f"-p {port}" in readme or f"-L {port}:127.0.0.1:{port}" in readme


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
    return args, load_experiment(str(ROOT / args.config), cli_overrides(args))


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
    claims = {v["persistentVolumeClaim"]["claimName"] for _, _, pod in cc.pod_specs(load("kuberay"))
              for v in pod.get("volumes") or [] if v.get("persistentVolumeClaim")}
    text = readme_sections()["KubeRay"]
    assert all(f"name: {claim}" in text for claim in claims), claims  # the guide creates every claim


def test_kuberay_mounts_imagenet_from_the_claim_the_guide_names():
    job = load("kuberay")
    assert cc.kuberay_data_problems(job) == []
    claims = cc.kuberay_data_claims(job)
    assert claims, "the ImageNet group must mount a PersistentVolumeClaim"
    assert all(f"name: {claim}" in readme_sections()["KubeRay"] for claim in claims), claims  # the guide creates it


def test_kuberay_entrypoint_parses_and_validates():
    args, experiment = _validate_platform_command(" ".join(load("kuberay")["spec"]["entrypoint"].split()))
    assert args.address == "auto" and (ROOT / args.config).is_file()
    assert experiment.is_remote, "the RayJob's cluster is deleted after the job: storage must be a bucket"
    assert experiment.tracking.tracking_uri.startswith("http"), "MLflow must outlive the RayJob's cluster"


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
    assert document.startswith("file://") and (ROOT / document.removeprefix("file://")).resolve() == cc.PASSROLE_POLICY


def test_readme_shell_blocks_parse_in_bash():
    """Placeholders such as <bucket> outside quotes are redirections in bash: every block must parse."""
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    blocks = shell_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    assert [(block[:80], cc.bash_syntax_error(block)) for block in blocks if cc.bash_syntax_error(block)] == []
    assert cc.bash_syntax_error("aws s3 mb s3://<bucket>\n")  # the check itself


def test_readme_leaves_room_for_the_local_cluster():
    section = readme_sections().get(LOCAL_SECTION)
    assert section is not None and "cluster/local.yaml" in section
