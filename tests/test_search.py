"""The searcher between Tune and the Optuna study: what the study records, and that it survives a resume.

Uses the real searcher on a real SQLite study, driven the way Tune drives it (suggest, results, completion,
save/restore when Tune snapshots and restores an experiment); no Ray cluster is needed.
"""
from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from bickd.config import TrainConfig
from bickd_tune.experiment import SearchConfig
from bickd_tune.search import REPEAT_ATTR, UNKNOWN_TO_TUNE_ATTR, StudySearcher, config_key, exhausted

BASE = TrainConfig.model_validate({"data": {"name": "digits"}, "teacher": {"model": "resnet8"},
                                   "student": {"model": "resnet8"}, "recipe": {"epochs": 2, "schedule": "cosine"}})
TAU = {"loss.tau": {"loguniform": [0.05, 0.5]}}
CHOICE = {"loss.name": {"choice": ["ce", "kd"]}}


def _searcher(tmp_path, space=TAU, points=(), name="study", **kwargs) -> StudySearcher:
    search = SearchConfig.model_validate({"num_samples": 2, "space": space, "points_to_evaluate": list(points)})
    return StudySearcher(search, f"sqlite:///{tmp_path}/optuna.db", name, BASE, **kwargs)


def _study(tmp_path, name="study") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def test_each_epoch_is_an_intermediate_value_of_a_running_trial(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/top1": 10.0, "epoch": 1})
    searcher.on_trial_result("t1", {"val/top1": 15.0, "epoch": 2})
    trial = _study(tmp_path).trials[0]
    assert trial.intermediate_values == {1: 10.0, 2: 15.0} and trial.state == TrialState.RUNNING


def test_a_trial_that_ran_its_whole_recipe_is_complete(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    for epoch, value in ((1, 10.0), (2, 15.0)):
        searcher.on_trial_result("t1", {"val/top1": value, "epoch": epoch})
    searcher.on_trial_complete("t1", {"val/top1": 15.0, "epoch": 2})
    trial = _study(tmp_path).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 15.0)


def test_a_trial_the_scheduler_stopped_early_is_pruned_with_its_last_value(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    # ASHA stopped it at its first result: Tune hands that result to the searcher only as the completion
    searcher.on_trial_complete("t1", {"val/top1": 10.0, "epoch": 1})
    trial = _study(tmp_path).trials[0]
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, 10.0, {1: 10.0})
    assert _study(tmp_path).get_trials(states=(TrialState.COMPLETE,)) == []  # no plot reads it as finished


def test_a_failed_trial_is_failed(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)
    assert _study(tmp_path).trials[0].state == TrialState.FAIL


def test_a_trial_the_study_finished_after_the_last_snapshot_can_report_again(tmp_path):
    searcher = _searcher(tmp_path)
    assert "loss.tau" in searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/top1": 10.0, "epoch": 1})
    snapshot = str(tmp_path / "searcher.pkl")
    searcher.save(snapshot)  # Tune's last experiment snapshot: t1 still running
    searcher.on_trial_result("t1", {"val/top1": 20.0, "epoch": 2})
    searcher.on_trial_complete("t1", {"val/top1": 20.0, "epoch": 2})  # in the RDB at once
    # ... the driver is killed here; --resume restores the stale snapshot and Tune re-runs t1's last epoch.
    resumed = _searcher(tmp_path)
    resumed.restore(snapshot)
    resumed.on_trial_result("t1", {"val/top1": 20.5, "epoch": 2})  # Optuna refuses this
    resumed.on_trial_complete("t1", {"val/top1": 20.5, "epoch": 2})
    assert "loss.tau" in resumed.suggest("t2")  # the search goes on
    resumed.on_trial_complete("t2", {"val/top1": 30.0, "epoch": 2})
    values = [(t.state, t.value) for t in _study(tmp_path).trials]
    # the first record of t1 is kept, not overwritten or duplicated
    assert values == [(TrialState.COMPLETE, 20.0), (TrialState.COMPLETE, 30.0)]


def test_a_repeated_configuration_is_never_trained_twice_nor_counted_twice(tmp_path):
    """Two parameter-free choices: after them the sampler only repeats. Each repeat is recorded with its first
    trial's values as PRUNED (at once, or when that trial ends), and the search ends instead of training it."""
    searcher = _searcher(tmp_path, CHOICE, points=[{"loss.name": "ce"}, {"loss.name": "kd"}, {"loss.name": "ce"}],
                         max_repeats=20)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert {first["loss.name"], second["loss.name"]} == {"ce", "kd"}
    searcher.on_trial_result("t1", {"val/top1": 50.0, "epoch": 2})
    searcher.on_trial_complete("t1", {"val/top1": 50.0, "epoch": 2})
    assert searcher.suggest("t3") == Searcher.FINISHED  # nothing new is left to train
    searcher.on_trial_result("t2", {"val/top1": 60.0, "epoch": 2})
    searcher.on_trial_complete("t2", {"val/top1": 60.0, "epoch": 2})

    study = _study(tmp_path)
    repeats = study.trials[2:]
    assert len(repeats) == 20 and [t.state for t in study.trials[:2]] == [TrialState.COMPLETE] * 2
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2  # importances and slices see each point once
    value_of = {0: 50.0, 1: 60.0}
    for trial in repeats:  # every repeat carries its original's values, also those recorded after it ended
        assert trial.state == TrialState.PRUNED and trial.value == value_of[trial.user_attrs[REPEAT_ATTR]]
        assert trial.params["loss.name"] == study.trials[trial.user_attrs[REPEAT_ATTR]].params["loss.name"]
    assert {t.user_attrs[REPEAT_ATTR] for t in repeats} == {0, 1}  # repeats of the running trial waited for it
    assert exhausted(f"sqlite:///{tmp_path}/optuna.db", "study")


def test_parameter_free_options_are_proposed_once_each(tmp_path):
    space = {"loss.name": {"choice": ["ce", "kd", "bickd"]},
             "loss.tau": {"loguniform": [0.05, 0.5], "when": {"loss.name": "bickd"}}}
    searcher = _searcher(tmp_path, space, name="mixed")
    configs = []
    for i in range(8):
        point = searcher.suggest(f"t{i}")
        configs.append(config_key(BASE.with_overrides(point)))
        searcher.on_trial_complete(f"t{i}", {"val/top1": float(i), "epoch": 2})
    assert len(set(configs)) == 8  # ce and kd at most once each, every BicKD trial a new tau
    assert not exhausted(f"sqlite:///{tmp_path}/optuna.db", "mixed")


def test_the_trial_key_is_the_whole_resolved_config():
    key = lambda point: config_key(BASE.with_overrides(point))  # noqa: E731
    assert key({"loss.name": "kd"}) == key({"loss.name": "kd"})
    assert key({"loss.name": "kd"}) != key({"loss.name": "kd", "seed": 1})  # another seed is another trial
    assert key({"loss.tau": 0.1}) == key({})  # 0.1 is BicKD's default: the same trial as the base
    assert json.loads(key({}))["loss"]["name"] == "bickd"


def test_integer_parameters_are_suggested_as_integers_in_their_range(tmp_path):
    searcher = _searcher(tmp_path, {"recipe.epochs": {"int": [1, 3]}}, name="ints", max_repeats=30)
    values = []
    for i in range(3):
        values.append(searcher.suggest(f"t{i}")["recipe.epochs"])
        searcher.on_trial_complete(f"t{i}", {"val/top1": float(i), "epoch": values[-1]})
    assert sorted(values) == [1, 2, 3] and all(isinstance(v, int) for v in values)
    # a trial whose own recipe is shorter finished it: complete, not stopped early
    trained = [t for t in _study(tmp_path, "ints").trials if REPEAT_ATTR not in t.user_attrs]
    assert [t.state for t in trained] == [TrialState.COMPLETE] * 3
    assert searcher.suggest("t3") == Searcher.FINISHED  # three integers, three trials: nothing new is left


@pytest.mark.parametrize("max_t, state", [(None, TrialState.PRUNED), (1, TrialState.COMPLETE)])
def test_the_schedulers_max_t_is_the_whole_recipe_when_set(tmp_path, max_t, state):
    searcher = _searcher(tmp_path, max_t=max_t)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val/top1": 5.0, "epoch": 1})
    assert _study(tmp_path).trials[0].state == state


def test_a_repeat_of_a_trial_the_study_finished_before_a_hard_kill_is_recorded_from_the_study(tmp_path):
    points = [{"loss.name": "ce"}, {"loss.name": "kd"}, {"loss.name": "ce"}]
    searcher = _searcher(tmp_path, CHOICE, points=points, max_repeats=20)
    assert searcher.suggest("t1") == {"loss.name": "ce"}
    snapshot = str(tmp_path / "searcher.json")
    searcher.save(snapshot)  # Tune's last snapshot: t1 still running
    searcher.on_trial_complete("t1", {"val/top1": 50.0, "epoch": 2})  # in the study; then the driver is killed
    resumed = _searcher(tmp_path, CHOICE, points=points, max_repeats=20)
    resumed.restore(snapshot)
    assert resumed.suggest("t2") == {"loss.name": "kd"}
    assert resumed.suggest("t3") == Searcher.FINISHED  # ce again is t1's point: a repeat, waiting for t1
    resumed.on_trial_result("t1", {"val/top1": 51.0, "epoch": 2})  # Tune re-runs t1's last epoch
    resumed.on_trial_complete("t2", {"val/top1": 60.0, "epoch": 2})
    study = _study(tmp_path)
    first = study.trials[0]
    assert (first.state, first.value) == (TrialState.COMPLETE, 50.0)  # the first record stays
    ce_repeats = [t for t in study.trials if t.user_attrs.get(REPEAT_ATTR) == 0]
    assert ce_repeats and all((t.state, t.value) == (TrialState.PRUNED, 50.0) for t in ce_repeats)
    assert not study.get_trials(states=(TrialState.RUNNING,))  # nothing left waiting


def test_a_trial_the_study_finished_before_a_hard_kill_can_complete_again(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    snapshot = str(tmp_path / "searcher.json")
    searcher.on_trial_result("t1", {"val/top1": 20.0, "epoch": 2})
    searcher.save(snapshot)  # the epoch is in the snapshot, the completion is not
    searcher.on_trial_complete("t1", {"val/top1": 20.0, "epoch": 2})
    resumed = _searcher(tmp_path)
    resumed.restore(snapshot)
    resumed.on_trial_complete("t1", {"val/top1": 20.5, "epoch": 2})  # no new epoch: straight to the completion
    assert [(t.state, t.value) for t in _study(tmp_path).trials] == [(TrialState.COMPLETE, 20.0)]


def test_a_trial_proposed_and_finished_after_the_last_snapshot_is_listed_apart(tmp_path):
    """Tune never hears of it again after the resume; its value is real and stays, and the study says which
    trial it is, so that the study's complete trials add up to Tune's trials plus these."""
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    snapshot = str(tmp_path / "searcher.json")
    searcher.save(snapshot)  # Tune's last snapshot: t1 running, t2 not yet proposed
    searcher.on_trial_complete("t1", {"val/top1": 20.0, "epoch": 2})
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", {"val/top1": 30.0, "epoch": 2})  # finished in the study, then the kill
    resumed = _searcher(tmp_path)
    resumed.restore(snapshot)
    resumed.on_trial_complete("t1", {"val/top1": 20.5, "epoch": 2})  # Tune re-runs t1 only
    resumed.suggest("t3")
    resumed.on_trial_complete("t3", {"val/top1": 25.0, "epoch": 2})
    study = _study(tmp_path)
    assert [(t.number, t.state, t.value) for t in study.trials] == [
        (0, TrialState.COMPLETE, 20.0), (1, TrialState.COMPLETE, 30.0), (2, TrialState.COMPLETE, 25.0)]
    assert study.user_attrs[UNKNOWN_TO_TUNE_ATTR] == [1]
