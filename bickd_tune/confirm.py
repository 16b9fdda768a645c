"""The confirmation stage of a search: its winners, the control and the method's default over fresh seeds.

A search's best trial is the best of many draws on one seed, so its margin over a baseline is inflated (the
winner's curse). After the search, `choose` takes the top k distinct settings by the search's objective
(trials that ran the whole recipe first: an early-stopped trial's figure is from fewer epochs), adds the
YAML's fixed arms (the control, e.g. KD, and the method's default), and the runner trains each over fresh
seeds at the full recipe without early stopping. `confirmation_table` then compares every setting with the
control on final test top-1: Welch's t-test and 95% interval over seeds, p-values Holm-corrected for the
number of comparisons, a verdict per setting. Nothing is chosen on these numbers: they are the claim.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from scipy import stats

from bickd.config import TrainConfig
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.results import column, short
from bickd_tune.tables import mean_std, save_table

PLAN_FILE = "confirm.json"  # in the experiment's storage: a resumed run confirms the same settings


@dataclass(frozen=True)
class ConfirmPlan:
    arms: dict[str, dict[str, Any]]  # name -> overrides of the base config, in the table's order
    seeds: list[int]
    control: str
    alpha: float
    labels: dict[str, str]           # name -> what the setting is, for the table
    search_values: dict[str, float]  # name -> its value of the search's objective (one seed), where searched
    metric: str                      # the search's objective

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, tree: dict[str, Any]) -> ConfirmPlan:
        return cls(**tree)

    @property
    def trials(self) -> int:
        return len(self.arms) * len(self.seeds)


def setting_key(base: TrainConfig, overrides: dict[str, Any]) -> str:
    """What a setting trains, seed left out: two settings with the same key are one setting."""
    return json.dumps(base.with_overrides({**overrides, "seed": base.seed}).train_dict(), sort_keys=True)


def choose(experiment: ExperimentConfig, base: TrainConfig, results) -> ConfirmPlan:
    """The settings to confirm, from the search's ResultGrid."""
    confirm = experiment.confirm
    metric, mode = experiment.objective
    searched = []  # (ran the whole recipe, value, point, trial id)
    for result in results:
        metrics = result.metrics or {}
        if result.error is None and metrics.get(metric) is not None:
            searched.append((metrics.get("epoch", 0) >= experiment.max_epochs, float(metrics[metric]),
                             dict(result.config or {}), metrics.get("trial_id", "?")))
    searched.sort(key=lambda t: (not t[0], -t[1] if mode == "max" else t[1]))
    value_of: dict[str, float] = {}
    for _, value, point, _ in searched:
        value_of.setdefault(setting_key(base, point), value)

    fixed_arms = experiment.confirm_arms
    fixed = {setting_key(base, overrides): name for name, overrides in fixed_arms.items()}
    arms: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    search_values: dict[str, float] = {}
    taken: set[str] = set()
    ranked_names: list[str] = []
    for full, value, point, trial_id in searched:
        key = setting_key(base, point)
        if key in taken:
            continue
        taken.add(key)
        rank = len(taken)
        ranked_names.append(fixed.get(key, f"top{rank}"))
        where = f"search #{rank} (trial {trial_id}{'' if full else ', stopped early'})"
        if key in fixed:  # trained once, under the YAML's name
            labels[fixed[key]] = where
        else:
            arms[f"top{rank}"] = point
            labels[f"top{rank}"] = f"{where}: " + (", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in
                                                             point.items()) or "the base config")
            search_values[f"top{rank}"] = value
        if rank == confirm.top_k:
            break
    for name, overrides in fixed_arms.items():
        arms[name] = dict(overrides)
        described = (", ".join(f"{k}={short(v)}" for k, v in overrides.items()) if overrides
                     else "the YAML's own setting" + ("" if name in confirm.arms else " (the method's default, added)"))
        labels[name] = f"{described}; = {labels[name]}" if name in labels else described
        key = setting_key(base, overrides)
        if key in value_of:
            search_values[name] = value_of[key]
    # The table's order: the search's winners by rank, then the other fixed arms, the control last.
    position = {name: place for place, name in enumerate(ranked_names)}
    order = sorted(arms, key=lambda n: (n == confirm.control, position.get(n, len(position))))
    return ConfirmPlan(arms={name: arms[name] for name in order}, seeds=list(confirm.seeds), control=confirm.control,
                       alpha=confirm.alpha, labels=labels, search_values=search_values, metric=metric)


def load_or_choose(experiment: ExperimentConfig, paths, base: TrainConfig, results) -> ConfirmPlan:
    """The plan saved by an earlier run of this experiment, else a new one, saved before any trial starts."""
    plan = saved_plan(paths)
    if plan is None:
        plan = choose(experiment, base, results)
        paths.storage().write_json(PLAN_FILE, plan.to_json())
    if paths.remote:  # the report reads it from the driver's working folder (a replaced head has none)
        with open(os.path.join(paths.local_dir, PLAN_FILE), "w", encoding="utf-8") as handle:
            json.dump(plan.to_json(), handle, indent=1)
    return plan


