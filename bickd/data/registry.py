"""Data sets by name. Each loader takes (root, download, image_size, seed, val_fraction) plus the options its
registered schema declares; `load_dataset` validates the options first, so a bad option fails with its name."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bickd.data.types import FolderData, ImageData
from bickd.names import one_of
from bickd.schema import StrictModel

Loader = Callable[..., ImageData | FolderData]


class NoOptions(StrictModel):
    """A data set without options of its own."""


@dataclass(frozen=True)
class Dataset:
    loader: Loader
    options: type[StrictModel]
    val_fraction: float  # default share of the training data held out for validation


DATASETS: dict[str, Dataset] = {}


def register_dataset(name: str, options: type[StrictModel] = NoOptions,
                     val_fraction: float = 0.1) -> Callable[[Loader], Loader]:
    def register(loader: Loader) -> Loader:
        DATASETS[name] = Dataset(loader, options, val_fraction)
        return loader
    return register


def dataset_options(name: str) -> set[str]:
    """The data-set specific options a loader accepts (besides root, download, image_size, seed, val_fraction)."""
    return set(DATASETS[name].options.model_fields)


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` checked against the data set's schema (a ValueError names an unknown option; pydantic's
    ValidationError a bad value); returns them with the data set's defaults filled in."""
    schema = DATASETS[name].options
    for key in options:
        if key not in schema.model_fields:
            allowed = sorted(schema.model_fields)
            raise ValueError(f"data set '{name}' takes no option '{key}'; its options: {', '.join(allowed) or 'none'}"
                             + (" (seed, image_size, root and val_fraction are data fields, not options)"
                                if key in ("seed", "image_size", "root", "val_fraction", "download") else ""))
    return schema.model_validate(options).model_dump()


def load_dataset(name: str, *, root: str | None = None, download: bool = False, image_size: int | None = None,
                 seed: int = 0, val_fraction: float | None = None, split_seed: int | None = None,
                 **options) -> ImageData | FolderData:
    """The data set `name` with `val_fraction` of its training data held out (None: the set's default) by
    `split_seed` (None: `seed`, which also draws a generated set or a set's own train/test split)."""
    entry = DATASETS[one_of(name, sorted(DATASETS), what="data set")]
    try:
        checked = validate_options(name, options)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise ValueError(f"data set '{name}' option {'.'.join(map(str, first['loc']))}: {first['msg']} "
                         f"(got {first.get('input')!r})") from None
    fraction = entry.val_fraction if val_fraction is None else val_fraction
    return entry.loader(root=root, download=download, image_size=image_size, seed=seed, val_fraction=fraction,
                        split_seed=split_seed, **checked)


def val_fraction_of(data) -> float:
    """The share of training data a `DataConfig` holds out for validation (its own, or its set's default)."""
    return DATASETS[data.name].val_fraction if data.val_fraction is None else data.val_fraction


# The last in-memory data set this process loaded: a trial process that Tune reuses for the next trial (reuse_actors)
# gets it again instead of reading and splitting it again. One set at a time, so memory stays one data set; its
# tensors are only ever read (batches and augmentation make new ones).
_LAST_LOADED: dict[str, ImageData] = {}


def load_data(data) -> ImageData | FolderData:
    """The data set a `DataConfig` describes (the one way the training code loads data). Environment variables in
    its root (`$VAR`, `${VAR}`) are those of the process that loads it: a node can hold its data where it likes."""
    root = os.path.expandvars(data.root) if data.root else data.root
    key = json.dumps([data.model_dump(mode="json"), root], sort_keys=True)
    if key in _LAST_LOADED:
        return _LAST_LOADED[key]
    loaded = load_dataset(data.name, root=root, download=data.download, image_size=data.image_size,
                          seed=data.seed, val_fraction=data.val_fraction, split_seed=data.split_seed,
                          **data.options)
    if isinstance(loaded, ImageData):
        _LAST_LOADED.clear()
        _LAST_LOADED[key] = loaded
    return loaded
