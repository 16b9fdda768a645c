"""Cross-entropy alone: the student trained without a teacher (the no-distillation control)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from bickd.schema import StrictModel


class CEParams(StrictModel):
    name: Literal["ce"] = "ce"


class CELoss(torch.nn.Module):
    needs_teacher = False

    def __init__(self, **params):
        super().__init__()
        self.params = CEParams(**params)

    def forward(self, student_logits, teacher_logits, labels, epoch: float = 0.0):
        ce = F.cross_entropy(student_logits.float(), labels)
        return ce, {"ce": ce.detach()}
