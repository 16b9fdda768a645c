"""Cost as the work grows: the platform against bare Ray Tune + Optuna on the same short trials, side by side,
at the size of a real search; a killed sweep's resume; and a sweep's fixed cost.

    python -m benchmarks.overhead --quick                 # N = 16, then the fixed cost (~5 min, 2 CPUs)
    python -m benchmarks.overhead                         # N = 64 and 256, the fixed cost (~30 min)
    python -m benchmarks.overhead --sizes 64,256,1000     # the issue's table (~2 h on 2 CPUs)
    python -m benchmarks.overhead --sizes 0 --resume 1000 # only: SIGKILL a 1,000-trial sweep at half, --resume it

The same trials through two arms, each a fresh process: resnet8 students of 1 epoch on the offline digits at
16x16 (about a second of training each), distilled from one shared teacher checkpoint, Optuna TPE (seed 0) over
loss.tau, two trials at a time on two logical CPUs, no scheduler:
  (a) bare: Ray Tune + OptunaSearch (in-memory study) + a function trainable that calls the same `bickd.run.fit`,
      with reuse_actors on as the platform has it: what a user would script, and what Tune itself costs;
  (b) platform: `python -m platform.tune` on the equivalent YAML (MLflow, the Optuna study in SQLite, the teacher
      stage, checkpoints, the summary), then `python -m platform.report` timed on its own.
Time outside training per trial = (wall x 2 trials at a time - the trials' summed training seconds) / N. The
driver's peak memory is polled from /proc (VmHWM); the bare arm's is what Tune and Optuna hold, the difference
is ours. The fixed cost is measured on search_spaces/demo.yaml: from the command's start to the first training
step of its first trial, minus the teacher's own epochs (work, not overhead).
The last line is machine-readable for tracking over time.
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import optuna
import ray
import yaml
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.search.optuna import OptunaSearch

from benchmarks.throughput import cpu_name
from bickd.config import TrainConfig
from bickd.models import save_checkpoint
from bickd.run import fit, train_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS = 2
TRIAL = {  # one trial: what both arms train (about a second of training on one core)
    "data": {"name": "digits", "image_size": 16},
    "teacher": {"model": "resnet8"},
    "student": {"model": "resnet8"},
    "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "loss": {"name": "bickd", "warmup_epochs": 0},
    "runtime": {"device": "cpu", "channels_last": False, "threads": 1, "checkpoint_every_s": 600},
}
SPACE = (0.05, 0.5)  # loss.tau, log-uniform: a continuous space, so no two trials repeat
POLL_S = 0.2         # how often the driver's memory and a sweep's progress are read


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def make_teacher(folder: str) -> str:
    """A teacher checkpoint both arms distil from (trained here once, before any timing)."""
    config = TrainConfig.model_validate({**TRIAL, "recipe": {**TRIAL["recipe"], "epochs": 2}})
    state, _ = train_teacher(config, report=lambda m, s: None)
    return save_checkpoint(state, os.path.join(folder, "teacher.pt"))


def bare(n: int, folder: str, teacher: str) -> None:
    """Arm (a), in this process: what a user would script with the bare tools."""
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
    experiment = {"name": name, "storage_path": folder, **TRIAL,
                  "teacher": {"model": "resnet8", "checkpoint": teacher},
                  "search": {"num_samples": 1, "seed": 0, "sampler": "tpe",
                             "space": {"loss.tau": {"loguniform": list(SPACE)}}},
                  "scheduler": {"type": "none"}, "resources": {"cpus_per_trial": 1, "max_concurrent_trials": SLOTS}}
    path = os.path.join(folder, f"{name}.yaml")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(experiment, handle, sort_keys=False)
    return path


class Watched:
    """A command in a subprocess, its wall time and its peak resident memory (polled from /proc)."""

    def __init__(self, command: list[str]):
        self.start = time.time()
        self.process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.peak_mb = 0.0
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while self.process.poll() is None:
            try:
                with open(f"/proc/{self.process.pid}/status", encoding="utf-8") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            except OSError:
                pass
            time.sleep(POLL_S)

    def wait(self, check: bool = True) -> float:
        _, err = self.process.communicate()
        if check and self.process.returncode != 0:
            raise RuntimeError(f"{' '.join(self.process.args[:4])} failed: {err[-3000:]}")
        return time.time() - self.start


def training_seconds(experiment_path: str) -> float:
    """The trials' summed training time, from Tune's own records of every reported epoch."""
    frames = ExperimentAnalysis(experiment_path).trial_dataframes.values()
    return float(sum(frame["time/train_s"].sum() for frame in frames if "time/train_s" in frame))


def size_mb(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def _count(db: str, query: str) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchone()[0]


def compare(n: int, folder: str, teacher: str) -> dict:
    out = {"n": n}
    bare_dir = os.path.join(folder, f"bare-{n}")
    arm = Watched([sys.executable, "-m", "benchmarks.overhead", "--arm", "bare", "--n", str(n),
                   "--folder", bare_dir, "--teacher", teacher])
    out["bare_wall"], out["bare_rss"] = arm.wait(), arm.peak_mb
    out["bare_train"] = training_seconds(os.path.join(bare_dir, "bare"))
    name = f"platform-{n}"
    path = platform_yaml(folder, teacher, name)
    arm = Watched([sys.executable, "-m", "platform.tune", path, "--num-samples", str(n), "--num-cpus", str(SLOTS),
                   "--no-report"])
    out["platform_wall"], out["platform_rss"] = arm.wait(), arm.peak_mb
    experiment = os.path.join(folder, name)
    out["platform_train"] = training_seconds(experiment)
    report = Watched([sys.executable, "-m", "platform.report", experiment])
    out["report_s"], out["report_rss"] = report.wait(), report.peak_mb
    out["mlflow_mb"] = size_mb(os.path.join(experiment, "mlflow.db")) + size_mb(os.path.join(experiment, "mlartifacts"))
    out["optuna_mb"] = size_mb(os.path.join(experiment, "optuna.db"))
    out["metric_points"] = _count(os.path.join(experiment, "mlflow.db"), "select count(*) from metrics")
    for arm_name in ("bare", "platform"):
        out[f"{arm_name}_outside_per_trial"] = (out[f"{arm_name}_wall"] * SLOTS - out[f"{arm_name}_train"]) / n
    out["ratio"] = out["platform_wall"] / out["bare_wall"]
    return out


def print_row(row: dict) -> None:
    print(f"  N={row['n']:>4}  bare     {row['bare_wall']:7.1f} s wall, {row['bare_train']:7.1f} s training, "
          f"{row['bare_outside_per_trial']:5.2f} s outside training per trial, driver {row['bare_rss']:5.0f} MB\n"
          f"          platform {row['platform_wall']:7.1f} s wall, {row['platform_train']:7.1f} s training, "
          f"{row['platform_outside_per_trial']:5.2f} s outside training per trial, driver {row['platform_rss']:5.0f} MB"
          f"\n          platform/bare wall {row['ratio']:.2f}x; report {row['report_s']:.1f} s ({row['report_rss']:.0f} MB); "
          f"MLflow store {row['mlflow_mb']:.1f} MB ({row['metric_points']} metric points), Optuna study "
          f"{row['optuna_mb']:.1f} MB", flush=True)


def print_growth(rows: list[dict]) -> None:
    """How the driver's peak grows per trial, for Tune (the bare arm) and for the platform."""
    for small, large in zip(rows, rows[1:]):
        trials = large["n"] - small["n"]
        bare_kb = (large["bare_rss"] - small["bare_rss"]) * 1024 / trials
        platform_kb = (large["platform_rss"] - small["platform_rss"]) * 1024 / trials
        print(f"  growth N={small['n']} -> {large['n']}: driver +{platform_kb:.0f} kB per trial (bare Tune + Optuna "
              f"+{bare_kb:.0f} kB, ours {platform_kb - bare_kb:+.0f} kB); outside training per trial "
              f"{small['platform_outside_per_trial']:.2f} -> {large['platform_outside_per_trial']:.2f} s", flush=True)


