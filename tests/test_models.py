"""The model zoo: checkpoint-compatible names and shapes, forward shapes, sizes, checkpoint I/O."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torchvision import models

from bickd.models import CIFAR_MODELS, CheckpointError, create_model, load_checkpoint, save_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "mdistiller_state_keys.json")
with open(FIXTURE, encoding="utf-8") as handle:
    MDISTILLER_KEYS = json.load(handle)  # (key, shape) of mdistiller's own models, num_classes=100


def test_fixture_covers_the_whole_cifar_zoo():
    assert set(MDISTILLER_KEYS) == set(CIFAR_MODELS)


@pytest.mark.parametrize("name", sorted(MDISTILLER_KEYS))
def test_state_dict_keys_and_shapes_are_mdistillers(name):
    """Published mdistiller/RepDistiller checkpoints load strictly: same parameter names and shapes (their
    values cannot be downloaded here; the recorded keys and shapes are from mdistiller's own models)."""
    model = create_model(name, 100)
    ours = [[key, list(value.shape)] for key, value in sorted(model.state_dict().items())]
    assert ours == MDISTILLER_KEYS[name]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert create_model(name, 10).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, millions", [("resnet8x4", 1.23), ("resnet32x4", 7.43), ("resnet20", 0.28),
                                            ("wrn_40_2", 2.26), ("vgg13", 9.46), ("MobileNetV2", 0.81)])
def test_parameter_counts(name, millions):
    count = sum(p.numel() for p in create_model(name, 100).parameters())
    assert count / 1e6 == pytest.approx(millions, rel=0.01)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_torchvision_imagenet_weights_load_and_give_torchvision_outputs(name, tmp_path):
    """A torchvision ResNet's weights, saved as a user would bring them, load strictly into ours and give the
    same outputs (torchvision's ImageNet ResNets are the reference available offline)."""
    torch.manual_seed(0)
    reference = getattr(models, name)(weights=None).eval()
    path = save_checkpoint(reference.state_dict(), tmp_path / f"{name}.pt")
    ours = load_checkpoint(create_model(name, 1000), path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_small_inputs_work_for_the_offline_data_sets():
    with torch.no_grad():
        assert create_model("resnet8", 10).eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_mdistiller_format_round_trip_is_strict_and_exact(tmp_path):
    model = create_model("resnet32x4", 100).eval()
    path = save_checkpoint(model, tmp_path / "ckpt_epoch_240.pth", epoch=240)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "epoch"}
    fresh = load_checkpoint(create_model("resnet32x4", 100), path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_ddp_prefixed_and_raw_state_dicts_load(tmp_path):
    model = create_model("resnet8", 10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    for file in ("ddp.pt", "raw.pt"):
        loaded = load_checkpoint(create_model("resnet8", 10), tmp_path / file)
        assert torch.equal(loaded.fc.weight, model.fc.weight)


class NotWeights:
    """Any class: a weights-only load refuses to unpickle it."""


def test_bad_checkpoints_name_the_file_and_the_problem(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_checkpoint(create_model("resnet8", 10), corrupt)

    wrong = save_checkpoint(create_model("resnet20", 10), tmp_path / "resnet20.pth")
    with pytest.raises(CheckpointError, match=r"resnet20.pth.*unexpected"):
        load_checkpoint(create_model("resnet8", 10), wrong)

    classes = save_checkpoint(create_model("resnet8", 100), tmp_path / "c100.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch 2: fc.weight"):
        load_checkpoint(create_model("resnet8", 10), classes)

    pickled = tmp_path / "object.pth"
    torch.save({"model": NotWeights()}, pickled)  # weights_only=True refuses arbitrary objects
    with pytest.raises(CheckpointError, match="object.pth"):
        load_checkpoint(create_model("resnet8", 10), pickled)

    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(create_model("resnet8", 10), tmp_path / "missing.pth")


def test_unknown_model_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean 'resnet8x4'"):
        create_model("resnet8x5", 100)
