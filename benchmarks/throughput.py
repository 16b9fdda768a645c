"""Training-step throughput of a KD trial, side by side in one run; on a GPU also how trials pack onto it and
what a paper-size ablation costs.

    python -m benchmarks.throughput                 # CPU: resnet32x4 -> resnet8x4, batch 64, fp32 (~12 min, 2 CPUs)
    python -m benchmarks.throughput --quick         # fewer steps, smaller sets, two arms at once: a smoke run
    python -m benchmarks.throughput --device cuda   # one GPU, bf16: the arms, packing, the CIFAR-100 epoch (< 8 min)

Step arms, each in its own process (so peak memory is per arm), one at a time (two at once under --quick),
channels_last, the same batch:
  (a) reference: the mdistiller way - PIL transforms per sample in a DataLoader, teacher forward every batch;
      with mdistiller's 2 loader worker processes (its default) and with none; speed-ups use the faster one
  (b) ours, live teacher: uint8 data on the device, crop/flip vectorised per batch on the device
  (c) ours, cached teacher: (b) with the teacher's logits read from the Arrow cache instead of computed
  (d) bound: a bare student forward+backward+SGD step on a tensor already on the device
On the CPU also: the BicKD loss's cost over KD's, and where the wall time of a 4-trial local sweep goes.
The GPU plan (`--device cuda`, or `--plan` on any device for a dry run): (c) packed 1, 2, 4 and 8 trials to one
GPU with fractional GPUs through Ray (aggregate img/s and the speed-up over one trial), one epoch of the CIFAR-100
recipe on a synthetic CIFAR-format set of 50,000 images, and from it the GPU-hours of a paper-size ablation
(10 arms x 3 seeds x 240 epochs). The last line is machine-readable for tracking over time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
import yaml

from benchmarks import plan
from benchmarks.workload import NUM_CLASSES, NUM_IMAGES, autocast, sync, synthetic_data, teacher_and_student
from bickd.data import load_dataset, make_batches
from bickd.losses import BicKDLoss, KDLoss
from bickd.teacher_cache import TeacherLogitCache, write_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed_steps(step, batches, warmup: int, steps: int, device="cpu") -> float:
    """Seconds per step over `steps` steps after `warmup` steps."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(iterator))
    sync(device)
    return (time.perf_counter() - start) / steps


def loss_seconds(batch: int) -> dict[str, float]:
    """Seconds per forward+backward of the KD and BicKD losses alone, on logits (no data set, no networks)."""
    zs = torch.randn(batch, NUM_CLASSES, requires_grad=True)
    zt, y = torch.randn(batch, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (batch,))
    seconds = {}
    for name, fn in (("kd", KDLoss()), ("bickd", BicKDLoss())):
        def step(_):
            total, _ = fn(zs, zt, y, epoch=30)
            total.backward()
        seconds[name] = _timed_steps(step, iter(lambda: (None,), 0), 20, 200)
    return seconds


ARMS = ("reference", "reference-2w", "live", "cached", "bound")
QUICK_PACKING_S = 0.5  # --quick: seconds each packed trial steps after its warm-up (the full plan: 20)
QUICK_EPOCH_IMAGES = 256  # --quick: the one-epoch run's set (3 batches of 64 after validation; full 50,000)


