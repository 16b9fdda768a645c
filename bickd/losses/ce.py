"""Cross-entropy alone: the student trained without a teacher (the no-distillation control)."""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from bickd.losses.base import DistillationLoss
from bickd.schema import StrictModel


class CEParams(StrictModel):
    name: Literal["ce"] = "ce"


class CELoss(DistillationLoss):
    Params = CEParams
    needs_teacher = False

    def forward(self, student_logits, teacher_logits, labels, epoch: float = 0.0):
        ce = F.cross_entropy(student_logits.float(), labels)
        return ce, {"ce": ce.detach()}
