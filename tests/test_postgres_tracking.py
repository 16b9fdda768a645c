"""The documented set-up for a big sweep: an `mlflow server` on a PostgreSQL database. A real PostgreSQL (the
binaries of the `pgserver` wheel) and a real MLflow server, both on 127.0.0.1 and stopped by the test, and a
small sweep through `python -m platform.tune --tracking-uri`."""
from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
import ray
from mlflow.tracking import MlflowClient

from bickd_tune.tracking import TAG_KIND, TAG_TRIAL_ID
from tests.servers import mlflow_server, postgres_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2
pytestmark = [pytest.mark.ray, pytest.mark.timeout(480)]


def test_a_sweep_logs_each_trial_and_epoch_once_to_an_mlflow_server_on_postgresql(write_experiment, tmp_path):
    if ray.is_initialized():
        ray.shutdown()  # one Ray cluster at a time on this machine: the command starts its own
    path = write_experiment(
        "on_postgres", recipe={"epochs": EPOCHS},
        search={"num_samples": 2, "seed": 0, "space": {"loss.tau": {"loguniform": [0.05, 0.5]}}},
        scheduler={"type": "none"}, resources={"cpus_per_trial": 1, "max_concurrent_trials": 2, "max_failures": 0})
    with postgres_server() as database:
        with mlflow_server(str(tmp_path), str(tmp_path / "artifacts"), backend_store_uri=database) as url:
            sweep = subprocess.run([sys.executable, "-m", "platform.tune", path, "--tracking-uri", url, "--no-report",
                                    "--num-cpus", "2"], cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                                   capture_output=True, text=True, timeout=400)
            assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]

            client = MlflowClient(url)
            experiment_id = client.get_experiment_by_name("on_postgres").experiment_id
            parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'")
            assert len(parents) == 1 and parents[0].info.status == "FINISHED"
            trials = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
            assert len(trials) == 2 and len({run.data.tags[TAG_TRIAL_ID] for run in trials}) == 2
            for run in trials:
                assert run.info.status == "FINISHED"
                assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
                assert sorted(steps) == list(range(1, EPOCHS + 1))  # every epoch once
                assert run.data.metrics["final/epochs"] == EPOCHS

        # The runs live in PostgreSQL itself (the server kept nothing of them in a file of its own).
        with psycopg.connect(database) as connection:
            stored = connection.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                                        (int(experiment_id),)).fetchone()[0]
            points = connection.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss' AND run_uuid = ANY(%s)",
                                        ([run.info.run_id for run in trials],)).fetchone()[0]
        assert stored == 3 and points == 2 * EPOCHS
        assert not os.path.exists(tmp_path / "mlflow-server.db")
    with pytest.raises(psycopg.OperationalError):  # the test's PostgreSQL is stopped
        psycopg.connect(database, connect_timeout=5)
