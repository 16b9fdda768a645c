"""Data sets by name. Each loader takes (root, download, image_size, seed) plus the options it declares."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from bickd.data.types import FolderData, ImageData

Loader = Callable[..., ImageData | FolderData]
DATASETS: dict[str, Loader] = {}
_COMMON = {"root", "download", "image_size", "seed"}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def register(loader: Loader) -> Loader:
        DATASETS[name] = loader
        return loader
    return register


def dataset_options(name: str) -> set[str]:
    """The data-set specific options a loader accepts (besides root, download, image_size, seed)."""
    return set(inspect.signature(DATASETS[name]).parameters) - _COMMON


def load_dataset(name: str, *, root: str | None = None, download: bool = False, image_size: int | None = None,
                 seed: int = 0, **options) -> ImageData | FolderData:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown data set '{name}'{hint}; choose one of: {', '.join(sorted(DATASETS))}")
    unknown = sorted(set(options) - dataset_options(name))
    if unknown:
        allowed = ", ".join(sorted(dataset_options(name))) or "none"
        raise ValueError(f"data set '{name}' takes no option {unknown[0]!r}; its options: {allowed}")
    return DATASETS[name](root=root, download=download, image_size=image_size, seed=seed, **options)
