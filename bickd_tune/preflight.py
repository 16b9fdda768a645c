"""Checks made before anything is created: storage writable, MLflow reachable and its artifact store
writable, data and teacher present.

Each failure is a `ConfigError` with one line saying what and where, so a sweep never dies an hour in
on something knowable at the start. This module imports Ray: a process imports it only after setting Ray's
switches (bickd_tune.ray_env.use_loopback), as the runner does.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request

import ray
from mlflow.tracking import MlflowClient

from bickd.config_io import ConfigError
from bickd.data import load_data
from bickd.models import CheckpointError
from bickd_tune.data_copy import downloaded_here
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.paths import ExperimentPaths
from bickd_tune.ray_env import init_ray
from bickd_tune.storage import Storage, failure, first_line, for_a_check, without_query
from bickd_tune.teacher import load_teacher_state

PREFLIGHT_EXPERIMENT = "bickd-preflight"  # where the artifact-store check writes (its runs are deleted)
# Ray names a node's type in its label ray.io/node-group (set from RAY_NODE_TYPE_NAME, which the autoscaler,
# KubeRay and the fake multi-node provider give every node they start).
NODE_GROUP_LABEL, NODE_TYPE_ENV = "ray.io/node-group", "RAY_NODE_TYPE_NAME"
HEALTH_TIMEOUT_S = 5  # a tracking server answers /health at once; one that takes longer is reported before the sweep
PROBE_SLIVER = 0.001  # of a resource, for a check that must land on a node type without waiting for a free slot
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def check_storage(paths: ExperimentPaths) -> None:
    """A local folder must be creatable; a bucket must take, give back and drop a small object now."""
    _check_local_folder(paths.local_dir, "storage_path")
    if not paths.remote:
        return
    probe, token = ".bickd-preflight", os.urandom(8).hex().encode()
    try:
        storage = Storage(for_a_check(paths.experiment_uri))
        storage.write_bytes(probe, token)
        if storage.read_bytes(probe) != token:
            raise OSError("read back other bytes than were written")
        storage.fs.delete_file(f"{storage.root}/{probe}")
    except Exception as err:  # noqa: BLE001 - pyarrow raises OSError, ValueError, ... per cause
        raise ConfigError(f"storage_path: cannot write to {without_query(paths.experiment_uri)}: "
                          f"{failure(err)}") from None


def _check_local_folder(folder: str, field: str) -> None:
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: cannot create {folder}: {parent} is not a writable folder")


def check_tracking(tracking_uri: str) -> None:
    """An HTTP tracking server must answer now; a SQLite store's folder must be writable."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as answer:
                if answer.status != 200:
                    raise ConfigError(f"tracking.tracking_uri: {tracking_uri} answered {answer.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"tracking.tracking_uri: MLflow server {tracking_uri} is unreachable ({reason})") from None
        check_artifact_store(tracking_uri)
    elif tracking_uri.startswith("sqlite:///"):
        _check_local_folder(os.path.dirname(tracking_uri.removeprefix("sqlite:///")), "tracking.tracking_uri")
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):
        raise ConfigError(f"tracking.tracking_uri: {tracking_uri!r} is a file store, which MLflow 3 refuses; "
                          "use sqlite:////absolute/path/mlflow.db or http(s)://server:port")


def check_artifact_store(tracking_uri: str) -> None:
    """Writes a test artifact through the MLflow server and reads it back: a wrong artifact bucket or missing
    credentials show now, not when the sweep's first artifact is uploaded at its end."""
    client = MlflowClient(tracking_uri)
    run_id = None
    # A broken store answers 500, which MLflow retries with backoff for minutes: one quick try decides here.
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    os.environ.update(QUICK_HTTP)
    try:
        existing = client.get_experiment_by_name(PREFLIGHT_EXPERIMENT)
        experiment_id = existing.experiment_id if existing else client.create_experiment(PREFLIGHT_EXPERIMENT)
        run_id = client.create_run(experiment_id, run_name="artifact store check").info.run_id
        token = os.urandom(8).hex()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "probe.txt")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(token)
            client.log_artifact(run_id, path)
            with open(client.download_artifacts(run_id, "probe.txt", folder + "/back"), encoding="utf-8") as handle:
                if handle.read() != token:
                    raise OSError("the artifact read back differs from the one written")
    except Exception as err:  # noqa: BLE001 - MLflow wraps the store's failure in several types
        raise ConfigError(f"tracking.tracking_uri: the MLflow server at {tracking_uri} cannot store artifacts "
                          f"({first_line(err)}); check its --artifacts-destination and its credentials") from None
    finally:
        if run_id is not None:
            try:
                client.delete_run(run_id)
            except Exception:  # noqa: BLE001 - the check's own clean-up must not hide its result
                pass
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_data(experiment: ExperimentConfig, address: str | None = None) -> int:
    """Loads the data set once (cheap for in-memory sets, a folder scan for ImageNet); returns #classes.

    On a cluster (`address`: joined now, so the checks below run there) a data set read from a folder of its
    own is loaded where the trials run, by a Ray task on their node type: the GPU workers mount ImageNet, the
    head does not. A data set that the bucket will keep (bickd_tune.data_copy) is downloaded here instead, once.
    The teacher's own data set (`teacher.data`) is checked the same way.
    """
    sets = {"data": experiment.data}
    if experiment.teacher is not None and experiment.teacher.data is not None:
        sets["teacher.data"] = experiment.teacher.data
    if address is not None:
        init_ray(address)
        check_driver_placement(experiment)
    on_nodes = {field: data for field, data in sets.items()
                if data.root and not (experiment.is_remote and downloaded_here(data))}
    if address is None or not on_nodes:
        return _num_classes(load_here(sets))
    here = {field: data for field, data in sets.items() if field not in on_nodes}
    return _num_classes({**load_here(here), **load_where_trials_run(experiment, on_nodes)})


