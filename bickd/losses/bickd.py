"""BicKD: KD plus a bilateral (sample-wise and class-wise) contrastive term on probability matrices.

The formulation is the project's reading of the paper's abstract (docs/method.md); every open choice is a
parameter. On Qs = softmax(Zs/Tb) and Qt = softmax(Zt/Tb) (B x C):
- rows:    S = sim(Qs rows, Qt rows) / tau  (B x B); InfoNCE per student row, positives = own teacher row
           (`row_positives: index`) or same-label teacher rows (`label`);
- columns: K = sim(Qs cols, Qt cols) / tau  (C x C); InfoNCE per student column, positive = same class:
           driving K to a diagonal makes class columns "probabilistically orthogonal".
InfoNCE = alignment (-S_pos) + orthogonality * repulsion (logsumexp over candidates); `contrast` keeps
both parts, only alignment, or only repulsion (decoupled: the positive left out of the denominator).
Total = w_ce*CE + w_kl*KL + w_bc * ramp(epoch) * (w_row*L_row + w_col*L_col).
Logit standardization (Sun et al. 2024) has two switches, so an ablation can tell which part it helps:
`standardize` for the KL's logits (as in their KD), `standardize_bc` for the logits of Qs and Qt.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bickd.losses.base import DistillationLoss, Parts, ce_weight_field, linear_ramp
from bickd.losses.kd import kl_at_temperature
from bickd.losses.standardization import standardize_field, standardized
from bickd.schema import StrictModel

_EPS = 1e-12  # floor of a vector norm: a class column with no mass in the batch has norm ~0


class BicKDParams(StrictModel):
    name: Literal["bickd"] = "bickd"
    T: float = Field(4.0, gt=0, description="KD temperature")
    w_ce: float = ce_weight_field(0.1)
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
    standardize: bool = standardize_field("the KL part's logits")
    standardize_bc: bool = standardize_field("the bilateral term's logits (before Qs, Qt)")


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Rows of `a` against rows of `b` (cosine or raw dot product), divided by tau."""
    if kind == "cos":
        a = a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return a @ b.T / tau


def info_nce(scores: torch.Tensor, positives: torch.Tensor, contrast: str, orthogonality: float) -> torch.Tensor:
    """Mean over anchors (rows) of -mean_{p in P_i} log softmax_j(scores_i)_p, split into its two parts.

    `positives` is a boolean matrix (anchor x candidate) with at least one True per row.
    alignment_i = -mean_p scores_ip; repulsion_i = logsumexp_j scores_ij over all candidates (`full`),
    or over the negatives only (`negative_only`, 0 for an anchor without negatives).
    `orthogonality` weighs repulsion against alignment, so it only acts in the `full` form.
    """
    alignment = -(scores * positives).sum(1) / positives.sum(1).clamp_min(1)
    if contrast == "positive_only":
        return alignment.mean()
    if contrast == "negative_only":
        # masked_fill's backward zeroes the -inf slots, so an all-positive row gives no NaN gradient.
        negatives = scores.masked_fill(positives, float("-inf"))
        has_negative = (~positives).any(1)
        repulsion = torch.where(has_negative, torch.logsumexp(negatives, dim=1), torch.zeros_like(alignment))
        return repulsion.mean()
    return (alignment + orthogonality * torch.logsumexp(scores, dim=1)).mean()


class BicKDLoss(DistillationLoss):
    """Parts: ce, kl, row, col (unweighted; 0 when switched off by w_bc, w_row or w_col) and ramp."""

    Params = BicKDParams

    def ramp(self, epoch: float) -> float:
        return linear_ramp(epoch, self.params.warmup_epochs)

    def _both_directions(self, scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        p = self.params
        student_anchored = info_nce(scores, positives, p.contrast, p.orthogonality)
        if not p.symmetric:
            return student_anchored
        # Teacher-anchored: softmax over the student candidates, i.e. the transposed matrices.
        teacher_anchored = info_nce(scores.T, positives.T, p.contrast, p.orthogonality)
        return 0.5 * (student_anchored + teacher_anchored)

    def row_loss(self, qs: torch.Tensor, qt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sample-wise: each student row against every teacher row of the batch."""
        p = self.params
        scores = similarity(qs, qt, p.sim, p.tau)
        if p.row_positives == "label":
            positives = labels[:, None] == labels[None, :]
        else:
            positives = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return self._both_directions(scores, positives)

    def col_loss(self, qs: torch.Tensor, qt: torch.Tensor) -> torch.Tensor:
        """Class-wise: each student class column against every teacher class column."""
        p = self.params
        scores = similarity(qs.T, qt.T, p.sim, p.tau)
        positives = torch.eye(qs.shape[1], dtype=torch.bool, device=qs.device)
        return self._both_directions(scores, positives)

    def compute(self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor,
                epoch: float) -> tuple[torch.Tensor, Parts]:
        p = self.params
        ce = F.cross_entropy(zs, labels)
        kl = kl_at_temperature(*standardized(zs, zt, p.standardize), p.T)
        total = p.w_ce * ce + p.w_kl * kl  # with w_bc = 0 exactly KDLoss's arithmetic
        tb = p.Tb if p.Tb is not None else p.T
        bs, bt = standardized(zs, zt, p.standardize_bc)
        qs, qt = F.softmax(bs / tb, dim=1), F.softmax(bt / tb, dim=1)
        zero = zs.new_zeros(())
        # A switched-off side is not computed (and reported as 0): it costs nothing in the KD control arm.
        row = self.row_loss(qs, qt, labels) if p.w_bc > 0 and p.w_row > 0 else zero
        col = self.col_loss(qs, qt) if p.w_bc > 0 and p.w_col > 0 else zero
        ramp = self.ramp(epoch)
        if p.w_bc > 0:
            total = total + p.w_bc * ramp * (p.w_row * row + p.w_col * col)
        parts = {"ce": ce.detach(), "kl": kl.detach(), "row": row.detach(), "col": col.detach(),
                 "ramp": zs.new_tensor(ramp)}
        return total, parts
