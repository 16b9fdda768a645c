"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class (TCKD) and non-target-class (NCKD) parts."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, linear_ramp
from bickd.schema import StrictModel

_MASKED = -1e9  # finite, so 0 * (masked - masked) stays 0 instead of NaN


class DKDParams(StrictModel):
    name: Literal["dkd"] = "dkd"
    T: float = Field(4.0, gt=0, description="temperature")
    w_ce: float = Field(1.0, ge=0, description="cross-entropy weight")
    alpha: float = Field(1.0, ge=0, description="TCKD weight")
    beta: float = Field(8.0, ge=0, description="NCKD weight (8 for resnet32x4 -> resnet8x4)")
    warmup_epochs: float = Field(20, ge=0, description="linear ramp of the KD part (0 = none)")


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] per row, computed with logsumexp (no log(0) when p -> 1)."""
    log_z = torch.logsumexp(logits, dim=1)
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    others = torch.logsumexp(logits.scatter(1, target[:, None], float("-inf")), dim=1)
    return torch.stack([target_logit - log_z, others - log_z], dim=1)


class DKDLoss(DistillationLoss):
    Params = DKDParams

    def forward(self, student_logits, teacher_logits, labels, epoch: float = 0.0):
        p = self.params
        zs, zt = student_logits.float() / p.T, teacher_logits.detach().float() / p.T
        ce = F.cross_entropy(student_logits.float(), labels)
        if zs.shape[1] < 2:
            raise ValueError("DKD needs at least 2 classes")
        bs, bt = _binary_log_probs(zs, labels), _binary_log_probs(zt, labels)
        tckd = (bt.exp() * (bt - bs)).sum(1).mean() * p.T ** 2
        gt = F.one_hot(labels, zs.shape[1]).bool()
        ls_nt = F.log_softmax(zs.masked_fill(gt, _MASKED), dim=1)
        lt_nt = F.log_softmax(zt.masked_fill(gt, _MASKED), dim=1)
        nckd = (lt_nt.exp() * (lt_nt - ls_nt)).sum(1).mean() * p.T ** 2
        ramp = linear_ramp(epoch, p.warmup_epochs)
        total = p.w_ce * ce + ramp * (p.alpha * tckd + p.beta * nckd)
        return total, {"ce": ce.detach(), "tckd": tckd.detach(), "nckd": nckd.detach()}
