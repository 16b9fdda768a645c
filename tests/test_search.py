"""The Optuna searcher across a resume: Tune's pickled snapshot of it can be older than the study's RDB.

Uses the real OptunaSearch, a real SQLite study and the searcher's own save/restore (what Tune calls when it
snapshots and restores an experiment); no Ray cluster is needed.
"""
from __future__ import annotations

import json

import optuna
from ray.tune.search import Searcher

from bickd.config import TrainConfig
from bickd_tune.experiment import SearchConfig
from bickd_tune.search import TrialKey, build_searcher, exhausted

BASE = TrainConfig.model_validate({"data": {"name": "digits"}, "teacher": {"model": "resnet8"},
                                   "student": {"model": "resnet8"}, "recipe": {"epochs": 2, "schedule": "cosine"}})
TAU = {"loss.tau": {"loguniform": [0.05, 0.5]}}


def _searcher(tmp_path, space=TAU, points=(), name="study", **kwargs):
    search = SearchConfig.model_validate({"num_samples": 2, "space": space, "points_to_evaluate": list(points)})
    searcher = build_searcher(search, f"sqlite:///{tmp_path}/optuna.db", name, BASE)
    searcher._max_repeats = kwargs.get("max_repeats", searcher._max_repeats)
    return searcher


def test_a_trial_the_study_finished_after_the_last_snapshot_can_report_again(tmp_path):
    searcher = _searcher(tmp_path)
    assert "loss.tau" in searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/top1": 10.0, "training_iteration": 1})
    snapshot = str(tmp_path / "searcher.pkl")
    searcher.save(snapshot)  # Tune's last experiment snapshot: t1 still running
    searcher.on_trial_result("t1", {"val/top1": 20.0, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"val/top1": 20.0, "training_iteration": 2})  # in the RDB at once
    # ... the driver is killed here; --resume restores the stale snapshot and Tune re-runs t1's last epoch.
    resumed = _searcher(tmp_path)
    resumed.restore(snapshot)
    resumed.on_trial_result("t1", {"val/top1": 20.5, "training_iteration": 2})  # Optuna refused this
    resumed.on_trial_complete("t1", {"val/top1": 20.5, "training_iteration": 2})
    assert "loss.tau" in resumed.suggest("t2")  # the search goes on
    resumed.on_trial_complete("t2", {"val/top1": 30.0, "training_iteration": 1})

    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    values = [(t.state, t.value) for t in study.trials]
    # the first record of t1 is kept, not overwritten or duplicated
    assert values == [(optuna.trial.TrialState.COMPLETE, 20.0), (optuna.trial.TrialState.COMPLETE, 30.0)]


def test_results_of_running_trials_still_reach_the_study(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/top1": 10.0, "training_iteration": 1})
    searcher.on_trial_result("t1", {"val/top1": 15.0, "training_iteration": 2})
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.trials[0].intermediate_values == {1: 10.0, 2: 15.0}
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


CHOICE = {"loss.name": {"choice": ["ce", "kd"]}}


def test_a_repeated_configuration_is_never_trained_twice(tmp_path):
    """Two parameter-free choices: after them the sampler only repeats. Repeats are told the first trial's
    value (at once, or when that trial ends) and the search ends instead of training them again."""
    searcher = _searcher(tmp_path, CHOICE, points=[{"loss.name": "ce"}, {"loss.name": "kd"}, {"loss.name": "ce"}],
                         max_repeats=20)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert {first["loss.name"], second["loss.name"]} == {"ce", "kd"}
    searcher.on_trial_complete("t1", {"val/top1": 50.0, "training_iteration": 2})
    assert searcher.suggest("t3") == Searcher.FINISHED  # nothing new is left to train
    searcher.on_trial_complete("t2", {"val/top1": 60.0, "training_iteration": 2})

    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    value_of = {0: 50.0, 1: 60.0}
    repeats = study.trials[2:]
    assert len(repeats) == 20 and [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in repeats:  # every repeat carries its original's value, including those told after it ended
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == value_of[trial.user_attrs["repeat_of"]]
        assert trial.params["loss.name"] == study.trials[trial.user_attrs["repeat_of"]].params["loss.name"]
    assert {t.user_attrs["repeat_of"] for t in repeats} == {0, 1}  # repeats of the running trial waited for it
    assert exhausted(f"sqlite:///{tmp_path}/optuna.db", "study")


def test_parameter_free_options_are_proposed_once_each(tmp_path):
    space = {"loss.name": {"choice": ["ce", "kd", "bickd"]},
             "loss.tau": {"loguniform": [0.05, 0.5], "when": {"loss.name": "bickd"}}}
    searcher = _searcher(tmp_path, space, name="mixed")
    configs = []
    for i in range(8):
        point = searcher.suggest(f"t{i}")
        configs.append(json.dumps(BASE.with_overrides(point).train_dict(), sort_keys=True))
        searcher.on_trial_complete(f"t{i}", {"val/top1": float(i), "training_iteration": 1})
    assert len(set(configs)) == 8  # ce and kd at most once each, every BicKD trial a new tau
    assert not exhausted(f"sqlite:///{tmp_path}/optuna.db", "mixed")


def test_the_trial_key_is_the_whole_resolved_config():
    key = TrialKey(BASE)
    assert key({"loss.name": "kd"}) == key({"loss.name": "kd"})
    assert key({"loss.name": "kd"}) != key({"loss.name": "kd", "seed": 1})  # another seed is another trial
    assert key({"loss.tau": 0.1}) == key({})  # 0.1 is BicKD's default: the same trial as the base


def test_integer_parameters_are_suggested_as_integers_in_their_range(tmp_path):
    searcher = _searcher(tmp_path, {"recipe.epochs": {"int": [1, 3]}}, name="ints", max_repeats=30)
    values = []
    for i in range(3):
        values.append(searcher.suggest(f"t{i}")["recipe.epochs"])
        searcher.on_trial_complete(f"t{i}", {"val/top1": float(i), "training_iteration": 1})
    assert sorted(values) == [1, 2, 3] and all(isinstance(v, int) for v in values)
    assert searcher.suggest("t3") == Searcher.FINISHED  # three integers, three trials: nothing new is left
