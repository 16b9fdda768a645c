"""What every loss shares: hyperparameters validated by the loss's own pydantic model, and the warm-up ramp."""
from __future__ import annotations

from typing import ClassVar

import torch

from bickd.schema import StrictModel


class DistillationLoss(torch.nn.Module):
    """`loss(student_logits, teacher_logits, labels, epoch=...) -> (total, parts)`; see bickd/losses/__init__.py."""

    Params: ClassVar[type[StrictModel]]
    needs_teacher: ClassVar[bool] = True

    def __init__(self, **params):
        super().__init__()
        self.params = self.Params(**params)  # a ValidationError names the bad field


def linear_ramp(epoch: float, warmup_epochs: float) -> float:
    """min(epoch / warmup, 1); no warm-up means full weight from the first step."""
    return 1.0 if warmup_epochs == 0 else min(max(epoch, 0.0) / warmup_epochs, 1.0)
