"""Data sets, the CIFAR-100 on-disk round trip, deterministic augmentation and batch sharding."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR100

from bickd.data import DATASETS, AugmentSpec, DataError, augment_batch, load_dataset, make_batches
from bickd.data.cifar import write_cifar100


def test_importing_the_training_code_leaves_torchvision_out():
    # torchvision pulls in torch._dynamo (seconds per trial process); bickd imports it only where used
    code = "import sys, bickd.run, bickd_tune.trial; print('torchvision' in sys.modules)"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-1:] == ["False"], out.stderr[-2000:]


def _random_cifar(tmp_path, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    train_y, test_y = rng.integers(0, 100, n_train), rng.integers(0, 100, n_test)
    names = [f"class_{i}" for i in range(100)]
    coarse = (train_y // 5, test_y // 5)
    write_cifar100(str(tmp_path), train, train_y, test, test_y, names, coarse, [f"super_{i}" for i in range(20)])
    return train, train_y, test, test_y


def test_cifar100_round_trip_through_torchvision(tmp_path):
    train, train_y, test, test_y = _random_cifar(tmp_path)
    # the real on-disk format: the pickles torchvision's own class reads
    with open(tmp_path / "cifar-100-python" / "train", "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")  # as torchvision reads it
    assert entry["data"].shape == (50, 3072) and len(entry["fine_labels"]) == 50
    data = load_dataset("cifar100", root=str(tmp_path), val_fraction=0)
    assert data.val_images is None
    assert torch.equal(data.train_images, torch.from_numpy(train))
    assert torch.equal(data.test_images, torch.from_numpy(test))
    assert data.train_labels.tolist() == train_y.tolist() and data.test_labels.tolist() == test_y.tolist()
    assert data.num_classes == 100 and data.class_names[3] == "class_3"
    assert data.meta["superclass_of_class"][int(train_y[0])] == int(train_y[0]) // 5
    assert data.mean == pytest.approx((0.5071, 0.4867, 0.4408))


def test_validation_is_a_stratified_seeded_share_of_training_and_leaves_test_alone(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 256, (400, 3, 32, 32), dtype=np.uint8), rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    train_y, test_y = np.repeat(np.arange(100), 4), rng.integers(0, 100, 30)
    write_cifar100(str(tmp_path), train, train_y, test, test_y, [f"c{i}" for i in range(100)])
    data = load_dataset("cifar100", root=str(tmp_path), val_fraction=0.25, seed=3)
    assert torch.bincount(data.val_labels, minlength=100).tolist() == [1] * 100  # stratified: one of four
    assert torch.bincount(data.train_labels, minlength=100).tolist() == [3] * 100
    # train and validation partition the original training images; test is untouched
    rows = lambda images: sorted(bytes(x.numpy().tobytes()) for x in images)  # noqa: E731
    assert rows(torch.cat([data.train_images, data.val_images])) == rows(torch.from_numpy(train))
    assert torch.equal(data.test_images, torch.from_numpy(test))
    assert torch.equal(load_dataset("cifar100", root=str(tmp_path), val_fraction=0.25, seed=3).val_images, data.val_images)
    assert not torch.equal(load_dataset("cifar100", root=str(tmp_path), val_fraction=0.25, seed=4).val_images,
                           data.val_images)
    default = load_dataset("cifar100", root=str(tmp_path))  # cifar100's own default: 10%
    assert len(default.val_labels) == 100 and len(default.train_labels) == 300


def test_every_data_set_has_a_default_validation_split():
    assert all(0 < entry.val_fraction < 0.5 for entry in DATASETS.values())
    digits, without = load_dataset("digits", seed=0), load_dataset("digits", seed=0, val_fraction=0)
    assert len(digits.train_labels) + len(digits.val_labels) == len(without.train_labels)
    assert torch.equal(digits.test_labels, without.test_labels) and torch.equal(digits.test_images, without.test_images)
    assert len(digits.val_labels) == pytest.approx(0.2 * len(without.train_labels), abs=10)


def test_cifar100_refuses_a_tampered_file(tmp_path):
    _random_cifar(tmp_path)
    with open(tmp_path / "cifar-100-python" / "test", "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(DataError, match="corrupted"):
        load_dataset("cifar100", root=str(tmp_path))


def test_cifar100_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_dataset("cifar100", root=str(tmp_path / "nowhere"))


def test_official_cifar_class_is_what_reads_the_files(tmp_path):
    """Without our manifest, torchvision's stock class checks the official MD5s and refuses our files."""
    _random_cifar(tmp_path)
    os.remove(tmp_path / "cifar-100-python" / "bickd-manifest.json")
    with pytest.raises(RuntimeError):
        CIFAR100(str(tmp_path), train=True, download=False)


