"""The validation split: a stratified share of the training data, held out deterministically by seed.

Searches, schedulers and reports choose on it; the test split is left untouched and measured on the final
model only.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bickd.data.types import ImageData


def stratified_holdout(labels: np.ndarray | torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted: round(fraction * n_c) samples of every class c
    (at least one where fraction > 0 and the class has two or more), chosen by `seed` alone."""
    labels = np.asarray(labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1) (got {fraction})")
    if fraction == 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng([seed, 0x5A11D])  # its own stream: other seeded draws are unaffected
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = min(max(int(round(fraction * len(members))), 1 if len(members) > 1 else 0), len(members) - 1)
        held.append(rng.choice(members, size=count, replace=False))
    val = np.sort(np.concatenate(held)) if held else np.arange(0)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val


def hold_out_validation(data: ImageData, fraction: float, seed: int) -> ImageData:
    """`data` with `fraction` of its training images moved to a validation split (test untouched)."""
    if fraction == 0:
        return data
    train, val = stratified_holdout(data.train_labels, fraction, seed)
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
    return dataclasses.replace(
        data, train_images=data.train_images[train_t], train_labels=data.train_labels[train_t],
        val_images=data.val_images if len(val) == 0 else data.train_images[val_t],
        val_labels=data.val_labels if len(val) == 0 else data.train_labels[val_t],
        meta={**data.meta, "val_fraction": fraction, "val_size": len(val)})
