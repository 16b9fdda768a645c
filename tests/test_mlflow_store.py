"""A new SQLite tracking store starts as a copy of the kept empty one: MLflow opens it as its own (Default
experiment with this store's artifact location, experiment ids from 1), without running its migrations again;
nothing that exists is overwritten, and a cache that cannot be written leaves the store to MLflow."""
from __future__ import annotations

import logging
import os
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from bickd_tune.mlflow_store import SQLITE, empty_store_path, prepare_tracking_store

MIGRATION_LOG = "Creating initial MLflow database tables"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BICKD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _new_store(folder) -> tuple[str, MlflowClient]:
    folder.mkdir(parents=True)
    uri = f"{SQLITE}{folder / 'mlflow.db'}"
    prepare_tracking_store(uri)
    return uri, MlflowClient(tracking_uri=uri)


def test_a_second_store_is_a_copy_that_mlflow_opens_as_its_own(cache, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns of the folder it is opened from
    caplog.set_level(logging.INFO, logger="mlflow")
    _, first = _new_store(tmp_path / "a")
    first.search_experiments()
    assert MIGRATION_LOG in caplog.text  # the first store on this machine: MLflow built it
    with sqlite3.connect(empty_store_path()) as kept:
        assert kept.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)  # no machine's paths in it

    caplog.clear()
    os.chdir(tmp_path / "a")
    _, second = _new_store(tmp_path / "b")
    default = second.get_experiment("0")
    assert MIGRATION_LOG not in caplog.text  # a copy: no migrations run
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "a" / "mlruns" / "0")
    experiment_id = second.create_experiment("copied")
    assert experiment_id == "1"
    run = second.create_run(experiment_id)
    second.log_metric(run.info.run_id, "train/loss", 0.5, step=1)
    assert [m.value for m in second.get_metric_history(run.info.run_id, "train/loss")] == [0.5]
    assert first.get_experiment_by_name("copied") is None  # the stores are independent files


def test_an_existing_store_a_server_or_a_missing_folder_is_left_alone(cache, tmp_path):
    uri, client = _new_store(tmp_path / "kept")
    client.create_experiment("kept")
    prepare_tracking_store(uri)
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("kept") is not None
    prepare_tracking_store("http://127.0.0.1:9/")
    prepare_tracking_store(f"{SQLITE}{tmp_path / 'absent' / 'mlflow.db'}")
    assert not (tmp_path / "absent").exists()  # the preflight names a missing folder; nothing is created


def test_a_cache_that_cannot_be_written_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("BICKD_CACHE_DIR", str(blocked))
    uri, client = _new_store(tmp_path / "store")
    assert client.create_experiment("built by MLflow") == "1"
