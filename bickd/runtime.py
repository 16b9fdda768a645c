"""Device, threads, seeding and autocast: the few process-level settings of a run."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from bickd.config import RuntimeConfig

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(runtime: RuntimeConfig, device: torch.device | str | None = None) -> torch.device:
    """`device` (given by a launcher, e.g. Ray Train's) wins; otherwise the config decides."""
    if device is not None:
        return torch.device(device)
    if runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch; with deterministic data order this makes a CPU run repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_threads(runtime: RuntimeConfig) -> None:
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)


def autocast(runtime: RuntimeConfig, device: torch.device):
    if runtime.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPES[runtime.amp])
