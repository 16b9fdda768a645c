"""`python -m platform.tune` end to end on a real local Ray instance, real Optuna and a real MLflow store."""
from __future__ import annotations

import os

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from platform import tune as tune_cli
from platform.tracking import TAG_KIND

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


def test_search_with_asha_stops_some_trials_and_logs_everything(ray_local, write_experiment, tmp_path):
    path = write_experiment(
        "search", recipe={"epochs": 3},
        search={"num_samples": 6, "seed": 1,
                "space": {"loss.tau": {"loguniform": [0.05, 0.5]}, "loss.w_bc": {"loguniform": [0.1, 4.0]},
                          "loss.contrast": {"choice": ["full", "positive_only"]},
                          "loss.orthogonality": {"uniform": [0.0, 2.0], "when": {"loss.contrast": "full"}}},
                "points_to_evaluate": [{"loss.tau": 0.1, "loss.w_bc": 1.0, "loss.contrast": "full",
                                        "loss.orthogonality": 1.0}]},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    assert tune_cli.main([path, "--no-report"]) == 0
    experiment_dir = str(tmp_path / "experiments" / "search")

    client, parents = _runs(experiment_dir, "search", "experiment")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "teacher/test_top1" in parents[0].data.metrics
    _, trials = _runs(experiment_dir, "search", "trial")
    assert len(trials) == 6
    assert {run.info.status for run in trials} == {"FINISHED"}
    assert all(run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for run in trials)
    epochs = sorted(int(run.data.metrics["final/epochs"]) for run in trials)
    assert epochs[-1] == 3 and epochs[0] < 3, f"ASHA stopped no trial: {epochs}"
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test/top1")]
        assert steps == list(range(1, len(steps) + 1)), steps  # one step per epoch, none twice
        assert "loss.tau" in run.data.params and "loss.name" in run.data.params
    # The first trial ran the given point; conditional parameters appear only when their condition held.
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{experiment_dir}/optuna.db")
    assert len(study.trials) == 6
    assert study.trials[0].params["loss.tau"] == pytest.approx(0.1)
    for trial in study.trials:
        assert ("loss.orthogonality" in trial.params) == (trial.params["loss.contrast"] == "full")


def test_ablation_produces_the_table(ray_local, write_experiment, tmp_path):
    path = write_experiment(
        "ablation", recipe={"epochs": 1},
        ablation={"seeds": [0, 1], "reference": "full", "control": "kd_only",
                  "arms": {"full": {}, "kd_only": {"loss.w_bc": 0.0}}},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    assert tune_cli.main([path, "--no-report"]) == 0
    experiment_dir = tmp_path / "experiments" / "ablation"
    table = pd.read_csv(experiment_dir / "results" / "ablation.csv")
    assert list(table.arm) == ["full", "kd_only"] and list(table.seeds) == [2, 2]
    _, trials = _runs(str(experiment_dir), "ablation", "trial")
    assert len(trials) == 4
    by_arm = {}
    for run in trials:
        by_arm.setdefault(run.data.params["arm"], []).append(run.data.metrics["final/top1_best"])
    for row in table.itertuples():
        assert row.best_mean == pytest.approx(sum(by_arm[row.arm]) / 2, abs=1e-9)
    full, kd = table.set_index("arm").loc["full"], table.set_index("arm").loc["kd_only"]
    assert full.delta_vs_control == pytest.approx(full.best_mean - kd.best_mean)
    markdown = (experiment_dir / "results" / "ablation.md").read_text()
    assert "kd_only" in markdown and "±" in markdown


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
    assert 0 <= metrics["final/top1"] <= 100 and metrics["final/epochs"] == 1
    assert os.path.isdir(os.path.join(str(tmp_path / "experiments"), "train_runs"))
