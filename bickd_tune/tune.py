"""Run a BicKD experiment: an Optuna search or an ablation, on a local or remote Ray cluster.

    python -m platform.tune search_spaces/demo.yaml              # local Ray, SQLite MLflow store
    python -m platform.tune search_spaces/cifar.yaml --dry-run   # validate and print the plan
    python -m platform.tune search_spaces/cifar.yaml --address auto --storage s3://bucket/experiments
    python -m platform.tune search_spaces/demo.yaml --resume     # continue an interrupted experiment

Every trial lands in MLflow (one parent run per experiment, one nested run per trial); browse with
    mlflow ui --backend-store-uri sqlite:///<experiment dir>/mlflow.db --host 127.0.0.1 --port 5000
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
from typing import Any

from bickd.config_io import ConfigError, parse_overrides
from bickd.data.registry import val_fraction_of
from bickd_tune.experiment import ExperimentConfig, drawn_per_seed, load_experiment, varied_and_shared
from bickd_tune.paths import ExperimentPaths
from bickd_tune.ray_env import use_loopback

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl+C


class OneLineErrors(argparse.ArgumentParser):
    """Bad flags end in one line and exit code 2, like every other bad input here."""

    def error(self, message: str):
        self.exit(EXIT_CONFIG, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m platform.tune", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML (see search_spaces/ and the README)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, create nothing")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment of this name")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (e.g. 'auto' on a cluster node); default: start a local one")
    parser.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of the local Ray instance")
    parser.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    parser.add_argument("--max-concurrent-trials", type=int, default=None,
                        help="override resources.max_concurrent_trials")
    parser.add_argument("--storage", default=None, help="override storage_path (local folder or s3://, gs://, ...)")
    parser.add_argument("--tracking-uri", default=None, help="override tracking.tracking_uri (MLflow)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. --set recipe.epochs=4 (repeatable)")
    parser.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report at the end")
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_overrides(args.overrides)
    for flag, key in (("num_samples", "search.num_samples"), ("storage", "storage_path"),
                      ("tracking_uri", "tracking.tracking_uri"),
                      ("max_concurrent_trials", "resources.max_concurrent_trials")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    return overrides


# What ray.init accepts as an address: a running local instance, a new local one, host:port, or a Ray Client URL.
ADDRESS_FORMS = "'auto', 'local', HOST:PORT or ray://HOST:PORT"
_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9._-]+:[0-9]{1,5})$")


def check_flag_values(args: argparse.Namespace) -> None:
    """The flags argparse types cannot judge, refused before anything starts (Ray would raise a traceback)."""
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples: must be >= 1 (got {args.num_samples})")
    if args.num_cpus is not None and not args.num_cpus > 0:
        raise ConfigError(f"--num-cpus: must be > 0 (got {args.num_cpus:g})")
    if args.address is not None and not _ADDRESS.match(args.address):
        raise ConfigError(f"--address: expected {ADDRESS_FORMS} (got {args.address!r})")


def _seed_draws(experiment: ExperimentConfig, per_seed: list[str]) -> str:
    """What each seed of an ablation or confirmation draws, and what all of them share."""
    drawn, shared = varied_and_shared(drawn_per_seed(experiment.base_train_config(), per_seed))
    return (f"each seed draws {', '.join(drawn)}" + (f"; every seed shares {' and '.join(shared)}" if shared else "")
            + "; the teacher and the data are the same for all")


def _statistics(experiment: ExperimentConfig) -> str:
    analysis = experiment.analysis
    family = (f"declared primary: {', '.join(analysis.primary)} (Holm among them; the rest exploratory)"
              if analysis.primary else "no primary declared: Holm over every comparison shown")
    return (f"paired t-tests where arms share seeds (Welch otherwise); {family}; α {analysis.alpha:g}; "
            f"detectable effects at {analysis.power:.0%} power; \"no difference\" only below "
            f"{analysis.effect_of_interest:g} points")


def plan_lines(experiment: ExperimentConfig, paths: ExperimentPaths) -> list[str]:
    resources = experiment.resources
    if experiment.search is not None:
        search = experiment.search
        trials = (f"search: {search.num_samples} trials, Optuna {search.sampler} sampler (seed {search.seed}), "
                  f"{search.goal} {search.metric}; space: {', '.join(search.space) or '(empty)'}")
        if search.points_to_evaluate:
            trials += f"; first {len(search.points_to_evaluate)} point(s) given"
        if experiment.confirm is not None:
            confirm = experiment.confirm
            arms = experiment.confirm_arms
            reference = experiment.confirm_reference
            trials += (f"\nconfirm      then the top {confirm.top_k} distinct settings + {', '.join(arms)}, "
                       f"each over seeds {confirm.seeds} at the full recipe (up to "
                       f"{(confirm.top_k + len(arms)) * len(confirm.seeds)} trials), compared with "
                       f"{confirm.control}" + (f", the winners also with {reference}" if reference else "")
                       + f"\nseeds        {_seed_draws(experiment, confirm.per_seed)}")
    else:
        ablation = experiment.ablation
        trials = (f"ablation: {len(ablation.arms)} arms x {len(ablation.seeds)} seeds = "
                  f"{len(ablation.arms) * len(ablation.seeds)} trials; arms: {', '.join(ablation.arms)}"
                  f"\nseeds        {_seed_draws(experiment, ablation.per_seed)}")
    scheduler = ("none" if experiment.scheduler.type == "none" or experiment.ablation is not None else
                 f"ASHA (grace {experiment.scheduler.grace_period}, max {experiment.max_epochs} epochs, "
                 f"reduction {experiment.scheduler.reduction_factor:g})")
    driver = ", ".join(f"{name} {amount:g}" for name, amount in resources.coordinator_resources.items())
    placement = ("in the Tune trial" if resources.num_workers == 0 else
                 f"TorchTrainer, {resources.num_workers} DDP workers; their driver asks for {driver}: "
                 + ("a `coordinator` slot of the cluster's head (cluster/*.yaml) or of the local instance"
                    if "coordinator" in resources.coordinator_resources else
                    "on cluster/*.yaml's zero-CPU head that starts a GPU node for it alone"))
    teacher_cpus = (f"{resources.teacher_cpus:g} CPUs (resources.teacher_cpus)" if resources.teacher_cpus else
                    "every CPU of the local instance, in this process without GPUs (on a joined cluster: a Ray task "
                    "with one trial's CPUs per whole GPU)")
    teacher = ("none" if experiment.teacher is None else
               f"{experiment.teacher.model} from {experiment.teacher.checkpoint}" if experiment.teacher.checkpoint
               else f"{experiment.teacher.model}, trained once before the trials on {teacher_cpus}"
               + (" and one GPU" if resources.gpus_per_trial else ""))
    fraction = val_fraction_of(experiment.data)
    split = ("NO validation split (val_fraction 0): choices are made on the test set and overstate it"
             if fraction == 0 else f"{fraction:.0%} of the training data held out for validation, which every "
             "choice uses; test is measured on final models only")
    return [
        f"experiment   {experiment.name} ({experiment.kind})",
        f"data         {experiment.data.name}" + (f" at {experiment.data.root}" if experiment.data.root else ""),
        f"splits       {split}",
        f"teacher      {teacher}",
        f"student      {experiment.student.model}, loss {experiment.loss.name}, "
        f"{experiment.recipe.epochs} epochs, batch {experiment.recipe.batch_size}",
        f"trials       {trials}",
        f"scheduler    {scheduler}",
        *([f"statistics   {_statistics(experiment)}"] if experiment.table_comparisons else []),
        f"resources    per trial {resources.cpus_per_trial:g} CPU, {resources.gpus_per_trial:g} GPU, {placement}",
        f"results      {paths.experiment_uri}" + (f" (the driver works in {paths.local_dir})" if paths.remote else ""),
        f"mlflow       {paths.tracking_uri}",
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flag_values(args)
        experiment = load_experiment(args.config, cli_overrides(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    paths = ExperimentPaths.of(experiment)
    print("\n".join(plan_lines(experiment, paths)), flush=True)
    if args.dry_run:
        print("dry run: configuration is valid; nothing was created")
        return 0
    if args.address is None or args.address.split(":")[0] in ("127.0.0.1", "localhost"):
        use_loopback()  # before anything imports Ray: a local instance or cluster needs no outward address
    # heavy: the runner loads Ray, MLflow and Optuna (seconds); --help, --dry-run and bad input never wait for
    # them, and use_loopback() above must come before Ray's import
    from bickd_tune.runner import run_experiment
    try:
        return run_experiment(experiment, paths, address=args.address, num_cpus=args.num_cpus,
                              resume=args.resume, write_report=not args.no_report)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG


def run_cli() -> None:
    """The process entry point (`python -m platform.tune`, `python -m bickd_tune.tune`, `bickd-tune`)."""
    code = main()
    # Everything is written and closed by now; the interpreter's final cycle collection over the driver's
    # ~750k objects took seconds, so they are left to the OS (atexit handlers, Ray's shutdown included, run).
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run_cli()
