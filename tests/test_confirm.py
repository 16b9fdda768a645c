"""A search that ends in a claim: its winners, the control and the default over fresh seeds (bickd_tune/confirm.py).

The end-to-end test runs the real CLI in subprocesses (each starts its own local Ray), SIGKILLs the driver in
the middle of the confirmation and resumes it.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import ray
from mlflow.tracking import MlflowClient
from scipy import stats

from bickd_tune.confirm import PLAN_FILE, ConfirmPlan, comparison_pairs, confirmation_table
from bickd_tune.experiment import AnalysisConfig, load_experiment
from bickd_tune.paths import ExperimentPaths
from bickd_tune.processes import processes_under
from bickd_tune.ray_env import local_temp_dir
from bickd_tune.statistics import PAIRED, holm
from bickd_tune.tracking import TAG_KIND
from tests.test_resume import REPO, _trial_checkpoints, _wait

EPOCHS = 2  # per trial: enough for a checkpoint to resume from and an epoch after it


def _cli(*args: str) -> subprocess.Popen:
    """The CLI with its report (the confirmation is its last section)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "platform.tune", *args, "--num-cpus", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _plan(*arms, reference=None, winners=(), aliases=None) -> ConfirmPlan:
    return ConfirmPlan(arms={name: {} for name in arms}, seeds=[1, 2, 3], control="kd", labels={}, search_values={},
                       metric="val/top1", reference=reference, winners=list(winners), aliases=aliases or {})


def test_every_setting_meets_the_control_and_each_winner_the_default():
    plan = _plan("top1", "top2", "defaults", "kd", reference="defaults", winners=["top1", "top2"])
    assert comparison_pairs(plan) == [("top1", "kd"), ("top2", "kd"), ("defaults", "kd"), ("top1", "defaults"),
                                      ("top2", "defaults")]
    merged = _plan("top2", "defaults", "kd", reference="defaults", winners=["defaults", "top2"],
                   aliases={"top1": "defaults"})  # the search's best was the default itself: no self-comparison
    assert comparison_pairs(merged) == [("top2", "kd"), ("defaults", "kd"), ("top2", "defaults")]


def test_the_table_pairs_the_shared_seeds_and_corrects_within_its_family():
    test = {"kd": [70.0, 70.5, 69.5], "top1": [75.0, 75.5, 74.2], "defaults": [74.1, 75.0, 74.6],
            "top2": [70.2, 69.6, 70.9]}
    rows = pd.DataFrame([{"arm": arm, "seed": seed, "val_top1": value + 1, "test_top1": value}
                         for arm, values in test.items() for seed, value in zip([1, 2, 3], values)])
    plan = _plan("top1", "top2", "defaults", "kd", reference="defaults", winners=["top1", "top2"])
    table = confirmation_table(rows, plan, AnalysisConfig(primary=["top1 vs kd"]))
    by_name = {c.name: c for c in table.comparisons}
    assert all(c.test == PAIRED for c in table.comparisons)
    raw = {name: stats.ttest_rel(test[name.split(" vs ")[0]], test[name.split(" vs ")[1]]).pvalue for name in by_name}
    assert {name: c.p for name, c in by_name.items()} == pytest.approx(raw)
    assert by_name["top1 vs kd"].family == "primary" and by_name["top1 vs kd"].p_adjusted == pytest.approx(raw["top1 vs kd"])
    exploratory = [n for n in by_name if n != "top1 vs kd"]
    assert [by_name[n].p_adjusted for n in exploratory] == pytest.approx(holm([raw[n] for n in exploratory]))
    assert by_name["top1 vs defaults"].delta == pytest.approx(np.mean(test["top1"]) - np.mean(test["defaults"]))
    assert table.arms.set_index("arm").loc["top1", "val_mean"] == pytest.approx(np.mean(test["top1"]) + 1)


