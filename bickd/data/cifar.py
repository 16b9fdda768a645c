"""CIFAR-100 through torchvision (the real download and on-disk format), and a writer of that format.

`write_cifar100` lets the project (and its tests) write data in exactly the layout torchvision reads:
`<root>/cifar-100-python/{train,test,meta}` pickles. torchvision verifies files against the MD5s of the
official archive; a locally written set records its own files' MD5s in `bickd-manifest.json`, and
`LocalCIFAR100` — torchvision's CIFAR100 with those expected MD5s — reads it through the same code.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pickle

import numpy as np
import torch

from bickd.data.registry import register_dataset
from bickd.data.split import hold_out_validation
from bickd.data.types import AugmentSpec, DataError, ImageData

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
FOLDER = "cifar-100-python"
MANIFEST = "bickd-manifest.json"


# torchvision is imported on first use, not with this module: `import torchvision.datasets` pulls in
# torch._dynamo, seconds that every trial process would pay.
@functools.cache
def _local_cifar100_class():
    from torchvision.datasets import CIFAR100  # heavy: on first use (the note above)

    class LocalCIFAR100(CIFAR100):
        """torchvision's CIFAR100, checking a locally written set against the MD5s recorded when it was written."""

        def __init__(self, root: str, train: bool, md5: dict[str, str]):
            self.train_list = [["train", md5["train"]]]
            self.test_list = [["test", md5["test"]]]
            self.meta = {**CIFAR100.meta, "md5": md5["meta"]}
            super().__init__(root, train=train, download=False)
    return LocalCIFAR100


def __getattr__(name: str):
    if name == "LocalCIFAR100":  # `from bickd.data.cifar import LocalCIFAR100` still works
        return _local_cifar100_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _md5(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _open(root: str, train: bool, download: bool):
    from torchvision.datasets import CIFAR100  # heavy: on first use (the note above)

    manifest = os.path.join(root, FOLDER, MANIFEST)
    try:
        if os.path.exists(manifest):
            with open(manifest, encoding="utf-8") as handle:
                return _local_cifar100_class()(root, train, json.load(handle)["md5"])
        if download:
            with _download_lock(root):  # trials starting together on one node download it once
                return CIFAR100(root, train=train, download=True)
        return CIFAR100(root, train=train, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"CIFAR-100 not found or corrupted in {os.path.join(root, FOLDER)} ({err}); "
                        "set data.download: true, or unpack cifar-100-python.tar.gz there") from None


@contextlib.contextmanager
def _download_lock(root: str):
    """An exclusive lock on `<root>/.download.lock` while torchvision downloads and unpacks the archive."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".download.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _coarse_labels(root: str, train: bool) -> np.ndarray | None:
    with open(os.path.join(root, FOLDER, "train" if train else "test"), "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    return np.asarray(entry["coarse_labels"]) if "coarse_labels" in entry else None


@register_dataset("cifar100", val_fraction=0.1)  # 5,000 of the 50,000 training images
def load_cifar100(root=None, download=False, image_size=None, seed=0, val_fraction=0.0,
                  split_seed=None) -> ImageData:
    if root is None:
        raise DataError("data.root is required for cifar100 (the folder holding cifar-100-python/)")
    if not download and not os.path.isdir(os.path.join(root, FOLDER)):
        raise DataError(f"CIFAR-100 not found in {os.path.join(root, FOLDER)}; set data.download: true, "
                        "or unpack cifar-100-python.tar.gz there")
    train, test = _open(root, True, download), _open(root, False, download)
    to_tensor = lambda array: torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))  # noqa: E731
    train_images, test_images = to_tensor(train.data), to_tensor(test.data)
    if image_size is not None and image_size != train_images.shape[-1]:
        train_images, test_images = resize_uint8(train_images, image_size), resize_uint8(test_images, image_size)
    meta = {"source": os.path.abspath(root)}
    coarse = _coarse_labels(root, True)
    if coarse is not None:
        fine_to_coarse = {int(f): int(c) for f, c in zip(train.targets, coarse)}
        meta["superclass_of_class"] = [fine_to_coarse.get(c, -1) for c in range(len(train.classes))]
    manifest = os.path.join(root, FOLDER, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as handle:
            meta.update(json.load(handle).get("meta", {}))
    data = ImageData(train_images, torch.tensor(train.targets, dtype=torch.long), test_images,
                     torch.tensor(test.targets, dtype=torch.long), num_classes=len(train.classes),
                     mean=tuple(meta.get("mean", MEAN)), std=tuple(meta.get("std", STD)),
                     augment=AugmentSpec(crop_padding=max((image_size or 32) // 8, 1), flip=True),
                     class_names=tuple(train.classes), name="cifar100", meta=meta)
    return hold_out_validation(data, val_fraction, seed if split_seed is None else split_seed)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8)


def write_cifar100(root: str, train_images: np.ndarray | torch.Tensor, train_labels, test_images, test_labels,
                   fine_names: list[str], coarse_labels: tuple | None = None, coarse_names: list[str] | None = None,
                   meta: dict | None = None) -> str:
    """Writes N x 3 x 32 x 32 uint8 images in the CIFAR-100 python format; returns the folder.

    `coarse_labels` is a pair (train, test) of superclass labels. Written to a temporary folder and
    renamed into place, so a crash leaves no half-written data set.
    """
    folder = os.path.join(root, FOLDER)
    tmp = folder + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    coarse_train, coarse_test = coarse_labels if coarse_labels is not None else (None, None)
    for split, images, labels, coarse in (("train", train_images, train_labels, coarse_train),
                                          ("test", test_images, test_labels, coarse_test)):
        images = np.asarray(images, dtype=np.uint8)
        entry = {"filenames": [f"{split}_{i:06d}.png" for i in range(len(images))],
                 "batch_label": f"{split} batch", "fine_labels": [int(v) for v in labels],
                 "coarse_labels": [int(v) for v in coarse] if coarse is not None else [0] * len(images),
                 "data": images.reshape(len(images), -1)}
        with open(os.path.join(tmp, split), "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with open(os.path.join(tmp, "meta"), "wb") as handle:
        pickle.dump({"fine_label_names": list(fine_names),
                     "coarse_label_names": list(coarse_names or ["all"])}, handle, protocol=2)
    md5 = {name: _md5(os.path.join(tmp, name)) for name in ("train", "test", "meta")}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"md5": md5, "meta": meta or {}}, handle)
    if os.path.exists(folder):
        raise DataError(f"{folder} already exists; not overwriting a data set")
    os.replace(tmp, folder)
    return folder
