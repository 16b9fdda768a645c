"""Teacher logits computed once per experiment and read by every trial (the FKD idea, Shen & Xing 2022).

In a sweep the teacher is the same for every trial, yet a plain KD loop runs it on every batch of every
trial. Here its logits are computed once for `epochs` distinct augmentation epochs of every training image
(views are a pure function of (seed, epoch, sample index): bickd/data/augment.py), written as Arrow IPC
files, and memory-mapped by trials, which look up the logits of the exact views they train on.

A cache is identified by a key (teacher weights hash, data set, augmentation, view seed and epochs, ...);
a trial refuses a cache whose key or checksums do not match.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np
import pyarrow as pa
import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CacheError(ValueError):
    """A cache that must not be used; the message names the folder and why."""


def state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(config, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Everything the stored logits depend on."""
    return {"format": FORMAT_VERSION, "teacher_model": config.teacher.model, "teacher_sha256": state_hash(teacher_state),
            "data": config.data.model_dump(mode="json"), "view_seed": config.teacher_cache.seed,
            "view_epochs": config.teacher_cache.epochs, "amp": config.runtime.amp}


def cache_name(key: dict[str, Any]) -> str:
    """The folder name of the cache of `key`: one per distinct key, so a changed teacher, data set or
    augmentation gets a new cache instead of a refused one."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key['teacher_model']}-s{key['view_seed']}-e{key['view_epochs']}-{digest}"


def cache_folder(parent: str, key: dict[str, Any]) -> str:
    return os.path.join(parent, cache_name(key))


def _file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _epoch_file(folder: str, epoch: int) -> str:
    return os.path.join(folder, f"epoch-{epoch:04d}.arrow")


def write_cache(folder: str, key: dict[str, Any], logits_per_epoch) -> str:
    """Writes the (N x C float32) logits of each view epoch, then the manifest; atomically."""
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    checksums = []
    shape = None
    for epoch, logits in enumerate(logits_per_epoch):
        array = np.ascontiguousarray(logits, dtype=np.float32)
        shape = array.shape
        column = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
        table = pa.table({"logits": column})
        path = _epoch_file(tmp, epoch)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        checksums.append(_file_sha256(path))
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"key": key, "shape": list(shape), "sha256": checksums}, handle, indent=1)
    if os.path.exists(folder):
        shutil.rmtree(tmp)
        return folder  # built meanwhile by someone else; it is verified when opened
    os.replace(tmp, folder)
    return folder


class TeacherLogitCache:
    """Memory-mapped stored logits; `lookup(indices, epoch)` returns those of the views trained on."""

    def __init__(self, folder: str, expected_key: dict[str, Any]):
        manifest_path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise CacheError(f"teacher cache {folder}: no {MANIFEST} (not a cache, or an interrupted build)")
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (ValueError, UnicodeDecodeError):
            raise CacheError(f"teacher cache {folder}: {MANIFEST} is not readable JSON (corrupt or truncated)") from None
        differing = sorted(k for k in set(expected_key) | set(manifest["key"])
                           if expected_key.get(k) != manifest["key"].get(k))
        if differing:
            raise CacheError(f"teacher cache {folder}: key mismatch in {', '.join(differing)} "
                             "(built for another teacher, data set or augmentation)")
        self.folder, self.epochs = folder, []
        for epoch, expected in enumerate(manifest["sha256"]):
            path = _epoch_file(folder, epoch)
            if not os.path.isfile(path) or _file_sha256(path) != expected:
                raise CacheError(f"teacher cache {path}: checksum mismatch (corrupt or modified file)")
            table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
            values = table.column("logits").combine_chunks().flatten().to_numpy(zero_copy_only=True)
            self.epochs.append(values.reshape(manifest["shape"]))  # a view of the mapped file: no copy

    def lookup(self, indices: torch.Tensor, epoch: int, device: torch.device) -> torch.Tensor:
        rows = self.epochs[epoch % len(self.epochs)][indices.cpu().numpy()]  # copies only these rows
        return torch.from_numpy(rows).to(device, non_blocking=True)

    def teacher_fn(self, device: torch.device):
        """A drop-in for the live teacher in `bickd.engine.train_epoch`."""
        def logits(images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
            return self.lookup(indices, epoch, device)
        return logits
