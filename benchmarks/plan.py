"""The GPU plan of `python -m benchmarks.throughput --device cuda`: how trials pack onto one GPU, one epoch of
the CIFAR-100 recipe, and what a paper-size ablation costs. `--plan` runs the same on any device (the CPU path
is what the tests run; its figures say nothing about a GPU)."""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from benchmarks.workload import NUM_CLASSES, NUM_IMAGES, autocast, sync, synthetic_data, teacher_and_student
from bickd.config import TrainConfig
from bickd.data import make_batches
from bickd.data.cifar import write_cifar100
from bickd.losses import KDLoss
from bickd.models import create_model
from bickd.run import fit

PAPER_ABLATION = {"arms": 10, "seeds": 3, "epochs": 240}  # method.md's ablation arms, 3 seeds, the 240-epoch recipe


def _packed_trial(k: int, teacher_name: str, student_name: str, batch: int, device: str, amp: str,
                  seconds: float) -> tuple[int, float]:
    """One of k trials sharing a GPU: the cached-teacher step for `seconds` after a warm-up; (images, seconds)."""
    torch.set_num_threads(1)
    data = synthetic_data()
    _, student = teacher_and_student(teacher_name, student_name, device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    loss_fn = KDLoss()
    logits = torch.randn(NUM_IMAGES, NUM_CLASSES, device=device)  # the lookup: an index into stored logits
    batches = make_batches(data, batch, device, seed=0, channels_last=True)

    def steps():
        epoch = 0
        while True:
            for images, labels, idx in batches.train(epoch):
                with autocast(device, amp):
                    out = student(images)
                total, _ = loss_fn(out, logits[idx.to(device)], labels)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                yield
            epoch += 1
    stream = steps()
    for _ in range(3):
        next(stream)
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(stream)
        done += 1
    sync(device)
    return done * batch, time.perf_counter() - start


def packing(counts: tuple[int, ...], teacher_name: str, student_name: str, batch: int, device: str, amp: str,
            seconds: float) -> dict[int, float]:
    """Aggregate img/s of k trials packed onto one GPU (each asking Ray for 1/k of it), for each k in counts."""
    import ray  # heavy: not in benchmarks.throughput's arm processes (they import this module; memory measured)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=max(max(counts), os.cpu_count() or 1), num_gpus=1, include_dashboard=False,  # one GPU, shared
             logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": repo}})
    try:
        out = {}
        for k in counts:
            task = ray.remote(num_gpus=1 / k, num_cpus=1)(_packed_trial)
            done = ray.get([task.remote(k, teacher_name, student_name, batch, device, amp, seconds) for _ in range(k)])
            out[k] = sum(images / elapsed for images, elapsed in done)  # they ran side by side
        return out
    finally:
        ray.shutdown()


def cifar_epoch(teacher_name: str, student_name: str, device: str, amp: str, images: int) -> dict[str, float]:
    """One epoch of the CIFAR-100 recipe (batch 64, live teacher, 10% held out for validation) on a synthetic
    CIFAR-format set of `images` training and images/5 test images; seconds of training and of evaluation."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        write_cifar100(folder, rng.integers(0, 256, (images, 3, 32, 32), dtype=np.uint8), rng.integers(0, 100, images),
                       rng.integers(0, 256, (images // 5, 3, 32, 32), dtype=np.uint8), rng.integers(0, 100, images // 5),
                       [f"class{i}" for i in range(100)])
        config = TrainConfig.model_validate({
            "data": {"name": "cifar100", "root": folder}, "teacher": {"model": teacher_name},
            "student": {"model": student_name}, "loss": {"name": "kd"},
            "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05, "schedule": "constant"},
            "runtime": {"device": "cuda" if device.startswith("cuda") else "cpu", "amp": amp, "channels_last": True}})
        torch.manual_seed(0)
        teacher = create_model(teacher_name, 100).state_dict()
        metrics = fit(config, report=lambda m, s: None, teacher_state=teacher)
    return {"train_s": metrics["time/train_s"], "eval_s": metrics["time/eval_s"]}


def paper_ablation_gpu_hours(epoch: dict[str, float], packing_speedup: float) -> tuple[float, float]:
    """(one trial per GPU, packed at the best measured speed-up) GPU-hours of the paper-size ablation."""
    trials = PAPER_ABLATION["arms"] * PAPER_ABLATION["seeds"]
    one = trials * PAPER_ABLATION["epochs"] * (epoch["train_s"] + epoch["eval_s"]) / 3600
    return one, one / packing_speedup
