"""One distillation epoch and one evaluation: the training step and nothing around it.

The teacher enters as a function of the batch (images, sample indices, epoch) -> logits, so a live
teacher and a cache of its logits for the same augmented views are interchangeable.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
import torch.nn.functional as F

TeacherFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf: the run stops at once instead of training on garbage."""


def live_teacher(teacher: torch.nn.Module, autocast: Callable[[], AbstractContextManager]) -> TeacherFn:
    """The teacher run on every batch, in eval mode, without autograd."""
    teacher.eval()

    @torch.no_grad()
    def logits(images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        with autocast():
            return teacher(images).float()
    return logits


def train_epoch(student: torch.nn.Module, loss_fn: torch.nn.Module, batches: Iterable,
                optimizer: torch.optim.Optimizer, epoch: int, steps_per_epoch: int,
                teacher: TeacherFn | None, autocast: Callable[[], AbstractContextManager],
                check_every: int = 1) -> dict[str, float]:
    """Trains one epoch; returns the epoch means of the total loss and of each named loss part.

    Loss parts are summed on the device and read once at the end: a per-step `.item()` would force a
    host-device sync on GPUs. Non-finite losses are checked every `check_every` steps for the same reason.
    """
    student.train()
    sums: dict[str, torch.Tensor] = {}
    correct: torch.Tensor | int = 0
    seen = steps = 0
    for step, (images, labels, indices) in enumerate(batches):
        teacher_logits = teacher(images, indices, epoch) if teacher is not None else None
        with autocast():
            student_logits = student(images)
        total, parts = loss_fn(student_logits, teacher_logits, labels, epoch=epoch + step / steps_per_epoch)
        if step % check_every == 0 and not torch.isfinite(total):
            raise NonFiniteLossError(f"loss is {total.item()} at epoch {epoch} step {step}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for name, value in {"loss": total.detach(), **parts}.items():
            sums[name] = sums.get(name, 0) + value.detach().float()
        correct = correct + (student_logits.argmax(1) == labels).sum()  # stays on the device
        seen += labels.numel()
        steps += 1
    means = {name: float(value) / max(steps, 1) for name, value in sums.items()}
    if not all(map(_finite, means.values())):
        raise NonFiniteLossError(f"non-finite epoch-mean loss at epoch {epoch}: {means}")
    means["top1"] = 100.0 * float(correct) / max(seen, 1)
    return _all_reduce_mean(means)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable,
             autocast: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean CE over the whole test set, summed over DDP ranks first."""
    model.eval()
    totals = None
    for images, labels in batches:
        with autocast():
            logits = model(images).float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        batch = torch.stack([hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             F.cross_entropy(logits, labels, reduction="sum").double(),
                             torch.tensor(float(labels.numel()), device=labels.device, dtype=torch.double)])
        totals = batch if totals is None else totals + batch
    if totals is None:
        raise ValueError("the test set is empty")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)  # accuracy over the whole test set, not rank 0's shard
    top1, top5, loss, count = totals.tolist()
    return {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": loss / count}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.double)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {n: v / dist.get_world_size() for n, v in zip(names, tensor.tolist())}