def _num_classes(loaded: dict[str, int | str]) -> int:
    for field, result in loaded.items():
        if isinstance(result, str):
            raise ConfigError(f"{field}: {result}")
    return loaded["data"]


def load_here(sets: dict) -> dict[str, int | str]:
    """Field -> the data set's number of classes, or why it cannot be loaded here."""
    loaded: dict[str, int | str] = {}
    for field, data in sets.items():
        try:
            loaded[field] = load_data(data).num_classes
        except (ValueError, OSError) as err:
            loaded[field] = str(err)
    return loaded


def _load_on_node(sets: dict) -> tuple[str, dict[str, int | str]]:
    """(this node's type, what `load_here` finds on it): runs as a Ray task."""
    node = (ray.get_runtime_context().get_node_labels().get(NODE_GROUP_LABEL) or os.environ.get(NODE_TYPE_ENV)
            or f"at {ray.util.get_node_ip_address()}")
    return node, load_here(sets)


def load_where_trials_run(experiment: ExperimentConfig, sets: dict) -> dict[str, int | str]:
    """`load_here` in a Ray task placed like the trials (their custom resources, else their GPUs or CPUs, in
    slivers that fit beside running trials); each failure names the node type it was checked on."""
    r = experiment.resources
    if r.custom_resources:
        options = {"num_cpus": 0, "resources": {name: PROBE_SLIVER for name in r.custom_resources}}
    elif r.gpus_per_trial:
        options = {"num_cpus": 0, "num_gpus": PROBE_SLIVER}
    else:
        options = {"num_cpus": PROBE_SLIVER}
    print(f"[preflight] loading the data where the trials run ({options}); on an autoscaling cluster this "
          "waits for a node of that type to start", flush=True)
    node, loaded = ray.get(ray.remote(_load_on_node).options(**options).remote(sets))
    where = node if node.startswith("at ") else f"node type {node}"
    return {field: result if isinstance(result, int) else f"on {where} (where the trials run): {result}"
            for field, result in loaded.items()}


def check_driver_placement(experiment: ExperimentConfig) -> None:
    """A DDP trial's driver asks for `resources.coordinator_resources`: some node of the cluster (its head, in
    cluster/*.yaml) must advertise their custom resources, else the trial would wait forever."""
    r = experiment.resources
    if r.num_workers == 0:
        return
    custom = {k: v for k, v in r.coordinator_resources.items() if k not in ("CPU", "GPU")}
    advertised = {k for node in ray.nodes() if node["Alive"] for k in node["Resources"]}
    missing = sorted(set(custom) - advertised)
    if missing:
        raise ConfigError(f"resources.coordinator_resources: {r.coordinator_resources} asks for {', '.join(missing)}, "
                          "which no node of this cluster advertises (the heads of cluster/*.yaml advertise "
                          "`coordinator`); set resources.coordinator_resources to what your head has, e.g. {CPU: 0.5}")


def check_teacher_checkpoint(experiment: ExperimentConfig, num_classes: int) -> None:
    teacher = experiment.teacher
    if teacher is None or teacher.checkpoint is None:
        return
    if not os.path.isfile(teacher.checkpoint):
        raise ConfigError(f"teacher.checkpoint: {teacher.checkpoint}: no such file")
    try:
        load_teacher_state(teacher.model, num_classes, teacher.checkpoint)
    except CheckpointError as err:
        raise ConfigError(f"teacher.checkpoint: {err}") from None
