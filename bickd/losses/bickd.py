"""BicKD: KD plus a bilateral (sample-wise and class-wise) contrastive term on probability matrices.

The formulation is the project's reading of the paper's abstract (docs/method.md); every open choice is a
parameter. On Qs = softmax(Zs/Tb) and Qt = softmax(Zt/Tb) (B x C):
- rows:    S = sim(Qs rows, Qt rows) / tau  (B x B); InfoNCE per student row, positives = own teacher row
           (`row_positives: index`) or same-label teacher rows (`label`);
- columns: K = sim(Qs cols, Qt cols) / tau  (C x C); InfoNCE per student column, positive = same class:
           driving K to a diagonal makes class columns "probabilistically orthogonal".
InfoNCE = alignment (-S_pos) + orthogonality * repulsion (logsumexp over candidates); `contrast` keeps
both parts, only alignment, or only repulsion (decoupled: the positive left out of the denominator).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.kd import kl_at_temperature
from bickd.losses.base import DistillationLoss, linear_ramp
from bickd.schema import StrictModel

_EPS = 1e-12


class BicKDParams(StrictModel):
    name: Literal["bickd"] = "bickd"
    T: float = Field(4.0, gt=0, description="KD temperature")
    w_ce: float = Field(0.1, ge=0, description="cross-entropy weight")
    w_kl: float = Field(0.9, ge=0, description="KL weight")
    Tb: float | None = Field(None, gt=0, description="softmax temperature of the bilateral term (default: T)")
    tau: float = Field(0.1, gt=0, description="InfoNCE temperature")
    w_bc: float = Field(1.0, ge=0, description="weight of the bilateral term (0 = plain KD)")
    w_row: float = Field(1.0, ge=0, description="weight of the sample-wise (row) part")
    w_col: float = Field(1.0, ge=0, description="weight of the class-wise (column) part")
    orthogonality: float = Field(1.0, ge=0, description="repulsion weight inside InfoNCE (1 = plain InfoNCE)")
    sim: Literal["cos", "dot"] = Field("cos", description="similarity of probability vectors")
    row_positives: Literal["index", "label"] = Field("index", description="positives of a student row")
    symmetric: bool = Field(False, description="also the teacher-anchored direction, averaged")
    contrast: Literal["full", "positive_only", "negative_only"] = Field("full", description="InfoNCE parts kept")
    warmup_epochs: float = Field(20, ge=0, description="linear ramp of the bilateral term (0 = none)")


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Rows of `a` against rows of `b`, divided by tau."""
    if kind == "cos":
        a = a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return a @ b.T / tau


def info_nce(scores: torch.Tensor, positives: torch.Tensor, contrast: str, orthogonality: float) -> torch.Tensor:
    """Mean over anchors of -mean_{p in P_i} log softmax_j(scores_i)_p, split into its two parts.

    `positives` is a boolean matrix (anchor x candidate) with at least one True per row.
    alignment_i = -mean_p scores_ip; repulsion_i = logsumexp_j scores_ij (all candidates for `full`,
    negatives only for `negative_only`).
    """
    n_pos = positives.sum(1).clamp_min(1)
    alignment = -(scores * positives).sum(1) / n_pos
    if contrast == "positive_only":
        return alignment.mean()
    if contrast == "negative_only":
        negatives = scores.masked_fill(positives, float("-inf"))
        has_negative = (~positives).any(1)
        repulsion = torch.where(has_negative, torch.logsumexp(negatives, dim=1), torch.zeros_like(alignment))
        return repulsion.mean()
    repulsion = torch.logsumexp(scores, dim=1)
    return (alignment + orthogonality * repulsion).mean()


class BicKDLoss(DistillationLoss):
    Params = BicKDParams

    def ramp(self, epoch: float) -> float:
        return linear_ramp(epoch, self.params.warmup_epochs)

    def _directional(self, scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        p = self.params
        forward = info_nce(scores, positives, p.contrast, p.orthogonality)
        if not p.symmetric:
            return forward
        # Teacher-anchored: softmax over student candidates, i.e. the transposed matrices.
        backward = info_nce(scores.T, positives.T, p.contrast, p.orthogonality)
        return 0.5 * (forward + backward)

    def row_loss(self, qs: torch.Tensor, qt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.params
        scores = similarity(qs, qt, p.sim, p.tau)
        if p.row_positives == "label":
            positives = labels[:, None] == labels[None, :]
        else:
            positives = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return self._directional(scores, positives)

    def col_loss(self, qs: torch.Tensor, qt: torch.Tensor) -> torch.Tensor:
        p = self.params
        scores = similarity(qs.T, qt.T, p.sim, p.tau)
        positives = torch.eye(qs.shape[1], dtype=torch.bool, device=qs.device)
        return self._directional(scores, positives)

    def forward(self, student_logits, teacher_logits, labels, epoch: float = 0.0):
        p = self.params
        zs, zt = student_logits.float(), teacher_logits.detach().float()
        ce = F.cross_entropy(zs, labels)
        kl = kl_at_temperature(zs, zt, p.T)
        tb = p.Tb or p.T
        qs, qt = F.softmax(zs / tb, dim=1), F.softmax(zt / tb, dim=1)
        row = self.row_loss(qs, qt, labels) if p.w_row > 0 and p.w_bc > 0 else zs.new_zeros(())
        col = self.col_loss(qs, qt) if p.w_col > 0 and p.w_bc > 0 else zs.new_zeros(())
        ramp = self.ramp(epoch)
        total = p.w_ce * ce + p.w_kl * kl
        if p.w_bc > 0:
            total = total + p.w_bc * ramp * (p.w_row * row + p.w_col * col)
        parts = {"ce": ce.detach(), "kl": kl.detach(), "row": row.detach(), "col": col.detach(),
                 "ramp": zs.new_tensor(ramp)}
        return total, parts
