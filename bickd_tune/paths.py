"""Where everything of an experiment lives, decided once from its config.

Local storage keeps it all in one folder, `<storage_path>/<name>/`. Remote storage (s3://...) holds Tune's
state, the checkpoints, the teacher, the logit cache, the YAML and the Optuna study; the driver keeps a
working copy of the study and writes its tables and report under `$BICKD_STATE_DIR/<name>` (default
~/.bickd), which a replaced head rebuilds from the bucket.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from bickd_tune import storage


def state_root() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("BICKD_STATE_DIR", "~/.bickd")))


@dataclass(frozen=True)
class ExperimentPaths:
    name: str
    storage_root: str       # Tune's storage_path (a folder or URI, query options included)
    experiment_uri: str     # the experiment's folder in storage: Tune's experiment path
    local_dir: str          # the driver's working folder (== experiment_uri for local storage)
    tracking_uri: str
    remote: bool

    @classmethod
    def of(cls, experiment) -> ExperimentPaths:
        if experiment.is_remote:
            root = experiment.storage_path
            local = os.path.join(state_root(), experiment.name)
            uri = storage.join(root, experiment.name)
        else:
            local = os.path.abspath(os.path.join(experiment.storage_path.removeprefix("file://"), experiment.name))
            root, uri = os.path.dirname(local), local
        return cls(name=experiment.name, storage_root=root, experiment_uri=uri, local_dir=local,
                   tracking_uri=experiment.tracking.tracking_uri or f"sqlite:///{os.path.join(local, 'mlflow.db')}",
                   remote=experiment.is_remote)

    @property
    def identity(self) -> str:
        """What names this experiment in MLflow tags: its storage location, the same from any head."""
        return storage.without_query(self.experiment_uri)

    @property
    def optuna_db(self) -> str:
        return os.path.join(self.local_dir, "optuna.db")

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    def storage(self) -> storage.Storage:
        return storage.Storage(self.experiment_uri)

    def in_storage(self, *parts: str) -> str:
        """A URI (or path) inside the experiment's storage folder."""
        return storage.join(self.experiment_uri, *parts)
