"""The ablation table: per arm, mean ± std over seeds of the final and best top-1, and the difference
to the reference (full BicKD) and control (KD) arms with Welch's t-test over seeds."""
from __future__ import annotations

import math
import os

import pandas as pd
from scipy import stats

COLUMNS = ["arm", "seeds", "final_mean", "final_std", "best_mean", "best_std",
           "delta_vs_reference", "p_vs_reference", "delta_vs_control", "p_vs_control"]


def ablation_table(rows: pd.DataFrame, reference: str, control: str | None) -> pd.DataFrame:
    """`rows`: one row per finished trial with columns arm, seed, final_top1, best_top1.

    Deltas compare the mean *best* top-1 (the metric published KD results report); p-values are
    two-sided Welch t-tests over seeds (NaN with fewer than 2 seeds per side).
    """
    table = []
    for arm, group in rows.groupby("arm", sort=False):
        row = {"arm": arm, "seeds": len(group),
               "final_mean": group.final_top1.mean(), "final_std": group.final_top1.std(ddof=1),
               "best_mean": group.best_top1.mean(), "best_std": group.best_top1.std(ddof=1)}
        for role, other in (("reference", reference), ("control", control)):
            baseline = rows[rows.arm == other].best_top1 if other is not None else pd.Series(dtype=float)
            row[f"delta_vs_{role}"] = group.best_top1.mean() - baseline.mean() if len(baseline) else math.nan
            row[f"p_vs_{role}"] = _welch_p(group.best_top1, baseline) if arm != other else math.nan
        table.append(row)
    return pd.DataFrame(table, columns=COLUMNS)


def _welch_p(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def to_markdown(table: pd.DataFrame, reference: str, control: str | None) -> str:
    shown = pd.DataFrame({
        "arm": table.arm, "seeds": table.seeds,
        "final top-1 (%)": [_pm(m, s) for m, s in zip(table.final_mean, table.final_std)],
        "best top-1 (%)": [_pm(m, s) for m, s in zip(table.best_mean, table.best_std)],
        f"Δ vs {reference}": [_delta(d, p) for d, p in zip(table.delta_vs_reference, table.p_vs_reference)],
    })
    if control is not None:
        shown[f"Δ vs {control}"] = [_delta(d, p) for d, p in zip(table.delta_vs_control, table.p_vs_control)]
    note = ("Mean ± std over seeds. Δ: difference of mean best top-1 in points; p: two-sided Welch t-test "
            "over seeds; * marks p < 0.05.")
    return shown.to_markdown(index=False) + "\n\n" + note + "\n"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _delta(delta: float, p: float) -> str:
    if math.isnan(delta):
        return "—"
    if math.isnan(p):
        return f"{delta:+.2f}"
    return f"{delta:+.2f} (p={p:.3f}){'*' if p < 0.05 else ''}"


def write_table(rows: pd.DataFrame, folder: str, reference: str, control: str | None) -> dict[str, str]:
    """Writes ablation.md, ablation.csv, ablation.parquet (and the per-trial rows) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    table = ablation_table(rows, reference, control)
    paths = {name: os.path.join(folder, name) for name in
             ("ablation.md", "ablation.csv", "ablation.parquet", "ablation_trials.csv")}
    with open(paths["ablation.md"], "w", encoding="utf-8") as handle:
        handle.write(to_markdown(table, reference, control))
    table.to_csv(paths["ablation.csv"], index=False)
    table.to_parquet(paths["ablation.parquet"], index=False)
    rows.to_csv(paths["ablation_trials.csv"], index=False)
    return paths
