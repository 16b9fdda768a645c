"""Published top-1 (%) of distillation methods, for the report's comparison with this project's runs.

Every figure was read from the stored copy of its source named below (a source per column, and per figure
where one differs); a figure that no stored source could confirm is None, never filled in from memory. None
of them was retrained here. They are what each source reports: on CIFAR-100 the standard 240-epoch recipe
(unless a note says otherwise) with the best epoch's test accuracy (chosen on test, as is customary there), on
ImageNet the validation set used as test. MLKD itself (multi-level logit alignment with strong augmentation)
is not implemented in this project; its figures are context only.

The BicKD paper claims +3 to +5 points over KD on CIFAR-100 and +1.5 to +2.5 on ImageNet (abstract; no
per-pair table is public).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    label: str   # short name shown in the report
    where: str   # repository, file and table the figures were read from
    note: str = ""  # how the figures were obtained, as far as the source says


REPDISTILLER = Source("RepDistiller", "HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100'",
                      "the CRD authors' runs; the README does not say how many runs a figure is")
MDISTILLER = Source("mdistiller", "megvii-research/mdistiller README.md, Decoupled Knowledge Distillation "
                    "'Main Benchmark Results' (CIFAR-100, ImageNet)", "the README does not say how many runs")
DIST_KD = Source("DIST_KD", "hunto/DIST_KD README.md, CIFAR-100 table (DIST as mean ± std: resnet32x4 -> resnet8x4 "
                 "76.31 ± 0.19, resnet56 -> resnet20 71.75 ± 0.30; the number of runs is not given) and ImageNet "
                 "'Baseline settings' table (torchvision teacher and student)",
                 "ImageNet: the authors' own recipe (their KD at T 4 there is 71.21, not mdistiller's 71.03)")
CTKD = Source("CTKD", "zhengli97/CTKD README.md, 'Main Results' (KD + CTKD)",
              "ImageNet: their own teacher (73.96) and student (70.26), their KD 70.83")
LS = Source("LS", "sunshangquan/logit-standardization-KD README.md, CIFAR-100 tables 1 and 2",
            "reported figures are averages over runs ('due to average operation', README; the number of runs is "
            "not given), the linked logs single runs; CTKD, MLKD rows as the LS authors list them (the MLKD README "
            "has no table and the MLKD paper could not be read here)")
LS_MLKD = Source("LS (MLKD+LS)", LS.where,
                 "480 epochs, not 240 (configs/cifar100/mlkd/*.yaml EPOCHS 480 in that repository, and 480 epochs "
                 "in its logs), so not like with like with the 240-epoch MLKD row; averages as for LS")
LS_MLKD_960 = Source("LS (MLKD+LS, 960 epochs)", LS.where,
                     "960 epochs (configs/cifar100/mlkd/resnet32x4_ShuffleV2.yaml and its log)")

COLUMNS = ("teacher", "student", "KD", "CRD", "DKD", "DIST", "CTKD", "MLKD", "KD+LS", "DKD+LS", "MLKD+LS")
METHODS = COLUMNS[2:]  # the columns that are distillation methods

TABLES: dict[str, dict[tuple[str, str], tuple[float | None, ...]]] = {
    "cifar100": {
        #                          teacher student KD    CRD    DKD    DIST   CTKD   MLKD   KD+LS  DKD+LS MLKD+LS
        ("resnet56", "resnet20"): (72.34, 69.06, 70.66, 71.16, 71.97, 71.75, 71.19, 72.19, 71.43, 72.32, 72.33),
        ("resnet110", "resnet32"): (74.31, 71.14, 73.08, 73.48, 74.11, None, 73.52, 74.11, 74.17, 74.29, 74.32),
        ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33, 75.51, 76.32, 76.31, 73.39, 77.08, 76.62, 77.01, 78.28),
        # DKD 76.23 is mdistiller's; the LS README lists 76.24
        ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92, 75.48, 76.23, None, 75.45, 76.63, 76.11, 76.39, 76.95),
        ("wrn_40_2", "wrn_40_1"): (75.61, 71.98, 73.54, 74.14, 74.81, 74.43, 73.93, 75.35, 74.37, 74.89, 75.56),
        ("vgg13", "vgg8"): (74.64, 70.36, 72.98, 73.94, 74.68, None, 73.52, 75.18, 74.36, 74.81, 75.22),
        ("resnet32x4", "ShuffleV2"): (79.42, 71.82, 74.45, 75.65, 77.07, 77.35, 75.37, 78.44, 75.56, 77.37, 78.76),
        ("ResNet50", "MobileNetV2"): (79.34, 64.60, 67.35, 69.11, 70.35, 68.66, 68.67, 71.04, 69.02, 70.45, 71.19),
    },
    "imagenet": {
        # MLKD and the three +LS figures: no stored source has them (the LS README has no ImageNet table and the
        # paper's could not be read; the LS repo's logs/imagenet/r34_r18_kd_ours.txt is one KD+LS run, best
        # epoch 71.45, a log, not the published figure). CRD: RepDistiller's README has no ImageNet table.
        ("resnet34", "resnet18"): (73.31, 69.76, 71.03, None, 71.70, 72.07, 71.32, None, None, None, None),
    },
}

# The source of each column, per data set; FIGURE_SOURCES names a figure whose source is another.
COLUMN_SOURCES: dict[str, dict[str, Source]] = {
    "cifar100": {"teacher": REPDISTILLER, "student": REPDISTILLER, "KD": REPDISTILLER, "CRD": REPDISTILLER,
                 "DKD": MDISTILLER, "DIST": DIST_KD, "CTKD": CTKD, "MLKD": LS, "KD+LS": LS, "DKD+LS": LS,
                 "MLKD+LS": LS_MLKD},
    "imagenet": {"teacher": DIST_KD, "student": DIST_KD, "KD": MDISTILLER, "DKD": MDISTILLER, "DIST": DIST_KD,
                 "CTKD": CTKD},
}
FIGURE_SOURCES: dict[tuple[str, tuple[str, str], str], Source] = {
    # CTKD's README has no resnet32x4 pair: these are the LS authors' CTKD runs
    ("cifar100", ("resnet32x4", "resnet8x4"), "CTKD"): LS,
    ("cifar100", ("resnet32x4", "ShuffleV2"), "CTKD"): LS,
    ("cifar100", ("ResNet50", "MobileNetV2"), "CTKD"): LS,
    ("cifar100", ("resnet32x4", "ShuffleV2"), "MLKD+LS"): LS_MLKD_960,
}

# The recipe the figures of a data set come from, as the report states it.
RECIPES = {"cifar100": "standard 240-epoch CIFAR-100 recipe, best-epoch test top-1, i.e. chosen on test",
           "imagenet": "standard 100-epoch ImageNet recipe, top-1 on the validation set used as test"}
PAPER_CLAIMS_OVER_KD = {"cifar100": (3.0, 5.0), "imagenet": (1.5, 2.5)}  # BicKD abstract, points over KD


@dataclass(frozen=True)
class Anchor:
    """One published figure of a method on a pair, with where it was read."""
    method: str
    top1: float
    source: Source


def published_row(data: str, teacher: str | None, student: str) -> dict[str, float | None] | None:
    """The published numbers for this pair (every column), or None when they are not comparable (other data
    or pair)."""
    if teacher is None or (teacher, student) not in TABLES.get(data, {}):
        return None
    return dict(zip(COLUMNS, TABLES[data][(teacher, student)]))


def source_of(data: str, teacher: str, student: str, column: str) -> Source:
    return FIGURE_SOURCES.get((data, (teacher, student), column)) or COLUMN_SOURCES[data][column]


def anchors(data: str, teacher: str | None, student: str) -> list[Anchor]:
    """The published method figures of this pair (those that exist), each with its source; [] for no pair."""
    row = published_row(data, teacher, student)
    if row is None:
        return []
    return [Anchor(method, row[method], source_of(data, teacher, student, method))
            for method in METHODS if row[method] is not None]


def method_of(loss) -> str | None:
    """The published method a loss config is (KD, KD+LS, DKD, DKD+LS, DIST), or None (ce, bickd)."""
    base = {"kd": "KD", "dkd": "DKD", "dist": "DIST"}.get(loss.name)
    if base is None:
        return None
    return f"{base}+LS" if getattr(loss, "standardize", False) else base
