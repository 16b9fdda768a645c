"""One distillation without Ray or MLflow, for debugging a config:

    python -m bickd.train search_spaces/demo.yaml --set loss.tau=0.2 --out runs/debug

Reads the training sections of an experiment YAML (data, teacher, student, recipe, loss, losses, seed,
runtime, teacher_cache; search/scheduler/... sections are the platform's and are ignored here), trains the
teacher first when no checkpoint is given, builds the teacher-logit cache when `teacher_cache.enabled`, then
trains the student, printing one line per epoch and saving checkpoints under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from pydantic import ValidationError

from bickd.config import TrainConfig
from bickd.config_io import ConfigError, describe, parse_overrides, read_yaml, validate
from bickd.models import read_state_dict, save_checkpoint
from bickd.run import Metrics, build_teacher_cache, fit, print_report
from bickd.teacher_cache import cache_folder, cache_key


def load_train_config(path: str, overrides: dict[str, Any]) -> TrainConfig:
    tree = read_yaml(path)
    train_tree = {k: v for k, v in tree.items() if k in TrainConfig.model_fields}
    config = validate(TrainConfig, train_tree, source=path)
    try:
        return config.with_overrides(overrides)
    except Exception as err:  # pydantic's ValidationError or a bad path
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


def ensure_teacher(config: TrainConfig, out: str) -> TrainConfig:
    """`config` with a teacher checkpoint: the given one, or one trained here (once) into `out`."""
    if config.loss.name == "ce" or config.teacher.checkpoint is not None:
        return config
    teacher_path = os.path.join(out, f"teacher-{config.teacher.model}.pt")
    if not os.path.exists(teacher_path):
        print(f"training teacher {config.teacher.model} (no teacher.checkpoint given)", flush=True)
        state_path = os.path.join(out, "teacher-state.pt")
        fit(config.teacher_training_config(), report=CheckpointWriter(state_path))
        save_checkpoint(torch.load(state_path, weights_only=True)["student"], teacher_path)
        os.remove(state_path)
    return config.with_overrides({"teacher.checkpoint": teacher_path})


def ensure_teacher_cache(config: TrainConfig, out: str) -> TrainConfig:
    """`config` pointing at a built teacher-logit cache under `out` when the cache is enabled."""
    cache = config.teacher_cache
    if not cache.enabled or config.loss.name == "ce" or cache.path is not None:
        return config
    state = read_state_dict(config.teacher.checkpoint)
    folder = cache_folder(os.path.join(out, "teacher_cache"), cache_key(config, state))
    if not os.path.isdir(folder):
        print(f"caching the teacher's logits for {cache.epochs} augmented epochs in {folder}", flush=True)
        build_teacher_cache(config, state, folder)
    return config.with_overrides({"teacher_cache.path": folder})


def run(config: TrainConfig, out: str, resume: bool) -> Metrics:
    os.makedirs(out, exist_ok=True)
    config = ensure_teacher_cache(ensure_teacher(config, out), out)
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
    if not metrics:
        print(f"already finished: {out} holds the last epoch's checkpoint; nothing left to train")
        return 0
    print(f"done: validation top-1 {metrics['val/top1']:.2f}% (best epoch {metrics['val/top1_best']:.2f}%), "
          f"test top-1 {metrics['test/top1']:.2f}% (final model); checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
