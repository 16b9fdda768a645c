"""Cross-entropy alone: the student trained without a teacher (the no-distillation control)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from bickd.losses.base import DistillationLoss, Parts
from bickd.schema import StrictModel


class CEParams(StrictModel):
    name: Literal["ce"] = "ce"


class CELoss(DistillationLoss):
    Params = CEParams
    needs_teacher = False  # teacher logits may be None; the run skips the teacher entirely

    def compute(self, zs: torch.Tensor, zt: torch.Tensor | None, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        ce = F.cross_entropy(zs, labels)
        return ce, {"ce": ce.detach()}
