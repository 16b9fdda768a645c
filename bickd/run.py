"""A whole training run from one `TrainConfig`: build, train epoch by epoch, evaluate, checkpoint, report.

Launchers stay outside: `report(metrics, checkpoint)` is injected (print for the CLI, `ray.tune.report` or
`ray.train.report` in the platform), and DDP is whatever `torch.distributed` process group the launcher
set up. Nothing here knows Ray.
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bickd import engine
from bickd.config import TrainConfig
from bickd.data import ImageData, augment_batch, load_data, make_batches
from bickd.data.batches import memory_format
from bickd.losses import build_loss
from bickd.models import create_model, load_checkpoint
from bickd.optim import build_optimizer, set_lr
from bickd.runtime import apply_threads, autocast, resolve_device, seed_everything
from bickd.teacher_cache import TeacherLogitCache, cache_key, write_cache

Metrics = dict[str, float]
Report = Callable[[Metrics, "dict[str, Any] | None"], None]
# Steps between checks that the loss is finite on a GPU, where each check waits for the device (a host-device
# sync); a diverged run then trains at most 19 steps past its first NaN. On the CPU the check is free: every step.
FINITE_CHECK_EVERY_ON_GPU = 20


def print_report(metrics: Metrics, checkpoint: dict[str, Any] | None) -> None:
    shown = {k: metrics[k] for k in ("epoch", "train/loss", "val/top1", "test/top1", "lr") if k in metrics}
    print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()), flush=True)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_teacher(cfg: TrainConfig, num_classes: int, device: torch.device,
                  state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The teacher from `state` (weights handed over by a launcher) or from `teacher.checkpoint`."""
    teacher = create_model(cfg.teacher.model, num_classes)
    if state is not None:
        teacher.load_state_dict(state)
    elif cfg.teacher.checkpoint is not None:
        load_checkpoint(teacher, cfg.teacher.checkpoint)
    else:
        raise ValueError("teacher.checkpoint is not set: train the teacher first (python -m bickd.train "
                         "does it on its own) or give a trained checkpoint")
    return teacher.to(device)