def finished_trials(experiment: str) -> int:
    """Trials of a sweep whose run the driver has closed, from its MLflow store (0 before it exists)."""
    db = os.path.join(experiment, "mlflow.db")
    if not os.path.exists(db):
        return 0
    try:
        return _count(db, "select count(*) from runs where status = 'FINISHED' and name != 'platform-resume'"
                          " and lifecycle_stage = 'active'")
    except sqlite3.OperationalError:  # the tables are being created
        return 0


def killed_and_resumed(n: int, folder: str, teacher: str) -> dict:
    """A sweep of n trials SIGKILLed once about half have finished, then `--resume`d: the time from the resume
    command to its first new trial's first training step, and whether every trial is in MLflow and Optuna once."""
    from mlflow.tracking import MlflowClient  # heavy: not in the bare arm's process, whose peak memory is measured

    from bickd_tune.search import UNKNOWN_TO_TUNE_ATTR  # the platform's modules: the same reason

    name = "platform-resume"
    path = platform_yaml(folder, teacher, name)
    experiment = os.path.join(folder, name)
    command = [sys.executable, "-m", "platform.tune", path, "--num-samples", str(n), "--num-cpus", str(SLOTS),
               "--no-report"]
    first = Watched(command)
    while finished_trials(experiment) < n // 2 and first.process.poll() is None:
        time.sleep(POLL_S)
    killed_at = finished_trials(experiment)
    first.process.send_signal(signal.SIGKILL)
    first.wait(check=False)
    resumed = Watched([*command, "--resume"])
    resumed_at = resumed.start
    wall = resumed.wait()

    client = MlflowClient(f"sqlite:///{experiment}/mlflow.db")
    experiment_id = client.get_experiment_by_name(name).experiment_id
    runs, token = [], None
    while True:  # every trial run, page by page
        page = client.search_runs([experiment_id], "tags.`bickd.kind` = 'trial'", max_results=500, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    starts = [m.value for run in runs for m in client.get_metric_history(run.info.run_id, "time/started_at")]
    doubled = sum(len(steps) != len(set(steps)) for steps in
                  ([m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] for run in runs))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment}/optuna.db")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return {"n": n, "killed_after": killed_at, "first_new_step_s": min(s for s in starts if s > resumed_at) - resumed_at,
            "resume_wall": wall, "runs": len(runs), "distinct_trials": len({r.data.tags["ray.trial_id"] for r in runs}),
            "finished_runs": sum(r.info.status == "FINISHED" for r in runs), "doubled_steps": doubled,
            "optuna_complete": len(complete),
            "optuna_unknown_to_tune": len(study.user_attrs.get(UNKNOWN_TO_TUNE_ATTR, []))}


