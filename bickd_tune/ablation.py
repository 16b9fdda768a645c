"""The ablation table: per arm, mean ± std over seeds of the final model's validation and test top-1; then each
arm against the reference (full BicKD) and the control (KD) on test top-1 — paired over the seeds the arms
share, Holm-corrected within the declared primary family and the exploratory rest, with the effect each
test could have detected (bickd_tune/statistics.py).

Arms are fixed before the run, so nothing is chosen here: test is what each arm scores at the end of its
recipe. The validation column is what a search would have chosen on.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bickd_tune.experiment import AblationConfig, AnalysisConfig, ExperimentConfig, drawn_per_seed
from bickd_tune.statistics import Comparison, pair_key
from bickd_tune.tables import (analyse, arm_summary, comparisons_frame, comparisons_markdown, mean_std,
                               save_table, seeds_note)


@dataclass(frozen=True)
class AblationTable:
    arms: pd.DataFrame               # arm_summary: one row per arm, in the YAML's order
    comparisons: list[Comparison]


def comparison_pairs(ablation: AblationConfig) -> list[tuple[str, str]]:
    """Every arm against the reference, then against the control; the reference-control pair once."""
    pairs, seen = [], set()
    for baseline in (ablation.reference, ablation.control):
        for arm in ablation.arms:
            if baseline is None or arm == baseline or pair_key(arm, baseline) in seen:
                continue
            seen.add(pair_key(arm, baseline))
            pairs.append((arm, baseline))
    return pairs


def ablation_table(rows: pd.DataFrame, ablation: AblationConfig, analysis: AnalysisConfig) -> AblationTable:
    """`rows`: one row per finished trial with columns arm, seed, val_top1, test_top1 (final model)."""
    return AblationTable(arm_summary(rows, list(ablation.arms)),
                         analyse(rows, comparison_pairs(ablation), analysis))


def to_markdown(table: AblationTable, experiment: ExperimentConfig, shared_with: list[str] | None = None) -> str:
    ablation, analysis = experiment.ablation, experiment.analysis
    arms = table.arms
    shown = pd.DataFrame({
        "arm": arms.arm, "seeds": arms.seeds,
        "validation top-1 (%)": [mean_std(m, s) for m, s in zip(arms.val_mean, arms.val_std)],
        "test top-1 (%)": [mean_std(m, s) for m, s in zip(arms.test_mean, arms.test_std)],
    })
    note = ("Mean ± std over seeds of each trial's final model. Validation: the split held out of the training "
            "data; test: measured once per trial, on the final model. "
            + seeds_note(ablation.seeds, drawn_per_seed(experiment.base_train_config(), ablation.per_seed),
                         shared_with or []))
    if experiment.chooses_on_test:
        note += (" There is no validation split here (data.val_fraction 0): the validation column is the test "
                 "set, and anything chosen from this table was chosen on test.")
    return (shown.to_markdown(index=False) + "\n\n" + note + "\n\n"
            + f"Comparisons (Δ in points of final test top-1, against {ablation.reference}"
            + (f" and {ablation.control}" if ablation.control else "") + "):\n\n"
            + comparisons_markdown(table.comparisons, analysis))


def write_table(rows: pd.DataFrame, folder: str, experiment: ExperimentConfig,
                shared_with: list[str] | None = None) -> dict[str, str]:
    """ablation.md, the per-arm summary, the comparisons and the per-seed values (CSV and Parquet) in `folder`."""
    table = ablation_table(rows, experiment.ablation, experiment.analysis)
    return save_table(folder, "ablation", table.arms, comparisons_frame(table.comparisons, experiment.analysis),
                      to_markdown(table, experiment, shared_with), rows)
