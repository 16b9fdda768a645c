"""What a finished Tune run says, read through Ray's public ResultGrid: one row per trial, the trial the
objective chooses, whether the run was interrupted, and the summary printed at the end."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from bickd_tune.experiment import ExperimentConfig

FINAL_METRICS = ("val/top1", "val/top5", "val/loss", "test/top1", "test/top5", "test/loss")


def column(metric: str) -> str:
    return metric.replace("/", "_")


def result_rows(results, ablation: bool) -> pd.DataFrame:
    """One row per trial: its point (or arm and seed), epochs, final validation and test metrics, error."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = result.config or {}
        rows.append({
            "trial_id": metrics.get("trial_id"),
            **({"arm": config.get("arm"), "seed": config.get("seed")} if ablation else dict(config)),
            "epochs": metrics.get("epoch"),
            **{column(m): metrics.get(m) for m in FINAL_METRICS},
            "error": str(result.error).strip().splitlines()[-1] if result.error else "",
        })
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "epochs", *map(column, FINAL_METRICS), "error"])


def trial_of_this_run(results):
    """`is_ours(trial_id)`: whether a Tune trial id belongs to this run's trials, reported or not (a trial
    that failed before reporting shows only in its folder's name, `<trainable>_<trial id>_<index>_...`)."""
    ids = {r.metrics["trial_id"] for r in results if r.metrics and "trial_id" in r.metrics}
    folders = [os.path.basename(str(r.path or "")) for r in results]
    return lambda trial_id: trial_id in ids or any(f"_{trial_id}_" in folder for folder in folders)


def interrupted(results, planned: int, exhausted: bool) -> bool:
    """True when Tune returned before every planned trial reached a final state (e.g. after SIGINT); a
    search whose space ran out of new configurations ends early without being interrupted."""
    done = results.num_terminated + results.num_errors
    return done < len(results) or (done < planned and not exhausted)


def chosen_trial(rows: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The trial the objective picks (best final validation value), or None when none finished."""
    done = rows.dropna(subset=[column(metric)])
    if not len(done):
        return None
    return done.sort_values(column(metric), ascending=mode == "min", kind="stable").iloc[0]


def short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)


def summary_lines(experiment: ExperimentConfig, rows: pd.DataFrame, ablation_markdown: str | None) -> list[str]:
    ok = rows[rows.error == ""] if len(rows) else rows
    lines = ["", f"finished {experiment.name}: {len(ok)} of {len(rows)} trials completed"
             + (f", {len(rows) - len(ok)} failed" if len(rows) - len(ok) else "")]
    if ablation_markdown is not None:
        lines += ["", ablation_markdown]
    elif len(ok):
        metric, mode = experiment.objective
        best = chosen_trial(ok, metric, mode)
        if best is not None:
            shown = {"trial_id", "epochs", "error", *map(column, FINAL_METRICS)}
            params = ", ".join(f"{k}={short(v)}" for k, v in best.items() if k not in shown and v == v)
            lines.append(f"chosen trial {best.trial_id} ({params or 'the base config'}), by {mode} {metric} on "
                         f"the validation split: validation top-1 {best.val_top1:.2f}%, test top-1 "
                         f"{best.test_top1:.2f}% (final model after {int(best.epochs)} epochs; test was not used "
                         f"to choose)")
    if experiment.chooses_on_test:
        lines.append("note: data.val_fraction is 0, so there is no validation split: every choice above was "
                     "made on the test set and its test figures are optimistic")
    return lines
