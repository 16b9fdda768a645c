"""The experiment report: which settings won (chosen on validation), what they score on test, how much each
loss part matters, and how it compares with published numbers.

    python -m platform.report experiments/<name>

Reads the MLflow runs (the source of truth for numbers), the Optuna study and the ablation rows; writes
`report/report.md` and PNG plots into the experiment folder and logs them on the MLflow parent run.
Runs automatically at the end of `python -m platform.tune`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

from bickd.config_io import ConfigError, read_yaml, validate  # noqa: E402
from bickd_tune.ablation import ablation_table, to_markdown  # noqa: E402
from bickd_tune.confirm import PLAN_FILE, ConfirmPlan, confirmation_table, final_rows  # noqa: E402
from bickd_tune.confirm import to_markdown as confirmation_markdown  # noqa: E402
from bickd_tune.draws import shared_draws  # noqa: E402
from bickd_tune.experiment import ExperimentConfig  # noqa: E402
from bickd_tune.paths import ExperimentPaths  # noqa: E402
from bickd_tune.published import PAPER_CLAIMS_OVER_KD, RECIPES, anchors, method_of, published_row  # noqa: E402
from bickd_tune.tracking import TAG_KIND, Tracker, stage_of  # noqa: E402
from bickd_tune.tune import EXIT_CONFIG  # noqa: E402

CURVE_METRIC = "val/top1"
FINAL = {"val_top1": "final/val/top1", "val_top5": "final/val/top5", "val_loss": "final/val/loss",
         "test_top1": "final/test/top1", "test_loss": "final/test/loss"}


def trial_runs(tracker: Tracker, main_stage: str = "search") -> pd.DataFrame:
    """One row per trial run of this experiment: stage, name, status, params, final metrics, stop reason."""
    rows = []
    for run in tracker.trial_runs():
        rows.append({"run_id": run.info.run_id, "stage": stage_of(run, main_stage), "trial": run.info.run_name,
                     "status": run.info.status,
                     "arm": run.data.params.get("arm"), "seed": _int(run.data.params.get("seed")),
                     **{column: run.data.metrics.get(metric) for column, metric in FINAL.items()},
                     "epochs": _int(run.data.metrics.get("final/epochs")),
                     "stop_reason": run.data.tags.get("stop_reason", ""),
                     "params": run.data.params})
    return pd.DataFrame(rows, columns=["run_id", "stage", "trial", "status", "arm", "seed", *FINAL, "epochs",
                                       "stop_reason", "params"])


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def ranked(runs: pd.DataFrame, experiment: ExperimentConfig) -> pd.DataFrame:
    """Finished trials, best first by the experiment's objective (a validation metric)."""
    metric, mode = experiment.objective
    column = metric.replace("/", "_")
    return runs.dropna(subset=[column]).sort_values(column, ascending=mode == "min", kind="stable")


def best_trials_table(runs: pd.DataFrame, experiment: ExperimentConfig, top: int = 10) -> pd.DataFrame:
    metric, _ = experiment.objective
    done = ranked(runs, experiment).head(top)
    shown = pd.DataFrame({"trial": done.trial, f"{metric} (chooses)": done[metric.replace("/", "_")].map(_three),
                          "test top-1 (%)": done.test_top1.map(_three), "epochs": done.epochs,
                          "stop reason": done.stop_reason})
    for name in experiment.search.space if experiment.search is not None else []:
        shown[name] = [_short(p.get(name, "")) for p in done.params]
    return shown


def _three(value: float) -> str:
    return f"{value:.3g}" if value == value else "–"


