"""`python -m platform.tune` end to end on a real local Ray instance, real Optuna and a real MLflow store."""
from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from ray.tune import ExperimentAnalysis

from bickd.run import evaluate_weights
from bickd_tune import draws
from bickd_tune import report as report_cli
from bickd_tune import tune as tune_cli
from bickd_tune.experiment import load_experiment
from bickd_tune.paths import ExperimentPaths
from bickd_tune.teacher import load_teacher_state
from bickd_tune.tracking import TAG_KIND
from tests.conftest import TINY, deep_update

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]


def _runs(experiment_dir: str, name: str, kind: str):
    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_KIND}` = '{kind}'")


def test_dry_run_creates_nothing(write_experiment, tmp_path, capsys):
    path = write_experiment(search={"num_samples": 3, "space": {"loss.tau": {"loguniform": [0.05, 0.2]}}})
    assert tune_cli.main([path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search: 3 trials" in out and "nothing was created" in out
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("name", ["cifar", "cifar_ablation", "imagenet", "demo", "bench_ablation", "bench_search"])
def test_dry_run_of_the_shipped_experiments(name, capsys):
    assert tune_cli.main([f"search_spaces/{name}.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing was created" in out and "resources    per trial" in out


SEARCH_EPOCHS = 3
SEARCH_TRIALS = 6
SEARCH = {  # a search over the loss itself: two parameter-free options, DIST, and BicKD's own parameters
    "num_samples": SEARCH_TRIALS, "seed": 1,
    "space": {"loss.name": {"choice": ["ce", "kd", "dist", "bickd"]},
              "loss.tau": {"loguniform": [0.05, 0.5], "when": {"loss.name": "bickd"}},
              "loss.contrast": {"choice": ["full", "positive_only"], "when": {"loss.name": "bickd"}},
              "loss.orthogonality": {"uniform": [0.0, 2.0], "when": {"loss.contrast": "full"}}},
    # ce first: after one epoch the distillers of this 3-epoch teacher sit tied at chance (10.19% on 7 Dec
    # 2026) and ASHA stops nothing on ties; ce, off chance by then, gives its first rung a value they fall below.
    # kd twice: the repeat is told kd's value and the sampler asked again, never trained
    "points_to_evaluate": [{"loss.name": "ce"}, {"loss.name": "bickd", "loss.tau": 0.1, "loss.contrast": "full",
                                                 "loss.orthogonality": 1.0}, {"loss.name": "kd"},
                           {"loss.name": "kd"}, {"loss.name": "dist"}]}
LOCAL_CPUS = 4  # what the ray_local fixture starts


@dataclass
class Sweep:
    """One finished search (ASHA, 6 trials of 3 epochs, a teacher trained first) and what it left behind."""
    path: str
    folder: str
    printed: str
    client: MlflowClient
    parent: Any
    trials: list
    study: optuna.Study

    @property
    def chosen(self):
        return max(self.trials, key=lambda run: run.data.metrics["final/val/top1"])

    @property
    def report(self) -> str:
        return open(os.path.join(self.folder, "report", "report.md"), encoding="utf-8").read()


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory) -> Sweep:
    """The search runs once for the module; each test below checks one behaviour of it."""
    root = tmp_path_factory.mktemp("search")
    tree = deep_update({"name": "search", "storage_path": str(root / "experiments"), **TINY}, {
        "recipe": {"epochs": SEARCH_EPOCHS}, "search": SEARCH,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0}})
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tune_cli.main([str(path)])
    assert code == 0, printed.getvalue()[-3000:]
    folder = str(root / "experiments" / "search")
    client, parents = _runs(folder, "search", "experiment")
    assert len(parents) == 1
    _, trials = _runs(folder, "search", "trial")
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{folder}/optuna.db")
    return Sweep(str(path), folder, printed.getvalue(), client, parents[0], trials, study)


def _section(markdown: str, title: str) -> str:
    """The text under a `## title` heading, up to the next heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2]))
    matching = [text for heading, text in sections.items() if heading.startswith(title)]
    assert len(matching) == 1, f"no single section '{title}' among {list(sections)}"
    return matching[0]


