"""Published CIFAR-100 top-1 (%) of the standard 240-epoch recipe, for the report's comparison table.

Sources: RepDistiller README (teacher, student, KD, CRD), mdistiller README (DKD), DIST_KD README (DIST).
The BicKD paper claims +3 to +5 points over KD on CIFAR-100 (abstract; no per-pair table is public).
"""
from __future__ import annotations

COLUMNS = ("teacher", "student", "KD", "CRD", "DKD", "DIST")
CIFAR100: dict[tuple[str, str], tuple[float | None, ...]] = {
    ("resnet56", "resnet20"): (72.34, 69.06, 70.66, 71.16, 71.97, 71.75),
    ("resnet110", "resnet32"): (74.31, 71.14, 73.08, 73.48, 74.11, None),
    ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33, 75.51, 76.32, 76.31),
    ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92, 75.48, 76.23, None),
    ("wrn_40_2", "wrn_40_1"): (75.61, 71.98, 73.54, 74.14, 74.81, 74.43),
    ("vgg13", "vgg8"): (74.64, 70.36, 72.98, 73.94, 74.68, None),
    ("resnet32x4", "ShuffleV2"): (79.42, 71.82, 74.45, 75.65, 77.07, 77.35),
    ("ResNet50", "MobileNetV2"): (79.34, 64.60, 67.35, 69.11, 70.35, 68.66),
}
PAPER_CLAIM_OVER_KD = (3.0, 5.0)


def published_row(data: str, teacher: str | None, student: str) -> dict[str, float | None] | None:
    """The published numbers for this pair, or None when they are not comparable (other data or pair)."""
    if data != "cifar100" or teacher is None or (teacher, student) not in CIFAR100:
        return None
    return dict(zip(COLUMNS, CIFAR100[(teacher, student)]))
