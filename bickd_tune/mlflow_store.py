"""A new SQLite tracking store, made by copying an empty one this MLflow version built before.

MLflow builds a new SQLite store by running each of its schema migrations in turn: 2.4 s of CPU on this 2-core
machine, paid by every experiment before its first run is logged (and by every test that starts one). The result
is the same file every time, so the first store built on a machine is kept, empty, in the cache folder
($BICKD_CACHE_DIR, default ~/.cache/bickd) under the MLflow version's name, and later stores start as a copy of it
(0.05 s). MLflow opens the copy as it opens any store of its version: it checks the schema and adds its Default
experiment with this store's own artifact location (the kept file holds no experiment, so no path of the machine
that built it). Anything that goes wrong here leaves the store to MLflow, the slow way.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile

import mlflow
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"
DEFAULT_EXPERIMENT_ID = 0  # MLflow's "Default" experiment, made by MLflow in each store as it opens it
log = logging.getLogger(__name__)


def empty_store_path() -> str:
    root = os.path.expanduser(os.environ.get("BICKD_CACHE_DIR", "~/.cache/bickd"))
    return os.path.join(root, f"mlflow-{mlflow.__version__}-empty.db")


def prepare_tracking_store(tracking_uri: str) -> None:
    """Before MLflow first opens `tracking_uri`: a SQLite store that does not exist yet starts as a copy of the
    kept empty one. Other stores (an existing file, a tracking server) are left as they are."""
    if not tracking_uri.startswith(SQLITE):
        return
    target = tracking_uri.removeprefix(SQLITE)
    if os.path.exists(target) or not os.path.isdir(os.path.dirname(target)):
        return  # an existing store is MLflow's; a missing folder is the preflight's to report
    try:
        template = empty_store_path()
        if not os.path.exists(template):
            _build_empty_store(template)
        _copy_into_place(template, target)
    except (OSError, sqlite3.Error) as err:  # a read-only cache, a full disk: MLflow builds the store itself
        log.debug("empty MLflow store not used (%s): MLflow builds %s", err, target)


def _build_empty_store(template: str) -> None:
    """MLflow builds a store in a private folder; its Default experiment is taken out (MLflow adds it back, with
    the right artifact location, wherever the copy is opened); it then replaces the kept file in one step."""
    os.makedirs(os.path.dirname(template), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(template)) as folder:
        path = os.path.join(folder, "empty.db")
        MlflowClient(tracking_uri=SQLITE + path).search_experiments()
        with sqlite3.connect(path) as connection:
            connection.execute("DELETE FROM experiments WHERE experiment_id = ?", (DEFAULT_EXPERIMENT_ID,))
        connection.close()
        os.replace(path, template)


def _copy_into_place(template: str, target: str) -> None:
    """Copied beside the target, then linked to its name: MLflow never sees half a file, and of two drivers
    starting on one new store the second finds the first's (a link never replaces a file; a rename would, under
    a store the first driver has already written to)."""
    partial = f"{target}.{os.getpid()}.part"
    try:
        shutil.copyfile(template, partial)
        try:
            os.link(partial, target)
        except FileExistsError:
            pass
    finally:
        if os.path.exists(partial):
            os.remove(partial)
