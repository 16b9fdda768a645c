"""The training loop on real offline data: teacher training, distillation, repeatability, resume."""
from __future__ import annotations

import contextlib

import pytest
import torch

from bickd import engine
from bickd.config import TrainConfig
from bickd.data import load_dataset, make_batches
from bickd.models import create_model
from bickd.run import fit, train_teacher
from tests.conftest import TINY, deep_update

# The shared tiny experiment's training part (no Ray resources: these tests train in this process), at 3 epochs of 32
# on 2 threads.
BASE = deep_update({key: value for key, value in TINY.items() if key != "resources"},
                   {"recipe": {"epochs": 3, "batch_size": 32}, "runtime": {"threads": 2}})


@pytest.fixture(scope="module")
def teacher_state():
    config = TrainConfig.model_validate({**BASE, "recipe": {**BASE["recipe"], "epochs": 4}})
    state, history = train_teacher(config, report=lambda m, s: None)
    assert history[-1]["test/top1"] > 80, history[-1]  # a usable teacher on 10 digit classes
    return state


def _initial_accuracy(config: TrainConfig) -> float:
    torch.manual_seed(config.seed)
    data = load_dataset("digits", image_size=16)
    model = create_model(config.student.model, 10)
    return engine.evaluate(model, make_batches(data, 64, "cpu", seed=0).test(), contextlib.nullcontext)["top1"]


@pytest.mark.parametrize("loss", [{"name": "bickd", "warmup_epochs": 1}, {"name": "kd"}])
def test_distillation_beats_chance_and_the_initial_student(teacher_state, loss):
    config = TrainConfig.model_validate({**BASE, "loss": loss})
    reports = []
    final = fit(config, report=lambda m, s: reports.append((dict(m), s)), teacher_state=teacher_state)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert final["test/top1"] > 50  # chance is 10%
    assert final["test/top1"] > _initial_accuracy(config) + 30
    assert {"train/ce", "train/kl"} <= set(final)
    assert final["val/top1_best"] == max(m["val/top1"] for m, _ in reports)  # best epoch by validation
    assert "test/top1_best" not in final  # no epoch is ever picked by its test score
    if loss["name"] == "bickd":
        assert {"train/row", "train/col", "train/ramp"} <= set(final)


def test_validation_is_its_own_split_unless_there_is_none(teacher_state):
    held_out = fit(TrainConfig.model_validate({**BASE, "recipe": {**BASE["recipe"], "epochs": 1}}),
                   report=lambda m, s: None, teacher_state=teacher_state)
    assert held_out["val/loss"] != held_out["test/loss"]  # two different sets of images
    none = fit(TrainConfig.model_validate({**BASE, "recipe": {**BASE["recipe"], "epochs": 1},
                                           "data": {**BASE["data"], "val_fraction": 0}}),
               report=lambda m, s: None, teacher_state=teacher_state)
    assert {k: none[f"val/{k}"] for k in ("top1", "top5", "loss")} == \
        {k: none[f"test/{k}"] for k in ("top1", "top5", "loss")}  # no validation split: test is all there is


def test_cpu_runs_repeat_exactly(teacher_state):
    config = TrainConfig.model_validate({**BASE, "recipe": {**BASE["recipe"], "epochs": 1}})
    a = fit(config, report=lambda m, s: None, teacher_state=teacher_state)
    b = fit(config, report=lambda m, s: None, teacher_state=teacher_state)
    assert a["train/loss"] == b["train/loss"] and a["test/top1"] == b["test/top1"]


def test_resume_continues_from_the_checkpoint(teacher_state):
    config = TrainConfig.model_validate({**BASE, "runtime": {**BASE["runtime"], "checkpoint_every_s": 0}})
    states = []
    full = fit(config, report=lambda m, s: states.append(s), teacher_state=teacher_state)
    after_two = states[1]
    assert after_two["epoch"] == 1 and set(after_two) >= {"student", "optimizer", "best_val_top1"}
    resumed_reports = []
    resumed = fit(config, report=lambda m, s: resumed_reports.append(m), resume=after_two, teacher_state=teacher_state)
    assert [m["epoch"] for m in resumed_reports] == [3]
    assert resumed["train/loss"] == pytest.approx(full["train/loss"], rel=1e-5)
    assert resumed["test/top1"] == pytest.approx(full["test/top1"], abs=1e-6)


@pytest.mark.parametrize("every_s, saved_epochs", [(0, [0, 1, 2]), (3600, [2])])
def test_checkpoints_follow_the_interval_and_the_last_epoch_always_has_one(teacher_state, every_s, saved_epochs):
    config = TrainConfig.model_validate({**BASE, "runtime": {**BASE["runtime"], "checkpoint_every_s": every_s}})
    states = []
    fit(config, report=lambda m, s: states.append(s), teacher_state=teacher_state)
    assert len(states) == 3  # every epoch is reported; only some carry a checkpoint
    assert [s["epoch"] for s in states if s is not None] == saved_epochs


def test_non_finite_loss_stops_the_run(teacher_state):
    config = TrainConfig.model_validate({**BASE, "recipe": {**BASE["recipe"], "lr": 1e6}})
    with pytest.raises(engine.NonFiniteLossError):
        fit(config, report=lambda m, s: None, teacher_state=teacher_state)
