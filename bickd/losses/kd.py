"""Hinton KD: cross-entropy plus KL between temperature-softened teacher and student probabilities."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, Parts
from bickd.schema import StrictModel


class KDParams(StrictModel):
    name: Literal["kd"] = "kd"
    T: float = Field(4.0, gt=0, description="KD temperature")
    w_ce: float = Field(0.1, ge=0, description="cross-entropy weight")
    w_kl: float = Field(0.9, ge=0, description="KL weight")


def kl_at_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean over samples of KL(softmax(Zt/T) || softmax(Zs/T)), as in mdistiller."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / T, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return kl.mean() * T * T


class KDLoss(DistillationLoss):
    Params = KDParams

    def compute(self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        p = self.params
        ce = F.cross_entropy(zs, labels)
        kl = kl_at_temperature(zs, zt, p.T)
        total = p.w_ce * ce + p.w_kl * kl
        return total, {"ce": ce.detach(), "kl": kl.detach()}
