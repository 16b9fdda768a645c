"""ImageNet models: torchvision's ResNets, randomly initialised (weights come from user checkpoints)."""
from __future__ import annotations

from torch import nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build(name: str, num_classes: int) -> nn.Module:
    from torchvision import models  # on use: importing torchvision costs every process seconds (data/cifar.py)

    return getattr(models, name)(weights=None, num_classes=num_classes)
