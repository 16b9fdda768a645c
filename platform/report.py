"""The experiment report: which settings won, how much each loss part matters, and how it compares.

    python -m platform.report experiments/<name>                       # an experiment folder
    python -m platform.report <mlflow experiment name> --tracking-uri sqlite:////abs/mlflow.db

Reads the MLflow runs (the source of truth for numbers), the Optuna study and the ablation rows; writes
`report/report.md` and PNG plots into the experiment folder and logs them on the MLflow parent run.
Runs automatically at the end of `python -m platform.tune`.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from platform.ablation import ablation_table, to_markdown  # noqa: E402
from platform.published import PAPER_CLAIM_OVER_KD, published_row  # noqa: E402
from platform.tracking import TAG_EXPERIMENT_DIR, TAG_KIND, Tracker  # noqa: E402

CURVE_METRIC = "test/top1"


def trial_runs(tracker: Tracker) -> pd.DataFrame:
    """One row per trial run of this experiment: name, status, params, final metrics, stop reason."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], max_results=5000,
        filter_string=f"tags.`{TAG_EXPERIMENT_DIR}` = '{tracker.experiment_dir}' and tags.`{TAG_KIND}` = 'trial'")
    rows = []
    for run in runs:
        rows.append({"run_id": run.info.run_id, "trial": run.info.run_name, "status": run.info.status,
                     "arm": run.data.params.get("arm"), "seed": _int(run.data.params.get("seed")),
                     "final_top1": run.data.metrics.get("final/top1"),
                     "best_top1": run.data.metrics.get("final/top1_best"),
                     "epochs": _int(run.data.metrics.get("final/epochs")),
                     "stop_reason": run.data.tags.get("stop_reason", ""),
                     "params": run.data.params})
    return pd.DataFrame(rows)


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _searched(experiment: dict) -> list[str]:
    return list((experiment.get("search") or {}).get("space") or {})


def best_trials_table(runs: pd.DataFrame, experiment: dict, top: int = 10) -> pd.DataFrame:
    done = runs.dropna(subset=["final_top1"]).sort_values("final_top1", ascending=False).head(top)
    shown = pd.DataFrame({"trial": done.trial, "best top-1 (%)": done.best_top1.round(2),
                          "final top-1 (%)": done.final_top1.round(2), "epochs": done.epochs,
                          "stop reason": done.stop_reason})
    for name in _searched(experiment):
        shown[name] = [_short(p.get(name, "")) for p in done.params]
    return shown