def run_arm(arm: str, teacher_name: str, student_name: str, warmup: int, steps: int, batch: int,
            device: str = "cpu", amp: str = "off") -> dict:
    result = {"arm": arm}
    data = synthetic_data()
    teacher, student = teacher_and_student(teacher_name, student_name, device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = KDLoss()

    def kd_step(images, labels, teacher_logits):
        with autocast(device, amp):
            logits = student(images)
        total, _ = loss_fn(logits, teacher_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def teacher_forward(images):
        with torch.no_grad(), autocast(device, amp):
            return teacher(images).float()

    if arm.startswith("reference"):
        # heavy: PIL and torchvision only in the reference arms; each arm's process has its peak memory measured
        from PIL import Image
        from torchvision import transforms

        class PilCifar(torch.utils.data.Dataset):  # what torchvision's CIFAR100 + mdistiller's transforms do
            transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                            transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])

            def __len__(self):
                return NUM_IMAGES

            def __getitem__(self, i):
                image = Image.fromarray(data.train_images[i].permute(1, 2, 0).numpy())
                return self.transform(image), int(data.train_labels[i])

        workers = 2 if arm == "reference-2w" else 0  # mdistiller's DATASET.NUM_WORKERS default, and none
        pin = torch.device(device).type == "cuda"

        def loader():
            while True:
                yield from torch.utils.data.DataLoader(PilCifar(), batch_size=batch, shuffle=True, drop_last=True,
                                                       num_workers=workers, pin_memory=pin,
                                                       persistent_workers=workers > 0)

        def step(images, labels):
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            kd_step(images, labels, teacher_forward(images))
        result["s_per_step"] = _timed_steps(step, loader(), warmup, steps, device)
    elif arm in ("live", "cached"):
        batches = make_batches(data, batch, device, seed=0, channels_last=True, view_seed=0, view_epochs=2)

        def loader():
            epoch = 0
            while True:
                yield from ((x, y, idx, epoch) for x, y, idx in batches.train(epoch))
                epoch += 1
        if arm == "live":
            def step(images, labels, idx, epoch):
                kd_step(images, labels, teacher_forward(images))
        else:
            folder = os.path.join(tempfile.mkdtemp(), "cache")
            logits = torch.randn(2, NUM_IMAGES, NUM_CLASSES).numpy()  # the lookup cost does not depend on values
            write_cache(folder, {"benchmark": True}, iter(logits))
            cache = TeacherLogitCache(folder, {"benchmark": True})
            del teacher

            def step(images, labels, idx, epoch):
                kd_step(images, labels, cache.lookup(idx, epoch, torch.device(device)))
        result["s_per_step"] = _timed_steps(step, loader(), warmup, steps, device)
    elif arm == "bound":
        images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)

        def step(x, y):
            with autocast(device, amp):
                loss = F.cross_entropy(student(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def same():
            while True:
                yield images, labels
        result["s_per_step"] = _timed_steps(step, same(), warmup, steps, device)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.device(device).type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def sweep_overhead(quick: bool) -> dict:
    """Where the wall time of a 4-trial local sweep (`python -m platform.tune`, two trials at a time) goes.

    Training = the trials' epochs (`time/train_s`, two at a time) plus the teacher's one epoch; everything
    else is the platform: starting Ray and MLflow, the teacher's evaluation and logit cache, starting trials,
    evaluating, checkpointing and logging between epochs, shutting down. Those costs are fixed per sweep or
    per epoch, so their share depends on how long trials train: the trial length is printed with it.
    """
    from mlflow.tracking import MlflowClient  # heavy: not in the arms' processes, whose peak memory is measured

    with tempfile.TemporaryDirectory() as folder:
        experiment = {
            "name": "overhead", "storage_path": folder,
            "data": {"name": "shapes100", "image_size": 16, "root": os.path.join(folder, "data"),
                     "options": {"train_per_class": 20 if quick else 100, "test_per_class": 10}},
            "teacher": {"model": "resnet8", "recipe": {"epochs": 1, "schedule": "constant"}},
            "student": {"model": "resnet8"}, "recipe": {"epochs": 2 if quick else 20, "schedule": "cosine"},
            "loss": {"name": "bickd", "warmup_epochs": 1},
            "runtime": {"device": "cpu", "channels_last": False, "threads": 1, "checkpoint_every_s": 60},
            "teacher_cache": {"enabled": True, "epochs": 2},
            "search": {"num_samples": 4, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
            "scheduler": {"type": "none"}, "resources": {"cpus_per_trial": 1, "max_failures": 0},
        }
        path = os.path.join(folder, "overhead.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(experiment, handle)
        # the data set is generated once per machine, not per sweep: done before timing
        load_dataset("shapes100", root=os.path.join(folder, "data"), image_size=16, **experiment["data"]["options"])
        start = time.time()
        subprocess.run([sys.executable, "-m", "platform.tune", path, "--no-report"], cwd=REPO, check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled"})
        end = time.time()
        client = MlflowClient(f"sqlite:///{folder}/overhead/mlflow.db")
        experiment_id = client.get_experiment_by_name("overhead").experiment_id
        trials = client.search_runs([experiment_id], "tags.`bickd.kind` = 'trial'")
        parent = client.search_runs([experiment_id], "tags.`bickd.kind` != 'trial'")[0]
        epochs = [m.value for run in trials for m in client.get_metric_history(run.info.run_id, "time/train_s")]
        teacher_s = sum(m.value for m in client.get_metric_history(parent.info.run_id, "teacher/time/train_s"))
        first_start = min(run.info.start_time for run in trials) / 1000
        last_end = max(run.info.end_time for run in trials) / 1000
    slots = max_overlap([(run.info.start_time, run.info.end_time) for run in trials])  # what actually ran at once
    wall, train = end - start, sum(epochs) / slots + teacher_s
    return {"wall_s": wall, "train_s": train, "non_training_share": 1 - train / wall,
            "before_trials_s": first_start - start, "teacher_train_s": teacher_s,
            "trials_s": last_end - first_start, "trials_train_s": sum(epochs) / slots,
            "after_trials_s": end - last_end, "trial_train_s": sum(epochs) / len(trials),
            "epochs": experiment["recipe"]["epochs"], "slots": slots}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one moment: how many trials really ran side by side."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return max(most, 1)


def cpu_name() -> str:
    """The CPU model (figures differ by a factor of two between 2-core machines of different models)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return stdlib_platform.processor() or stdlib_platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller sets (a smoke run)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 and the GPU plan)")
    parser.add_argument("--plan", action="store_true", help="run the GPU plan on this device too")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--no-sweep", action="store_true", help="skip the 4-trial sweep measurement")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    amp = "bf16" if gpu else "off"
    warmup, steps = (1, 3) if args.quick else ((10, 50) if gpu else (3, 20))
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.teacher, args.student, warmup, steps, args.batch, args.device, amp)))
        return 0

    where = torch.cuda.get_device_name() if gpu else f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"machine: {where}, torch {torch.__version__}; {'bf16' if gpu else 'fp32'}, channels_last, batch "
          f"{args.batch}; {args.teacher} -> {args.student}", flush=True)
    results = {}
    for arm, r in _arm_results(args):
        results[arm] = r
        label = {"reference": "(a) reference, 0 workers", "reference-2w": "(a) reference, 2 workers",
                 "live": "(b) live", "cached": "(c) cached", "bound": "(d) bound"}[arm]
        print(f"  {label:<26} {r['s_per_step'] * 1000:8.1f} ms/step  {args.batch / r['s_per_step']:8.1f} img/s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB" + (f", GPU {r['peak_gpu_mb']:6.0f} MB" if gpu else ""), flush=True)
    reference = min(results["reference"]["s_per_step"], results["reference-2w"]["s_per_step"])  # the faster one
    live, cached, bound = (results[a]["s_per_step"] for a in ("live", "cached", "bound"))
    print(f"  speedup over the faster reference: live {reference / live:.2f}x, cached {reference / cached:.2f}x; "
          f"cached reaches {bound / cached * 100:.1f}% of the bare student step")
    # (c) can at best match (d), so (a)/(d) caps (c)/(a) on this machine whatever the cache does.
    print(f"  ceiling for cached/reference here: reference/bound = {reference / bound:.2f}x")
    if gpu or args.plan:
        return _gpu_plan(args, amp, reference / cached)
    loss = loss_seconds(args.batch)  # after the step arms: no torch threads of this process compete with theirs
    overhead = (loss["bickd"] - loss["kd"]) / cached
    print(f"  loss only: KD {loss['kd'] * 1000:.2f} ms, BicKD {loss['bickd'] * 1000:.2f} ms per step "
          f"(fwd+bwd, B={args.batch}, C={NUM_CLASSES}); BicKD's extra cost = {overhead * 100:.1f}% of a cached step")
    if not args.no_sweep:
        sweep = sweep_overhead(args.quick)
        print(f"  4-trial local sweep ({sweep['slots']} at a time, {sweep['epochs']} epochs = "
              f"{sweep['trial_train_s']:.0f} s of training per trial): {sweep['wall_s']:.1f} s wall, "
              f"{sweep['train_s']:.1f} s training -> {sweep['non_training_share'] * 100:.1f}% outside training")
        print(f"    before the first trial {sweep['before_trials_s']:.1f} s (Ray, MLflow, teacher "
              f"{sweep['teacher_train_s']:.1f} s training + evaluation + logit cache); trials "
              f"{sweep['trials_s']:.1f} s, {sweep['trials_train_s']:.1f} s of it training "
              f"({(1 - sweep['trials_train_s'] / sweep['trials_s']) * 100:.1f}% outside); "
              f"after the last {sweep['after_trials_s']:.1f} s")
    print(f"speedup cached/reference: {reference / cached:.2f}x  bickd-loss overhead: {overhead * 100:.1f}%")
    return 0


QUICK_ARMS_AT_ONCE = 2  # --quick: a smoke run, its figures no measurement; two arm processes share the CPUs


def _arm_results(args):
    """(arm, its figures) in ARMS' order, each arm measured in a process of its own: one at a time, so that no
    arm competes with another for the CPUs or the GPU, except under --quick."""
    def measure(arm: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--arm", arm, "--teacher", args.teacher,
                              "--student", args.student, "--batch", str(args.batch), "--device", args.device]
                             + (["--quick"] if args.quick else []),
                             cwd=REPO, capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout.strip().splitlines()[-1])
    with ThreadPoolExecutor(QUICK_ARMS_AT_ONCE if args.quick else 1) as pool:
        yield from zip(ARMS, pool.map(measure, ARMS))


def _gpu_plan(args, amp: str, cached_speedup: float) -> int:
    # --quick: each part of the plan runs once, on the least that exercises it (a smoke run, not a measurement)
    quick = ((1, 2), QUICK_PACKING_S, QUICK_EPOCH_IMAGES)
    counts, seconds, images = quick if args.quick else ((1, 2, 4, 8), 20.0, 50_000)
    packed = plan.packing(counts, args.teacher, args.student, args.batch, args.device, amp, seconds)
    for k, rate in packed.items():
        print(f"  {k} trial(s) on one GPU ({1 / k:g} GPU each): {rate:8.1f} img/s in all, "
              f"{rate / packed[1]:.2f}x one trial", flush=True)
    best = max(packed, key=packed.get)
    epoch = plan.cifar_epoch(args.teacher, args.student, args.device, amp, images)
    one, packed_hours = plan.paper_ablation_gpu_hours(epoch, packed[best] / packed[1])
    size = plan.PAPER_ABLATION
    print(f"  CIFAR-100 recipe, one epoch of {int(images * 0.9)} training images (live teacher): "
          f"{epoch['train_s']:.1f} s training + {epoch['eval_s']:.1f} s evaluation")
    print(f"  paper-size ablation ({size['arms']} arms x {size['seeds']} seeds x {size['epochs']} epochs): "
          f"{one:.1f} GPU-hours one trial per GPU, {packed_hours:.1f} packed {best} to a GPU")
    print(f"gpu: cached/reference {cached_speedup:.2f}x  packing {best}/GPU {packed[best] / packed[1]:.2f}x  "
          f"paper-size ablation {packed_hours:.1f} GPU-hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
