"""`python -m bickd.train`: one run without Ray or MLflow, teacher and logit cache included."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from bickd import train as train_cli
from bickd.run import fit
from bickd.teacher_cache import MANIFEST

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = {
    "name": "one-run",
    "data": {"name": "digits", "image_size": 16},
    "teacher": {"model": "resnet8", "recipe": {"epochs": 1, "batch_size": 64, "schedule": "constant"}},
    "student": {"model": "resnet8"},
    "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "loss": {"name": "bickd", "warmup_epochs": 1},
    "runtime": {"device": "cpu", "channels_last": False, "threads": 1},
    "teacher_cache": {"enabled": True, "epochs": 2, "seed": 0},
    "search": {"num_samples": 2},  # the platform's section: ignored by bickd.train
}


@pytest.fixture
def experiment_yaml(tmp_path):
    path = tmp_path / "one-run.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    return str(path)


def test_trains_the_teacher_builds_the_cache_and_distils_from_it(experiment_yaml, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert train_cli.main([experiment_yaml, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "training teacher resnet8" in printed and "caching the teacher's logits for 2 augmented epochs" in printed
    assert "done: validation top-1" in printed and "test top-1" in printed
    caches = [d for d in os.listdir(os.path.join(out, "teacher_cache"))]
    assert len(caches) == 1
    cache = os.path.join(out, "teacher_cache", caches[0])
    assert sorted(os.listdir(cache)) == ["epoch-0000.arrow", "epoch-0001.arrow", MANIFEST]
    state = torch.load(os.path.join(out, "student-state.pt"), weights_only=True)
    assert state["epoch"] == 1 and state["model"] == "resnet8"

    # The student trained on the cached logits: the same run through fit() with that cache gives the same loss.
    config = train_cli.load_train_config(experiment_yaml, {
        "teacher.checkpoint": os.path.join(out, "teacher-resnet8.pt"), "teacher_cache.path": cache})
    again = fit(config, report=lambda m, s: None)
    logged = [line for line in printed.splitlines() if line.startswith("epoch=2")][-1]
    assert f"train/loss={again['train/loss']:.4g}" in logged

    # A second run reuses the teacher and its cache instead of building them again.
    assert train_cli.main([experiment_yaml, "--out", out, "--set", "seed=1"]) == 0
    printed = capsys.readouterr().out
    assert "training teacher" not in printed and "caching" not in printed
    # --resume of a finished run has nothing left to train and says so.
    assert train_cli.main([experiment_yaml, "--out", out, "--set", "seed=1", "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_set_switches_the_loss_to_its_own_defaults(experiment_yaml):
    config = train_cli.load_train_config(experiment_yaml, {"loss.name": "dist"})
    assert (config.loss.name, config.loss.tau, config.loss.w_ce) == ("dist", 4.0, 1.0)


@pytest.mark.parametrize("args, message", [
    (["--set", "loss.tau"], "expected KEY=VALUE"),
    (["--set", "loss.name=kd", "--set", "loss.tau=0.3"], "loss (kd): unknown key 'tau'"),
    (["--set", "data.options.train_per_class=3"], "takes no option 'train_per_class'"),
])
def test_bad_input_is_one_line_and_exit_2(experiment_yaml, tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "bickd.train", experiment_yaml, "--out", str(tmp_path / "o"), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not (tmp_path / "o").exists()
