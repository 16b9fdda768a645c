"""The teacher-logit cache: the same logits as the live teacher, refused when it does not fit, and the
same training as the live teacher."""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest
import torch

from bickd import engine
from bickd.config import TrainConfig
from bickd.data import augment_batch, load_dataset
from bickd.models import create_model
from bickd.run import build_teacher_cache, fit, open_teacher_cache
from bickd.teacher_cache import CacheError, TeacherLogitCache, cache_key

BASE = {
    "data": {"name": "digits", "image_size": 16},
    "teacher": {"model": "resnet8"},
    "student": {"model": "resnet8"},
    "recipe": {"epochs": 1, "batch_size": 64, "schedule": "constant"},
    "loss": {"name": "kd"},
    "runtime": {"device": "cpu", "channels_last": False, "threads": 2},
    "teacher_cache": {"enabled": True, "epochs": 2, "seed": 5},
}


@pytest.fixture(scope="module")
def teacher_state():
    torch.manual_seed(0)
    return create_model("resnet8", 10).state_dict()


@pytest.fixture(scope="module")
def cached(tmp_path_factory, teacher_state):
    folder = str(tmp_path_factory.mktemp("cache") / "teacher-cache")
    config = TrainConfig.model_validate(BASE)
    build_teacher_cache(config, teacher_state, folder)
    return config.with_overrides({"teacher_cache.path": folder}), folder


def test_cached_logits_equal_live_logits_for_the_same_views(cached, teacher_state):
    config, folder = cached
    cache = open_teacher_cache(config, teacher_state)
    data = load_dataset("digits", image_size=16)
    teacher = create_model("resnet8", 10).eval()
    teacher.load_state_dict(teacher_state)
    for epoch in (0, 1, 2, 3):  # 2 and 3 cycle back to the stored views 0 and 1
        idx = torch.tensor([3, 500, 17, 800, 42])
        views = augment_batch(data.train_images[idx], idx, epoch % 2, 5, data.augment, data.mean, data.std)
        with torch.no_grad():
            live = teacher(views)
        stored = cache.lookup(idx, epoch, torch.device("cpu"))
        assert (live - stored).abs().max() <= 1e-4
    assert not torch.equal(cache.lookup(idx, 0, "cpu"), cache.lookup(idx, 1, "cpu"))  # distinct views


def test_a_cache_with_another_key_is_refused(cached, teacher_state):
    config, folder = cached
    other_teacher = {k: v + 1 if v.is_floating_point() else v for k, v in teacher_state.items()}
    with pytest.raises(CacheError, match="key mismatch in teacher_sha256"):
        open_teacher_cache(config, other_teacher)
    with pytest.raises(CacheError, match="key mismatch in view_seed"):
        open_teacher_cache(config.with_overrides({"teacher_cache.seed": 6}), teacher_state)


def test_a_modified_cache_file_is_refused(cached, teacher_state, tmp_path):
    config, folder = cached
    copy = str(tmp_path / "copy")
    shutil.copytree(folder, copy)
    with open(os.path.join(copy, "epoch-0001.arrow"), "r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        handle.write(b"\0" * 8)
    with pytest.raises(CacheError, match="checksum mismatch"):
        TeacherLogitCache(copy, cache_key(config, teacher_state))
    os.remove(os.path.join(copy, "manifest.json"))
    with pytest.raises(CacheError, match="no manifest.json"):
        TeacherLogitCache(copy, cache_key(config, teacher_state))


def test_training_from_the_cache_matches_the_live_teacher(cached, teacher_state):
    config, _ = cached
    from_cache = fit(config, report=lambda m, s: None, teacher_state=teacher_state)
    # The live teacher on the same views: same config (so the same view seed and cycling), but the
    # teacher function is the network itself instead of the stored logits.
    teacher = create_model("resnet8", 10)
    teacher.load_state_dict(teacher_state)
    live_teacher = engine.live_teacher(teacher, contextlib.nullcontext)
    live = fit(config, report=lambda m, s: None, teacher_fn=live_teacher)
    assert from_cache["train/loss"] == pytest.approx(live["train/loss"], abs=1e-4)
    assert from_cache["train/kl"] == pytest.approx(live["train/kl"], abs=1e-4)
