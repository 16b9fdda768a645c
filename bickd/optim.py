"""Optimizer and learning-rate schedule of the recipe (SGD, step decay at milestones, or cosine)."""
from __future__ import annotations

import math

import torch

from bickd.config import RecipeConfig


def build_optimizer(model: torch.nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)


def lr_factor(recipe: RecipeConfig, epoch: int) -> float:
    """Multiplier of the base lr during `epoch` (0-based), stepped once per epoch like mdistiller."""
    if recipe.schedule == "step":
        return recipe.lr_decay ** sum(epoch >= m for m in recipe.milestones)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, recipe: RecipeConfig, epoch: int) -> float:
    lr = recipe.lr * lr_factor(recipe, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
