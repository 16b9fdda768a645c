"""Cost as the work grows: the platform against bare Ray Tune + Optuna on the same short trials, and the fixed
cost of a sweep (issue: cost as the work grows).

    python -m benchmarks.overhead            # N = 16 and 64 trials per arm, then the fixed cost (~20 min, 2 CPUs)
    python -m benchmarks.overhead --quick    # N = 16 only (under 5 minutes)

The same trials through two arms, each a fresh process, side by side in one run: resnet8 students of 2 epochs on
the offline digits (32x32, a few seconds of training each), distilled from one shared teacher checkpoint,
Optuna TPE (seed 0) over loss.tau, two trials at a time on two logical CPUs, no scheduler:
  (a) bare: Ray Tune + OptunaSearch + a function trainable that calls the same `bickd.run.fit`, nothing else
      (with reuse_actors on, as the platform has it: Tune's default restarts a process per trial)
  (b) platform: `python -m platform.tune` on the equivalent YAML (MLflow, the Optuna study in SQLite, the teacher
      stage, checkpoints, the summary and the report)
Time outside training per trial = (wall x 2 trials at a time - the trials' summed training seconds) / N.
The fixed cost is measured on search_spaces/demo.yaml: from the command's start to the first training step of
its first trial, minus the teacher's own training and evaluation epochs (work, not overhead).
The last line is machine-readable for tracking over time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS = 2
TRIAL = {  # one trial: what both arms train
    "data": {"name": "digits"},
    "teacher": {"model": "resnet8"},
    "student": {"model": "resnet8"},
    "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "loss": {"name": "bickd", "warmup_epochs": 1},
    "runtime": {"device": "cpu", "channels_last": False, "threads": 1, "checkpoint_every_s": 600},
}
SPACE = (0.05, 0.5)  # loss.tau, log-uniform


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def make_teacher(folder: str) -> str:
    """A teacher checkpoint both arms distil from (trained here once, before any timing)."""
    from bickd.config import TrainConfig
    from bickd.models import save_checkpoint
    from bickd.run import train_teacher

    config = TrainConfig.model_validate({**TRIAL, "recipe": {**TRIAL["recipe"], "epochs": 2}})
    state, _ = train_teacher(config, report=lambda m, s: None)
    return save_checkpoint(state, os.path.join(folder, "teacher.pt"))


def bare(n: int, folder: str, teacher: str) -> None:
    """Arm (a), in this process: what a user would script with the bare tools."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from bickd.config import TrainConfig
    from bickd.run import fit

    base = TrainConfig.model_validate({**TRIAL, "teacher": {"model": "resnet8", "checkpoint": teacher}})

    def trainable(config):
        fit(base.with_overrides(config), report=lambda metrics, state: tune.report(metrics))

    ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level="ERROR")
    search = OptunaSearch(metric="val/top1", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    tune.Tuner(trainable, param_space={"loss.tau": tune.loguniform(*SPACE)},
               # reuse_actors as the platform sets it: the strongest bare baseline, not Tune's default (False)
               tune_config=tune.TuneConfig(search_alg=search, num_samples=n, max_concurrent_trials=SLOTS,
                                           reuse_actors=True),
               run_config=tune.RunConfig(name="bare", storage_path=folder, verbose=0)).fit()


def platform_yaml(folder: str, teacher: str, name: str) -> str:
    import yaml

    experiment = {"name": name, "storage_path": folder, **TRIAL,
                  "teacher": {"model": "resnet8", "checkpoint": teacher},
                  "search": {"num_samples": 1, "seed": 0, "sampler": "tpe",
                             "space": {"loss.tau": {"loguniform": list(SPACE)}}},
                  "scheduler": {"type": "none"}, "resources": {"cpus_per_trial": 1, "max_concurrent_trials": SLOTS}}
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(experiment, handle, sort_keys=False)
    return path


def _timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB of the process) of a command; the peak is polled from /proc."""
    start = time.time()
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak = [0.0]

    def watch():
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status", encoding="utf-8") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                pass
            time.sleep(0.2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {err[-3000:]}")
    return time.time() - start, peak[0]


def training_seconds(experiment_path: str) -> float:
    """The trials' summed training time, from Tune's own records of every reported epoch."""
    from ray.tune import ExperimentAnalysis

    frames = ExperimentAnalysis(experiment_path).trial_dataframes.values()
    return float(sum(frame["time/train_s"].sum() for frame in frames if "time/train_s" in frame))


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def compare(n: int, folder: str, teacher: str) -> dict:
    out = {"n": n}
    bare_dir = os.path.join(folder, f"bare-{n}")
    out["bare_wall"], out["bare_rss"] = _timed([sys.executable, "-m", "benchmarks.overhead", "--arm", "bare",
                                                "--n", str(n), "--folder", bare_dir, "--teacher", teacher])
    out["bare_train"] = training_seconds(os.path.join(bare_dir, "bare"))
    name = f"platform-{n}"
    path = platform_yaml(folder, teacher, name)
    out["platform_wall"], out["platform_rss"] = _timed([sys.executable, "-m", "platform.tune", path,
                                                        "--num-samples", str(n), "--num-cpus", str(SLOTS)])
    out["platform_train"] = training_seconds(os.path.join(folder, name))
    out["mlflow_mb"] = folder_mb(os.path.join(folder, name, "mlartifacts")) + os.path.getsize(
        os.path.join(folder, name, "mlflow.db")) / 2**20
    out["metric_points"] = _metric_points(os.path.join(folder, name, "mlflow.db"))
    for arm in ("bare", "platform"):
        out[f"{arm}_outside_per_trial"] = (out[f"{arm}_wall"] * SLOTS - out[f"{arm}_train"]) / n
    out["ratio"] = out["platform_wall"] / out["bare_wall"]
    return out


def _metric_points(db: str) -> int:
    import sqlite3
    with sqlite3.connect(db) as connection:
        return connection.execute("select count(*) from metrics").fetchone()[0]


def fixed_cost(folder: str) -> dict:
    """The demo experiment from the command's start to its first trial's first training step, less the
    teacher's own epochs."""
    from mlflow.tracking import MlflowClient

    start = time.time()
    subprocess.run([sys.executable, "-m", "platform.tune", "search_spaces/demo.yaml", "--storage", folder,
                    "--num-samples", "2", "--set", "scheduler.type=none", "--set", "recipe.epochs=1", "--no-report"],
                   cwd=REPO, env=_env(), check=True, capture_output=True, timeout=1200)
    client = MlflowClient(f"sqlite:///{folder}/demo/mlflow.db")
    experiment_id = client.get_experiment_by_name("demo").experiment_id
    trials = client.search_runs([experiment_id], "tags.`bickd.kind` = 'trial'")
    parent = client.search_runs([experiment_id], "tags.`bickd.kind` = 'experiment'")[0].info.run_id
    first_step = min(m.value for run in trials for m in client.get_metric_history(run.info.run_id, "time/started_at"))
    teacher = sum(m.value for name in ("teacher/time/train_s", "teacher/time/eval_s")
                  for m in client.get_metric_history(parent, name))
    return {"fixed_s": first_step - start - teacher, "to_first_step_s": first_step - start, "teacher_work_s": teacher}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 16 only (under 5 minutes)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run arm (a) in this process
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm == "bare":
        bare(args.n, args.folder, args.teacher)
        return 0

    from benchmarks.throughput import cpu_name
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; trials of 2 epochs (resnet8 on 32x32 digits), "
          f"{SLOTS} at a time, Optuna TPE seed 0", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        teacher = make_teacher(folder)
        rows = []
        for n in (16,) if args.quick else (16, 64):
            row = compare(n, os.path.join(folder, f"n{n}"), teacher)
            rows.append(row)
            print(f"  N={n:>3}  bare {row['bare_wall']:6.1f} s wall, {row['bare_train']:6.1f} s training, "
                  f"{row['bare_outside_per_trial']:5.2f} s outside training per trial, driver {row['bare_rss']:5.0f} MB"
                  f"\n         platform {row['platform_wall']:6.1f} s wall, {row['platform_train']:6.1f} s training, "
                  f"{row['platform_outside_per_trial']:5.2f} s outside training per trial, driver "
                  f"{row['platform_rss']:5.0f} MB, MLflow store {row['mlflow_mb']:.1f} MB "
                  f"({row['metric_points']} metric points)\n         platform/bare wall {row['ratio']:.2f}x",
                  flush=True)
        if len(rows) == 2:
            small, large = rows
            per_trial_mb = (large["platform_rss"] - small["platform_rss"]) / (large["n"] - small["n"])
            per_point_kb = large["mlflow_mb"] * 1024 / large["metric_points"]
            points_per_epoch = large["metric_points"] / (large["n"] * TRIAL["recipe"]["epochs"])
            print(f"  growth N=16 -> 64: outside training per trial {small['platform_outside_per_trial']:.2f} -> "
                  f"{large['platform_outside_per_trial']:.2f} s; driver +{per_trial_mb * 1024:.0f} kB per trial; "
                  f"MLflow {per_point_kb * 1024:.0f} B per metric point ({points_per_epoch:.0f} points per epoch)")
            print(f"  extrapolated to 1,000 trials of 240 epochs: driver ~{small['platform_rss'] + per_trial_mb * (1000 - small['n']):.0f} MB, "
                  f"MLflow store ~{per_point_kb * points_per_epoch * 240 * 1000 / 2**20:.1f} GB")
        fixed = fixed_cost(os.path.join(folder, "fixed"))
        print(f"  fixed cost (demo.yaml, start -> first training step of the first trial, less the teacher's "
              f"{fixed['teacher_work_s']:.1f} s of epochs): {fixed['fixed_s']:.1f} s", flush=True)
    print(f"per-trial platform/bare: {rows[-1]['ratio']:.2f}x  fixed cost: {fixed['fixed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
