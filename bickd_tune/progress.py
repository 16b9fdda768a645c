"""What the console shows while trials run: a line per trial start and end, and a status line every so often.

Tune's own reporter prints a config table per trial start and a result table per trial end (about 40 lines
per trial): 40,000 lines for a 1,000-trial search. The platform turns it off (`verbose=0`) and prints this instead.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

STATUS_EVERY_S = 30.0  # Tune's own reporter prints its table about this often


class Progress(Callback):
    """`describe(point) -> name` names a trial; `planned` is how many trials the stage runs (None: unknown)."""

    def __init__(self, stage: str, describe: Callable[[dict[str, Any]], str], planned: int | None, metric: str,
                 mode: str, max_epochs: int):
        self.stage, self.describe, self.planned = stage, describe, planned
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.started = time.monotonic()
        self.last_status = self.started
        self.numbers: dict[str, int] = {}
        self.best: tuple[float, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; a resumed run starts its clock and numbering afresh.
        return {**self.__dict__, "numbers": {}, "best": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.started = self.last_status = time.monotonic()

    def _label(self, trial) -> str:
        number = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        of = f"/{self.planned}" if self.planned else ""
        return f"[{self.stage} {number}{of}] {self.describe(trial.config)}"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"{self._label(trial)}: started ({trial.trial_id})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        epochs, value = int(result.get("epoch", 0)), result.get(self.metric)
        how = "finished" if epochs >= self.max_epochs else f"stopped early after {epochs} epoch(s)"
        shown = f"{self.metric} {value:.4g}" if value is not None else "no result"
        if value is not None and (self.best is None or (value > self.best[0]) == (self.mode == "max")):
            self.best = (value, trial.trial_id)
        print(f"{self._label(trial)}: {how}, {shown}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self._label(trial)}: failed (its run says why)", flush=True)

    def on_step(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_status < STATUS_EVERY_S:
            return
        self.last_status = now
        print(self.status(trials, now), flush=True)

    def status(self, trials, now: float) -> str:
        states: dict[str, int] = {}
        for trial in trials:
            states[trial.status] = states.get(trial.status, 0) + 1
        done = states.get("TERMINATED", 0) + states.get("ERROR", 0)
        of = f" of {self.planned}" if self.planned else ""
        best = f"; best {self.metric} {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        failed = f" ({states['ERROR']} failed)" if states.get("ERROR") else ""
        return (f"[{self.stage}] {(now - self.started) / 60:.1f} min: {done}{of} trials ended{failed}, "
                f"{states.get('RUNNING', 0)} running, {states.get('PENDING', 0)} pending{best}")
