"""The experiment's storage: a local folder or a bucket (s3://, gs://, ... through pyarrow), the one place
every node and a replaced head can read. Tune keeps its state and trial checkpoints there; the platform
keeps the teacher's checkpoints, the teacher-logit cache, the experiment's YAML and the Optuna study there.

URIs may carry pyarrow's query options (`s3://bucket/prefix?endpoint_override=127.0.0.1%3A9000&scheme=http`):
`join` keeps them at the end.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
import torch

# pyarrow's file systems (pyarrow 25: S3, GCS, Azure Data Lake / Blob Storage as abfs[s]://, HDFS). Azure's az://
# is not among them: abfss://<container>@<account>.dfs.core.windows.net/<path> names the same place.
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://")
# GCS retries a failing request (missing credentials included) for 15 minutes by default: a check tries shortly.
GCS_CHECK_RETRY_S = 20
ERROR_LINE_MAX_CHARS = 300  # an error quoted inside a one-line message: its first line, never a whole page
# What pyarrow's errors mean, by cloud: (words in the error, what is missing and how to provide it).
FAILURES = (
    (("OAuth2 access token",), "no Google credentials (`gcloud auth application-default login` on your machine, "
     "GOOGLE_APPLICATION_CREDENTIALS, or on a cluster the nodes' service account)"),
    (("DefaultAzureCredential",), "no Azure credentials (`az login` on your machine, or on a cluster the nodes' "
     "managed identity with Storage Blob Data Contributor on the account)"),
    (("NoSuchBucket", "bucket does not exist", "ContainerNotFound", "NOT_FOUND"),
     "the bucket (or container) does not exist"),
    (("InvalidAccessKeyId", "SignatureDoesNotMatch", "No response body", "credentials"),
     "no valid AWS credentials (`aws configure`, AWS_PROFILE, or on a cluster the nodes' instance profile)"),
    (("AccessDenied", "ACCESS_DENIED", "PERMISSION_DENIED", "AuthorizationPermissionMismatch"),
     "access denied: the credentials in use may not write there"),
)


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def join(uri: str, *parts: str) -> str:
    """`uri`/`parts`, with a query string (pyarrow's options) kept at the end."""
    base, _, query = uri.partition("?")
    path = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return f"{path}?{query}" if query else path


def without_query(uri: str) -> str:
    """The location alone, without pyarrow's options or credentials in the URI (`s3://key:secret@bucket`):
    what identifies an experiment whatever reaches it. (Azure's `container@account` is a location: it stays.)"""
    location = uri.partition("?")[0]
    scheme, sep, rest = location.partition("://")
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    return f"{scheme}{sep}{rest.split('@', 1)[-1]}" if sep and ":" in userinfo else location


class Storage:
    """Files under one folder of a local or remote file system; picklable (rebuilt from its URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = pafs.FileSystem.from_uri(uri)

    def __reduce__(self):
        return Storage, (self.uri,)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self._path(name)).type != pafs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as handle:
            return handle.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole or not at all: a local file is written aside and renamed; an object store's put is atomic."""
        path = self._path(name)
        if isinstance(self.fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
            return
        with self.fs.open_output_stream(path) as out:  # object stores have no folders to create
            out.write(data)

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def write_json(self, name: str, value: Any) -> None:
        self.write_bytes(name, json.dumps(value, indent=1).encode())

    def read_torch(self, name: str) -> Any:
        return torch.load(io.BytesIO(self.read_bytes(name)), map_location="cpu", weights_only=True)

    def write_torch(self, name: str, value: Any) -> None:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        self.write_bytes(name, buffer.getvalue())

    def upload(self, local_path: str, name: str) -> None:
        """A local file or folder into `name` (a folder: every file under it)."""
        if os.path.isdir(local_path):
            pafs.copy_files(local_path, self._path(name), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        else:
            with open(local_path, "rb") as handle:
                self.write_bytes(name, handle.read())

    def download(self, name: str, local_path: str) -> None:
        """`name` (a file or a folder) to `local_path`, placed there whole by a rename."""
        parent = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".download-")
        target = os.path.join(tmp, "x")
        if self.fs.get_file_info(self._path(name)).type == pafs.FileType.Directory:
            os.makedirs(target)
            pafs.copy_files(self._path(name), target, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        else:
            with open(target, "wb") as handle:
                handle.write(self.read_bytes(name))
        try:
            os.replace(target, local_path)
        except OSError:  # another process on this node won the race with the same bytes
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def scheme(uri: str) -> str:
    return urlsplit(uri).scheme or "file"


def for_a_check(uri: str) -> str:
    """`uri` as a quick check should open it: a GCS location retries for seconds, not 15 minutes."""
    if scheme(uri) in ("gs", "gcs") and "retry_limit_seconds=" not in uri:
        return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_CHECK_RETRY_S}"
    return uri


def failure(err: BaseException) -> str:
    """What pyarrow's error says is missing, in a few words (its own first line when it is none of FAILURES)."""
    text = str(err)
    for words, meaning in FAILURES:
        if any(word in text for word in words):
            return meaning
    return first_line(err)


def first_line(err: BaseException) -> str:
    """An error's first line (its type's name when it has no text), short enough to quote in a one-line message."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:ERROR_LINE_MAX_CHARS]
