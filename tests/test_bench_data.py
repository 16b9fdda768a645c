"""The offline science-bench data sets: deterministic, balanced, in the real CIFAR-100 format, structured."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR100

from bickd.data import load_dataset
from bickd.data.cifar import FOLDER, LocalCIFAR100
from bickd.data.shapes import cache_folder, class_names, generate, superclass_names

SMALL = {"train_per_class": 4, "test_per_class": 2}


def test_shapes_generation_is_deterministic_per_seed():
    a, labels_a = generate(seed=3, per_class=2, offset=0)
    b, labels_b = generate(seed=3, per_class=2, offset=0)
    c, _ = generate(seed=4, per_class=2, offset=0)
    assert a.tobytes() == b.tobytes() and np.array_equal(labels_a, labels_b)
    assert a.tobytes() != c.tobytes()
    assert a.dtype == np.uint8 and a.shape == (200, 3, 32, 32)


def test_shapes100_round_trip_through_the_cifar_format(tmp_path):
    data = load_dataset("shapes100", root=str(tmp_path), seed=1, val_fraction=0, **SMALL)
    folder = os.path.join(cache_folder(str(tmp_path), 1, 4, 2), FOLDER)
    assert sorted(os.listdir(folder)) == ["bickd-manifest.json", "meta", "test", "train"]
    # the files are what torchvision's own CIFAR100 class reads (with the MD5s recorded at generation)
    with open(os.path.join(folder, "bickd-manifest.json")) as handle:
        md5 = json.load(handle)["md5"]
    raw = LocalCIFAR100(os.path.dirname(folder), train=True, md5=md5)
    assert isinstance(raw, CIFAR100) and raw.classes == class_names()
    images, labels = generate(seed=1, per_class=4, offset=0)
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert data.train_labels.tolist() == labels.tolist()
    assert data.name == "shapes100" and data.num_classes == 100
    again = load_dataset("shapes100", root=str(tmp_path), seed=1, **SMALL)  # read from the cache
    assert torch.equal(again.test_images, data.test_images)


def test_shapes100_is_balanced_and_has_superclasses(tmp_path):
    data = load_dataset("shapes100", root=str(tmp_path), seed=0, val_fraction=0.25, **SMALL)
    assert torch.bincount(data.train_labels, minlength=100).tolist() == [3] * 100
    assert torch.bincount(data.val_labels, minlength=100).tolist() == [1] * 100
    assert torch.bincount(data.test_labels, minlength=100).tolist() == [2] * 100
    superclass = data.meta["superclass_of_class"]
    assert len(set(superclass)) == 20
    assert all(superclass.count(s) == 5 for s in range(20))
    assert all(superclass[c] == c // 5 for c in range(100))
    assert data.meta["superclass_names"] == superclass_names()
    assert class_names()[7].endswith(superclass_names()[1])


def test_shapes100_downsamples_to_16(tmp_path):
    data = load_dataset("shapes100", root=str(tmp_path), seed=0, image_size=16, **SMALL)
    assert data.train_images.shape[1:] == (3, 16, 16) and data.augment.crop_padding == 2


def test_digits_lowshot_counts_and_corrupted_test_copies():
    data = load_dataset("digits_lowshot", seed=0, train_per_class=7)
    assert torch.bincount(data.train_labels).tolist() == [7] * 10
    assert data.train_images.shape[1:] == (3, 16, 16)
    full = load_dataset("digits", seed=0, image_size=16)
    assert len(data.test_labels) == 5 * len(full.test_labels)
    assert data.test_labels[: len(full.test_labels)].tolist() == full.test_labels.tolist()
    copies = data.test_images.view(5, -1, 3, 16, 16)
    assert not torch.equal(copies[0], copies[1])  # different corruptions of the same images
    again = load_dataset("digits_lowshot", seed=0, train_per_class=7)
    assert torch.equal(again.test_images, data.test_images) and torch.equal(again.train_images, data.train_images)
    teacher_split = load_dataset("digits_lowshot", seed=0, train_per_class=None)
    assert len(teacher_split.train_labels) == len(full.train_labels)  # the same split, validation held out
    # validation: the held-out digits in 5 corrupted copies, like test, none of them among the training images
    assert len(data.val_labels) == 5 * len(full.val_labels) and data.val_labels[: len(full.val_labels)].tolist() == \
        full.val_labels.tolist()
    clean_val = {bytes(x.numpy().tobytes()) for x in full.val_images}
    assert not clean_val & {bytes(x.numpy().tobytes()) for x in full.train_images}
    with pytest.raises(ValueError, match="exceeds"):
        load_dataset("digits_lowshot", train_per_class=1000)
