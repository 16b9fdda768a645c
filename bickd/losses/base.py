"""What every loss shares: hyperparameters validated by the loss's own pydantic model, float32 arithmetic
outside autocast with the teacher detached, and the warm-up ramp."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from bickd.schema import StrictModel

Parts = dict[str, torch.Tensor]


class DistillationLoss(torch.nn.Module):
    """`loss(student_logits, teacher_logits, labels, epoch=0.0) -> (total, parts)`.

    `total` is a 0-d float32 tensor carrying the gradient (to the student logits only). `parts` maps names
    to the *unweighted* components as detached 0-d float32 tensors, not Python floats, on purpose: the
    training loop sums them on the device and syncs once per epoch, where a `float()` per step would force
    a host-device sync every step. `epoch` may be fractional, so warm-up ramps advance per step.
    Subclasses implement `compute` on float32 logits.
    """

    Params: ClassVar[type[StrictModel]]
    needs_teacher: ClassVar[bool] = True

    def __init__(self, **params) -> None:
        super().__init__()
        self.params = self.Params(**params)  # a ValidationError names the bad field

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                labels: torch.Tensor, epoch: float = 0.0) -> tuple[torch.Tensor, Parts]:
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"{type(self).__name__} needs teacher logits")
        # float32 even under bf16/fp16 autocast: autocast would run the similarity matmuls in low precision.
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            zs = student_logits.float()
            # The teacher is a constant, even if a caller hands over logits that require grad.
            zt = None if teacher_logits is None else teacher_logits.detach().float()
            return self.compute(zs, zt, labels, float(epoch))

    def compute(self, zs: torch.Tensor, zt: torch.Tensor | None, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        raise NotImplementedError


def ce_weight_field(default: float):
    """The pydantic field of a loss's cross-entropy weight (on the raw logits, against the labels)."""
    return Field(default, ge=0, description="cross-entropy weight")


def linear_ramp(epoch: float, warmup_epochs: float, *, whole_epochs: bool = False) -> float:
    """min(epoch / warmup, 1); no warm-up means full weight from the first step.

    `whole_epochs`: mdistiller's ramp (DKD), which counts epochs from 1 and holds the weight constant within an
    epoch: epoch 0 (0-based, as our loop counts) trains at 1/warmup, epoch warmup-1 at full weight. Without it
    the ramp advances per step (fractional epochs), from 0 at the first step.
    """
    if whole_epochs:
        epoch = int(epoch) + 1
    return 1.0 if warmup_epochs == 0 else min(max(epoch, 0.0) / warmup_epochs, 1.0)