def fixed_cost(folder: str) -> dict:
    """The demo experiment from the command's start to its first trial's first training step, less the
    teacher's own epochs."""
    from mlflow.tracking import MlflowClient  # heavy: not in the bare arm's process, whose peak memory is measured

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
    parser.add_argument("--quick", action="store_true", help="N = 16 only, then the fixed cost (under 5 minutes)")
    parser.add_argument("--sizes", default="64,256", help="comma-separated sweep sizes N (0: none); default 64,256")
    parser.add_argument("--resume", type=int, default=0, metavar="N",
                        help="also SIGKILL an N-trial platform sweep at half and time its --resume")
    parser.add_argument("--no-fixed-cost", action="store_true", help="skip the fixed-cost measurement")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run arm (a) in this process
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm == "bare":
        bare(args.n, args.folder, args.teacher)
        return 0
    sizes = [16] if args.quick else [int(s) for s in args.sizes.split(",") if int(s) > 0]

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; trials of 1 epoch (resnet8 on 16x16 digits), "
          f"{SLOTS} at a time, Optuna TPE seed 0; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows, fixed = [], None
    with tempfile.TemporaryDirectory() as folder:
        teacher = make_teacher(folder)
        for n in sizes:
            rows.append(compare(n, os.path.join(folder, f"n{n}"), teacher))
            print_row(rows[-1])
        print_growth(rows)
        if args.resume:
            r = killed_and_resumed(args.resume, os.path.join(folder, "resume"), teacher)
            print(f"  killed at {r['killed_after']} of {r['n']} finished trials, resumed: first new trial's first "
                  f"training step {r['first_new_step_s']:.1f} s after the --resume command; the rest in "
                  f"{r['resume_wall']:.0f} s. MLflow: {r['runs']} trial runs, {r['distinct_trials']} distinct, "
                  f"{r['finished_runs']} finished, {r['doubled_steps']} with a step logged twice; Optuna: "
                  f"{r['optuna_complete']} complete trials, {r['optuna_unknown_to_tune']} of them finished after "
                  "Tune's last snapshot before the kill (kept, listed apart in the study)", flush=True)
        if not args.no_fixed_cost:
            fixed = fixed_cost(os.path.join(folder, "fixed"))
            print(f"  fixed cost (demo.yaml, start -> first training step of the first trial, less the teacher's "
                  f"{fixed['teacher_work_s']:.1f} s of epochs): {fixed['fixed_s']:.1f} s", flush=True)
    ratio = f"{rows[-1]['ratio']:.2f}x" if rows else "-"
    print(f"per-trial platform/bare: {ratio}  fixed cost: {fixed['fixed_s']:.1f} s" if fixed else
          f"per-trial platform/bare: {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
