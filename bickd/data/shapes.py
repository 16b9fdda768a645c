"""shapes100: a procedural, CIFAR-100-like data set that needs no download.

100 classes = 20 superclasses x 5 hues. A superclass is a shape family (disk, triangle, square, pentagon,
ring, plus, ellipse, star, crescent, semicircle) drawn solid or striped; its 5 classes differ only by the
shape's hue. Nuisances per image: background colour and gradient, position, scale, rotation, 0-3 distractor
blobs, pixel noise. Hues are the hard part and shapes the easy part, so a network's mistakes fall mostly
inside a superclass — the structured "dark knowledge" a teacher can pass on (like CIFAR-100's coarse labels).

Generated deterministically from a seed (same seed, same bytes), written once in the real CIFAR-100 on-disk
format and read back through the same `cifar100` loader real CIFAR-100 goes through. docs/datasets.md
describes the recipe.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
from pydantic import Field

from bickd.data.cifar import FOLDER, load_cifar100, write_cifar100
from bickd.data.registry import register_dataset
from bickd.data.types import AugmentSpec, ImageData
from bickd.schema import StrictModel

RECIPE_VERSION = 1
FAMILIES = ("disk", "triangle", "square", "pentagon", "ring", "plus", "ellipse", "star", "crescent", "semicircle")
STYLES = ("solid", "striped")
HUES = ("red", "yellow", "green", "blue", "purple")
HUE_DEGREES = np.array([0.0, 60.0, 130.0, 220.0, 285.0])
SIZE, SUPERSAMPLE = 32, 2
BLOCK = 500  # images per random-number block: generation does not depend on how work is split


def superclass_names() -> list[str]:
    return [f"{style}_{family}" for family in FAMILIES for style in STYLES]


def class_names() -> list[str]:
    return [f"{hue}_{superclass}" for superclass in superclass_names() for hue in HUES]


def _polygon(r, theta, sides: int):
    sector = 2 * np.pi / sides
    return r * np.cos(np.mod(theta, sector) - sector / 2) < np.cos(np.pi / sides) * 0.95


def _shape_mask(family: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    if family == "disk":
        return r < 0.9
    if family == "triangle":
        return _polygon(r, theta + np.pi / 2, 3)
    if family == "square":
        return np.maximum(abs(x), abs(y)) < 0.75
    if family == "pentagon":
        return _polygon(r, theta + np.pi / 2, 5)
    if family == "ring":
        return (r < 0.95) & (r > 0.55)
    if family == "plus":
        return ((abs(x) < 0.3) & (abs(y) < 0.95)) | ((abs(y) < 0.3) & (abs(x) < 0.95))
    if family == "ellipse":
        return (x / 0.95) ** 2 + (y / 0.5) ** 2 < 1
    if family == "star":
        return r < 0.4 + 0.55 * (0.5 + 0.5 * np.cos(5 * theta)) ** 2
    if family == "crescent":
        return (r < 0.9) & (np.hypot(x - 0.45, y) > 0.7)
    return (r < 0.95) & (y > -0.15)  # semicircle


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (h in degrees) -> RGB in [0, 1], shape (..., 3)."""
    c = v * s
    hp = np.mod(h, 360.0) / 60.0
    xx = c * (1 - abs(np.mod(hp, 2) - 1))
    zero = np.zeros_like(c)
    sector = np.floor(hp).astype(int) % 6
    table = [(c, xx, zero), (xx, c, zero), (zero, c, xx), (zero, xx, c), (xx, zero, c), (c, zero, xx)]
    rgb = np.zeros(c.shape + (3,))
    for k, (r, g, b) in enumerate(table):
        pick = sector == k
        rgb[pick] = np.stack([r[pick], g[pick], b[pick]], -1)
    return rgb + (v - c)[..., None]