def _percentages(text: str) -> set[float]:
    return {float(number) for number in re.findall(r"(\d+\.\d+)%", text)}


def test_search_has_one_finished_parent_run_that_the_ui_opens_on(sweep):
    assert sweep.parent.info.status == "FINISHED"
    experiment = sweep.client.get_experiment_by_name("search")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs" in sweep.printed  # where to look


def test_the_teacher_logged_is_the_checkpoint_the_trials_distilled(sweep):
    """The teacher was trained by this run: the accuracy logged is that of the checkpoint the trials distilled."""
    checkpoint = sweep.parent.data.tags["teacher_checkpoint"]
    assert checkpoint == os.path.join(sweep.folder, "teacher", "resnet8.pt")
    evaluated = evaluate_weights(load_experiment(sweep.path).base_train_config(), "resnet8",
                                 load_teacher_state("resnet8", 10, checkpoint))
    logged = sweep.parent.data.metrics
    assert logged["teacher/test/top1"] == pytest.approx(evaluated["test/top1"], abs=1e-9)
    assert logged["teacher/val/top1"] == pytest.approx(evaluated["val/top1"], abs=1e-9)
    assert logged["teacher/test/loss"] == pytest.approx(evaluated["test/loss"], rel=1e-5)
    assert not [k for k in logged if k.startswith("teacher/test_")]  # one spelling only


def test_the_teacher_trains_on_the_whole_local_instance(sweep):
    """Nothing else runs while the teacher trains: it gets every CPU of the local instance, as many threads, in
    the driver (no GPU here), which has torch and the data loaded already."""
    line = next(line for line in sweep.printed.splitlines() if line.startswith("[teacher] training"))
    cpus, threads = (int(re.search(rf"(\d+) {unit}", line).group(1)) for unit in ("CPUs", "threads"))
    assert (cpus, threads) == (LOCAL_CPUS, LOCAL_CPUS), line
    assert line.endswith("in this process"), line
    assert "(_train pid=" not in sweep.printed  # no Ray task's output
    assert int(re.search(r"(\d+) epochs", line).group(1)) == SEARCH_EPOCHS, line


def test_the_console_shows_one_line_per_trial_start_and_end(sweep):
    """Not Tune's per-trial tables (~40 lines a trial)."""
    lines = [line for line in sweep.printed.splitlines() if line.startswith("[search ")]
    started = [line for line in lines if ": started (" in line]
    ended = [line for line in lines if ": finished, " in line or ": stopped early after " in line]
    assert (len(started), len(ended)) == (SEARCH_TRIALS, SEARCH_TRIALS), sweep.printed[-3000:]
    assert "started with configuration" not in sweep.printed


def test_every_configuration_trains_once_under_the_parent_run(sweep):
    assert len(sweep.trials) == SEARCH_TRIALS
    assert {run.info.status for run in sweep.trials} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in sweep.trials} == {sweep.parent.info.run_id}
    identities = {tuple(sorted(run.data.params.items())) for run in sweep.trials}
    assert len(identities) == SEARCH_TRIALS  # distinct configurations: nothing trained twice
    names = [run.data.params["loss.name"] for run in sweep.trials]
    assert names.count("kd") == 1 and names.count("ce") == 1  # parameter-free options once each


def test_each_loss_trains_at_its_own_defaults(sweep):
    """DIST at its own defaults, not BicKD's tau 0.1 / w_ce 0.1."""
    dist = next(run.data.params for run in sweep.trials if run.data.params["loss.name"] == "dist")
    assert (float(dist["loss.tau"]), float(dist["loss.w_ce"])) == (4.0, 1.0)


def test_asha_stops_some_trials_before_the_end_of_the_recipe(sweep):
    epochs = sorted(int(run.data.metrics["final/epochs"]) for run in sweep.trials)
    assert epochs[-1] == SEARCH_EPOCHS and epochs[0] < SEARCH_EPOCHS, f"ASHA stopped no trial: {epochs}"


