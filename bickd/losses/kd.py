"""Hinton KD: cross-entropy plus KL between temperature-softened teacher and student probabilities.

`standardize` z-scores both logit matrices per sample before the KL (logit standardization, Sun et al. 2024),
as in the authors' `kd_loss`: the cross-entropy stays on the raw logits and the T^2 factor stays.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, Parts, ce_weight_field
from bickd.losses.standardization import standardize_field, standardized
from bickd.schema import StrictModel


class KDParams(StrictModel):
    name: Literal["kd"] = "kd"
    T: float = Field(4.0, gt=0, description="KD temperature")
    w_ce: float = ce_weight_field(0.1)
    w_kl: float = Field(0.9, ge=0, description="KL weight")
    standardize: bool = standardize_field("the KL's logits (LS README, resnet32x4 -> resnet8x4: T 2, w_kl 9)")


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
        kl = kl_at_temperature(*standardized(zs, zt, p.standardize), p.T)
        total = p.w_ce * ce + p.w_kl * kl
        return total, {"ce": ce.detach(), "kl": kl.detach()}
