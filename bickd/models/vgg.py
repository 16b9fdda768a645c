"""VGG with batch norm for CIFAR (vgg8 ... vgg19), in mdistiller's five-block layout (block0..block4,
classifier), so the published vgg13 teacher loads strictly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Conv widths per block; a 2x2 max-pool follows blocks 0-2 (block 3 keeps 4x4 maps on 32x32 inputs).
VGGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv-bn-relu repeated; the last ReLU is left to the caller, as in the checkpoints' layout."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, widths, num_classes: int):
        super().__init__()
        ins = [3] + [block[-1] for block in widths[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(w, i) for w, i in zip(widths, ins))
        self.classifier = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        x = F.relu(self.block4(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(name: str, num_classes: int) -> VGG:
    return VGG(VGGS[name], num_classes)