def test_each_epoch_is_logged_once_and_validation_and_test_are_two_splits(sweep):
    for run in sweep.trials:
        for metric in ("val/top1", "test/top1"):
            steps = [m.step for m in sweep.client.get_metric_history(run.info.run_id, metric)]
            assert steps == list(range(1, len(steps) + 1)), (run.info.run_name, metric, steps)
        final = run.data.metrics
        assert (final["final/val/top1"], final["final/val/loss"]) != (final["final/test/top1"],
                                                                      final["final/test/loss"])


def test_optuna_is_told_each_trained_trials_final_validation_value(sweep):
    trained = [t for t in sweep.study.trials if "repeat_of" not in t.user_attrs]
    assert len(trained) == SEARCH_TRIALS
    assert sorted(t.value for t in trained) == pytest.approx(
        sorted(run.data.metrics["final/val/top1"] for run in sweep.trials))


def test_a_repeated_configuration_is_recorded_with_the_first_ones_value_as_pruned(sweep):
    """Recorded with the first trial's value, but not as a second finished observation."""
    repeats = [t for t in sweep.study.trials if "repeat_of" in t.user_attrs]
    assert repeats
    for trial in repeats:
        assert trial.value == sweep.study.trials[trial.user_attrs["repeat_of"]].value
        assert trial.state == optuna.trial.TrialState.PRUNED


def test_asha_stopped_trials_are_pruned_in_optuna_with_each_epochs_value(sweep):
    epochs_of = {round(r.data.metrics["final/val/top1"], 9): int(r.data.metrics["final/epochs"])
                 for r in sweep.trials}
    for trial in (t for t in sweep.study.trials if "repeat_of" not in t.user_attrs):
        epochs = epochs_of[round(trial.value, 9)]
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        expected = optuna.trial.TrialState.COMPLETE if epochs == SEARCH_EPOCHS else optuna.trial.TrialState.PRUNED
        assert trial.state == expected, (trial.number, epochs, trial.state)


def test_conditional_parameters_are_sampled_only_under_their_condition(sweep):
    for trial in sweep.study.trials:
        if trial.params.get("loss.name") == "bickd":
            assert ("loss.orthogonality" in trial.params) == (trial.params["loss.contrast"] == "full"), trial.params
        else:
            assert set(trial.params) == {"loss.name"}, trial.params


def test_the_report_names_the_trial_chosen_on_validation_with_both_figures(sweep):
    chosen = sweep.chosen
    section = _section(sweep.report, "Chosen trial")
    assert chosen.info.run_name in section
    assert {round(chosen.data.metrics["final/val/top1"], 2),
            round(chosen.data.metrics["final/test/top1"], 2)} <= _percentages(section)
    rows = [line for line in _section(sweep.report, "Trials, best first").splitlines()
            if line.startswith("| ") and "---" not in line]
    assert rows[1].split("|")[1].strip() == chosen.info.run_name  # rows[0] is the header
    assert len(rows) == 1 + SEARCH_TRIALS


def test_the_console_summary_gives_the_chosen_trials_figures(sweep):
    summary = sweep.printed.split("finished search:")[1]
    assert {round(sweep.chosen.data.metrics["final/val/top1"], 2),
            round(sweep.chosen.data.metrics["final/test/top1"], 2)} <= _percentages(summary)


def test_trials_csv_holds_every_trials_validation_figure(sweep):
    rows = pd.read_csv(os.path.join(sweep.folder, "trials.csv"))
    assert set(rows.val_top1.round(6)) == {round(r.data.metrics["final/val/top1"], 6) for r in sweep.trials}


def test_the_reports_plots_are_written_and_logged_with_it(sweep):
    for name in ("optuna_history.png", "optuna_slice.png", "optuna_importances.png", "curves.png"):
        _assert_png(os.path.join(sweep.folder, "report", name))
    artifacts = {a.path for a in sweep.client.list_artifacts(sweep.parent.info.run_id, "report")}
    assert {"report/report.md", "report/curves.png"} <= artifacts


