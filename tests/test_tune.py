"""`python -m platform.tune` end to end on a real local Ray instance, real Optuna and a real MLflow store."""
from __future__ import annotations

import os

import optuna
import pandas as pd
import pytest
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


def test_search_with_asha_stops_some_trials_and_logs_everything(ray_local, write_experiment, tmp_path, capsys):
    """A search over the loss itself (two parameter-free options, DIST, and BicKD's own parameters): no
    configuration trained twice, each loss at its own defaults, every choice made on validation."""
    path = write_experiment(
        "search", recipe={"epochs": 3},
        search={"num_samples": 6, "seed": 1,
                "space": {"loss.name": {"choice": ["ce", "kd", "dist", "bickd"]},
                          "loss.tau": {"loguniform": [0.05, 0.5], "when": {"loss.name": "bickd"}},
                          "loss.contrast": {"choice": ["full", "positive_only"], "when": {"loss.name": "bickd"}},
                          "loss.orthogonality": {"uniform": [0.0, 2.0], "when": {"loss.contrast": "full"}}},
                # kd twice: the repeat is told kd's value and the sampler asked again, never trained
                "points_to_evaluate": [{"loss.name": "bickd", "loss.tau": 0.1, "loss.contrast": "full",
                                        "loss.orthogonality": 1.0}, {"loss.name": "kd"}, {"loss.name": "kd"},
                                       {"loss.name": "dist"}]},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    assert tune_cli.main([path]) == 0
    printed = capsys.readouterr().out
    experiment_dir = str(tmp_path / "experiments" / "search")

    client, parents = _runs(experiment_dir, "search", "experiment")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    experiment = client.get_experiment_by_name("search")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    assert f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs" in printed  # where to look
    # The teacher was trained by this run: the accuracy logged is that of the checkpoint the trials distilled.
    checkpoint = parents[0].data.tags["teacher_checkpoint"]
    assert checkpoint == os.path.join(experiment_dir, "teacher", "resnet8.pt")
    evaluated = evaluate_weights(load_experiment(path).base_train_config(), "resnet8",
                                 load_teacher_state("resnet8", 10, checkpoint))
    logged = parents[0].data.metrics
    assert logged["teacher/test/top1"] == pytest.approx(evaluated["test/top1"], abs=1e-9)
    assert logged["teacher/val/top1"] == pytest.approx(evaluated["val/top1"], abs=1e-9)
    assert logged["teacher/test/loss"] == pytest.approx(evaluated["test/loss"], rel=1e-5)
    assert not [k for k in logged if k.startswith("teacher/test_")]  # one spelling only
    # Nothing else runs while the teacher trains: it got the whole local instance (4 logical CPUs here).
    assert "[teacher] training resnet8 (3 epochs) before the trials on 4 CPUs (4 threads)" in printed
    # The console: a line per trial start and end (not Tune's tables, ~40 lines a trial).
    started = [line for line in printed.splitlines() if line.startswith("[search ") and line.endswith(")")
               and ": started (" in line]
    ended = [line for line in printed.splitlines() if line.startswith("[search ") and
             (": finished, val/top1 " in line or ": stopped early after " in line)]
    assert len(started) == 6 and len(ended) == 6, printed[-3000:]
    assert "started with configuration" not in printed

    _, trials = _runs(experiment_dir, "search", "trial")
    assert len(trials) == 6
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert all(run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for run in trials)
    identities = {tuple(sorted((k, v) for k, v in run.data.params.items())) for run in trials}
    assert len(identities) == 6  # six distinct configurations: nothing trained twice
    by_loss = {}
    for run in trials:
        by_loss.setdefault(run.data.params["loss.name"], []).append(run)
    assert len(by_loss["kd"]) == 1 and len(by_loss.get("ce", [])) <= 1
    dist = by_loss["dist"][0].data.params  # DIST at its own defaults, not BicKD's tau 0.1 / w_ce 0.1
    assert (float(dist["loss.tau"]), float(dist["loss.w_ce"])) == (4.0, 1.0)
    epochs = sorted(int(run.data.metrics["final/epochs"]) for run in trials)
    assert epochs[-1] == 3 and epochs[0] < 3, f"ASHA stopped no trial: {epochs}"
    for run in trials:
        for metric in ("val/top1", "test/top1"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == list(range(1, len(steps) + 1)), steps  # one step per epoch, none twice
        assert run.data.metrics["final/val/top1"] != run.data.metrics["final/test/top1"] or \
            run.data.metrics["final/val/loss"] != run.data.metrics["final/test/loss"]  # two different splits
    # Optuna was told validation values: each trained trial's study value is its run's final val/top1.
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{experiment_dir}/optuna.db")
    trained = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert len(trained) == 6 and repeats
    assert sorted(t.value for t in trained) == pytest.approx(sorted(r.data.metrics["final/val/top1"] for r in trials))
    for trial in repeats:  # recorded with the first trial's values, but not as a second finished observation
        assert trial.value == study.trials[trial.user_attrs["repeat_of"]].value
        assert trial.state == optuna.trial.TrialState.PRUNED
    # Optuna's meaning of an early stop: ASHA-stopped trials are PRUNED, with each epoch's value on the way.
    epochs_of = {round(r.data.metrics["final/val/top1"], 9): int(r.data.metrics["final/epochs"]) for r in trials}
    for trial in trained:
        epochs = epochs_of[round(trial.value, 9)]
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        expected = optuna.trial.TrialState.COMPLETE if epochs == 3 else optuna.trial.TrialState.PRUNED
        assert trial.state == expected, (trial.number, epochs, trial.state)
    for trial in study.trials:
        if trial.params.get("loss.name") == "bickd":
            assert ("loss.orthogonality" in trial.params) == (trial.params["loss.contrast"] == "full")
        else:
            assert set(trial.params) == {"loss.name"}

    # The summary and the report name the trial chosen on validation (not test) and show both figures.
    rows = pd.read_csv(os.path.join(experiment_dir, "trials.csv"))
    chosen = max(trials, key=lambda run: run.data.metrics["final/val/top1"])
    report = (tmp_path / "experiments" / "search" / "report" / "report.md").read_text()
    assert f"**{chosen.info.run_name}**, chosen by val/top1 on validation" in report
    table = report.split("## Trials, best first by val/top1 (validation)")[1]
    first_row = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1]
    assert first_row.split("|")[1].strip() == chosen.info.run_name
    assert f"test top-1 {chosen.data.metrics['final/test/top1']:.2f}%" in report
    summary = printed.split("finished search:")[1]
    assert f"validation top-1 {chosen.data.metrics['final/val/top1']:.2f}%, test top-1 " \
           f"{chosen.data.metrics['final/test/top1']:.2f}%" in summary
    assert set(rows.val_top1.round(6)) == {round(r.data.metrics["final/val/top1"], 6) for r in trials}
    for name in ("optuna_history.png", "optuna_slice.png", "optuna_importances.png", "curves.png"):
        _assert_png(tmp_path / "experiments" / "search" / "report" / name)
    assert "not comparable" in report  # digits are not CIFAR-100
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/report.md" in artifacts and "report/curves.png" in artifacts


def _assert_png(path) -> None:
    data = path.read_bytes()
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


def test_torch_trainer_trial_with_two_gloo_workers(ray_local, write_experiment, tmp_path):
    path = write_experiment(
        "ddp", recipe={"epochs": 1}, teacher={"model": "resnet8"},
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


def test_a_diverging_trial_fails_alone_with_its_reason(ray_local, write_experiment, tmp_path):
    path = write_experiment(
        "diverging", recipe={"epochs": 2},
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


def test_a_reused_trial_process_gives_the_same_result_as_a_fresh_one(ray_local, write_experiment, tmp_path):
    """Tune runs the second trial in the first one's process (reuse_actors): nothing may leak between them."""
    path = write_experiment(
        "reuse", recipe={"epochs": 2},
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
