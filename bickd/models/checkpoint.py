"""Loading and saving model weights: safe (`weights_only=True`), strict, atomic, and clear when wrong."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


def _state_dict_of(payload: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for key in ("model", "state_dict"):  # mdistiller / RepDistiller, Lightning-style
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
        if payload and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
            return {k.removeprefix("module."): v for k, v in payload.items()}  # DDP-saved weights
    raise CheckpointError(f"{path}: holds no state dict (expected {{'model': state_dict}} or a state dict)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage bytes raise anything from IndexError to UnpicklingError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({reason[:200]})") from None
    return _state_dict_of(payload, path)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Loads weights strictly; a mismatch lists the first missing / unexpected / mis-shaped keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                problems.append(f"{label} {len(keys)}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model_or_state: torch.nn.Module | dict[str, torch.Tensor], path: str | os.PathLike,
                    **extra: Any) -> str:
    """Writes `{"model": state_dict, **extra}` via a temp file + rename: never a half-written file."""
    path = str(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"model": state, **extra}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
