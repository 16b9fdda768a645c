"""The YAML search space as an Optuna study, driven by Ray Tune through Tune's public `Searcher` interface and
Optuna's public ask/tell API (no Ray or Optuna internals).

Define-by-run expresses conditional parameters: a parameter with `when` is suggested only if the earlier
parameters it names took one of the listed values; otherwise the base config's value stays.

The study means what Optuna means: each epoch's objective is the trial's intermediate value at that epoch; a
trial the scheduler (ASHA) stopped before the end of its recipe is PRUNED with its last value, not COMPLETE, so
optuna-dashboard, importances and slice plots never read a 3-epoch figure as a finished trial.

No configuration is trained twice: a proposal whose resolved trial config (every field, seed included) equals
one already trained or running is recorded as a PRUNED trial marked `repeat_of` (so the sampler learns the point
is taken, while importances and plots count it once), and the sampler is asked again.
"""
from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from bickd.config import TrainConfig
from bickd_tune.experiment import SearchConfig, SearchParam

EXHAUSTED_ATTR = "exhausted_after"  # study user attribute: the space held no new configuration any more
REPEAT_ATTR = "repeat_of"           # trial user attribute: the number of the trial that trained this point
# study user attribute: numbers of COMPLETE trials proposed after Tune's last snapshot and finished before a hard kill
UNKNOWN_TO_TUNE_ATTR = "finished_after_last_snapshot"
EPOCH = "epoch"                     # the step of an intermediate value: the epoch a result reports
MAX_REPEATS_IN_A_ROW = 100          # proposals in a row that repeat a trained point before the space counts as used up

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
    """`space(trial)` -> the sampled point (dotted config paths). A class rather than a closure: Tune pickles
    the searcher into the experiment state for --resume."""

    def __init__(self, search: SearchConfig):
        self.search = search

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for name, param in self.search.space.items():
            if _condition_holds(param, chosen):
                chosen[name] = _suggest(trial, name, param)
        return chosen


def config_key(config: TrainConfig) -> str:
    """The identity of the trial a config trains: the whole resolved TrainConfig as JSON."""
    return json.dumps(config.train_dict(), sort_keys=True)


