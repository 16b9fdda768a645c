"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) with mdistiller/RepDistiller's parameter names.

Attribute names (conv1, bn1, layerN.i.{conv1,bn1,conv2,bn2,downsample.0/1}, fc) reproduce the published
teacher checkpoints' state-dict keys, so `load_state_dict(..., strict=True)` accepts them. Global average
pooling is adaptive (no parameters, so checkpoints are unaffected) so 16x16 inputs work too.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3 stages of residual blocks; `widths` = (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, block: str = "basic"):
        super().__init__()
        block_cls = BasicBlock if block == "basic" else Bottleneck
        per_stage = (depth - 2) // 6 if block == "basic" else (depth - 2) // 9
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(block_cls, widths[1], per_stage, stride=1)
        self.layer2 = self._stage(block_cls, widths[2], per_stage, stride=2)
        self.layer3 = self._stage(block_cls, widths[3], per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block_cls.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes * block_cls.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block_cls.expansion))
        layers = [block_cls(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block_cls.expansion
        layers += [block_cls(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
RESNETS = {
    **{f"resnet{d}": (d, _NARROW) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def build(name: str, num_classes: int) -> CifarResNet:
    depth, widths = RESNETS[name]
    return CifarResNet(depth, widths, num_classes)