def test_no_published_figure_is_set_beside_an_experiment_on_other_data(sweep):
    """Digits are not CIFAR-100: the published-numbers section shows no table of figures."""
    section = _section(sweep.report, "Published numbers")
    assert section.strip() and not [line for line in section.splitlines() if line.startswith("|")]


def _assert_png(path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, path
    with Image.open(path) as image:
        image.verify()


def test_ablation_produces_the_table(ray_local, write_experiment, tmp_path, capsys):
    ablation = {"seeds": [0, 1], "reference": "full", "control": "kd_only",
                "arms": {"full": {}, "kd_only": {"loss.w_bc": 0.0}}}
    path = write_experiment(
        "ablation", recipe={"epochs": 1}, teacher_cache={"enabled": True, "epochs": 1}, ablation=ablation,
        analysis={"primary": ["full vs kd_only"]},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    assert tune_cli.main([path]) == 0
    experiment_dir = tmp_path / "experiments" / "ablation"
    assert len(list((experiment_dir / "teacher_cache").glob("*/epoch-0000.arrow"))) == 1  # built once, shared
    table = pd.read_csv(experiment_dir / "results" / "ablation.csv")
    assert list(table.arm) == ["full", "kd_only"] and list(table.seeds) == [2, 2]
    _, trials = _runs(str(experiment_dir), "ablation", "trial")
    assert len(trials) == 4
    by_arm_seed = {(run.data.params["arm"], int(run.data.params["seed"])): run.data.metrics["final/test/top1"]
                   for run in trials}
    for row in table.itertuples():
        assert row.test_mean == pytest.approx((by_arm_seed[(row.arm, 0)] + by_arm_seed[(row.arm, 1)]) / 2, abs=1e-9)
    # The arms ran the same seeds: one comparison, paired, on the per-seed differences.
    comparisons = pd.read_csv(experiment_dir / "results" / "ablation_comparisons.csv")
    # (declared "full vs kd_only": shown that way round)
    assert list(comparisons.comparison) == ["full vs kd_only"] and list(comparisons.family) == ["primary"]
    differences = [by_arm_seed[("full", s)] - by_arm_seed[("kd_only", s)] for s in (0, 1)]
    assert comparisons.delta[0] == pytest.approx(sum(differences) / 2)
    if differences[0] != differences[1]:
        assert comparisons.test[0] == "paired t"
    per_seed = pd.read_parquet(experiment_dir / "results" / "ablation_per_seed.parquet")
    assert sorted(zip(per_seed.arm, per_seed.seed)) == sorted(by_arm_seed)
    client, parents = _runs(str(experiment_dir), "ablation", "experiment")
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "ablation")}
    assert {"ablation/ablation_per_seed.csv", "ablation/ablation_comparisons.csv"} <= logged

    # The report's ablation section is recomputed from MLflow and agrees with the table; it regenerates.
    report = (experiment_dir / "report" / "report.md").read_text()
    for row in table.itertuples():
        section = report.split("## Ablation")[1]
        assert f"{row.test_mean:.2f} ± {row.test_std:.2f}" in section and f"{row.val_mean:.2f} ± {row.val_std:.2f}" in section
    _assert_png(experiment_dir / "report" / "ablation.png")
    (experiment_dir / "report" / "report.md").unlink()
    assert report_cli.main([str(experiment_dir)]) == 0
    assert (experiment_dir / "report" / "report.md").read_text() == report

    # A second experiment in the same storage whose confirmation would re-run these seeds with the same data,
    # split, views and teacher is refused before anything is created; drawing the views per seed is allowed.
    capsys.readouterr()
    confirm = {"seeds": [1, 2], "control": "kd", "arms": {"kd": {"loss.name": "kd"}}}
    repeat = write_experiment("repeat", recipe={"epochs": 1}, teacher_cache={"enabled": True, "epochs": 1},
                              search={"num_samples": 1}, confirm=confirm)
    assert tune_cli.main([repeat]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "confirm.seeds" in error and "'ablation'" in error and "[1]" in error
    assert not (tmp_path / "experiments" / "repeat").exists()
    fresh = load_experiment(write_experiment("fresh", recipe={"epochs": 1}, teacher_cache={"enabled": True, "epochs": 1},
                                             search={"num_samples": 1}, confirm={**confirm, "per_seed": ["views"]}))
    assert draws.check_independent(fresh, ExperimentPaths.of(fresh), draws.teacher_ids(fresh)) == {}


def test_torch_trainer_trial_with_two_gloo_workers(ray_local, write_experiment, given_teacher, tmp_path, capfd):
    path = write_experiment(
        "ddp", recipe={"epochs": 1}, teacher=given_teacher,
        search={"num_samples": 1}, scheduler={"type": "none"},
        resources={"cpus_per_trial": 1, "num_workers": 2, "max_failures": 0})
    assert tune_cli.main([path, "--no-report"]) == 0
    experiment_dir = str(tmp_path / "experiments" / "ddp")
    _, trials = _runs(experiment_dir, "ddp", "trial")
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    metrics = trials[0].data.metrics
    assert metrics["final/epochs"] == 1
    # accuracy over the whole test set, all-reduced over both ranks: a whole number of the 719 test digits
    # (rank 0's half alone would be a multiple of 1/360)
    hits = metrics["final/test/top1"] / 100 * 719
    assert abs(hits - round(hits)) < 1e-6
    assert os.path.isdir(os.path.join(str(tmp_path / "experiments"), "train_runs"))
    # Ray Train's placement-group cleaner asks the State API, which a local instance (no dashboard) lacks, every
    # second: its warning is kept out of the run's output (bickd_tune/ray_internals.py)
    printed = capfd.readouterr()
    assert "Ray Train Controller actor state" not in printed.out + printed.err


def test_a_diverging_trial_fails_alone_with_its_reason(ray_local, write_experiment, given_teacher, tmp_path):
    path = write_experiment(
        "diverging", recipe={"epochs": 2}, teacher=given_teacher,
        search={"num_samples": 2, "space": {"recipe.lr": {"choice": [0.05, 1.0e6]}},
                "points_to_evaluate": [{"recipe.lr": 0.05}, {"recipe.lr": 1.0e6}]},
        scheduler={"type": "none"}, resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    assert tune_cli.main([path, "--no-report"]) == 0  # the experiment finishes
    _, trials = _runs(str(tmp_path / "experiments" / "diverging"), "diverging", "trial")
    by_lr = {float(run.data.params["recipe.lr"]): run for run in trials}
    assert by_lr[0.05].info.status == "FINISHED"
    assert by_lr[1.0e6].info.status == "FAILED"
    assert "NonFiniteLossError" in by_lr[1.0e6].data.tags["stop_reason"]
    assert "train/loss" not in by_lr[1.0e6].data.metrics  # stopped in its first epoch


def test_a_reused_trial_process_gives_the_same_result_as_a_fresh_one(ray_local, write_experiment, given_teacher,
                                                                     tmp_path):
    """Tune runs the second trial in the first one's process (reuse_actors): nothing may leak between them."""
    path = write_experiment(
        "reuse", recipe={"epochs": 2}, teacher=given_teacher,
        ablation={"seeds": [0], "reference": "first", "control": None, "arms": {"first": {}, "second": {}}},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 1, "max_failures": 0})
    assert tune_cli.main([path, "--no-report"]) == 0
    experiment_dir = str(tmp_path / "experiments" / "reuse")
    pids = {t.config["arm"]: t.last_result["pid"] for t in ExperimentAnalysis(experiment_dir).trials}
    assert pids["first"] == pids["second"], "the second trial did not reuse the first one's process"
    client, trials = _runs(experiment_dir, "reuse", "trial")
    histories = {}
    for run in trials:
        histories[run.data.params["arm"]] = {
            name: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                     key=lambda m: m.step)]
            for name in ("train/loss", "train/kl", "train/row", "train/col", "val/loss", "val/top1", "test/top1")}
    assert len(histories["first"]["train/loss"]) == 2
    assert histories["first"] == histories["second"]  # bit for bit, epoch by epoch
