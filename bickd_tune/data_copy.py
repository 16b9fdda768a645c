"""A downloaded data set kept in the experiment's storage, so that cluster nodes copy it from the bucket instead of
each downloading it from the internet again (a new spot node would otherwise fetch CIFAR-100 from its website).

With a bucket as storage, a data set the YAML lets torchvision download (`download: true` and a local `root`) is
downloaded once, on the driver, by the preflight (which loads it: torchvision checks the archive's MD5), then put
into `<experiment>/data/<name>-<digest>/` with a manifest of its files' SHA-256 (`keep_in_storage`). The
experiment then names that folder as its data root. Each node copies it once into $BICKD_CACHE_DIR (default
~/.cache/bickd) and checks every file against the manifest whenever a run uses it (`on_this_node`): a copy
that does not match is replaced, and one that still does not match after a fresh copy is refused.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from bickd.config import DataConfig, TrainConfig
from bickd.data.types import DataError
from bickd_tune.storage import Storage, is_remote, without_query

MANIFEST = "manifest.json"
DATA_FIELDS = ("data", "teacher.data")


def downloaded_here(data: DataConfig | None) -> bool:
    """A data set that the loader downloads into a local root: the kind a bucket keeps for the experiment."""
    return data is not None and data.download and bool(data.root) and not is_remote(data.root)


def _data_of(config, field: str) -> DataConfig | None:
    if field == "data":
        return config.data
    return config.teacher.data if config.teacher is not None else None


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(folder: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder`, hidden ones (locks) left out."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = os.path.join(parent, name)
                found[os.path.relpath(path, folder)] = _sha256(path)
    return found


def keep_in_storage(experiment, paths):
    """The experiment with each downloaded data set read from its storage; uploads what is not there yet (once
    per experiment: a resumed run finds the manifest and uploads nothing). Local storage: unchanged."""
    if not paths.remote:
        return experiment
    storage = paths.storage()
    updates = {}
    for field in DATA_FIELDS:
        data = _data_of(experiment, field)
        if not downloaded_here(data):
            continue
        digest = hashlib.sha256(os.path.abspath(data.root).encode()).hexdigest()[:12]
        name = f"data/{data.name}-{digest}"
        if not storage.exists(f"{name}/{MANIFEST}"):
            checksums = _files(os.path.expandvars(data.root))
            print(f"[data] keeping {data.name} in the experiment's storage ({len(checksums)} files)", flush=True)
            for relative in checksums:
                storage.upload(os.path.join(os.path.expandvars(data.root), relative), f"{name}/{relative}")
            storage.write_json(f"{name}/{MANIFEST}", {"files": checksums})  # last: a complete copy
        updates[field] = data.model_copy(update={"root": paths.in_storage(name), "download": False})
    if not updates:
        return experiment
    teacher = experiment.teacher
    if "teacher.data" in updates:
        teacher = teacher.model_copy(update={"data": updates["teacher.data"]})
    return experiment.model_copy(update={"data": updates.get("data", experiment.data), "teacher": teacher})


def on_this_node(config: TrainConfig) -> TrainConfig:
    """`config` reading each data set kept in storage from this node's verified copy."""
    overrides = {}
    for field in DATA_FIELDS:
        data = _data_of(config, field)
        if data is not None and data.root and is_remote(data.root):
            overrides[f"{field}.root"] = local_copy(data.root)
    return config.with_overrides(overrides) if overrides else config


def _verified(folder: str, expected: dict[str, str]) -> str | None:
    """The first file of `folder` that is missing or differs from its checksum (None: all match)."""
    for relative, digest in expected.items():
        path = os.path.join(folder, relative)
        if not os.path.isfile(path) or _sha256(path) != digest:
            return relative
    return None


def local_copy(uri: str) -> str:
    """This node's copy of the data set kept at `uri`: fetched on first use, checked against the manifest each
    time; a copy that does not match is fetched again, and refused (DataError) if the fresh one does not either."""
    storage = Storage(uri)
    expected = storage.read_json(MANIFEST)["files"]
    root = os.path.expanduser(os.environ.get("BICKD_CACHE_DIR", "~/.cache/bickd"))
    local = os.path.join(root, "data", hashlib.sha256(without_query(uri).encode()).hexdigest()[:16])
    if os.path.isdir(local) and _verified(local, expected) is None:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fresh = tempfile.mkdtemp(dir=os.path.dirname(local), prefix=".fetch-")
    try:
        storage.download("", os.path.join(fresh, "copy"))
        bad = _verified(os.path.join(fresh, "copy"), expected)
        if bad is not None:
            raise DataError(f"data set copy {without_query(uri)}: {bad} does not match its checksum in {MANIFEST} "
                            "(corrupt or modified in storage); delete that folder to have it kept again")
        shutil.rmtree(local, ignore_errors=True)  # a copy that failed its check
        try:
            os.replace(os.path.join(fresh, "copy"), local)
        except OSError:  # another process on this node placed a copy meanwhile; it is checked on its next use
            pass
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return local