def _short(value: str) -> str:
    """MLflow keeps params as strings: show numbers with 3 significant digits."""
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def plot_curves(tracker: Tracker, runs: pd.DataFrame, experiment: ExperimentConfig, path: str,
                top: int = 5) -> str | None:
    chosen = ranked(runs, experiment).head(top)
    if experiment.ablation is not None:  # one curve per arm (its first seed), KD included
        chosen = runs.dropna(subset=["test_top1"]).sort_values("seed").groupby("arm").head(1)
    curves = {}
    for run in chosen.itertuples():
        history = tracker.client.get_metric_history(run.run_id, CURVE_METRIC)
        if history:
            curves[run.arm or run.trial] = pd.Series({m.step: m.value for m in history}).sort_index()
    if not curves:
        return None
    ax = pd.DataFrame(curves).plot(marker="o", figsize=(7, 4.5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("learning curves (validation)")
    ax.legend(fontsize=7)
    return _save(ax.figure, path)


def plot_ablation(table: pd.DataFrame, path: str) -> str:
    ax = table.plot.bar(x="arm", y="test_mean", yerr="test_std", legend=False, capsize=3, figsize=(7, 4.5))
    low = (table.test_mean - table.test_std.fillna(0)).min()
    ax.set_ylim(max(0.0, low - 2), min(100.0, (table.test_mean + table.test_std.fillna(0)).max() + 1))
    ax.set_ylabel("final test top-1 (%), mean ± std over seeds")
    ax.set_title("ablation: one switch per arm")
    return _save(ax.figure, path)


def optuna_plots(storage_url: str, study_name: str, folder: str) -> list[str]:
    """Optuna's own matplotlib views (of validation values): optimisation history, importances, slice plot."""
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


def comparison_section(experiment: ExperimentConfig, runs: pd.DataFrame) -> str:
    """Like with like: our KD against published KD, our BicKD-over-KD gain against the paper's claimed gain,
    each with how it was obtained; then every published method of the pair, with its source, beside the
    ablation arm that trains it here."""
    data, student = experiment.data.name, experiment.student.model
    teacher = experiment.teacher.model if experiment.teacher is not None else None
    row = published_row(data, teacher, student)
    if row is None:
        return (f"Published numbers are not comparable with this experiment ({data}, {teacher} → {student}): they "
                "exist only for the standard CIFAR-100 and ImageNet pairs and recipes.\n")
    low, high = PAPER_CLAIMS_OVER_KD[data]
    lines = [f"Published ({teacher} → {student}, {RECIPES[data]}): teacher {row['teacher']:.2f}, student "
             f"{row['student']:.2f}, KD {row['KD']:.2f}; the BicKD paper claims +{low:g} to +{high:g} points over "
             "KD.", ""]
    done = runs.dropna(subset=["test_top1"])
    if experiment.ablation is not None:
        control, reference = experiment.ablation.control, experiment.ablation.reference
        kd = done[done.arm == control].test_top1 if control is not None else pd.Series(dtype=float)
        bickd = done[done.arm == reference].test_top1
        table = pd.DataFrame([
            {"": "published", "KD (%)": f"{row['KD']:.2f}", "BicKD − KD (points)": f"+{low:g} to +{high:g} (claim)"},
            {"": f"this experiment (final test, {len(kd)} seeds)",
             "KD (%)": _pm(kd) if len(kd) else "–",
             "BicKD − KD (points)": f"{bickd.mean() - kd.mean():+.2f} ({reference} − {control})"
             if len(kd) and len(bickd) else "–"}])
    else:
        best = ranked(runs, experiment).head(1)
        chosen = (f"{best.test_top1.iloc[0]:.2f} (trial {best.trial.iloc[0]}, loss "
                  f"{best.params.iloc[0].get('loss.name')}, chosen on validation; final test)" if len(best) else "–")
        table = pd.DataFrame([
            {"": "published KD", "test top-1 (%)": f"{row['KD']:.2f}"},
            {"": "BicKD claim (KD + claimed gain)", "test top-1 (%)": f"{row['KD'] + low:.2f}–{row['KD'] + high:.2f}"},
            {"": "this experiment", "test top-1 (%)": chosen}])
    return "\n".join(lines) + table.to_markdown(index=False) + "\n\n" + _published_methods(experiment, done)


def _published_methods(experiment: ExperimentConfig, done: pd.DataFrame) -> str:
    """Each published method of the pair with its source (footnoted), and this experiment's final test top-1
    of the ablation arms whose loss is that method (kd, kd + standardize, dkd, ...)."""
    teacher = experiment.teacher.model if experiment.teacher is not None else None
    published = anchors(experiment.data.name, teacher, experiment.student.model)
    ours: dict[str, list[str]] = {}
    if experiment.ablation is not None:
        base = experiment.base_train_config()
        for arm, overrides in experiment.ablation.arms.items():
            method, values = method_of(base.with_overrides(overrides).loss), done[done.arm == arm].test_top1
            if method is not None and len(values):
                ours.setdefault(method, []).append(f"{_pm(values)} ({arm}, {len(values)} seeds)")
    sources = list(dict.fromkeys(anchor.source for anchor in published))
    rows = [{"method": anchor.method, "published top-1 (%)": f"{anchor.top1:.2f}",
             "source": f"[{sources.index(anchor.source) + 1}]",
             **({"this experiment (final test)": "; ".join(ours.get(anchor.method, [])) or "–"} if ours else {})}
            for anchor in published]
    notes = [f"[{i}] {source.label}: {source.where}" + (f"; {source.note}" if source.note else "")
             for i, source in enumerate(sources, 1)]
    mlkd = "; MLKD is not implemented in this project" if any("MLKD" in a.method for a in published) else ""
    return (f"Published methods on this pair, as their sources report them (not retrained here{mlkd}):\n\n"
            + pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n\n" + "\n".join(notes) + "\n")


def confirmation_section(experiment: ExperimentConfig, experiment_dir: str, runs: pd.DataFrame,
                         shared_with: list[str] | None = None) -> list[str]:
    """The claim the experiment ends with: the search's winners over fresh seeds against the control."""
    plan_path = os.path.join(experiment_dir, PLAN_FILE)
    if experiment.confirm is None or not os.path.exists(plan_path):
        return []
    with open(plan_path, encoding="utf-8") as handle:
        plan = ConfirmPlan.from_json(json.load(handle))
    done = final_rows(runs[runs.status == "FINISHED"])
    if not len(done):
        return ["", "## Confirmation over fresh seeds", "", "No confirmation trial has finished yet."]
    return ["", "## Confirmation over fresh seeds", "",
            confirmation_markdown(confirmation_table(done, plan, experiment.analysis), plan, experiment.analysis,
                                  experiment.search_seeds, experiment.chooses_on_test, shared_with)]


def _pm(values: pd.Series) -> str:
    return f"{values.mean():.2f}" if len(values) < 2 else f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def load_experiment_config(experiment_dir: str) -> ExperimentConfig:
    """The validated config the experiment ran with (its experiment.yaml)."""
    path = os.path.join(experiment_dir, "experiment.yaml")
    return validate(ExperimentConfig, read_yaml(path), source=path)


def write_experiment_report(target: str, tracking_uri: str | None = None, quiet: bool = True) -> str:
    experiment_dir = os.path.abspath(target)
    experiment = load_experiment_config(experiment_dir)
    paths = ExperimentPaths.of(experiment)
    tracker = Tracker(tracking_uri or paths.tracking_uri, experiment.tracking.experiment_name or experiment.name,
                      paths.identity, experiment_dir)
    folder = os.path.join(experiment_dir, "report")
    os.makedirs(folder, exist_ok=True)
    everything = trial_runs(tracker, experiment.kind)
    runs = everything[everything.stage != "confirm"]  # the search's (or ablation's) own trials
    confirm_runs = everything[everything.stage == "confirm"]
    parent = tracker.find_run(**{TAG_KIND: "experiment"})
    metric, mode = experiment.objective
    lines = [f"# {experiment.name}", "", experiment.description, "",
             f"- data: {experiment.data.name}; teacher: {experiment.teacher.model if experiment.teacher else None}; "
             f"student: {experiment.student.model}; loss: {experiment.loss.name}; {experiment.recipe.epochs} epochs",
             f"- trials: {len(runs)} ({(runs.status == 'FINISHED').sum()} finished, "
             f"{(runs.status == 'FAILED').sum()} failed)",
             *([f"- confirmation trials: {len(confirm_runs)} ({(confirm_runs.status == 'FINISHED').sum()} "
                f"finished), over seeds {experiment.confirm.seeds}"] if len(confirm_runs) else []),
             ("- **no validation split** (`data.val_fraction: 0`): every choice here was made on the test set, "
              "so its test figures are optimistic" if experiment.chooses_on_test else
              f"- choices use the validation split ({mode} {metric}); test top-1 is the final model's, measured "
              "once per trial and never used to choose")]
    if parent is not None:
        metrics = tracker.client.get_run(parent).data.metrics
        if "teacher/test/top1" in metrics:
            lines.append(f"- teacher: validation top-1 {metrics.get('teacher/val/top1', math.nan):.2f}%, "
                         f"test top-1 {metrics['teacher/test/top1']:.2f}%")
    images = []
    if experiment.search is not None and len(ranked(runs, experiment)):
        best = ranked(runs, experiment).iloc[0]
        lines += ["", "## Chosen trial", "",
                  f"**{best.trial}**, chosen by {metric} on validation ({best[metric.replace('/', '_')]:.4g}): "
                  f"validation top-1 {best.val_top1:.2f}%, test top-1 {best.test_top1:.2f}% (final model, "
                  f"{best.epochs} epochs). One trial picked out of {len(ranked(runs, experiment))} on one seed: "
                  + ("its confirmation over fresh seeds is at the end." if experiment.confirm is not None else
                     "confirm it over fresh seeds (a `confirm:` section) before calling it better.")]
    if len(runs):
        lines += ["", f"## Trials, best first by {metric} (validation)", "",
                  best_trials_table(runs, experiment).to_markdown(index=False)]
    if experiment.ablation is not None and len(runs.dropna(subset=["test_top1"])):
        ablation = experiment.ablation
        rows = runs.dropna(subset=["test_top1"])[["arm", "seed", "val_top1", "test_top1"]]
        table = ablation_table(rows, ablation, experiment.analysis)
        lines += ["", "## Ablation", "",
                  to_markdown(table, experiment, shared_draws(paths, "ablation"))]
        images.append(plot_ablation(table.arms, os.path.join(folder, "ablation.png")))
    if experiment.search is not None:
        images += optuna_plots(f"sqlite:///{os.path.join(experiment_dir, 'optuna.db')}", experiment.name, folder)
    curves = plot_curves(tracker, runs, experiment, os.path.join(folder, "curves.png")) if len(runs) else None
    images += [curves] if curves else []
    lines += ["", "## Published numbers", "", comparison_section(experiment, runs)]
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in images]
    lines += confirmation_section(experiment, experiment_dir, confirm_runs, shared_draws(paths, "confirm"))
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
        return EXIT_CONFIG
    try:
        write_experiment_report(args.target, args.tracking_uri, quiet=False)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
