"""Reading config files and turning validation failures into one readable line.

Every bad input (YAML syntax, unknown key, wrong type, out-of-range value) becomes a `ConfigError` whose
message names the field, the bad value and what is allowed, e.g.
`loss.tau: must be > 0 (got -1)` or `loss (bickd): unknown key 'tua' (did you mean 'tau'?)`.
"""
from __future__ import annotations

import os
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bickd.names import did_you_mean


class ConfigError(ValueError):
    """A config that cannot run; the message is one line meant for the user."""


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """`yaml.safe_load` of a mapping, with the file named in every error."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    return tree


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs of `--set`; values are parsed as YAML scalars (`0.2`, `true`, `cos`)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set loss.tau=0.2")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: the value is not a YAML scalar") from None
    return overrides


def validate(model: type[BaseModel], tree: dict[str, Any], source: str = "config") -> Any:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe(err, model)}") from None


def describe(err: ValidationError, model: type[BaseModel]) -> str:
    """The first validation error as one line (and how many more there are)."""
    errors = err.errors(include_url=False)
    first = _describe_one(errors[0], model)
    more = len(errors) - 1
    return first + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def _describe_one(error: dict[str, Any], model: type[BaseModel]) -> str:
    loc, tags = _public_loc(error["loc"], model)
    field = ".".join(str(part) for part in loc)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        parent, key = ".".join(map(str, loc[:-1])) or "top level", str(loc[-1])
        parent += f" ({tags[-1]})" if tags else ""  # e.g. "loss (kd)": which loss refused the key
        allowed = sorted(_fields_at(model, error["loc"][:-1]))
        # A key of another member of the union (another loss's parameter) is spelled right: say who takes it.
        hint = taken_by_others(key, tags[-1], _union_members(model, error["loc"][:-1])) if tags else ""
        return f"{parent}: unknown key '{key}'{hint or did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{field}: required field is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{field or 'top level'}: {message}{shown}"


def taken_by_others(key: str, refused_by: str, members: dict[str, type[BaseModel]]) -> str:
    """": <what> applies to a, b; <refused_by> does not take it" when other members of a tagged union (other
    losses) have the field `key`, else "". <what> is the field's title, e.g. "logit standardization"."""
    takers = [tag for tag, member in members.items() if key in member.model_fields]
    if not takers:
        return ""
    what = members[takers[0]].model_fields[key].title or f"'{key}'"
    return f": {what} applies to {', '.join(takers)}; {refused_by} does not take it"


def _union_members(model: type[BaseModel], loc: tuple) -> dict[str, type[BaseModel]]:
    """Tag -> member of the tagged union whose member `loc` ends in (e.g. every loss for `loss.dist`)."""
    current: Any = model
    union = None
    for part in loc:
        fields = _model_fields(current)
        if fields is not None and part in fields:
            current, union = _field_type(current, part), None
        else:
            union, current = current, _tagged(current, part)
    if not isinstance(union, tuple):
        return {}
    return {typing.get_args(member.model_fields["name"].annotation)[0]: member for member in union}


def _public_loc(loc: tuple, model: type[BaseModel]) -> tuple[tuple, list]:
    """Drops pydantic's union-tag parts (`loss.bickd.tau` -> `loss.tau`) from an error location; returns
    the location and the tags dropped."""
    public, tags, current = [], [], model
    for part in loc:
        if isinstance(current, tuple):
            member = _tagged(current, part)
            if member is not None:
                current = member
                tags.append(part)
                continue
        public.append(part)
        current = _field_type(current, part)
    return tuple(public), tags


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        fields = _model_fields(current)
        if fields is not None and part in fields:
            current = _field_type(current, part)
        else:
            current = _tagged(current, part)
    return list(_model_fields(current) or [])


def _model_fields(tp: Any) -> dict | None:
    return tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _field_type(model: Any, name: Any) -> Any:
    fields = _model_fields(model)
    if fields is None or name not in fields:
        return None
    return _unwrap(fields[name].annotation)


def _unwrap(tp: Any) -> Any:
    """Optional[X] / Annotated[Union[...]] -> the model type(s) inside."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [a for a in args if _model_fields(a) is not None]
        return models[0] if len(models) == 1 else tuple(models) or None
    return tp


def _tagged(tp: Any, part: Any) -> Any:
    """The union member whose `name` literal equals `part`."""
    members = tp if isinstance(tp, tuple) else ()
    for member in members:
        field = member.model_fields.get("name")
        if field is not None and part in typing.get_args(field.annotation):
            return member
    return None
