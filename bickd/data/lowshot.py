"""digits_lowshot: few labelled, corrupted digits — a real-data set where distillation visibly helps.

scikit-learn's digits at 16x16, a 60/40 stratified split by seed, a validation share held out of the 60%;
the student sees `train_per_class` labelled images per class of what is left (the teacher trains on all of
it: `train_per_class: null`), with noise + cutout augmentation. Validation and test are scored on 5 fixed
corrupted copies of themselves (different corruptions), so the split a search chooses on looks like test.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from bickd.data.digits import channel_stats, digits_three_way, to_uint8_rgb
from bickd.data.registry import register_dataset
from bickd.data.types import AugmentSpec, ImageData
from bickd.schema import StrictModel

TEST_COPIES = 5
CORRUPTION_SEED = 12345  # fixed: every run is scored on the same corrupted test images
VAL_CORRUPTION_SEED = 54321


class LowShotOptions(StrictModel):
    train_per_class: int | None = Field(
        30, ge=1, description="labelled training images per class (null: the whole training split, for teachers)")


def corrupt(images: torch.Tensor, copies: int, seed: int, noise: float = 0.25, cutout: int = 5) -> torch.Tensor:
    """`copies` corrupted versions of uint8 images: Gaussian pixel noise and a zeroed square each."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    n, _, h, w = images.shape
    for _ in range(copies):
        x = images.float() / 255 + noise * torch.randn(images.shape, generator=generator)
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        inside = ((ys - cy[:, None, None]).abs() <= cutout // 2) & ((xs - cx[:, None, None]).abs() <= cutout // 2)
        x = x.masked_fill(inside[:, None], 0.0)
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out)


def _per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, count])
    picked = [rng.choice(np.flatnonzero(labels == c), size=count, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


@register_dataset("digits_lowshot", options=LowShotOptions, val_fraction=0.2)
def load_digits_lowshot(root=None, download=False, image_size=None, seed=0, val_fraction=0.0, split_seed=None,
                        train_per_class: int | None = 30) -> ImageData:
    size = image_size or 16
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = digits_three_way(seed, val_fraction, split_seed)
    if train_per_class is not None:
        smallest = int(np.bincount(train_y).min())
        if train_per_class > smallest:
            raise ValueError(f"train_per_class {train_per_class} exceeds the {smallest} training images of the "
                             f"smallest class (after the validation split of {val_fraction:g})")
        keep = _per_class(train_y, train_per_class, seed)
        train_x, train_y = train_x[keep], train_y[keep]
    train_images = to_uint8_rgb(train_x, size)
    test_images = corrupt(to_uint8_rgb(test_x, size), TEST_COPIES, CORRUPTION_SEED)
    mean, std = channel_stats(train_images)
    has_val = len(val_y) > 0
    return ImageData(train_images, torch.from_numpy(train_y).long(), test_images,
                     torch.from_numpy(np.tile(test_y, TEST_COPIES)).long(), num_classes=10, mean=mean, std=std,
                     augment=AugmentSpec(crop_padding=2, flip=False, noise_std=0.5, cutout=5),
                     class_names=tuple(str(d) for d in range(10)), name="digits_lowshot",
                     meta={"train_per_class": train_per_class, "test_copies": TEST_COPIES, "val": len(val_y)},
                     val_images=corrupt(to_uint8_rgb(val_x, size), TEST_COPIES, VAL_CORRUPTION_SEED) if has_val else None,
                     val_labels=torch.from_numpy(np.tile(val_y, TEST_COPIES)).long() if has_val else None)
