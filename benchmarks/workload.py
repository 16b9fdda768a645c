"""The synthetic KD workload the step benchmarks measure (benchmarks/throughput.py, benchmarks/plan.py): a
CIFAR-shaped uint8 data set, a seeded teacher/student pair in channels_last, and the device helpers that time a
GPU step when it has run and switch bf16 autocast on."""
from __future__ import annotations

import torch

from bickd.data import AugmentSpec, ImageData
from bickd.data.cifar import MEAN, STD
from bickd.models import create_model

NUM_IMAGES, NUM_CLASSES = 2048, 100


def synthetic_data():
    """NUM_IMAGES random CIFAR-shaped uint8 images and labels (its first 256 also the test split)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (NUM_IMAGES,), generator=generator)
    return ImageData(images, labels, images[:256], labels[:256], NUM_CLASSES, MEAN, STD, AugmentSpec(4, True),
                     tuple(map(str, range(NUM_CLASSES))), "synthetic-cifar")


def teacher_and_student(teacher_name: str, student_name: str, device="cpu"):
    """The pair, seeded, in channels_last on `device`: the teacher in eval mode, the student training."""
    torch.manual_seed(0)
    teacher = create_model(teacher_name, NUM_CLASSES).to(device, memory_format=torch.channels_last).eval()
    student = create_model(student_name, NUM_CLASSES).to(device, memory_format=torch.channels_last).train()
    return teacher, student


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()  # a GPU step is timed when it has run, not when it was queued


def autocast(device, amp: str):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")
