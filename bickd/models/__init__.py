"""Model zoo: the CIFAR teachers/students of mdistiller/RepDistiller (checkpoint-compatible names) and
torchvision's ImageNet ResNets. `create_model(name, num_classes)`; forward(x) returns logits."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bickd.models import imagenet, mobilenetv2, resnet_cifar, resnet_v2, shufflenet, vgg, wrn
from bickd.models.checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from bickd.names import one_of

_BUILDERS: dict[str, Callable[[str, int], nn.Module]] = {}
_BUILDERS.update({name: resnet_cifar.build for name in resnet_cifar.RESNETS})
_BUILDERS.update({name: wrn.build for name in wrn.WRNS})
_BUILDERS.update({name: vgg.build for name in vgg.VGGS})
_BUILDERS.update({"MobileNetV2": mobilenetv2.build, "ShuffleV1": shufflenet.build, "ShuffleV2": shufflenet.build,
                  "ResNet50": resnet_v2.build})
CIFAR_MODELS = tuple(_BUILDERS)
_BUILDERS.update({name: imagenet.build for name in imagenet.RESNETS})
IMAGENET_MODELS = imagenet.RESNETS
MODEL_NAMES = tuple(_BUILDERS)


def create_model(name: str, num_classes: int) -> nn.Module:
    return _BUILDERS[one_of(name, MODEL_NAMES, what="model")](name, num_classes)


__all__ = ["CIFAR_MODELS", "IMAGENET_MODELS", "MODEL_NAMES", "CheckpointError", "create_model",
           "load_checkpoint", "read_state_dict", "save_checkpoint"]
