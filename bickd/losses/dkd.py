"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class (TCKD) and non-target-class (NCKD) parts,
as in mdistiller: total = w_ce*CE + ramp(epoch) * (alpha*TCKD + beta*NCKD).

`standardize` (logit standardization, Sun et al. 2024) z-scores both logit matrices per sample before the
target / non-target split, as the authors' `dkd_loss` does; CE stays on the raw logits, T^2 stays.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, Parts, ce_weight_field, linear_ramp
from bickd.losses.standardization import standardize_field, standardized
from bickd.schema import StrictModel

_MASKED = -1e9  # finite, so 0 * (masked - masked) stays 0 instead of NaN


class DKDParams(StrictModel):
    name: Literal["dkd"] = "dkd"
    T: float = Field(4.0, gt=0, description="temperature")
    w_ce: float = ce_weight_field(1.0)
    alpha: float = Field(1.0, ge=0, description="TCKD weight")
    beta: float = Field(8.0, ge=0, description="NCKD weight (8 for resnet32x4 -> resnet8x4)")
    warmup_epochs: float = Field(20, ge=0, description="linear ramp of the KD part (0 = none)")
    standardize: bool = standardize_field("both parts' logits (LS README, resnet32x4 -> resnet8x4: T 2, alpha and "
                                          "beta times 9)")


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] per row, computed with logsumexp (no log(0) when p -> 1)."""
    log_z = torch.logsumexp(logits, dim=1)
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    others = torch.logsumexp(logits.scatter(1, target[:, None], float("-inf")), dim=1)
    return torch.stack([target_logit - log_z, others - log_z], dim=1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p || q) from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


class DKDLoss(DistillationLoss):
    """Parts: ce, tckd, nckd (unweighted, T^2 included as in mdistiller)."""

    Params = DKDParams

    def compute(self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        p = self.params
        if zs.shape[1] < 2:
            raise ValueError("DKD needs at least 2 classes")
        ce = F.cross_entropy(zs, labels)
        zs, zt = standardized(zs, zt, p.standardize)
        zs, zt = zs / p.T, zt / p.T
        # TCKD: KL of the binary (target, rest) distributions.
        tckd = _kl(_binary_log_probs(zt, labels), _binary_log_probs(zs, labels)) * p.T ** 2
        # NCKD: KL of the distributions over the non-target classes (target logit masked out).
        target = F.one_hot(labels, zs.shape[1]).bool()
        nckd = _kl(F.log_softmax(zt.masked_fill(target, _MASKED), dim=1),
                   F.log_softmax(zs.masked_fill(target, _MASKED), dim=1)) * p.T ** 2
        ramp = linear_ramp(epoch, p.warmup_epochs, whole_epochs=True)  # as mdistiller
        total = p.w_ce * ce + ramp * (p.alpha * tckd + p.beta * nckd)
        return total, {"ce": ce.detach(), "tckd": tckd.detach(), "nckd": nckd.detach()}
