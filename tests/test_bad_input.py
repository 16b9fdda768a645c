"""The catalogue of malformed inputs (tests/data/bad_inputs.yaml): one clear line, exit 2, nothing created."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from bickd_tune import tune as tune_cli
from bickd_tune.experiment import ExperimentConfig
from bickd_tune.tune import build_parser
from tests.conftest import TINY, deep_update
from tests.servers import CREDENTIALS, mlflow_server, s3_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(os.path.dirname(__file__), "data", "bad_inputs.yaml"), encoding="utf-8") as handle:
    CATALOGUE = yaml.safe_load(handle)

BASE = {"name": "tiny", **TINY, "search": {"num_samples": 2, "space": {"loss.w_bc": {"loguniform": [0.5, 2.0]}}}}


def _sections(case: dict) -> set[str]:
    """The top-level sections of the experiment a case breaks (through the YAML or `--set`)."""
    args = case.get("args", [])
    overridden = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--set"]
    return set(case.get("patch", {})) | {override.split("=")[0].split(".")[0] for override in overridden}


def test_catalogue_ids_are_unique_and_each_case_has_one_input_and_an_expectation():
    ids = [case["id"] for case in CATALOGUE]
    assert sorted(id_ for id_ in set(ids) if ids.count(id_) > 1) == []
    for case in CATALOGUE:
        assert case.get("expect"), case["id"]
        assert len({"text", "patch", "file"} & set(case)) <= 1, case["id"]


def test_catalogue_breaks_every_section_of_the_experiment():
    covered = set().union(*(_sections(case) for case in CATALOGUE))
    assert sorted(set(ExperimentConfig.model_fields) - covered) == []


def test_catalogue_gives_every_value_taking_flag_a_bad_value():
    flags = set(re.findall(r"\[(--[a-z-]+) [A-Z_=]+\]", build_parser().format_usage()))  # `[--flag VALUE]`
    assert "--set" in flags and "--resume" not in flags
    given = {arg for case in CATALOGUE for arg in case.get("args", []) if arg.startswith("--")}
    assert sorted(flags - given) == []


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


def test_a_wrong_artifact_bucket_or_storage_bucket_is_one_line_before_anything_starts(tmp_path):
    """A real MLflow server whose artifact store is a bucket that does not exist, and a --storage bucket that
    does not exist, on a real local S3 server: each is one error line, exit 2, before Ray or a trial starts."""
    with s3_server("present") as (endpoint, uri), \
            mlflow_server(str(tmp_path), "s3://absent/mlflow", endpoint) as broken_tracking:
        path = tmp_path / "remote.yaml"
        path.write_text(yaml.safe_dump({**BASE, "name": "remote"}))
        env = {**os.environ, **CREDENTIALS, "BICKD_STATE_DIR": str(tmp_path / "state"), "RAY_AUTH_MODE": "disabled"}
        working_tracking = "sqlite:///" + str(tmp_path / "ok" / "mlflow.db")
        cases = [  # (storage, tracking, the error line)
            (uri("experiments"), broken_tracking, "cannot store artifacts"),
            (uri("experiments").replace("s3://present/", "s3://absent/"), working_tracking,
             "storage_path: cannot write to s3://absent"),
        ]
        # the two commands run side by side: each is refused before it starts anything
        started = [subprocess.Popen([sys.executable, "-m", "platform.tune", str(path), "--storage", storage,
                                     "--tracking-uri", tracking], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for storage, tracking, _ in cases]
        for process, (_, _, message) in zip(started, cases):
            stdout, stderr = process.communicate(timeout=180)
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert process.returncode == 2, stdout[-2000:] + stderr[-2000:]
            assert len(lines) == 1 and message in lines[0], lines
            assert "Traceback" not in stdout + stderr
        assert not (tmp_path / "state" / "remote").exists()
