"""Distillation losses behind one interface, taking logits (so a teacher's logits can be cached):

    loss = build_loss({"name": "bickd", "tau": 0.1})        # or BicKDLoss(tau=0.1)
    total, parts = loss(student_logits, teacher_logits, labels, epoch=3.5)

`total` carries the gradient; `parts` holds the named, unweighted components (ce, kl, row, col, ...) as
detached 0-d float32 tensors, not floats: a training loop sums them on the device and syncs once per epoch
(a float() per step would force a GPU sync every step). Arithmetic is float32 outside autocast, and the
teacher's logits are detached, so gradients reach the student only. `needs_teacher` is False for `ce` only.
Each loss validates its hyperparameters with its own pydantic model; `LossParams` is their union, the
`loss:` section of a config.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from bickd.losses.base import DistillationLoss
from bickd.losses.bickd import BicKDLoss, BicKDParams
from bickd.losses.ce import CELoss, CEParams
from bickd.losses.dist import DISTLoss, DISTParams
from bickd.losses.dkd import DKDLoss, DKDParams
from bickd.losses.kd import KDLoss, KDParams

LOSSES: dict[str, type[DistillationLoss]] = {
    "ce": CELoss, "kd": KDLoss, "bickd": BicKDLoss, "dkd": DKDLoss, "dist": DISTLoss,
}
LossParams = Annotated[CEParams | KDParams | BicKDParams | DKDParams | DISTParams, Field(discriminator="name")]
_ADAPTER = TypeAdapter(LossParams)


def build_loss(params: LossParams | dict[str, Any]) -> DistillationLoss:
    """A loss module from its params model or a dict with a `name` key (validated either way)."""
    if isinstance(params, dict):
        params = _ADAPTER.validate_python(params)
    values = params.model_dump(exclude={"name"})
    return LOSSES[params.name](**values)


__all__ = [
    "LOSSES",
    "BicKDLoss",
    "BicKDParams",
    "CELoss",
    "CEParams",
    "DISTLoss",
    "DISTParams",
    "DKDLoss",
    "DKDParams",
    "DistillationLoss",
    "KDLoss",
    "KDParams",
    "LossParams",
    "build_loss",
]
