"""Documents that must not drift from the code."""
from __future__ import annotations

import os

from bickd_tune.schema_doc import document

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_yaml_reference_is_what_the_schema_writes():
    with open(os.path.join(REPO, "docs", "experiment-yaml.md"), encoding="utf-8") as handle:
        committed = handle.read()
    assert committed == document(), "docs/experiment-yaml.md is stale: python -m bickd_tune.schema_doc > docs/experiment-yaml.md"


def test_the_reference_names_every_key_of_the_schema():
    from bickd_tune.experiment import ExperimentConfig, SearchParam

    text = document()
    for name in [*ExperimentConfig.model_fields, *SearchParam.model_fields]:
        assert f"| `{name}` |" in text, name