def render_block(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images for `labels` (one block), uint8 N x 3 x 32 x 32, drawn from `rng` in a fixed order."""
    n = len(labels)
    side = SIZE * SUPERSAMPLE
    grid = (np.arange(side) + 0.5) / side * 2 - 1
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    superclass, hue = labels // len(HUES), labels % len(HUES)
    family, striped = superclass // 2, superclass % 2 == 1
    # nuisance and appearance parameters, drawn in one fixed order
    background = _hsv_to_rgb(rng.uniform(0, 360, n), rng.uniform(0, 0.5, n), rng.uniform(0.2, 0.9, n))
    gradient_angle, gradient_strength = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.35, n)
    centre = rng.uniform(-0.3, 0.3, (n, 2))
    scale, rotation = rng.uniform(0.45, 0.75, n), rng.uniform(0, 2 * np.pi, n)
    shape_rgb = _hsv_to_rgb(HUE_DEGREES[hue] + rng.normal(0, 12, n), rng.uniform(0.55, 1.0, n), rng.uniform(0.55, 1.0, n))
    stripe_angle, stripe_freq = rng.uniform(0, np.pi, n), rng.uniform(7, 11, n)
    blobs = rng.integers(0, 4, n)
    blob_xy, blob_r = rng.uniform(-0.9, 0.9, (n, 3, 2)), rng.uniform(0.08, 0.2, (n, 3))
    blob_rgb = _hsv_to_rgb(rng.uniform(0, 360, (n, 3)), rng.uniform(0, 1, (n, 3)), rng.uniform(0.2, 1, (n, 3)))
    noise_std = rng.uniform(0.02, 0.08, n)
    noise = rng.standard_normal((n, SIZE, SIZE, 3))

    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        ramp = (gx * np.cos(gradient_angle[i]) + gy * np.sin(gradient_angle[i])) * gradient_strength[i]
        image = np.clip(background[i] * (1 + ramp[..., None]), 0, 1)
        for b in range(blobs[i]):
            inside = np.hypot(gx - blob_xy[i, b, 0], gy - blob_xy[i, b, 1]) < blob_r[i, b]
            image[inside] = blob_rgb[i, b]
        cos_r, sin_r = np.cos(rotation[i]), np.sin(rotation[i])
        x, y = (gx - centre[i, 0]) / scale[i], (gy - centre[i, 1]) / scale[i]
        x, y = cos_r * x + sin_r * y, -sin_r * x + cos_r * y
        mask = _shape_mask(FAMILIES[family[i]], x, y)
        colour = np.broadcast_to(shape_rgb[i], image.shape).copy()
        if striped[i]:
            phase = x * np.cos(stripe_angle[i]) + y * np.sin(stripe_angle[i])
            colour[np.sin(phase * stripe_freq[i]) > 0] *= 0.35  # dark stripes of the same hue
        image[mask] = colour[mask]
        small = image.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean((1, 3))  # antialiasing
        small = np.clip(small + noise_std[i] * noise[i], 0, 1)
        out[i] = (small * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)
    return out


def generate(seed: int, per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of every class; `offset` keeps the train and test streams apart."""
    labels = np.repeat(np.arange(len(class_names())), per_class)
    np.random.default_rng([seed, offset, RECIPE_VERSION]).shuffle(labels)
    blocks = [render_block(labels[start:start + BLOCK], np.random.default_rng([seed, offset, start, RECIPE_VERSION]))
              for start in range(0, len(labels), BLOCK)]
    return np.concatenate(blocks), labels


def write_shapes100(folder: str, seed: int, train_per_class: int, test_per_class: int) -> None:
    train_x, train_y = generate(seed, train_per_class, offset=0)
    test_x, test_y = generate(seed, test_per_class, offset=1)
    pixels = train_x.astype(np.float64) / 255
    meta = {"recipe_version": RECIPE_VERSION, "seed": seed, "generator": "bickd.data.shapes",
            "mean": pixels.mean((0, 2, 3)).tolist(), "std": pixels.std((0, 2, 3)).tolist(),
            "superclass_names": superclass_names()}
    write_cifar100(folder, train_x, train_y, test_x, test_y, class_names(),
                   (train_y // len(HUES), test_y // len(HUES)), superclass_names(), meta)


def cache_folder(root: str | None, seed: int, train_per_class: int, test_per_class: int) -> str:
    base = root or os.path.join(os.path.expanduser("~"), ".cache", "bickd")
    return os.path.join(base, f"shapes100-v{RECIPE_VERSION}-s{seed}-n{train_per_class}-{test_per_class}")


class ShapesOptions(StrictModel):
    train_per_class: int = Field(200, ge=2, description="generated training images per class (validation included)")
    test_per_class: int = Field(100, ge=1, description="generated test images per class")


@register_dataset("shapes100", options=ShapesOptions, val_fraction=0.1)
def load_shapes100(root=None, download=False, image_size=None, seed=0, val_fraction=0.0, split_seed=None,
                   train_per_class: int = 200, test_per_class: int = 100) -> ImageData:
    """Generates the set once into a cache folder (atomically), then reads it as CIFAR-100."""
    folder = cache_folder(root, seed, train_per_class, test_per_class)
    if not os.path.isdir(os.path.join(folder, FOLDER)):
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_shapes100(tmp, seed, train_per_class, test_per_class)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        try:
            os.rename(tmp, folder)  # another process may have won the race: its copy is identical
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    data = load_cifar100(root=folder, image_size=image_size, seed=seed, val_fraction=val_fraction,
                         split_seed=split_seed)
    size = image_size or SIZE
    return dataclasses.replace(data, augment=AugmentSpec(crop_padding=max(size // 8, 1), flip=True), name="shapes100")
