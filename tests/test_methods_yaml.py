"""The methods-comparison experiments (search_spaces/cifar_methods.yaml, bench_methods.yaml): they dry-run, each
arm trains the loss it is named for, and the bench compares the same settings as CIFAR-100."""
from __future__ import annotations

import os

import pytest

from bickd_tune import tune as tune_cli
from bickd_tune.experiment import load_experiment
from bickd_tune.published import method_of
from bickd_tune.trial import trial_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = {"cifar": os.path.join(REPO, "search_spaces", "cifar_methods.yaml"),
         "bench": os.path.join(REPO, "search_spaces", "bench_methods.yaml")}
# arm -> the published method its loss is (None: BicKD, which has no published figure)
METHODS = {"kd": "KD", "kd_ls": "KD+LS", "dkd": "DKD", "dkd_ls": "DKD+LS", "dist": "DIST", "bickd": None,
           "bickd_ls": None}


def _arm_losses(path: str) -> dict[str, dict]:
    experiment = load_experiment(path)
    base, arms = experiment.base_train_config(), experiment.ablation.arms
    return {arm: trial_config(base, {"arm": arm, "seed": 0}, arms).loss for arm in arms}


@pytest.mark.parametrize("which", YAMLS)
def test_dry_run_validates_and_creates_nothing(which, capsys):
    """bench_methods.yaml names bench_ablation's teacher checkpoint, absent on a fresh clone: a dry run does
    not need it (as bench_search.yaml)."""
    assert tune_cli.main([YAMLS[which], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 arms" in out and "nothing was created" in out


@pytest.mark.parametrize("which", YAMLS)
def test_each_arm_trains_the_method_it_is_named_for(which):
    experiment = load_experiment(YAMLS[which])
    assert (experiment.ablation.reference, experiment.ablation.control) == ("bickd", "kd")
    losses = _arm_losses(YAMLS[which])
    assert {arm: method_of(loss) for arm, loss in losses.items()} == METHODS
    assert losses["bickd"].name == losses["bickd_ls"].name == "bickd"
    assert (losses["bickd_ls"].standardize, losses["bickd"].standardize) == (True, False)


def test_the_bench_compares_the_cifar_settings_with_warmups_scaled_to_its_recipe():
    cifar, bench = _arm_losses(YAMLS["cifar"]), _arm_losses(YAMLS["bench"])
    assert set(cifar) == set(bench)
    for arm in cifar:
        ours, theirs = cifar[arm].model_dump(), bench[arm].model_dump()
        assert {k: v for k, v in ours.items() if k != "warmup_epochs"} == \
            {k: v for k, v in theirs.items() if k != "warmup_epochs"}, arm
        assert theirs.get("warmup_epochs", 0) <= 1, arm  # 8 epochs: a warm-up of 20 would never end
