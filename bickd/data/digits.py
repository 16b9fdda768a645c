"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes): needs no download."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bickd.data.registry import register_dataset
from bickd.data.split import stratified_holdout
from bickd.data.types import AugmentSpec, ImageData


def digits_split(seed: int, test_fraction: float = 0.4):
    """Stratified train/test split of the digits (float images in [0, 1], 1 x 8 x 8)."""
    # heavy: scikit-learn takes seconds to import; only the digits sets need it, and every trial imports bickd.data
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    return train_test_split(images, digits.target, test_size=test_fraction, stratify=digits.target,
                            random_state=seed)


def to_uint8_rgb(images: np.ndarray, size: int) -> torch.Tensor:
    """N x 8 x 8 floats in [0, 1] -> N x 3 x size x size uint8 (bilinear upsampling)."""
    x = torch.from_numpy(images)[:, None]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255.0
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())


def digits_three_way(seed: int, val_fraction: float, split_seed: int | None = None):
    """(train, val, test) of the 60/40 split by `seed`, validation held out of the 60% by `split_seed` (default:
    `seed`; val may be empty)."""
    train_x, test_x, train_y, test_y = digits_split(seed)
    keep, held = stratified_holdout(train_y, val_fraction, seed if split_seed is None else split_seed)
    return (train_x[keep], train_y[keep]), (train_x[held], train_y[held]), (test_x, test_y)


@register_dataset("digits", val_fraction=0.2)
def load_digits_dataset(root=None, download=False, image_size=None, seed=0, val_fraction=0.0,
                        split_seed=None) -> ImageData:
    """60/40 stratified train/test split by `seed` (validation held out of the 60%), upsampled to
    `image_size` (default 32), 3 channels."""
    size = image_size or 32
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = digits_three_way(seed, val_fraction, split_seed)
    train_images, test_images = to_uint8_rgb(train_x, size), to_uint8_rgb(test_x, size)
    mean, std = channel_stats(train_images)
    return ImageData(train_images, torch.from_numpy(train_y).long(), test_images, torch.from_numpy(test_y).long(),
                     num_classes=10, mean=mean, std=std,
                     augment=AugmentSpec(crop_padding=max(size // 8, 1), flip=False),  # a flipped digit is another symbol
                     class_names=tuple(str(d) for d in range(10)), name="digits",
                     meta={"source": "sklearn.datasets.load_digits", "train": len(train_y), "val": len(val_y),
                           "test": len(test_y)},
                     val_images=to_uint8_rgb(val_x, size) if len(val_y) else None,
                     val_labels=torch.from_numpy(val_y).long() if len(val_y) else None)
