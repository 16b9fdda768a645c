"""Train augmentation of a whole batch at once on its device, airbench-style (no per-sample PIL work).

Every random number is a counter-based hash of (seed, epoch, sample index, field), so a sample's view
depends only on those — not on batch size, shuffling, sharding or device. That is what lets a cache of
teacher logits hold exactly the views a trial trains on.
"""
from __future__ import annotations

import torch

from bickd.data.types import AugmentSpec

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # splitmix64 constants as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64
_FIELD_CROP_Y, _FIELD_CROP_X, _FIELD_FLIP, _FIELD_CUT_Y, _FIELD_CUT_X, _FIELD_NOISE = range(6)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def uniform(seed: int, epoch: int, indices: torch.Tensor, field: int, count: int = 1) -> torch.Tensor:
    """U[0,1) numbers, shape (len(indices), count), a pure function of (seed, epoch, index, field, k)."""
    key = _splitmix64(torch.full_like(indices, seed * 1_000_003 + epoch))
    key = _splitmix64(key ^ indices.long())
    key = _splitmix64(key + field * 7919)
    counters = torch.arange(count, device=indices.device, dtype=torch.long)
    bits = _splitmix64(key[:, None] + counters[None, :] * _GOLDEN)
    return _shift_right(bits, 11).double().mul_(2.0 ** -53).float()


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (or [0,1] float) images -> float normalised per channel."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean_t) / std_t


def augment_batch(images: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int, spec: AugmentSpec,
                  mean, std) -> torch.Tensor:
    """Crop-with-padding, flip, normalise, cutout and noise for a batch, per sample by its index."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    batch, channels, height, width = x.shape
    indices = indices.to(x.device)
    if spec.crop_padding > 0:
        pad = spec.crop_padding
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = (uniform(seed, epoch, indices, _FIELD_CROP_Y)[:, 0] * (2 * pad + 1)).long()
        dx = (uniform(seed, epoch, indices, _FIELD_CROP_X)[:, 0] * (2 * pad + 1)).long()
        rows = dy[:, None] + torch.arange(height, device=x.device)[None, :]
        cols = dx[:, None] + torch.arange(width, device=x.device)[None, :]
        picked = padded[torch.arange(batch, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        x = picked.permute(0, 3, 1, 2)
    if spec.flip:
        flip = uniform(seed, epoch, indices, _FIELD_FLIP)[:, 0] < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = normalize(x, mean, std)
    if spec.cutout > 0:
        cy = (uniform(seed, epoch, indices, _FIELD_CUT_Y)[:, 0] * height).long()
        cx = (uniform(seed, epoch, indices, _FIELD_CUT_X)[:, 0] * width).long()
        half = spec.cutout // 2
        ys = torch.arange(height, device=x.device)[None, :, None]
        xs = torch.arange(width, device=x.device)[None, None, :]
        inside = ((ys - cy[:, None, None]).abs() <= half) & ((xs - cx[:, None, None]).abs() <= half)
        x = x.masked_fill(inside[:, None], 0.0)
    if spec.noise_std > 0:
        u = uniform(seed, epoch, indices, _FIELD_NOISE, 2 * channels * height * width).clamp_min(1e-12)
        u1, u2 = u.chunk(2, dim=1)  # Box-Muller
        noise = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
        x = x + spec.noise_std * noise.view(batch, channels, height, width)
    return x.contiguous()
