"""The YAML search space as an Optuna define-by-run function, driven by Ray Tune's OptunaSearch.

Define-by-run expresses conditional parameters: a parameter with `when` is suggested only if the earlier
parameters it names took one of the listed values; otherwise the base config's value stays.

No configuration is trained twice: a proposal whose resolved trial config (every field, seed included)
equals one already trained or running is told to Optuna with that trial's value (so the sampler learns it)
and the sampler is asked again (`DistinctOptunaSearch`).
"""
from __future__ import annotations

import json
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bickd.config import TrainConfig
from bickd_tune.experiment import SearchConfig, SearchParam

EXHAUSTED_ATTR = "exhausted_after"  # study user attribute: the space held no new configuration any more

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


class TrialKey:
    """A sampled point -> the identity of the trial it trains: its whole resolved TrainConfig as JSON."""

    def __init__(self, base: TrainConfig):
        self.base = base

    def __call__(self, point: dict[str, Any]) -> str:
        return json.dumps(self.base.with_overrides(point).train_dict(), sort_keys=True)


class DistinctOptunaSearch(ResumableOptunaSearch):
    """Hands Tune only configurations not yet trained or running in this experiment.

    A repeat (TPE keeps proposing the parameter-free options of a categorical, e.g. `loss.name: ce`) costs no
    training: its Optuna trial is told the first trial's value (now, or when that trial ends), marked
    `repeat_of` with the first trial's number, and the sampler is asked again. After `max_repeats` repeats in
    a row the space is taken as exhausted: the search ends with the trials it has, and the study says so.
    """

    def __init__(self, *args: Any, trial_key: TrialKey, max_repeats: int = 100, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._trial_key, self._max_repeats = trial_key, max_repeats
        self._trained: dict[str, str] = {}                     # config key -> Tune trial that trains it
        self._outcomes: dict[str, tuple[Any, float | None]] = {}  # Tune trial id -> (state, value) once ended
        self._waiting: dict[str, list[optuna.Trial]] = {}     # Tune trial id -> repeats told when it ends

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(self._max_repeats):
            config = super().suggest(trial_id)
            key = self._trial_key(config)
            first = self._trained.setdefault(key, trial_id)
            if first == trial_id:
                return config
            repeat = self._ot_trials.pop(trial_id)
            repeat.set_user_attr("repeat_of", self._ot_trials[first].number)
            if first in self._outcomes:
                self._tell(repeat, *self._outcomes[first])
            else:
                self._waiting.setdefault(first, []).append(repeat)
        self._ot_study.set_user_attr(EXHAUSTED_ATTR, len(self._trained))
        print(f"[search] {self._max_repeats} proposals in a row repeated configurations already trained: the space "
              f"holds no new one, so the search ends after {len(self._trained)} distinct trials", flush=True)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        value = (result or {}).get(self.metric)
        state = (optuna.trial.TrialState.COMPLETE if value is not None else
                 optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED)
        self._outcomes[trial_id] = (state, value)
        for repeat in self._waiting.pop(trial_id, []):
            self._tell(repeat, state, value)

    def _tell(self, trial: optuna.Trial, state, value: float | None) -> None:
        self._ot_study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)


ORPHANS_ATTR = "orphaned_trials"  # study user attribute: numbers of trials retired after a hard kill


def retire_running_trials(storage_url: str, study_name: str) -> list[int]:
    """After a resume from a hard kill: Optuna trials still RUNNING were started before the driver died and
    run again under new trials; they are told FAIL and listed in the study's `orphaned_trials`."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if running:
        study.set_user_attr(ORPHANS_ATTR, sorted({*study.user_attrs.get(ORPHANS_ATTR, []), *running}))
    return running


def exhausted(storage_url: str, study_name: str) -> bool:
    """Whether the search of this study ended early because its space held no new configuration."""
    return EXHAUSTED_ATTR in optuna.load_study(study_name=study_name, storage=storage_url).user_attrs


def build_searcher(search: SearchConfig, storage_url: str, study_name: str, base: TrainConfig) -> OptunaSearch:
    """Optuna search whose study lives in an RDB (SQLite) file, inspectable after the run."""
    return DistinctOptunaSearch(
        trial_key=TrialKey(base),
        space=DefineByRun(search),
        metric=search.metric,
        mode=search.goal,
        points_to_evaluate=[dict(point) for point in search.points_to_evaluate] or None,
        sampler=SAMPLERS[search.sampler](search.seed),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )
