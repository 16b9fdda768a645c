"""What the ablation and confirmation tables share: the per-arm summary over seeds, the comparisons with their
tests, families and power (bickd_tune/statistics.py), how they are shown, and how a table is saved."""
from __future__ import annotations

import math
import os
from dataclasses import asdict

import pandas as pd

from bickd_tune import statistics
from bickd_tune.experiment import AnalysisConfig, varied_and_shared
from bickd_tune.statistics import Comparison

METRIC = "test_top1"  # what arms are compared on: the final model's test top-1 (nothing is chosen on it)
ARM_COLUMNS = ["arm", "seeds", "val_mean", "val_std", "test_mean", "test_std"]
PER_SEED_COLUMNS = ["arm", "seed", "val_top1", "test_top1"]


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def arm_summary(rows: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per arm (in `order`, those with rows): seeds, mean and std of final validation and test top-1."""
    table = []
    for arm in [a for a in order if a in set(rows.arm)]:
        group = rows[rows.arm == arm]
        table.append({"arm": arm, "seeds": len(group),
                      "val_mean": group.val_top1.mean(), "val_std": group.val_top1.std(ddof=1),
                      "test_mean": group.test_top1.mean(), "test_std": group.test_top1.std(ddof=1)})
    return pd.DataFrame(table, columns=ARM_COLUMNS)


def analyse(rows: pd.DataFrame, pairs: list[tuple[str, str]], analysis: AnalysisConfig,
            aliases: dict[str, str] | None = None) -> list[Comparison]:
    """Each (arm, baseline) with rows on both sides, compared on final test top-1 over seeds (paired where
    the seeds match), placed in its family (the declared primary comparisons, the rest exploratory) and
    Holm-adjusted there; a declared comparison the way round it was declared. `aliases` maps a declared name
    to the arm that trained it (a winner merged with a fixed arm)."""
    resolve = (aliases or {}).get
    declared = []
    for text in analysis.primary:
        arm, other = statistics.parse_comparison(text)
        if resolve(arm, arm) != resolve(other, other):
            declared.append((resolve(arm, arm), resolve(other, other)))
    pairs = [(baseline, arm) if (baseline, arm) in declared else (arm, baseline) for arm, baseline in pairs]
    present = set(rows.arm)
    comparisons = [statistics.compare(arm, statistics.per_seed(rows, arm, METRIC), baseline,
                                      statistics.per_seed(rows, baseline, METRIC))
                   for arm, baseline in pairs if arm in present and baseline in present]
    primary = {statistics.pair_key(*pair) for pair in declared}
    return statistics.in_families(comparisons, primary, analysis.alpha, analysis.power)


def comparisons_frame(comparisons: list[Comparison], analysis: AnalysisConfig) -> pd.DataFrame:
    """One row per comparison, every figure the markdown shows and the verdict."""
    rows = [{**asdict(c), "comparison": c.name,
             "verdict": statistics.verdict(c, analysis.alpha, analysis.effect_of_interest)} for c in comparisons]
    columns = ["comparison", *Comparison.__dataclass_fields__, "verdict"]
    return pd.DataFrame(rows, columns=columns)


def comparisons_markdown(comparisons: list[Comparison], analysis: AnalysisConfig) -> str:
    frame = comparisons_frame(comparisons, analysis)
    shown = pd.DataFrame({
        "comparison": frame.comparison,
        "family": frame.family,
        "test": [f"{t} (n={n})" if t else "–" for t, n in zip(frame.test, frame.n)],
        "Δ test [95% CI]": [_delta(c) for c in comparisons],
        "p": frame.p.map(statistics.format_p),
        "p adj.": [statistics.format_p(p) + ("*" if p < analysis.alpha else "") for p in frame.p_adjusted],
        "detectable": [f"{d:.2f}" if d == d else "–" for d in frame.detectable],
        "verdict": frame.verdict,
    })
    note = statistics.family_note(comparisons, analysis.alpha, analysis.power, analysis.effect_of_interest)
    return shown.to_markdown(index=False) + "\n\n" + note + " * marks p adj. < α.\n"


def _delta(c: Comparison) -> str:
    if math.isnan(c.delta):
        return "–"
    if math.isnan(c.ci_low):
        return f"{c.delta:+.2f}"
    return f"{c.delta:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]"


def seeds_note(seeds: list[int], drawn: list[str], shared_with: list[str]) -> str:
    """What a seed varied in these runs (`drawn`: experiment.drawn_per_seed), and whether they share draws with
    another experiment."""
    varied, fixed = varied_and_shared(drawn)
    note = f"Seeds {seeds}: each seed drew {', '.join(varied)}"
    note += f"; every seed shared {' and '.join(fixed)}." if fixed else "."
    if shared_with:
        note += (f" **These seeds share their draws (data, split, views, teacher) with {', '.join(shared_with)}** "
                 "(allow_shared_seeds): they are not independent of those runs; do not pool or count them twice.")
    return note


def per_seed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[PER_SEED_COLUMNS].sort_values(["arm", "seed"], kind="stable")


def save_table(folder: str, stem: str, arms: pd.DataFrame, comparisons: pd.DataFrame, markdown: str,
               rows: pd.DataFrame) -> dict[str, str]:
    """Into `folder`: `<stem>.md`; the per-arm summary `<stem>.csv/.parquet`; the comparisons
    `<stem>_comparisons.csv/.parquet`; every arm's per-seed final values `<stem>_per_seed.csv/.parquet`; the
    trials' rows `<stem>_trials.csv`. Returns their paths by file name."""
    os.makedirs(folder, exist_ok=True)
    frames = {stem: arms, f"{stem}_comparisons": comparisons, f"{stem}_per_seed": per_seed_rows(rows)}
    paths = {f"{stem}.md": os.path.join(folder, f"{stem}.md")}
    with open(paths[f"{stem}.md"], "w", encoding="utf-8") as handle:
        handle.write(markdown)
    for name, frame in frames.items():
        for suffix, write in ((".csv", frame.to_csv), (".parquet", frame.to_parquet)):
            paths[name + suffix] = os.path.join(folder, name + suffix)
            write(paths[name + suffix], index=False)
    paths[f"{stem}_trials.csv"] = os.path.join(folder, f"{stem}_trials.csv")
    rows.to_csv(paths[f"{stem}_trials.csv"], index=False)
    return paths