class StudySearcher(Searcher):
    """Hands Tune configurations from an Optuna study and tells the study how each trial ended.

    Trials end COMPLETE (ran the whole recipe), PRUNED (stopped early by the scheduler, or a repeat) or FAIL.
    A repeat (TPE keeps proposing the parameter-free options of a categorical, e.g. `loss.name: ce`) costs no
    training: it is recorded as soon as the first trial of its point has ended, and the sampler is asked again.
    After `max_repeats` repeats in a row the space is taken as exhausted: the search ends with the trials it has,
    and the study says so.

    Everything goes through Optuna's public API: `ask`/`tell` on the study, and the storage's own calls for an
    intermediate value or an attribute of a trial known by its number. Tune saves the searcher into its
    experiment state for `--resume` (save/restore: plain JSON, the study reopened from its storage). The study
    is written the moment a trial ends, Tune's state only every so often: after a hard kill in between, a resumed
    trial may report to an Optuna trial the study has already finished; the study's first record is kept.
    """

    def __init__(self, search: SearchConfig, storage_url: str, study_name: str, base: TrainConfig,
                 max_t: int | None = None, max_repeats: int = MAX_REPEATS_IN_A_ROW):
        super().__init__(metric=search.metric, mode=search.goal)
        self._search, self._storage_url, self._study_name = search, storage_url, study_name
        self._space, self._base, self._max_t, self._max_repeats = DefineByRun(search), base, max_t, max_repeats
        self._open_study(self._search.seed)
        if not self._study.get_trials(deepcopy=False):  # a new study: the given points come first
            for point in search.points_to_evaluate:
                self._study.enqueue_trial(dict(point))
        self._numbers: dict[str, int] = {}                     # Tune trial id -> its Optuna trial's number
        self._full_epochs: dict[str, int] = {}                 # Tune trial id -> epochs of its whole recipe
        self._reported: dict[str, dict[int, float]] = {}       # Tune trial id -> epoch -> objective
        self._trained: dict[str, str] = {}                     # config key -> Tune trial that trains it
        self._outcomes: dict[str, tuple[str, dict[int, float]]] = {}  # Tune trial id -> its end state and values
        self._waiting: dict[str, list[int]] = {}               # Tune trial id -> repeats recorded when it ends
        self._ended: set[str] = set()

    def _open_study(self, seed: int) -> None:
        self._storage = optuna.storages.RDBStorage(self._storage_url)
        self._study = optuna.create_study(
            storage=self._storage, study_name=self._study_name, load_if_exists=True,
            sampler=SAMPLERS[self._search.sampler](seed),
            direction="maximize" if self._search.goal == "max" else "minimize")

    def _storage_id(self, number: int) -> int:
        """The storage's id of this study's trial `number` (what the storage's own calls take)."""
        return self._storage.get_trial_id_from_study_id_trial_number(
            self._storage.get_study_id_from_name(self._study_name), number)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space, metric and mode are the YAML's, given above

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(self._max_repeats):
            trial = self._study.ask()
            config = self._space(trial)
            resolved = self._base.with_overrides(config)
            first = self._trained.setdefault(config_key(resolved), trial_id)
            if first == trial_id:
                self._numbers[trial_id], self._reported[trial_id] = trial.number, {}
                self._full_epochs[trial_id] = min(resolved.recipe.epochs, self._max_t or resolved.recipe.epochs)
                return config
            trial.set_user_attr(REPEAT_ATTR, self._numbers[first])
            if first in self._outcomes:
                self._record_repeat(trial.number, *self._outcomes[first])
            else:
                self._waiting.setdefault(first, []).append(trial.number)
        self._study.set_user_attr(EXHAUSTED_ATTR, len(self._trained))
        print(f"[search] {self._max_repeats} proposals in a row repeated configurations already trained: the "
              f"space holds no new one, so the search ends after {len(self._trained)} distinct trials", flush=True)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._numbers and trial_id not in self._ended:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The result's objective as the Optuna trial's intermediate value at its epoch (once per epoch)."""
        value, step = result.get(self.metric), int(result.get(EPOCH, result.get("training_iteration", 0)))
        if value is None or step in self._reported[trial_id]:
            return
        self._reported[trial_id][step] = float(value)
        try:
            self._storage.set_trial_intermediate_value(self._storage_id(self._numbers[trial_id]), step, float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._ended_in_study(trial_id)

    def _ended_in_study(self, trial_id: str) -> None:
        """The trial finished in the study before a hard kill (Tune's state was older): its first record stays,
        and its repeats are recorded from it."""
        self._ended.add(trial_id)
        frozen = self._storage.get_trial(self._storage_id(self._numbers[trial_id]))
        self._outcomes[trial_id] = (frozen.state.name, dict(frozen.intermediate_values))
        for repeat in self._waiting.pop(trial_id, []):
            self._record_repeat(repeat, *self._outcomes[trial_id])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._numbers or trial_id in self._ended:
            return
        result = result or {}
        self._report(trial_id, result)  # Tune hands a trial's last result (or the one it was stopped at) only here
        if trial_id in self._ended:
            return
        self._ended.add(trial_id)
        value = result.get(self.metric)
        if error or value is None:
            state = TrialState.FAIL if error else TrialState.PRUNED
        else:
            full = result.get(EPOCH, 0) >= self._full_epochs[trial_id]
            state = TrialState.COMPLETE if full else TrialState.PRUNED
        self._tell(self._numbers[trial_id], state, value)
        self._outcomes[trial_id] = (state.name, self._reported.pop(trial_id, {}))
        for repeat in self._waiting.pop(trial_id, []):
            self._record_repeat(repeat, *self._outcomes[trial_id])

    def _record_repeat(self, number: int, state: str, intermediate: dict[int, float]) -> None:
        """A repeat carries its first trial's values but counts as no second observation: PRUNED (FAIL if the
        first trial failed)."""
        for step, value in sorted(intermediate.items()):
            self._storage.set_trial_intermediate_value(self._storage_id(number), int(step), value)
        self._tell(number, TrialState.FAIL if state == TrialState.FAIL.name else TrialState.PRUNED, None)

    def _tell(self, number: int, state: TrialState, value: float | None) -> None:
        # A trial the study finished before a hard kill keeps its first record (see _ended_in_study).
        self._study.tell(number, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)

    # The state Tune saves for --resume: plain data (no pickle); the study itself lives in its storage.
    _STATE = ("_numbers", "_full_epochs", "_reported", "_trained", "_outcomes", "_waiting", "_ended")

    def save(self, checkpoint_path: str) -> None:
        state = {name: getattr(self, name) for name in self._STATE}
        state["_ended"] = sorted(state["_ended"])
        with open(checkpoint_path, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as handle:
            state = json.load(handle)
        self._numbers, self._full_epochs, self._trained = state["_numbers"], state["_full_epochs"], state["_trained"]
        self._reported = {k: {int(step): v for step, v in steps.items()} for k, steps in state["_reported"].items()}
        self._outcomes = {k: (end, {int(step): v for step, v in steps.items()})
                          for k, (end, steps) in state["_outcomes"].items()}
        self._waiting, self._ended = state["_waiting"], set(state["_ended"])
        # The sampler starts again from a seed of its own: the search's seed would replay its first proposals.
        self._open_study(self._search.seed + len(self._study.get_trials(deepcopy=False)))
        self._list_unknown_to_tune()

    def _list_unknown_to_tune(self) -> None:
        """Trials proposed after Tune's last snapshot that finished before the hard kill: Tune never hears of them
        again (their MLflow runs are retired) and Optuna cannot reopen them. Their values are real and stay in
        the study; the study lists their numbers, so that they are counted once, apart from Tune's trials."""
        known = set(self._numbers.values()) | {n for numbers in self._waiting.values() for n in numbers}
        unknown = [t.number for t in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.number not in known and REPEAT_ATTR not in t.user_attrs]
        if unknown:
            listed = self._study.user_attrs.get(UNKNOWN_TO_TUNE_ATTR, [])
            self._study.set_user_attr(UNKNOWN_TO_TUNE_ATTR, sorted({*listed, *unknown}))


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


def build_searcher(search: SearchConfig, storage_url: str, study_name: str, base: TrainConfig,
                   max_t: int | None = None) -> StudySearcher:
    """The experiment's searcher; its study lives in an RDB (SQLite) file, inspectable after the run."""
    return StudySearcher(search, storage_url, study_name, base, max_t)
