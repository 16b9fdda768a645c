"""digits_lowshot: few labelled, corrupted digits — a real-data set where distillation visibly helps.

scikit-learn's digits at 16x16, a 60/40 stratified split by seed; the student sees `train_per_class`
labelled images per class (the teacher trains on the whole training split: `train_per_class: null`), with
noise + cutout augmentation; the test split is scored on 5 fixed corrupted copies of itself.
"""
from __future__ import annotations

import numpy as np
import torch

from bickd.data.digits import channel_stats, digits_split, to_uint8_rgb
from bickd.data.registry import register_dataset
from bickd.data.types import AugmentSpec, ImageData

TEST_COPIES = 5
CORRUPTION_SEED = 12345  # fixed: every run is scored on the same corrupted test images


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


@register_dataset("digits_lowshot")
def load_digits_lowshot(root=None, download=False, image_size=None, seed=0,
                        train_per_class: int | None = 30) -> ImageData:
    size = image_size or 16
    train_x, test_x, train_y, test_y = digits_split(seed)
    if train_per_class is not None:
        if train_per_class > np.bincount(train_y).min():
            raise ValueError(f"train_per_class {train_per_class} exceeds the {np.bincount(train_y).min()} "
                             "training images of the smallest class")
        keep = _per_class(train_y, train_per_class, seed)
        train_x, train_y = train_x[keep], train_y[keep]
    train_images = to_uint8_rgb(train_x, size)
    test_images = corrupt(to_uint8_rgb(test_x, size), TEST_COPIES, CORRUPTION_SEED)
    mean, std = channel_stats(train_images)
    return ImageData(train_images, torch.from_numpy(train_y).long(), test_images,
                     torch.from_numpy(np.tile(test_y, TEST_COPIES)).long(), num_classes=10, mean=mean, std=std,
                     augment=AugmentSpec(crop_padding=2, flip=False, noise_std=0.5, cutout=5),
                     class_names=tuple(str(d) for d in range(10)), name="digits_lowshot",
                     meta={"train_per_class": train_per_class, "test_copies": TEST_COPIES})
