"""ImageNet models: torchvision's ResNets, randomly initialised (weights come from user checkpoints)."""
from __future__ import annotations

from torch import nn
from torchvision import models

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build(name: str, num_classes: int) -> nn.Module:
    return getattr(models, name)(weights=None, num_classes=num_classes)
