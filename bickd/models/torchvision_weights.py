"""A teacher checkpoint from torchvision's ImageNet weights, in the form experiments load
(`{"model": state_dict}`, e.g. teacher.checkpoint of search_spaces/imagenet.yaml):

    python -m bickd.models.torchvision_weights resnet34 checkpoints/resnet34.pt
    python -m bickd.models.torchvision_weights resnet34 checkpoints/resnet34.pt --from resnet34-b627a593.pth

Without --from, torchvision downloads its default ImageNet weights for the model (into torch's hub cache);
--from takes a torchvision state-dict file already on disk. The weights are checked to load strictly into this
project's model of that name before the checkpoint is written (whole or not at all).
"""
from __future__ import annotations

import argparse
import sys

import torch

from bickd.models import create_model
from bickd.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bickd.models.imagenet import RESNETS

IMAGENET_CLASSES = 1000


def export(name: str, out: str, source: str | None = None) -> str:
    from torchvision import models  # on use: importing torchvision costs seconds (bickd/data/cifar.py)

    if source is None:
        state = getattr(models, name)(weights="DEFAULT").state_dict()
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    model = create_model(name, IMAGENET_CLASSES)
    model.load_state_dict(state, strict=True)  # another model's weights: RuntimeError naming the keys
    path = save_checkpoint(model, out)
    load_checkpoint(create_model(name, IMAGENET_CLASSES), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bickd.models.torchvision_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=RESNETS)
    parser.add_argument("out", help="the checkpoint to write, e.g. checkpoints/resnet34.pt")
    parser.add_argument("--from", dest="source", help="a torchvision state-dict file instead of downloading")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export(args.model, args.out, args.source)}")
    except (CheckpointError, RuntimeError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
