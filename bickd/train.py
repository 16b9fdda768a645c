"""One distillation without Ray or MLflow, for debugging a config:

    python -m bickd.train search_spaces/demo.yaml --set loss.tau=0.2 --out runs/debug

Reads the training sections of an experiment YAML (data, teacher, student, recipe, loss, seed, runtime;
search/scheduler/... sections are the platform's and are ignored here), trains the teacher first when no
checkpoint is given, then the student, printing one line per epoch and saving checkpoints under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
import yaml

from bickd.config import TrainConfig
from bickd.config_io import ConfigError, read_yaml, validate
from bickd.models import save_checkpoint
from bickd.run import Metrics, fit, print_report


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs; values are parsed as YAML scalars (`0.2`, `true`, `cos`)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set loss.tau=0.2")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def load_train_config(path: str, overrides: dict[str, Any]) -> TrainConfig:
    tree = read_yaml(path)
    train_tree = {k: v for k, v in tree.items() if k in TrainConfig.model_fields}
    config = validate(TrainConfig, train_tree, source=path)
    try:
        return config.with_overrides(overrides)
    except Exception as err:  # pydantic's ValidationError or a bad path
        from pydantic import ValidationError
        from bickd.config_io import describe
        message = describe(err, TrainConfig) if isinstance(err, ValidationError) else str(err)
        raise ConfigError(f"--set: {message}") from None


class CheckpointWriter:
    """The CLI's `report`: prints the epoch and keeps the latest checkpoint on disk (atomically)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, metrics: Metrics, checkpoint: dict[str, Any] | None) -> None:
        print_report(metrics, checkpoint)
        if checkpoint is not None:
            tmp = self.path + ".tmp"
            torch.save(checkpoint, tmp)
            os.replace(tmp, self.path)


def run(config: TrainConfig, out: str, resume: bool) -> Metrics:
    os.makedirs(out, exist_ok=True)
    if config.loss.name != "ce" and config.teacher.checkpoint is None:
        teacher_path = os.path.join(out, f"teacher-{config.teacher.model}.pt")
        if not os.path.exists(teacher_path):
            print(f"training teacher {config.teacher.model} (no teacher.checkpoint given)", flush=True)
            state_path = os.path.join(out, "teacher-state.pt")
            fit(config.teacher_training_config(), report=CheckpointWriter(state_path))
            save_checkpoint(torch.load(state_path, weights_only=True)["student"], teacher_path)
            os.remove(state_path)
        config = config.with_overrides({"teacher.checkpoint": teacher_path})
    state_path = os.path.join(out, "student-state.pt")
    previous = torch.load(state_path, weights_only=True) if resume and os.path.exists(state_path) else None
    print(f"training student {config.student.model} with loss {config.loss.name}", flush=True)
    return fit(config, report=CheckpointWriter(state_path), resume=previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bickd.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment or training YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set loss.tau=0.2 (repeatable)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config, parse_overrides(args.overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    metrics = run(config, out, args.resume)
    print(f"done: test top-1 {metrics.get('test/top1', float('nan')):.2f}% "
          f"(best {metrics.get('test/top1_best', float('nan')):.2f}%); checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