def test_the_methods_default_is_always_confirmed_and_never_twice(write_experiment):
    search = {"num_samples": 2, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}}
    only_kd = load_experiment(write_experiment(search=search, confirm={"seeds": [1, 2], "control": "kd",
                                                                       "arms": {"kd": {"loss.name": "kd"}}}))
    assert only_kd.confirm_arms == {"kd": {"loss.name": "kd"}, "defaults": {}}
    # an arm that spells out the YAML's own values is the default already
    spelled = load_experiment(write_experiment(search=search, confirm={
        "seeds": [1, 2], "control": "kd", "arms": {"kd": {"loss.name": "kd"}, "own": {"loss.tau": 0.1}}}))
    assert spelled.loss.tau == 0.1 and list(spelled.confirm_arms) == ["kd", "own"]


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_search_then_confirmation_killed_midway_and_resumed(write_experiment, given_teacher, tmp_path):
    if ray.is_initialized():
        ray.shutdown()  # an earlier test's instance in this worker would share the CPUs
    path = write_experiment(
        "confirmed", recipe={"epochs": EPOCHS},
        teacher=given_teacher,
        # two trials, one of them the YAML's own setting: both are the top 2, and the default among them is
        # trained once in the confirmation, as `defaults`
        search={"num_samples": 2, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}},
                "points_to_evaluate": [{"loss.tau": 0.1}]},
        scheduler={"type": "none"},
        confirm={"top_k": 2, "seeds": [1, 2], "control": "kd", "arms": {"kd": {"loss.name": "kd"}, "defaults": {}}},
        resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    experiment_dir = str(tmp_path / "experiments" / "confirmed")
    confirm_dir = os.path.join(experiment_dir, "confirm")

    first = _cli(path)
    _wait(lambda: _trial_checkpoints(confirm_dir) >= 2, first, seconds=300)
    with open(os.path.join(experiment_dir, PLAN_FILE), encoding="utf-8") as handle:
        plan_before = json.load(handle)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    client = MlflowClient(f"sqlite:///{experiment_dir}/mlflow.db")
    experiment_id = client.get_experiment_by_name("confirmed").experiment_id

    def runs(stage: str):
        return client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial' and "
                                  f"tags.stage = '{stage}'")
    search_ids = sorted(r.data.tags["ray.trial_id"] for r in runs("search"))
    assert len(search_ids) == 2

    resumed = _cli(path, "--resume")
    out, _ = resumed.communicate(timeout=360)
    assert resumed.returncode == 0, out
    assert "resuming the confirm trials" in out and "resuming the search trials" not in out, out[-3000:]
    deadline = time.time() + 30
    ray_folder = local_temp_dir_of(path)
    while processes_under(ray_folder) and time.time() < deadline:
        time.sleep(0.5)
    assert not processes_under(ray_folder)

    # The same settings were confirmed after the kill; the search was not run again.
    with open(os.path.join(experiment_dir, PLAN_FILE), encoding="utf-8") as handle:
        plan = ConfirmPlan.from_json(json.load(handle))
    assert plan.to_json() == plan_before
    assert sorted(r.data.tags["ray.trial_id"] for r in runs("search")) == search_ids
    assert {"kd", "defaults"} <= set(plan.arms) and list(plan.arms)[-1] == "kd"  # the control last
    winners = [name for name in plan.arms if name.startswith("top")]
    assert len(winners) == 1 and len(plan.arms) == 3  # the winner equal to the default is trained once
    assert plan.labels["defaults"].startswith("the YAML's own setting; = search #")
    assert plan.search_values["defaults"] > 0 and plan.arms[winners[0]]["loss.tau"] != 0.1

    # The study holds only the search's trials (EPOCHS each, no scheduler: both ran their whole recipe).
    study = optuna.load_study(study_name="confirmed", storage=f"sqlite:///{experiment_dir}/optuna.db")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2

    # Every confirmation trial once, under the same parent run, tagged, on fresh seeds, every epoch once.
    parent = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    confirmed = runs("confirm")
    assert len(confirmed) == len(plan.arms) * 2
    assert sorted((r.data.params["arm"], int(r.data.params["seed"])) for r in confirmed) == sorted(
        (arm, seed) for arm in plan.arms for seed in (1, 2))
    assert {int(r.data.params["seed"]) for r in runs("search")} == {0}
    for run in confirmed:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.info.run_name.startswith("confirm-")
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, EPOCHS + 1))
    assert {r.data.params["loss.name"] for r in confirmed if r.data.params["arm"] == "kd"} == {"kd"}

    # The table: read back from MLflow's final figures; every setting against kd, the winner against the
    # default, paired over the shared seeds, Holm over the comparisons shown (none was declared).
    table = pd.read_csv(os.path.join(experiment_dir, "results", "confirmation.csv")).set_index("arm")
    assert list(table.index) == list(plan.arms) and (table.seeds == 2).all()
    final = {(r.data.params["arm"], int(r.data.params["seed"])): r.data.metrics["final/test/top1"] for r in confirmed}
    for arm in plan.arms:
        assert table.loc[arm, "test_mean"] == pytest.approx((final[(arm, 1)] + final[(arm, 2)]) / 2)
    comparisons = pd.read_csv(os.path.join(experiment_dir, "results", "confirmation_comparisons.csv"))
    assert sorted(comparisons.comparison) == sorted([f"{winners[0]} vs kd", "defaults vs kd",
                                                     f"{winners[0]} vs defaults"])
    assert set(comparisons.test.dropna()) == {PAIRED}
    tested = comparisons.dropna(subset=["p"])
    assert list(tested.p_adjusted) == pytest.approx(holm(list(tested.p)))
    per_seed = pd.read_csv(os.path.join(experiment_dir, "results", "confirmation_per_seed.csv"))
    assert len(per_seed) == len(confirmed)
    assert f"confirmation over fresh seeds: {len(confirmed)} of {len(confirmed)} trials completed" in out
    report = open(os.path.join(experiment_dir, "report", "report.md"), encoding="utf-8").read()
    assert report.index("## Confirmation over fresh seeds") > report.index("## Trials, best first")


def local_temp_dir_of(path: str) -> str:
    return local_temp_dir(ExperimentPaths.of(load_experiment(path)))
