"""ImageNet from `<root>/train` and `<root>/val` ImageFolder trees, with the standard transforms."""
from __future__ import annotations

import os

from torch.utils.data import Subset

from bickd.data.registry import register_dataset
from bickd.data.split import stratified_holdout
from bickd.data.types import DataError, FolderData

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@register_dataset("imagenet", val_fraction=0.01)  # ~12,800 training images held out for validation
def load_imagenet(root=None, download=False, image_size=None, seed=0, val_fraction=0.0,
                  split_seed=None) -> FolderData:
    if root is None:
        raise DataError("data.root is required for imagenet (the folder holding train/ and val/)")
    if download:
        raise DataError("imagenet cannot be downloaded automatically (licence); set download: false")
    from torchvision import datasets, transforms  # not at import: it costs every process seconds (see cifar.py)

    size = image_size or 224
    folders = {split: os.path.join(root, split) for split in ("train", "val")}
    for split, folder in folders.items():
        if not os.path.isdir(folder):
            raise DataError(f"ImageNet {split} folder not found: {folder} (expected <root>/{split}/<class>/*.JPEG)")

    normalize = transforms.Normalize(MEAN, STD)
    evaluation = transforms.Compose([
        transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), normalize])
    train = datasets.ImageFolder(folders["train"], transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    # ImageNet's "val" folder is the test split here: the validation split comes out of the training folder.
    test = datasets.ImageFolder(folders["val"], evaluation)
    classes = tuple(train.classes)
    keep, held = stratified_holdout(train.targets, val_fraction, seed if split_seed is None else split_seed)
    val = None
    if len(held):
        val = Subset(datasets.ImageFolder(folders["train"], evaluation), held.tolist())
        train = Subset(train, keep.tolist())
    return FolderData(train, test, num_classes=len(classes), class_names=classes, name="imagenet",
                      meta={"source": os.path.abspath(root), "val": len(held)}, val=val)
