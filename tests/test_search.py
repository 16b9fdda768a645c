"""The Optuna searcher across a resume: Tune's pickled snapshot of it can be older than the study's RDB.

Uses the real OptunaSearch, a real SQLite study and the searcher's own save/restore (what Tune calls when it
snapshots and restores an experiment); no Ray cluster is needed.
"""
from __future__ import annotations

import optuna

from platform.experiment import SearchConfig
from platform.search import build_searcher


def _searcher(tmp_path):
    search = SearchConfig.model_validate({"num_samples": 2, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}})
    return build_searcher(search, f"sqlite:///{tmp_path}/optuna.db", "study")


def test_a_trial_the_study_finished_after_the_last_snapshot_can_report_again(tmp_path):
    searcher = _searcher(tmp_path)
    assert "loss.tau" in searcher.suggest("t1")
    searcher.on_trial_result("t1", {"test/top1": 10.0, "training_iteration": 1})
    snapshot = str(tmp_path / "searcher.pkl")
    searcher.save(snapshot)  # Tune's last experiment snapshot: t1 still running
    searcher.on_trial_result("t1", {"test/top1": 20.0, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"test/top1": 20.0, "training_iteration": 2})  # in the RDB at once
    # ... the driver is killed here; --resume restores the stale snapshot and Tune re-runs t1's last epoch.
    resumed = _searcher(tmp_path)
    resumed.restore(snapshot)
    resumed.on_trial_result("t1", {"test/top1": 20.5, "training_iteration": 2})  # Optuna refused this
    resumed.on_trial_complete("t1", {"test/top1": 20.5, "training_iteration": 2})
    assert "loss.tau" in resumed.suggest("t2")  # the search goes on
    resumed.on_trial_complete("t2", {"test/top1": 30.0, "training_iteration": 1})

    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    values = [(t.state, t.value) for t in study.trials]
    # the first record of t1 is kept, not overwritten or duplicated
    assert values == [(optuna.trial.TrialState.COMPLETE, 20.0), (optuna.trial.TrialState.COMPLETE, 30.0)]


def test_results_of_running_trials_still_reach_the_study(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"test/top1": 10.0, "training_iteration": 1})
    searcher.on_trial_result("t1", {"test/top1": 15.0, "training_iteration": 2})
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.trials[0].intermediate_values == {1: 10.0, 2: 15.0}
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
