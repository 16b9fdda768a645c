"""Real servers for the cluster tests, on 127.0.0.1 only: an S3 API (moto's server mode), a PostgreSQL server
(the binaries the `pgserver` package ships), and an MLflow tracking server on a SQLite or PostgreSQL backend with
its artifacts in a bucket or a folder. Each is stopped by the test that started it, by its process id."""
from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager

from bickd_tune.mlflow_store import prepare_tracking_store

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SERVER_START_S = 120  # a server that is not answering by then has failed (a busy 2-core machine included)
SERVER_STOP_S = 30    # a server still running this long after its stop signal is killed
# PostgreSQL refuses to run as root (initdb and postgres exit at once): when the tests run as root (CI does),
# its processes run as this unprivileged account, which every Debian-like system has.
POSTGRES_ACCOUNT = "nobody"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server(bucket: str):
    """(endpoint, storage URI prefix for pyarrow and Ray) of a fresh S3 server holding `bucket`."""
    # optional: boto3 and moto come with the test extra and only the S3 tests need them (moto loads Flask)
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
    import boto3  # optional: the test extra's, only for the S3 tests
    client = boto3.client("s3", endpoint_url=endpoint)
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


@contextmanager
def postgres_server(database: str = "mlflow", durable: bool = False):
    """A real PostgreSQL server on 127.0.0.1 in a data folder of its own, with an empty database `database`;
    yields its SQLAlchemy URI. Stopped by its process id (a fast shutdown), then its folder is removed.

    The binaries come from the `pgserver` wheel (PyPI; PostgreSQL 16), run directly rather than through its
    Python layer, which as root would add a system user and open up the permissions of every parent folder.
    `durable=False` turns off fsync and friends: a test's server need not survive a power cut.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None:
        raise RuntimeError("PostgreSQL tests need the `pgserver` package: pip install -e '.[test]'")
    package = spec.submodule_search_locations[0]
    install = os.path.join(package, "pginstall")
    folder = tempfile.mkdtemp(prefix="bickd-pg-")  # not under pytest's tmp folder: only root may enter that
    as_account = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_ACCOUNT)
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        if not _open_to_others(install):  # e.g. a checkout inside a private folder: a copy the account can run
            install = _copy_binaries(package, os.path.join(folder, "site"))
    binaries = os.path.join(install, "bin")
    data, log_path, port = os.path.join(folder, "data"), os.path.join(folder, "postgres.log"), free_port()
    process = None
    try:
        initdb = subprocess.run([os.path.join(binaries, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                                 "--encoding=UTF8", "--no-sync"], capture_output=True, text=True,
                                timeout=SERVER_START_S, cwd=folder, **as_account)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stdout[-1000:]}{initdb.stderr[-2000:]}")
        settings = [] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [os.path.join(binaries, "postgres"), "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder,
                 *settings], stdout=log, stderr=subprocess.STDOUT, cwd=folder, **as_account)
        _create_database(process, port, database, log_path)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if process is not None:
            _stop(process, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


def _open_to_others(path: str) -> bool:
    """Whether any account may reach `path` (every folder above it searchable by others)."""
    path = os.path.abspath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _copy_binaries(package: str, into: str) -> str:
    """Copies the wheel's PostgreSQL with the shared libraries beside it (the binaries find them at
    `$ORIGIN/../../../pgserver.libs`); returns the copy's install folder."""
    install = shutil.copytree(os.path.join(package, "pginstall"), os.path.join(into, "pgserver", "pginstall"),
                              symlinks=True)
    libraries = os.path.join(os.path.dirname(package), "pgserver.libs")
    if os.path.isdir(libraries):
        shutil.copytree(libraries, os.path.join(into, "pgserver.libs"), symlinks=True)
    return install


def _create_database(process: subprocess.Popen, port: int, database: str, log_path: str) -> None:
    import psycopg  # optional: the test extra's PostgreSQL driver, needed by the PostgreSQL tests only

    deadline = time.time() + SERVER_START_S
    while True:
        try:
            connection = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                         connect_timeout=5, autocommit=True)  # CREATE DATABASE: no transaction
            break
        except psycopg.OperationalError:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"postgres did not start: {open(log_path).read()[-2000:]}") from None
            time.sleep(0.3)
    with connection:
        connection.execute(f'CREATE DATABASE "{database}"')


def _stop(process: subprocess.Popen, stop_signal: int = signal.SIGTERM) -> None:
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=SERVER_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SERVER_STOP_S)


@contextmanager
def mlflow_server(folder: str, artifacts: str, s3_endpoint: str | None = None, backend_store_uri: str | None = None):
    """A real `mlflow server` process with artifacts in `artifacts` (a bucket of the S3 server at `s3_endpoint`,
    or a folder) and its runs in `backend_store_uri` (default: a SQLite file in `folder`); yields its URL."""
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    backend = backend_store_uri or f"sqlite:///{os.path.join(folder, 'mlflow-server.db')}"
    prepare_tracking_store(backend)  # a new SQLite store: the platform's migrated empty copy, not 2 s of migrations
    env = {**os.environ, **CREDENTIALS, **({"MLFLOW_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {}),
           # MLflow 3 starts job-runner processes beside the server (GenAI jobs, unused here) that outlive a
           # stop by the server's process id for a while: not started, nothing of the server is left behind.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(os.path.join(folder, "mlflow-server.log"), "w")
    process = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend, "--artifacts-destination", artifacts],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
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
        _stop(process)
        log.close()
