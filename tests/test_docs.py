"""Documents that must not drift from the code."""
from __future__ import annotations

import os
import re
from pathlib import Path

from bickd_tune.experiment import ExperimentConfig, SearchParam
from bickd_tune.schema_doc import document

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURE = Path(REPO, "docs", "architecture.md")
# The files the architecture map must name: every module of the code's folders, every test file.
MAPPED = ("bickd/**/*.py", "bickd_tune/**/*.py", "platform/**/*.py", "benchmarks/**/*.py", "cluster/*.py",
          "tests/test_*.py")
# A backticked repository path in a document: folders and a file name, no placeholders, globs or spaces.
CODE_PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)+/?)`")
# A Python file named by its path anywhere in a document's text.
PY_PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.py)\b")


def test_the_yaml_reference_is_what_the_schema_writes():
    with open(os.path.join(REPO, "docs", "experiment-yaml.md"), encoding="utf-8") as handle:
        committed = handle.read()
    assert committed == document(), "docs/experiment-yaml.md is stale: python -m bickd_tune.schema_doc > docs/experiment-yaml.md"


def test_the_reference_names_every_key_of_the_schema():
    text = document()
    for name in [*ExperimentConfig.model_fields, *SearchParam.model_fields]:
        assert f"| `{name}` |" in text, name


def _module_files() -> set[str]:
    found = set()
    for pattern in MAPPED:
        for path in Path(REPO).glob(pattern):
            relative = path.relative_to(REPO)
            if "__pycache__" not in relative.parts:
                found.add(relative.as_posix())
    return found


def test_the_architecture_map_names_every_module_and_test_file():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = sorted(path for path in _module_files() if f"`{path}`" not in text)
    assert not missing, f"docs/architecture.md's map does not name: {missing}"


def test_every_path_the_architecture_map_names_exists():
    named = set(CODE_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))
    absent = sorted(path for path in named if not os.path.exists(os.path.join(REPO, path)))
    assert not absent, f"docs/architecture.md names paths that do not exist: {absent}"


def test_every_python_path_the_documents_name_exists():
    documents = [Path(REPO, "README.md"), Path(REPO, "cluster", "README.md"), *Path(REPO, "docs").glob("*.md")]
    absent = sorted({f"{doc.relative_to(REPO)}: {path}" for doc in documents
                     for path in PY_PATH.findall(doc.read_text(encoding="utf-8"))
                     if not os.path.exists(os.path.join(REPO, path))})
    assert not absent, f"documents name Python files that do not exist: {absent}"
