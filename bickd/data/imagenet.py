"""ImageNet from `<root>/train` and `<root>/val` ImageFolder trees, with the standard transforms."""
from __future__ import annotations

import os

from bickd.data.registry import register_dataset
from bickd.data.types import DataError, FolderData

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@register_dataset("imagenet")
def load_imagenet(root=None, download=False, image_size=None, seed=0) -> FolderData:
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
    train = datasets.ImageFolder(folders["train"], transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    test = datasets.ImageFolder(folders["val"], transforms.Compose([
        transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), normalize]))
    return FolderData(train, test, num_classes=len(train.classes), class_names=tuple(train.classes),
                      name="imagenet", meta={"source": os.path.abspath(root)})
