"""Storage on every cloud through one code path (bickd_tune/storage.py, pyarrow's file systems): Google Cloud
Storage on a real local GCS API (gcp-storage-emulator) reached with Application Default Credentials, its
preflight naming what is missing in one line, and a small sweep whose state lives in the bucket; Azure's
preflight lines (no Azure API server is reachable by pyarrow's URIs here: see cluster/README.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
import yaml

from bickd.config_io import ConfigError
from bickd_tune.experiment import load_experiment
from bickd_tune.paths import ExperimentPaths
from bickd_tune.preflight import check_storage
from tests.conftest import TINY, deep_update
from tests.gcs_server import gcs_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = {"search": {"num_samples": 2, "space": {"recipe.lr": {"loguniform": [0.01, 0.1]}}},
         "scheduler": {"type": "none"}, "recipe": {"epochs": 1}, "teacher": None}


def _paths(tmp_path, storage: str) -> ExperimentPaths:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**deep_update({"name": "g", **TINY}, {
        **SWEEP, "storage_path": storage, "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}),
        "loss": {"name": "ce"}}))
    return ExperimentPaths.of(load_experiment(str(path)))


def _preflight_line(paths: ExperimentPaths) -> str:
    with pytest.raises(ConfigError) as refused:
        check_storage(paths)
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_gcs_preflight_passes_and_names_a_missing_bucket_or_missing_credentials(tmp_path, monkeypatch):
    with gcs_server(str(tmp_path), "bickd") as (uri, env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        check_storage(_paths(tmp_path, uri("experiments")))  # writes, reads back and deletes a probe
        assert _preflight_line(_paths(tmp_path, uri("experiments", "absent"))) == (
            "storage_path: cannot write to gs://absent/experiments/g: the bucket (or container) does not exist")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
        quick = uri("experiments") + "&retry_limit_seconds=2"  # the check's own limit is 20 s
        assert "no Google credentials" in _preflight_line(_paths(tmp_path, quick))


def test_azure_preflight_names_missing_credentials_and_az_uris_are_refused(tmp_path, monkeypatch):
    for variable in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(variable, raising=False)
    line = _preflight_line(_paths(tmp_path, "abfss://bickd@account.dfs.core.windows.net/experiments"))
    assert line.startswith("storage_path: cannot write to abfss://bickd@account.dfs.core.windows.net/experiments/g: "
                           "no Azure credentials")
    with pytest.raises(ConfigError, match="storage_path: unsupported scheme.*abfss://"):
        _paths(tmp_path, "az://bickd/experiments")


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_sweep_keeps_its_state_in_a_gcs_bucket(tmp_path):
    with gcs_server(str(tmp_path), "bickd") as (uri, env):
        path = tmp_path / "gsweep.yaml"
        path.write_text(yaml.safe_dump({**deep_update({"name": "gsweep", **TINY}, SWEEP), "loss": {"name": "ce"}}))
        run = subprocess.run(
            [sys.executable, "-m", "platform.tune", str(path), "--storage", uri("experiments"), "--tracking-uri",
             f"sqlite:///{tmp_path}/mlflow.db", "--no-report"], cwd=REPO, capture_output=True, text=True, timeout=540,
            env={**os.environ, **env, "BICKD_STATE_DIR": str(tmp_path / "head")})
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
        os.environ.update(env)  # this process lists the bucket with the same credentials
        fs, folder = pafs.FileSystem.from_uri(uri("experiments/gsweep"))
        stored = {info.path.removeprefix(folder + "/") for info in fs.get_file_info(pafs.FileSelector(folder,
                                                                                                    recursive=True))}
        assert {"experiment.yaml", "optuna.db", "trials.csv"} <= stored
        assert any(name.endswith("tuner.pkl") for name in stored)
        assert sum("/checkpoint_" in name for name in stored) >= 2  # both trials checkpointed into the bucket
