"""What a data set is to the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class DataError(ValueError):
    """Data that cannot be loaded; the message names the path and what to do."""


@dataclass(frozen=True)
class AugmentSpec:
    """Per-batch train augmentation on the device, deterministic per (seed, epoch, sample index)."""
    crop_padding: int = 4      # random crop back to size after zero padding (torchvision RandomCrop(padding))
    flip: bool = True          # horizontal flip with p = 0.5
    noise_std: float = 0.0     # additive Gaussian noise, in normalised units
    cutout: int = 0            # side of a zeroed square at a random position (0 = off)


@dataclass(frozen=True)
class ImageData:
    """A whole data set in memory as uint8 tensors (CIFAR-sized sets).

    `val_*` is the validation split held out from the training data: what a search chooses on. Without one
    (`val_fraction: 0`) the test split is all there is, and a choice made on it is optimistic.
    """
    train_images: torch.Tensor   # uint8, N x C x H x W
    train_labels: torch.Tensor   # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec
    class_names: tuple[str, ...]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class FolderData:
    """A data set too large for memory, read from image folders (ImageNet)."""
    train: Any                   # torchvision.datasets.ImageFolder (or a Subset of one) with train transforms
    test: Any
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    val: Any = None              # held out from the training folder, with the test transforms
