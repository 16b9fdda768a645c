"""Checks made before anything is created: storage writable, MLflow reachable, data and teacher present.

Each failure is a `ConfigError` with one line saying what and where, so a sweep never dies an hour in
on something knowable at the start.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request

from bickd.config_io import ConfigError
from bickd.data import load_dataset
from bickd.models import CheckpointError
from platform.experiment import ExperimentConfig


def check_storage(experiment_dir: str, remote: bool) -> None:
    if remote:
        return  # checked by Ray/pyarrow with the cloud's credentials when Tune first syncs
    parent = experiment_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"storage_path: cannot create {experiment_dir}: {parent} is not a writable folder")


def check_tracking(tracking_uri: str) -> None:
    """An HTTP tracking server must answer now; a SQLite store's folder must be writable."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5) as answer:
                if answer.status != 200:
                    raise ConfigError(f"tracking.tracking_uri: {tracking_uri} answered {answer.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"tracking.tracking_uri: MLflow server {tracking_uri} is unreachable ({reason})") from None
    elif tracking_uri.startswith("sqlite:///"):
        check_storage(os.path.dirname(tracking_uri.removeprefix("sqlite:///")), remote=False)
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):
        raise ConfigError(f"tracking.tracking_uri: {tracking_uri!r} is a file store, which MLflow 3 refuses; "
                          "use sqlite:////absolute/path/mlflow.db or http(s)://server:port")


def check_data(experiment: ExperimentConfig) -> int:
    """Loads the data set once (cheap for in-memory sets, a folder scan for ImageNet); returns #classes."""
    data = experiment.data
    try:
        loaded = load_dataset(data.name, root=data.root, download=data.download, image_size=data.image_size,
                              seed=data.seed, **data.options)
    except (ValueError, OSError) as err:
        raise ConfigError(f"data: {err}") from None
    return loaded.num_classes


def check_teacher_checkpoint(experiment: ExperimentConfig, num_classes: int) -> None:
    teacher = experiment.teacher
    if teacher is None or teacher.checkpoint is None:
        return
    if not os.path.isfile(teacher.checkpoint):
        raise ConfigError(f"teacher.checkpoint: {teacher.checkpoint}: no such file")
    from platform.teacher import load_teacher_state
    try:
        load_teacher_state(teacher.model, num_classes, teacher.checkpoint)
    except CheckpointError as err:
        raise ConfigError(f"teacher.checkpoint: {err}") from None