def _short(value: str) -> str:
    """MLflow keeps params as strings: show numbers with 3 significant digits."""
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def plot_curves(tracker: Tracker, runs: pd.DataFrame, path: str, top: int = 5) -> str | None:
    chosen = runs.dropna(subset=["final_top1"]).sort_values("final_top1", ascending=False).head(top)
    if "arm" in runs and runs.arm.notna().any():  # ablation: one curve per arm (its first seed), KD included
        chosen = runs.dropna(subset=["final_top1"]).sort_values("seed").groupby("arm").head(1)
    curves = {}
    for run in chosen.itertuples():
        history = tracker.client.get_metric_history(run.run_id, CURVE_METRIC)
        if history:
            curves[run.arm or run.trial] = pd.Series({m.step: m.value for m in history}).sort_index()
    if not curves:
        return None
    ax = pd.DataFrame(curves).plot(marker="o", figsize=(7, 4.5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("learning curves")
    ax.legend(fontsize=7)
    return _save(ax.figure, path)


def plot_ablation(table: pd.DataFrame, path: str) -> str:
    ax = table.plot.bar(x="arm", y="best_mean", yerr="best_std", legend=False, capsize=3, figsize=(7, 4.5))
    low = (table.best_mean - table.best_std.fillna(0)).min()
    ax.set_ylim(max(0.0, low - 2), min(100.0, (table.best_mean + table.best_std.fillna(0)).max() + 1))
    ax.set_ylabel("best test top-1 (%), mean ± std over seeds")
    ax.set_title("ablation: one switch per arm")
    return _save(ax.figure, path)


def optuna_plots(storage_url: str, study_name: str, folder: str) -> list[str]:
    """Optuna's own matplotlib views: optimisation history, parameter importances, slice plot."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except (KeyError, ValueError):
        return []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    written = []
    plots = [("optuna_history.png", ovm.plot_optimization_history), ("optuna_slice.png", ovm.plot_slice)]
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 1:
        plots.append(("optuna_importances.png", ovm.plot_param_importances))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, plot in plots:
            try:
                result = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need parameters that varied
            axes = result.flatten()[0] if hasattr(result, "flatten") else result
            written.append(_save(axes.figure, os.path.join(folder, name)))
    return written


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison_section(experiment: dict, runs: pd.DataFrame) -> str:
    data = experiment["data"]["name"]
    teacher = (experiment.get("teacher") or {}).get("model")
    student = experiment["student"]["model"]
    row = published_row(data, teacher, student)
    if row is None:
        return (f"Published CIFAR-100 numbers are not comparable with this experiment ({data}, "
                f"{teacher} → {student}): they exist only for the standard CIFAR-100 pairs and recipe.\n")
    ours = runs.best_top1.max() if len(runs) else math.nan
    low, high = PAPER_CLAIM_OVER_KD
    table = pd.DataFrame([{**{k: v if v is not None else "–" for k, v in row.items()},
                           "BicKD claim": f"{row['KD'] + low:.2f}–{row['KD'] + high:.2f}",
                           "this experiment (best)": f"{ours:.2f}"}])
    return table.to_markdown(index=False) + "\n"


def write_experiment_report(target: str, tracking_uri: str | None = None, quiet: bool = True) -> str:
    experiment_dir = os.path.abspath(target)
    with open(os.path.join(experiment_dir, "experiment.yaml"), encoding="utf-8") as handle:
        experiment = yaml.safe_load(handle)
    tracking_uri = tracking_uri or (experiment.get("tracking") or {}).get("tracking_uri") or \
        f"sqlite:///{os.path.join(experiment_dir, 'mlflow.db')}"
    tracker = Tracker(tracking_uri, (experiment.get("tracking") or {}).get("experiment_name") or experiment["name"],
                      experiment_dir)
    folder = os.path.join(experiment_dir, "report")
    os.makedirs(folder, exist_ok=True)
    runs = trial_runs(tracker)
    parent = tracker.find_run(**{TAG_KIND: "experiment"})
    lines = [f"# {experiment['name']}", "", experiment.get("description") or "", "",
             f"- data: {experiment['data']['name']}; teacher: {(experiment.get('teacher') or {}).get('model')}; "
             f"student: {experiment['student']['model']}; loss: {experiment['loss']['name']}; "
             f"{experiment['recipe']['epochs']} epochs",
             f"- trials: {len(runs)} ({(runs.status == 'FINISHED').sum() if len(runs) else 0} finished, "
             f"{(runs.status == 'FAILED').sum() if len(runs) else 0} failed)"]
    if parent is not None:
        teacher_top1 = tracker.client.get_run(parent).data.metrics.get("teacher/test_top1")
        if teacher_top1 is not None:
            lines.append(f"- teacher test top-1: {teacher_top1:.2f}%")
    images = []
    if len(runs):
        lines += ["", "## Best trials", "", best_trials_table(runs, experiment).to_markdown(index=False)]
    if experiment.get("ablation") and len(runs.dropna(subset=["best_top1"])):
        ablation = experiment["ablation"]
        rows = runs.dropna(subset=["best_top1"])[["arm", "seed", "final_top1", "best_top1"]]
        table = ablation_table(rows, ablation["reference"], ablation.get("control"))
        order = [arm for arm in ablation["arms"] if arm in set(table.arm)]  # the YAML's order
        table = table.set_index("arm").loc[order].reset_index()
        lines += ["", "## Ablation", "", to_markdown(table, ablation["reference"], ablation.get("control"))]
        images.append(plot_ablation(table, os.path.join(folder, "ablation.png")))
    if experiment.get("search"):
        images += optuna_plots(f"sqlite:///{os.path.join(experiment_dir, 'optuna.db')}", experiment["name"], folder)
    curves = plot_curves(tracker, runs, os.path.join(folder, "curves.png")) if len(runs) else None
    images += [curves] if curves else []
    lines += ["", "## Published numbers", "", comparison_section(experiment, runs.dropna(subset=["best_top1"]))]
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in images]
    report_path = os.path.join(folder, "report.md")
    with open(report_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    if parent is not None:
        for path in [report_path, *images]:
            tracker.log_artifact(parent, path, "report")
    if not quiet:
        print(f"report    {report_path}", flush=True)
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="experiment folder (holding experiment.yaml)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the experiment's)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.target, "experiment.yaml")):
        print(f"error: {args.target}: not an experiment folder (no experiment.yaml)", file=sys.stderr)
        return 2
    write_experiment_report(args.target, args.tracking_uri, quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
