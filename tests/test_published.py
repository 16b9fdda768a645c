"""Published anchors: every figure has a source, the pairs use the project's model names, and the report's
comparison shows them (with this experiment's matching arms) only for a matching pair."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from bickd.config import TrainConfig
from bickd.models import MODEL_NAMES
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.published import COLUMNS, METHODS, TABLES, anchors, method_of, published_row, source_of
from bickd_tune.report import FINAL, comparison_section


def test_every_published_figure_names_its_source():
    for data, table in TABLES.items():
        for (teacher, student), row in table.items():
            assert len(row) == len(COLUMNS), (data, teacher, student)
            for column, value in zip(COLUMNS, row):
                if value is not None:
                    source = source_of(data, teacher, student, column)
                    assert source.label and source.where, (data, teacher, student, column)


def test_pairs_are_named_as_the_project_names_its_models():
    """A pair spelled otherwise than the models of bickd/models would never match an experiment."""
    for table in TABLES.values():
        for teacher, student in table:
            assert teacher in MODEL_NAMES and student in MODEL_NAMES, (teacher, student)


def test_the_first_columns_keep_their_meaning_and_other_data_has_no_row():
    row = published_row("cifar100", "resnet56", "resnet20")
    assert list(row)[:6] == ["teacher", "student", "KD", "CRD", "DKD", "DIST"]
    assert row["teacher"] > row["KD"] > row["student"]
    assert published_row("digits", "resnet56", "resnet20") is None
    assert published_row("cifar100", None, "resnet20") is None
    assert anchors("cifar100", "resnet8", "resnet8") == []


def test_anchors_are_the_methods_with_a_figure():
    imagenet = {anchor.method for anchor in anchors("imagenet", "resnet34", "resnet18")}
    row = published_row("imagenet", "resnet34", "resnet18")
    assert imagenet == {m for m in METHODS if row[m] is not None} and "KD" in imagenet


@pytest.mark.parametrize("loss, method", [({"name": "kd"}, "KD"), ({"name": "kd", "standardize": True}, "KD+LS"),
                                          ({"name": "dkd"}, "DKD"), ({"name": "dkd", "standardize": True}, "DKD+LS"),
                                          ({"name": "dist"}, "DIST"), ({"name": "bickd", "standardize": True}, None),
                                          ({"name": "ce"}, None)])
def test_a_loss_config_is_the_published_method_it_trains(loss, method):
    config = TrainConfig.model_validate({"data": {"name": "digits"}, "teacher": {"model": "resnet20"},
                                         "student": {"model": "resnet8"}, "loss": loss})
    assert method_of(config.loss) == method


def _experiment(data: str, teacher: str, student: str, arms: dict) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "name": "anchors", "data": {"name": data}, "teacher": {"model": teacher}, "student": {"model": student},
        "loss": {"name": "bickd"}, "ablation": {"seeds": [0, 1], "reference": "bickd", "control": "kd", "arms": arms}})


def _runs(test_top1: dict[str, list[float]]) -> pd.DataFrame:
    """Rows as report.trial_runs reads them from MLflow: one per finished trial."""
    rows = [{"run_id": f"{arm}-{seed}", "stage": "ablation", "trial": f"{arm}-{seed}", "status": "FINISHED",
             "arm": arm, "seed": seed, **{column: None for column in FINAL}, "test_top1": value, "epochs": 240,
             "stop_reason": "", "params": {}}
            for arm, values in test_top1.items() for seed, value in enumerate(values)]
    return pd.DataFrame(rows, columns=["run_id", "stage", "trial", "status", "arm", "seed", *FINAL, "epochs",
                                       "stop_reason", "params"])


ARMS = {"kd": {"loss.name": "kd"}, "kd_ls": {"loss.name": "kd", "loss.T": 2.0, "loss.w_kl": 9.0,
                                              "loss.standardize": True},
        "dkd": {"loss.name": "dkd"}, "bickd": {}}


def _table_row(section: str, method: str) -> str:
    return next(line for line in section.splitlines() if line.startswith(f"| {method} "))


def test_a_matching_pair_shows_every_anchor_with_its_source_beside_the_arm_that_trains_it():
    experiment = _experiment("cifar100", "resnet32x4", "resnet8x4", ARMS)
    section = comparison_section(experiment, _runs({"kd": [74.0, 74.2], "kd_ls": [76.0, 76.4],
                                                    "dkd": [76.1, 76.3], "bickd": [75.0, 75.5]}))
    for anchor in anchors("cifar100", "resnet32x4", "resnet8x4"):
        row = _table_row(section, anchor.method)
        assert f"{anchor.top1:.2f}" in row
        number = row.split("[")[1].split("]")[0]
        assert f"[{number}] {anchor.source.label}: {anchor.source.where}" in section  # the footnote it points to
    assert "76.20 ± 0.28 (kd_ls, 2 seeds)" in _table_row(section, "KD+LS")
    assert "74.10 ± 0.14 (kd, 2 seeds)" in _table_row(section, "KD")
    assert "(dkd, 2 seeds)" in _table_row(section, "DKD") and "–" in _table_row(section, "DIST")
    assert "BicKD − KD" in section and "+1.15 (bickd − kd)" in section  # the existing gain table stays


def test_imagenet_anchors_use_imagenets_claim_and_recipe():
    section = comparison_section(_experiment("imagenet", "resnet34", "resnet18", ARMS), _runs({}))
    assert "+1.5 to +2.5" in section and "100-epoch ImageNet recipe" in section
    assert _table_row(section, "DKD").startswith("| DKD ") and "71.70" in _table_row(section, "DKD")
    assert "| MLKD" not in section  # no stored source has ImageNet MLKD: left out, not invented


def test_a_pair_without_published_numbers_shows_no_anchor():
    section = comparison_section(_experiment("cifar100", "resnet8x4", "resnet8", ARMS),
                                 _runs({"kd": [60.0], "bickd": [61.0]}))
    assert "not comparable" in section
    assert not any(f"| {method} " in section for method in METHODS)


def test_method_md_shows_the_figures_the_code_holds():
    """docs/method.md's table of published numbers must not drift from bickd_tune/published.py."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "method.md")
    with open(path, encoding="utf-8") as handle:
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in handle
                if line.startswith("| ") and " → " in line and not line.startswith("| teacher → student")]
    shown = {}
    for cells in rows:
        imagenet = cells[0].startswith("ImageNet ")
        data, pair = ("imagenet", cells[0].removeprefix("ImageNet ")) if imagenet else ("cifar100", cells[0])
        teacher, student = pair.split(" → ")
        shown[(data, teacher, student)] = tuple(None if c == "–" else float(c.split(" ")[0]) for c in cells[1:])
    held = {(data, *pair): row for data, table in TABLES.items() for pair, row in table.items()}
    assert shown == held
