"""A downloaded data set kept in the experiment's bucket (bickd_tune/data_copy.py), on a real local S3 server:
put there once per experiment, copied once per node, checked against its checksums, a corrupted copy refused."""
from __future__ import annotations

import boto3
import numpy as np
import pytest
import yaml

from bickd.data import load_data
from bickd.data.cifar import write_cifar100
from bickd.data.types import DataError
from bickd_tune.data_copy import keep_in_storage, on_this_node
from bickd_tune.experiment import load_experiment
from bickd_tune.paths import ExperimentPaths
from tests.conftest import TINY, deep_update
from tests.servers import bucket_keys, s3_server

CLASSES = 100


def _tiny_cifar(root) -> None:
    """CIFAR-100's own format, 2 training and 1 test image per class (what torchvision would have downloaded)."""
    rng = np.random.default_rng(0)
    write_cifar100(str(root), rng.integers(0, 256, (2 * CLASSES, 3, 32, 32)), list(range(CLASSES)) * 2,
                   rng.integers(0, 256, (CLASSES, 3, 32, 32)), list(range(CLASSES)),
                   [f"class{i}" for i in range(CLASSES)])


def test_a_downloaded_data_set_comes_from_the_bucket_once_and_verified(tmp_path, monkeypatch):
    root = tmp_path / "head-data"
    _tiny_cifar(root)
    with s3_server("bickd") as (endpoint, uri):
        path = tmp_path / "e.yaml"
        path.write_text(yaml.safe_dump(deep_update({"name": "e", **TINY}, {
            "data": {"name": "cifar100", "root": str(root), "download": True, "image_size": None},
            "search": {"num_samples": 1}, "storage_path": uri("experiments"),
            "tracking": {"tracking_uri": "http://127.0.0.1:5000"}})))
        experiment = load_experiment(str(path))
        paths = ExperimentPaths.of(experiment)

        kept = keep_in_storage(experiment, paths)
        stored = [k for k in bucket_keys(endpoint, "bickd", "experiments/e/data/")]
        assert any(k.endswith("/manifest.json") for k in stored) and len(stored) > 1
        assert kept.data.root.startswith("s3://bickd/experiments/e/data/") and not kept.data.download
        # Once per experiment: a resumed run (here without the head's download) finds it and uploads nothing.
        objects = {o["Key"]: o["LastModified"] for o in
                   boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="bickd")["Contents"]}
        for item in root.rglob("*"):
            if item.is_file():
                item.unlink()
        again = keep_in_storage(experiment, paths)
        assert again.data.root == kept.data.root
        assert {o["Key"]: o["LastModified"] for o in
                boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="bickd")["Contents"]} == objects

        # A node copies it once and trains from its copy.
        monkeypatch.setenv("BICKD_CACHE_DIR", str(tmp_path / "node1"))
        config = kept.base_train_config()
        local = on_this_node(config)
        assert local.data.root.startswith(str(tmp_path / "node1"))
        assert load_data(local.data).num_classes == CLASSES
        # A copy damaged on the node's disk is replaced by a fresh one.
        damaged = next(p for p in (tmp_path / "node1").rglob("train") if p.is_file())
        damaged.write_bytes(b"not the file")
        assert load_data(on_this_node(config).data).num_classes == CLASSES

        # A copy corrupted in the bucket: the node that checked its own copy keeps it; a new node refuses it.
        client = boto3.client("s3", endpoint_url=endpoint)
        train_key = next(k for k in stored if k.endswith("/train"))
        client.put_object(Bucket="bickd", Key=train_key, Body=b"corrupted")
        assert on_this_node(config).data.root == local.data.root
        monkeypatch.setenv("BICKD_CACHE_DIR", str(tmp_path / "node2"))
        with pytest.raises(DataError, match="train does not match its checksum"):
            on_this_node(config)
        assert not list((tmp_path / "node2" / "data").iterdir())  # nothing half-fetched left behind