def fit(cfg: TrainConfig, report: Report = print_report, resume: dict[str, Any] | None = None,
        device: torch.device | str | None = None, teacher_fn: engine.TeacherFn | None = None,
        teacher_state: dict[str, torch.Tensor] | None = None) -> Metrics:
    """Trains `cfg.student` under `cfg.loss`; returns the last reported metrics.

    `resume` is a checkpoint dict this function reported earlier: training continues after its epoch.
    `teacher_fn` replaces the live teacher (e.g. a logit cache); by default the teacher runs live, with
    weights from `teacher_state` if given, else from `cfg.teacher.checkpoint`.
    """
    rank, world_size = _distributed()
    device = resolve_device(cfg.runtime, device)
    apply_threads(cfg.runtime)
    seed_everything(cfg.seed)
    amp = lambda: autocast(cfg.runtime, device)  # noqa: E731 - a fresh context per use
    layout = memory_format(cfg.runtime.channels_last)

    data = load_data(cfg.data)
    cache = cfg.teacher_cache
    batches = make_batches(data, cfg.recipe.batch_size, device, seed=cfg.seed, rank=rank,
                           world_size=world_size, channels_last=cfg.runtime.channels_last,
                           view_seed=cache.seed if cache.enabled else None,
                           view_epochs=cache.epochs if cache.enabled else None)
    student = create_model(cfg.student.model, batches.num_classes).to(device, memory_format=layout)
    loss_fn = build_loss(cfg.loss)
    if not loss_fn.needs_teacher:
        teacher_fn = None
    elif teacher_fn is None:
        teacher = build_teacher(cfg, batches.num_classes, device, teacher_state).to(memory_format=layout)
        if cache.enabled:
            teacher_fn = open_teacher_cache(cfg, teacher.state_dict()).teacher_fn(device)
            del teacher  # the cache replaces it: no teacher forward in the training step
        else:
            teacher_fn = engine.live_teacher(teacher, amp)
    optimizer = build_optimizer(student, cfg.recipe)

    start_epoch, best_val = 0, 0.0
    if resume is not None:
        student.load_state_dict(resume["student"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, best_val = resume["epoch"] + 1, resume.get("best_val_top1", 0.0)
    model = DistributedDataParallel(student) if world_size > 1 else student

    metrics: Metrics = {}
    check_every = 1 if device.type == "cpu" else FINITE_CHECK_EVERY_ON_GPU
    last_saved = time.monotonic()
    for epoch in range(start_epoch, cfg.recipe.epochs):
        lr = set_lr(optimizer, cfg.recipe, epoch)
        started_at, started = time.time(), time.perf_counter()
        train = engine.train_epoch(model, loss_fn, batches.train(epoch), optimizer, epoch,
                                   batches.steps_per_epoch, teacher_fn, amp, check_every)
        train_seconds = time.perf_counter() - started
        # time/started_at (unix seconds) lets a benchmark place the first training step of a sweep on a clock
        metrics = {"epoch": epoch + 1, "lr": lr, "time/train_s": train_seconds, "time/started_at": started_at,
                   "time/img_per_s": batches.steps_per_epoch * cfg.recipe.batch_size * world_size / train_seconds,
                   **{f"train/{k}": v for k, v in train.items()}}
        last = epoch + 1 == cfg.recipe.epochs
        if last or (epoch + 1) % cfg.runtime.eval_every == 0:
            started = time.perf_counter()
            metrics.update(evaluate_splits(student, batches, amp))
            metrics["time/eval_s"] = time.perf_counter() - started
            best_val = max(best_val, metrics["val/top1"])
            metrics["val/top1_best"] = best_val
        state = None
        # Saving every 1-second epoch made Tune snapshot its experiment state every other epoch.
        if rank == 0 and (last or time.monotonic() - last_saved >= cfg.runtime.checkpoint_every_s):
            last_saved = time.monotonic()
            # A snapshot on the CPU: training goes on mutating the live tensors after report() returns.
            state = {"student": {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()},
                     "optimizer": copy.deepcopy(optimizer.state_dict()),
                     "epoch": epoch, "best_val_top1": best_val, "model": cfg.student.model}
        report(metrics, state)
    return metrics


def evaluate_splits(model: torch.nn.Module, batches, amp) -> Metrics:
    """`val/*` (what searches choose on) and `test/*` (reported, never chosen on) of `model`.

    Without a validation split both are the test split, evaluated once: choices made on it are optimistic.
    """
    val = engine.evaluate(model, batches.val(), amp)
    test = engine.evaluate(model, batches.test(), amp) if batches.has_validation else val
    return {**{f"val/{k}": v for k, v in val.items()}, **{f"test/{k}": v for k, v in test.items()}}


# The last cache this process opened and verified, by its folder, key and files' modification times: a trial
# process that Tune reuses for the next trial maps it again without re-reading every file for its checksums.
_LAST_OPENED: dict[str, TeacherLogitCache] = {}


def open_teacher_cache(cfg: TrainConfig, teacher_state: dict[str, torch.Tensor]) -> TeacherLogitCache:
    if cfg.teacher_cache.path is None:
        raise ValueError("teacher_cache.enabled but teacher_cache.path is not set: build the cache first "
                         "(the platform and python -m bickd.train do it before training)")
    key = cache_key(cfg, teacher_state)
    folder = cfg.teacher_cache.path
    stamp = json.dumps([folder, key, sorted((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                                            for entry in os.scandir(folder))] if os.path.isdir(folder) else folder,
                       sort_keys=True)
    if stamp not in _LAST_OPENED:
        opened = TeacherLogitCache(folder, key)  # refuses a missing, mismatched or corrupt cache
        _LAST_OPENED.clear()
        _LAST_OPENED[stamp] = opened
    return _LAST_OPENED[stamp]


def build_teacher_cache(cfg: TrainConfig, teacher_state: dict[str, torch.Tensor], folder: str,
                        device: torch.device | str | None = None, chunk: int = 512) -> str:
    """Runs the teacher once over `teacher_cache.epochs` augmented epochs of the training set."""
    device = resolve_device(cfg.runtime, device)
    data = load_data(cfg.data)
    if not isinstance(data, ImageData):
        raise ValueError("a teacher-logit cache needs an in-memory data set (not folder data such as imagenet)")
    teacher = build_teacher(cfg, data.num_classes, device, teacher_state).eval()
    layout = memory_format(cfg.runtime.channels_last)
    images = data.train_images.to(device)
    teacher_state = {k: v.cpu() for k, v in teacher.state_dict().items()}

    def epochs():
        for epoch in range(cfg.teacher_cache.epochs):
            out = np.empty((len(images), data.num_classes), dtype=np.float32)
            for start in range(0, len(images), chunk):
                idx = torch.arange(start, min(start + chunk, len(images)), device=device)
                views = augment_batch(images[idx], idx, epoch, cfg.teacher_cache.seed, data.augment,
                                      data.mean, data.std).contiguous(memory_format=layout)
                with torch.no_grad(), autocast(cfg.runtime, device):
                    out[start:start + len(idx)] = teacher(views).float().cpu().numpy()
            yield out
    return write_cache(folder, cache_key(cfg, teacher_state), epochs())


def evaluate_weights(cfg: TrainConfig, model_name: str, state: dict[str, torch.Tensor],
                     device: torch.device | str | None = None) -> Metrics:
    """Validation and test metrics of `model_name` with weights `state` on the run's data (e.g. a given teacher)."""
    device = resolve_device(cfg.runtime, device)
    batches = make_batches(load_data(cfg.data), cfg.recipe.batch_size, device, seed=cfg.seed,
                           channels_last=cfg.runtime.channels_last)
    model = create_model(model_name, batches.num_classes)
    model.load_state_dict(state)
    return evaluate_splits(model.to(device), batches, lambda: autocast(cfg.runtime, device))


def train_teacher(cfg: TrainConfig, report: Report = print_report) -> tuple[dict[str, torch.Tensor], list[Metrics]]:
    """Trains `cfg.teacher` with plain CE on the same data; returns its weights and per-epoch metrics."""
    history: list[Metrics] = []
    last: dict[str, Any] = {}

    def keep(metrics: Metrics, state: dict[str, Any] | None) -> None:
        history.append(dict(metrics))
        if state is not None:
            last["state"] = state
        report(metrics, None)

    fit(cfg.teacher_training_config(), report=keep)
    return last["state"]["student"], history
