"""The catalogue of malformed inputs (tests/data/bad_inputs.yaml): one clear line, exit 2, nothing created."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY, deep_update

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(os.path.dirname(__file__), "data", "bad_inputs.yaml"), encoding="utf-8") as handle:
    CATALOGUE = yaml.safe_load(handle)

BASE = {"name": "tiny", **TINY, "search": {"num_samples": 2, "space": {"loss.w_bc": {"loguniform": [0.5, 2.0]}}}}


def test_catalogue_is_large_and_unique():
    ids = [case["id"] for case in CATALOGUE]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)


def _prepare(case: dict, tmp_path) -> list[str]:
    storage = tmp_path / "storage"
    if "file" in case:
        return [case["file"], *case.get("args", [])]
    path = tmp_path / "bad.yaml"
    if "text" in case:
        path.write_text(case["text"])
    else:
        corrupt = tmp_path / "corrupt.pth"
        corrupt.write_bytes(b"this is not a checkpoint")
        patch = yaml.safe_load(yaml.safe_dump(case.get("patch", {})).replace("{corrupt}", str(corrupt)))
        tree = deep_update({**BASE, "storage_path": str(storage)}, patch)
        tree = {k: v for k, v in tree.items() if v is not None}
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return [str(path), *case.get("args", [])]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c["id"] for c in CATALOGUE])
def test_bad_input_is_refused_cleanly(case, tmp_path, capsys):
    from platform import tune as tune_cli

    argv = _prepare(case, tmp_path)
    try:
        code = tune_cli.main(argv)
    except SystemExit as exit_:  # argparse's own exits
        code = exit_.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert case["expect"] in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "storage").exists(), "a refused experiment created files"


def test_cli_subprocess_prints_no_traceback(tmp_path):
    """The same through a real `python -m platform.tune` process: exit status and stderr as a user sees them."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "loss": {"name": "bickd", "tau": -1}, "storage_path": str(tmp_path / "s")}))
    result = subprocess.run([sys.executable, "-m", "platform.tune", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "loss.tau" in result.stderr
    assert not (tmp_path / "s").exists()