def test_digits_split_is_stratified_and_seeded():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert a.train_images.shape[1:] == (3, 32, 32) and a.train_images.dtype == torch.uint8
    assert len(a.train_labels) + len(a.val_labels) + len(a.test_labels) == 1797 and a.num_classes == 10
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.min() >= 70 and counts.max() <= 74  # 40% of ~180 per class
    assert torch.equal(load_dataset("digits", seed=0).train_images, a.train_images)
    assert not torch.equal(a.train_labels, b.train_labels)
    assert load_dataset("digits", image_size=16).train_images.shape[-1] == 16


def test_unknown_dataset_and_option_are_named():
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        load_dataset("digitz")
    with pytest.raises(ValueError, match="no option 'shots'"):
        load_dataset("digits", shots=3)
    with pytest.raises(ValueError, match="option train_per_class: Input should be greater than or equal to 1"):
        load_dataset("digits_lowshot", train_per_class=-31)


SPEC = AugmentSpec(crop_padding=2, flip=True, noise_std=0.1, cutout=3)


def test_augmentation_depends_only_on_seed_epoch_and_index():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    idx = torch.arange(10)
    full = augment_batch(images, idx, 3, 7, SPEC, (0.5,) * 3, (0.2,) * 3)
    subset = torch.tensor([7, 2, 5])
    part = augment_batch(images[subset], subset, 3, 7, SPEC, (0.5,) * 3, (0.2,) * 3)
    assert torch.equal(full[subset], part)
    assert not torch.equal(full, augment_batch(images, idx, 4, 7, SPEC, (0.5,) * 3, (0.2,) * 3))
    assert not torch.equal(full, augment_batch(images, idx, 3, 8, SPEC, (0.5,) * 3, (0.2,) * 3))


def test_augmentation_without_crop_or_flip_is_normalisation():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(images, torch.arange(4), 0, 0, AugmentSpec(0, False), (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(out, (images.float() / 255 - 0.5) / 0.25)
    no_flip = augment_batch(images, torch.arange(4), 0, 0, AugmentSpec(1, False), (0.0,) * 3, (1.0,) * 3)
    assert no_flip.shape == images.shape
    # with padding 1 and no flip each output is a shifted copy: its centre 6x6 appears in the input
    for k in range(4):
        centre = no_flip[k, :, 1:-1, 1:-1] * 255
        found = any(torch.allclose(centre, images[k, :, dy:dy + 6, dx:dx + 6].float(), atol=1e-3)
                    for dy in range(3) for dx in range(3))
        assert found


def test_one_epoch_covers_each_sample_once_and_ranks_are_disjoint():
    data = load_dataset("digits", image_size=8)
    single = make_batches(data, 32, "cpu", seed=1, drop_last=True)
    seen = torch.cat([idx for _, _, idx in single.train(0)])
    assert len(seen) == len(set(seen.tolist())) == single.steps_per_epoch * 32
    ranks = [make_batches(data, 32, "cpu", seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [set(torch.cat([idx for _, _, idx in b.train(2)]).tolist()) for b in ranks]
    assert not shards[0] & shards[1]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch
    tested = sum(len(y) for b in ranks for _, y in b.test())
    assert tested == len(data.test_labels)
    again = torch.cat([idx for _, _, idx in make_batches(data, 32, "cpu", seed=1).train(0)])
    assert torch.equal(seen, again)


def test_imagenet_folder_loads_and_missing_folder_is_named(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 50, 3), i * 60, dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_dataset("imagenet", root=str(tmp_path), image_size=32)
    batches = make_batches(data, 2, "cpu", seed=0, num_workers=0)
    images, labels, idx = next(iter(batches.train(0)))
    assert images.shape == (2, 3, 32, 32) and data.num_classes == 2
    # one image per class held out of train/ for validation (at least one per class), with the test transforms
    assert len(data.val) == 2 and len(data.train) == 4 and len(data.test) == 6
    assert sorted(data.val.dataset.targets[i] for i in data.val.indices) == [0, 1]
    assert sum(len(y) for _, y in batches.val()) == 2
    with pytest.raises(DataError, match="train folder not found"):
        load_dataset("imagenet", root=str(tmp_path / "train"))
