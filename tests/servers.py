"""Real servers for the cluster tests, on 127.0.0.1 only: an S3 API (moto's server mode) and an MLflow
tracking server whose artifact store is a bucket of it. Each is stopped by the test that started it."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(bucket: str):
    """(endpoint, storage URI prefix for pyarrow and Ray) of a fresh S3 server holding `bucket`."""
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        query = f"endpoint_override={host}%3A{port}&scheme=http&region=us-east-1"
        yield endpoint, lambda prefix: f"s3://{bucket}/{prefix}?{query}"
    finally:
        server.stop()


def bucket_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint)
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


@contextmanager
def mlflow_server(folder: str, artifacts: str, s3_endpoint: str):
    """A real `mlflow server` process (SQLite backend, artifacts in `artifacts`); yields its URL."""
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(os.path.join(folder, "mlflow-server.log"), "w")
    process = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{os.path.join(folder, 'mlflow-server.db')}",
         "--artifacts-destination", artifacts],
        env={**os.environ, **CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"mlflow server did not start: {open(log.name).read()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
