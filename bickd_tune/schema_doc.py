"""docs/experiment-yaml.md, written from the pydantic models the YAML is validated against, so the reference
cannot drift from the code (tests/test_docs.py checks the committed file is what this writes).

    python -m bickd_tune.schema_doc > docs/experiment-yaml.md
"""
from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bickd.config import (DataConfig, RecipeConfig, RuntimeConfig, StudentConfig, TeacherCacheConfig, TeacherConfig,
                          TrainConfig)
from bickd.data import DATASETS
from bickd.losses import LOSSES
from bickd_tune.experiment import (AblationConfig, AnalysisConfig, ConfirmConfig, ExperimentConfig, ResourcesConfig,
                                   SchedulerConfig, SearchConfig, SearchParam, TrackingConfig)

INTRO = """# The experiment YAML

Written by `python -m bickd_tune.schema_doc` from the schema in `bickd/config.py`, `bickd/losses/*.py`,
`bickd/data/*.py` and `bickd_tune/experiment.py`; do not edit by hand. Every key is checked before anything
starts: an unknown key, a wrong type or an out-of-range value is one error line naming the field. Examples:
`search_spaces/*.yaml`; the README explains the sections (`search` or `ablation`, the validation split, how a
trial switches its loss).
"""


def _type(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if all(getattr(m, "model_fields", {}).get("name") for m in members):
            return "a loss section (below)"  # the discriminated union of the losses' parameter models
        return " or ".join(_type(a) for a in members)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"list of {_type(inner[0])}" if inner else "list"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping {_type(key)} → {_type(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    words = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "at least"}
    found = []
    for item in field.metadata:
        for name, word in words.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{word} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "—"
        return "{}" if value == {} else "[]" if value == [] else f"`{value}`" if not isinstance(value, BaseModel) else "its defaults"
    return "null" if field.default is None else f"`{field.default}`" if field.default is not PydanticUndefined else "—"


def table(model: type[BaseModel], prefix: str = "") -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|") + _bounds(field)
        if name == "name" and typing.get_origin(field.annotation) is typing.Literal:
            description = description or "this loss"
        rows.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(rows)


def document() -> str:
    parts = [INTRO, "## Top level", table(ExperimentConfig)]
    sections = [("data", DataConfig), ("teacher", TeacherConfig), ("student", StudentConfig), ("recipe", RecipeConfig),
                ("runtime", RuntimeConfig), ("teacher_cache", TeacherCacheConfig), ("search", SearchConfig),
                ("search.space.<parameter>", SearchParam), ("confirm", ConfirmConfig),
                ("ablation", AblationConfig), ("scheduler", SchedulerConfig),
                ("resources", ResourcesConfig), ("tracking", TrackingConfig), ("analysis", AnalysisConfig)]
    for name, model in sections:
        parts += [f"## `{name}`", table(model, "")]
    parts.append("## `data.options`, per data set")
    for name, entry in sorted(DATASETS.items()):
        fields = table(entry.options) if entry.options.model_fields else "No options."
        parts += [f"### `{name}` (default `val_fraction` {entry.val_fraction:g})", fields]
    parts.append("## `loss`, per loss (`losses.<name>` takes the same keys, `name` aside)")
    for name, loss in LOSSES.items():
        summary = (sys.modules[loss.__module__].__doc__ or "").strip().splitlines()[0].rstrip(",:")
        parts += [f"### `{name}`: {summary}", table(loss.Params)]
    assert TrainConfig.model_fields  # the training sections above are TrainConfig's
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
