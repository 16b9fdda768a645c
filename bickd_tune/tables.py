"""What the ablation and confirmation tables share: how a mean ± std is shown, and how a table is saved."""
from __future__ import annotations

import math
import os

import pandas as pd


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def save_table(folder: str, stem: str, table: pd.DataFrame, markdown: str, rows: pd.DataFrame) -> dict[str, str]:
    """`<stem>.md`, `.csv`, `.parquet` and the per-trial rows `<stem>_trials.csv` into `folder`; their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, name) for name in
             (f"{stem}.md", f"{stem}.csv", f"{stem}.parquet", f"{stem}_trials.csv")}
    with open(paths[f"{stem}.md"], "w", encoding="utf-8") as handle:
        handle.write(markdown)
    table.to_csv(paths[f"{stem}.csv"], index=False)
    table.to_parquet(paths[f"{stem}.parquet"], index=False)
    rows.to_csv(paths[f"{stem}_trials.csv"], index=False)
    return paths
