"""The YAML search space as an Optuna define-by-run function, driven by Ray Tune's OptunaSearch.

Define-by-run expresses conditional parameters: a parameter with `when` is suggested only if the earlier
parameters it names took one of the listed values; otherwise the base config's value stays.
"""
from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from platform.experiment import SearchConfig, SearchParam

SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed),
}


def _condition_holds(param: SearchParam, chosen: dict[str, Any]) -> bool:
    for other, allowed in (param.when or {}).items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if other not in chosen or chosen[other] not in values:
            return False
    return True


def _suggest(trial: optuna.Trial, name: str, param: SearchParam) -> Any:
    if param.kind == "choice":
        return trial.suggest_categorical(name, param.choice)
    if param.kind == "int":
        return trial.suggest_int(name, *param.int, step=int(param.step or 1))
    low, high = getattr(param, param.kind)
    if param.kind == "loguniform":
        return trial.suggest_float(name, low, high, log=True)
    return trial.suggest_float(name, low, high, step=param.step)


class DefineByRun:
    """`space(trial)`: only suggests values (OptunaSearch requires that it computes nothing else).

    A class rather than a closure: Tune pickles the searcher into the experiment state for --resume.
    """

    def __init__(self, search: SearchConfig):
        self.search = search

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for name, param in self.search.space.items():
            if _condition_holds(param, chosen):
                chosen[name] = _suggest(trial, name, param)


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that survives `--resume` from a snapshot older than its study.

    The study (SQLite) is written the moment a trial ends; Tune pickles the searcher into its experiment
    state only every so often. After a hard kill in between, the resumed experiment re-runs that trial from
    its last checkpoint and reports to an Optuna trial the study has already finished: Optuna raises
    UpdateFinishedTrialError and the whole sweep stopped. The study's first record is kept instead.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._finished_in_study: set[str] = set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._finished_in_study:
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._finished_in_study.add(trial_id)
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._finished_in_study:
            super().on_trial_complete(trial_id, result, error)


def build_searcher(search: SearchConfig, storage_url: str, study_name: str) -> OptunaSearch:
    """Optuna search whose study lives in an RDB (SQLite) file, inspectable after the run."""
    return ResumableOptunaSearch(
        space=DefineByRun(search),
        metric=search.metric,
        mode=search.mode,
        points_to_evaluate=[dict(point) for point in search.points_to_evaluate] or None,
        sampler=SAMPLERS[search.sampler](search.seed),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )
