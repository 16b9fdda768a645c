"""Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024): each
sample's logits are z-scored over the classes before the temperature softmax, so the student matches the
teacher's logit *relations* rather than their range; the temperature becomes a "base temperature".

One switch per logit loss (kd, dkd: `standardize`; bickd: `standardize` for its KL part, `standardize_bc`
for the bilateral term's probability matrices), all computed here.
"""
from __future__ import annotations

import torch
from pydantic import Field

# The authors' code (sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py `normalize`) adds
# 1e-7 to the standard deviation, outside the square root, and uses torch.std's unbiased estimate.
STD_EPS = 1e-7
TITLE = "logit standardization"  # named in the error when a loss without the switch is given it


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """(z - mean) / (STD_EPS + std) per row (sample) over the classes, std with Bessel's correction (N - 1)."""
    if logits.shape[1] < 2:
        raise ValueError("logit standardization needs at least 2 classes (a standard deviation over them)")
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, correction=1)
    return (logits - mean) / (STD_EPS + std)


def standardized(student: torch.Tensor, teacher: torch.Tensor,
                 enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logit matrices standardized, or the very same tensors when the switch is off (bit-identical)."""
    if not enabled:
        return student, teacher
    return standardize_logits(student), standardize_logits(teacher)


def standardize_field(applies_to: str):
    """The pydantic field of a standardization switch (off by default), `applies_to` saying where it acts."""
    return Field(False, title=TITLE, description=f"{TITLE} (Sun et al., CVPR 2024) of {applies_to}: each sample's "
                 "logits z-scored over the classes before the softmax, the temperature then a base temperature")
