"""The confirmation stage of a search: its winners, the control and the method's default over fresh seeds.

A search's best trial is the best of many draws on one seed, so its margin over a baseline is inflated (the
winner's curse). After the search, `choose` takes the top k distinct settings by the search's objective
(trials that ran the whole recipe first: an early-stopped trial's figure is from fewer epochs), adds the
YAML's fixed arms (the control, e.g. KD, and the method's default), and the runner trains each over fresh
seeds at the full recipe without early stopping. `confirmation_table` then compares every setting with the
control, and each winner with the reference (the method's default), on final test top-1: paired t-tests over
the shared seeds, Holm-corrected within the declared primary family and the exploratory rest, with the effect
each test could have detected (bickd_tune/statistics.py). Nothing is chosen on these numbers: they are the claim.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from bickd.config import TrainConfig
from bickd_tune.experiment import AnalysisConfig, ExperimentConfig, drawn_per_seed, setting_key
from bickd_tune.results import column, short
from bickd_tune.statistics import Comparison, pair_key
from bickd_tune.tables import (analyse, arm_summary, comparisons_frame, comparisons_markdown, mean_std,
                               save_table, seeds_note)

PLAN_FILE = "confirm.json"  # in the experiment's storage: a resumed run confirms the same settings


@dataclass(frozen=True)
class ConfirmPlan:
    arms: dict[str, dict[str, Any]]  # name -> overrides of the base config, in the table's order
    seeds: list[int]
    control: str
    labels: dict[str, str]           # name -> what the setting is, for the table
    search_values: dict[str, float]  # name -> its value of the search's objective (one seed), where searched
    metric: str                      # the search's objective
    reference: str | None = None     # the arm each winner is compared with (the method's default)
    winners: list[str] = field(default_factory=list)       # the search's top k by rank, as arms of this plan
    aliases: dict[str, str] = field(default_factory=dict)  # topN -> the fixed arm it equals (trained once)
    primary: list[str] = field(default_factory=list)       # analysis.primary when the plan was made
    per_seed: list[str] = field(default_factory=list)      # what each seed drew besides init and order

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, tree: dict[str, Any]) -> ConfirmPlan:
        return cls(**{k: v for k, v in tree.items() if k in cls.__dataclass_fields__})

    @property
    def trials(self) -> int:
        return len(self.arms) * len(self.seeds)


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
    aliases: dict[str, str] = {}
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
            aliases[f"top{rank}"] = fixed[key]
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
                       labels=labels, search_values=search_values, metric=metric,
                       reference=experiment.confirm_reference, winners=ranked_names, aliases=aliases,
                       primary=list(experiment.analysis.primary), per_seed=drawn_per_seed(base, confirm.per_seed))


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


def comparison_pairs(plan: ConfirmPlan) -> list[tuple[str, str]]:
    """Every setting against the control; each of the search's winners against the reference; each pair once."""
    pairs, seen = [], set()
    candidates = [(arm, plan.control) for arm in plan.arms]
    candidates += [(winner, plan.reference) for winner in plan.winners if plan.reference is not None]
    for arm, baseline in candidates:
        if arm != baseline and pair_key(arm, baseline) not in seen:
            seen.add(pair_key(arm, baseline))
            pairs.append((arm, baseline))
    return pairs


@dataclass(frozen=True)
class ConfirmationTable:
    arms: pd.DataFrame               # arm_summary plus what each setting is and its one-seed search figure
    comparisons: list[Comparison]


def confirmation_table(rows: pd.DataFrame, plan: ConfirmPlan, analysis: AnalysisConfig) -> ConfirmationTable:
    """`rows`: one row per finished confirmation trial (arm, seed, val_top1, test_top1 of the final model)."""
    arms = arm_summary(rows, list(plan.arms))
    arms.insert(1, "label", [plan.labels.get(arm, "") for arm in arms.arm])
    arms.insert(3, "search_value", [plan.search_values.get(arm, math.nan) for arm in arms.arm])
    return ConfirmationTable(arms, analyse(rows, comparison_pairs(plan), analysis, plan.aliases))


def to_markdown(table: ConfirmationTable, plan: ConfirmPlan, analysis: AnalysisConfig, search_seeds: list[int],
                chooses_on_test: bool, shared_with: list[str] | None = None) -> str:
    arms = table.arms
    shown = pd.DataFrame({
        "setting": arms.arm, "what it is": arms.label,
        f"search {plan.metric} (1 seed)": [f"{v:.4g}" if v == v else "–" for v in arms.search_value],
        "seeds": arms.seeds,
        "validation top-1 (%)": [mean_std(m, s) for m, s in zip(arms.val_mean, arms.val_std)],
        "test top-1 (%)": [mean_std(m, s) for m, s in zip(arms.test_mean, arms.test_std)],
    })
    note = (f"Confirmation over seeds {plan.seeds} (the search trained with {search_seeds}): every setting at the "
            "full recipe, no early stopping, same teacher and data. Test top-1: each trial's final model, mean ± "
            "std over seeds. " + seeds_note(plan.seeds, plan.per_seed, shared_with or []) + " The search column "
            "is the one-seed figure the winners were picked on: compare it with the validation column to see how "
            "much of their lead was the luck of that seed.")
    if chooses_on_test:
        note += (" There is no validation split here (data.val_fraction 0): the winners were picked on test, so "
                 "their test figures are optimistic even over fresh seeds.")
    merged = [f"{name} is {arm}" for name, arm in plan.aliases.items()]
    return (shown.to_markdown(index=False) + "\n\n" + note + "\n\n"
            + f"Comparisons (Δ in points of final test top-1): every setting against {plan.control}"
            + (f", the search's winners against {plan.reference}" if plan.reference else "")
            + (f" ({'; '.join(merged)}: trained once)" if merged else "") + ":\n\n"
            + comparisons_markdown(table.comparisons, analysis))


def final_rows(runs_or_rows: pd.DataFrame) -> pd.DataFrame:
    """The columns the table reads, finished trials only."""
    done = runs_or_rows.dropna(subset=[column("test/top1")])
    return done[["arm", "seed", "val_top1", "test_top1"]]


def write_tables(rows: pd.DataFrame, plan: ConfirmPlan, analysis: AnalysisConfig, folder: str,
                 search_seeds: list[int], chooses_on_test: bool, shared_with: list[str] | None = None) -> dict[str, str]:
    """confirmation.md, the per-setting summary, the comparisons and the per-seed values, into `folder`."""
    done = final_rows(rows)
    table = confirmation_table(done, plan, analysis)
    markdown = to_markdown(table, plan, analysis, search_seeds, chooses_on_test, shared_with)
    return save_table(folder, "confirmation", table.arms, comparisons_frame(table.comparisons, analysis), markdown,
                      done)