def saved_plan(paths) -> ConfirmPlan | None:
    storage = paths.storage()
    return ConfirmPlan.from_json(storage.read_json(PLAN_FILE)) if storage.exists(PLAN_FILE) else None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (scipy has only false-discovery-rate control); NaN stays NaN."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))  # adjusted values never decrease
        adjusted[i] = running
    return adjusted


COLUMNS = ["arm", "label", "seeds", "search_value", "val_mean", "val_std", "test_mean", "test_std",
           "delta", "ci_low", "ci_high", "p", "p_holm", "verdict"]


def confirmation_table(rows: pd.DataFrame, plan: ConfirmPlan) -> pd.DataFrame:
    """`rows`: one row per finished confirmation trial (arm, seed, val_top1, test_top1 of the final model)."""
    control = rows[rows.arm == plan.control].test_top1
    table = []
    for arm in [a for a in plan.arms if a in set(rows.arm)]:
        group = rows[rows.arm == arm]
        row = {"arm": arm, "label": plan.labels.get(arm, ""), "seeds": len(group),
               "search_value": plan.search_values.get(arm, math.nan),
               "val_mean": group.val_top1.mean(), "val_std": group.val_top1.std(ddof=1),
               "test_mean": group.test_top1.mean(), "test_std": group.test_top1.std(ddof=1),
               "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
        if arm != plan.control and len(control):
            row["delta"] = group.test_top1.mean() - control.mean()
            if len(group) >= 2 and len(control) >= 2:
                test = stats.ttest_ind(group.test_top1, control, equal_var=False)
                interval = test.confidence_interval(0.95)
                row.update(p=float(test.pvalue), ci_low=float(interval.low), ci_high=float(interval.high))
        table.append(row)
    table = pd.DataFrame(table, columns=[c for c in COLUMNS if c not in ("p_holm", "verdict")])
    table["p_holm"] = holm(list(table.p))
    table["verdict"] = [_verdict(r, plan) for r in table.itertuples()]
    return table[COLUMNS]


def comparisons(table: pd.DataFrame) -> int:
    return int(table.p.notna().sum())


def _verdict(row, plan: ConfirmPlan) -> str:
    if row.arm == plan.control:
        return "the control"
    if math.isnan(row.p_holm):
        return "too few seeds to test"
    if row.p_holm < plan.alpha:
        return f"{'better' if row.delta > 0 else 'worse'} than {plan.control}"
    return f"not distinguishable from {plan.control} at {row.seeds} seeds"


def to_markdown(table: pd.DataFrame, plan: ConfirmPlan, search_seeds: list[int], chooses_on_test: bool) -> str:
    shown = pd.DataFrame({
        "setting": table.arm, "what it is": table.label,
        f"search {plan.metric} (1 seed)": [f"{v:.4g}" if v == v else "–" for v in table.search_value],
        "seeds": table.seeds,
        "validation top-1 (%)": [mean_std(m, s) for m, s in zip(table.val_mean, table.val_std)],
        "test top-1 (%)": [mean_std(m, s) for m, s in zip(table.test_mean, table.test_std)],
        f"Δ test vs {plan.control} [95% CI]": [_delta(r) for r in table.itertuples()],
        "p (Holm)": ["–" if p != p else ("<0.001" if p < 0.001 else f"{p:.3f}") for p in table.p_holm],
        "verdict": table.verdict,
    })
    note = (f"Confirmation over seeds {plan.seeds} (the search trained with {search_seeds}): every setting at the "
            "full recipe, no early stopping, same teacher, data and validation split. Test top-1: each trial's "
            "final model, mean ± std over seeds. Δ: difference of mean test top-1 from the control, with Welch's "
            f"95% interval (not corrected); p: two-sided Welch t-test, Holm-corrected over the {comparisons(table)} "
            f"comparisons with {plan.control}; verdicts at α = {plan.alpha:g} after that correction. The search "
            "column is the one-seed figure the winners were picked on: compare it with the validation column to "
            "see how much of their lead was the luck of that seed.")
    if chooses_on_test:
        note += (" There is no validation split here (data.val_fraction 0): the winners were picked on test, so "
                 "their test figures are optimistic even over fresh seeds.")
    return shown.to_markdown(index=False) + "\n\n" + note + "\n"


def _delta(row) -> str:
    if math.isnan(row.delta):
        return "–"
    if math.isnan(row.ci_low):
        return f"{row.delta:+.2f}"
    return f"{row.delta:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def final_rows(runs_or_rows: pd.DataFrame) -> pd.DataFrame:
    """The columns the table reads, finished trials only."""
    done = runs_or_rows.dropna(subset=[column("test/top1")])
    return done[["arm", "seed", "val_top1", "test_top1"]]


def write_tables(rows: pd.DataFrame, plan: ConfirmPlan, folder: str, search_seeds: list[int],
                 chooses_on_test: bool) -> dict[str, str]:
    """confirmation.md / .csv / .parquet and the per-trial rows, into `folder`."""
    table = confirmation_table(final_rows(rows), plan)
    return save_table(folder, "confirmation", table, to_markdown(table, plan, search_seeds, chooses_on_test), rows)
