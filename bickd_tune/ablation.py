"""The ablation table: per arm, mean ± std over seeds of the final model's validation and test top-1, and
the difference in test top-1 to the reference (full BicKD) and control (KD) arms with Welch's t-test.

Arms are fixed before the run, so nothing is chosen here: test is what each arm scores at the end of its
recipe. The validation column is what a search would have chosen on.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from bickd_tune.tables import mean_std, save_table

COLUMNS = ["arm", "seeds", "val_mean", "val_std", "test_mean", "test_std",
           "delta_vs_reference", "p_vs_reference", "delta_vs_control", "p_vs_control"]


def ablation_table(rows: pd.DataFrame, reference: str, control: str | None) -> pd.DataFrame:
    """`rows`: one row per finished trial with columns arm, seed, val_top1, test_top1 (final model).

    Deltas compare mean final test top-1; p-values are two-sided Welch t-tests over seeds (NaN with fewer
    than 2 seeds per side).
    """
    table = []
    for arm, group in rows.groupby("arm", sort=False):
        row = {"arm": arm, "seeds": len(group),
               "val_mean": group.val_top1.mean(), "val_std": group.val_top1.std(ddof=1),
               "test_mean": group.test_top1.mean(), "test_std": group.test_top1.std(ddof=1)}
        for role, other in (("reference", reference), ("control", control)):
            baseline = rows[rows.arm == other].test_top1 if other is not None else pd.Series(dtype=float)
            compared = len(baseline) and arm != other  # an arm against itself is no comparison
            row[f"delta_vs_{role}"] = group.test_top1.mean() - baseline.mean() if compared else math.nan
            row[f"p_vs_{role}"] = _welch_p(group.test_top1, baseline) if arm != other else math.nan
        table.append(row)
    return pd.DataFrame(table, columns=COLUMNS)


def _welch_p(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def to_markdown(table: pd.DataFrame, reference: str, control: str | None, chooses_on_test: bool = False) -> str:
    shown = pd.DataFrame({
        "arm": table.arm, "seeds": table.seeds,
        "validation top-1 (%)": [mean_std(m, s) for m, s in zip(table.val_mean, table.val_std)],
        "test top-1 (%)": [mean_std(m, s) for m, s in zip(table.test_mean, table.test_std)],
        f"Δ test vs {reference}": [_delta(d, p) for d, p in zip(table.delta_vs_reference, table.p_vs_reference)],
    })
    if control is not None:
        shown[f"Δ test vs {control}"] = [_delta(d, p) for d, p in zip(table.delta_vs_control, table.p_vs_control)]
    note = ("Mean ± std over seeds of each trial's final model. Validation: the split held out of the training "
            "data; test: measured once per trial, on the final model. Δ: difference of mean test top-1 in points; "
            "p: two-sided Welch t-test over seeds; * marks p < 0.05.")
    if chooses_on_test:
        note += (" There is no validation split here (data.val_fraction 0): the validation column is the test "
                 "set, and anything chosen from this table was chosen on test.")
    return shown.to_markdown(index=False) + "\n\n" + note + "\n"


def _delta(delta: float, p: float) -> str:
    if math.isnan(delta):
        return "—"
    if math.isnan(p):
        return f"{delta:+.2f}"
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return f"{delta:+.2f} ({shown}){'*' if p < 0.05 else ''}"


def write_table(rows: pd.DataFrame, folder: str, reference: str, control: str | None,
                chooses_on_test: bool = False) -> dict[str, str]:
    """Writes ablation.md, ablation.csv, ablation.parquet (and the per-trial rows) into `folder`."""
    table = ablation_table(rows, reference, control)
    return save_table(folder, "ablation", table, to_markdown(table, reference, control, chooses_on_test), rows)
