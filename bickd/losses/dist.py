"""DIST (Huang et al., NeurIPS 2022): 1 - Pearson correlation of student and teacher probabilities,
across classes per sample (inter-class relation, rows) and across samples per class (intra-class, columns).

CIFAR defaults follow the authors' code (image_classification_sota, `kd: dist_t4`): tau 4, beta = gamma = 1
with the KD part weighted 2 and CE 1, i.e. beta = gamma = 2 here.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, Parts, ce_weight_field
from bickd.schema import StrictModel


class DISTParams(StrictModel):
    name: Literal["dist"] = "dist"
    tau: float = Field(4.0, gt=0, description="softmax temperature (4 on CIFAR)")
    w_ce: float = ce_weight_field(1.0)
    beta: float = Field(2.0, ge=0, description="inter-class (row) relation weight")
    gamma: float = Field(2.0, ge=0, description="intra-class (column) relation weight")


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over rows of 1 - Pearson correlation between a[i] and b[i] (a constant row correlates 0)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return (1 - corr).mean()


class DISTLoss(DistillationLoss):
    """Parts: ce, inter, intra (unweighted, tau^2 included as in the authors' code)."""

    Params = DISTParams

    def compute(self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        p = self.params
        ys, yt = F.softmax(zs / p.tau, dim=1), F.softmax(zt / p.tau, dim=1)
        ce = F.cross_entropy(zs, labels)
        inter = p.tau ** 2 * _pearson_distance(ys, yt)
        intra = p.tau ** 2 * _pearson_distance(ys.T, yt.T)
        total = p.w_ce * ce + p.beta * inter + p.gamma * intra
        return total, {"ce": ce.detach(), "inter": inter.detach(), "intra": intra.detach()}
