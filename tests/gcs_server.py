"""A real GCS API on 127.0.0.1 for the storage tests: gcp-storage-emulator's server, reached by pyarrow's own
GCS client with Application Default Credentials, as on Google Cloud. The credentials file is an authorized-user
one whose token endpoint is local (the emulator checks no token; the client still fetches one)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

from tests.servers import free_port

SERVER_START_S = 60


class _TokenEndpoint(BaseHTTPRequestHandler):
    """An OAuth2 token endpoint that grants any request a short-lived token."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": "local", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def gcs_server(folder: str, bucket: str):
    """(a function prefix -> gs:// URI in `bucket`, the environment that holds the credentials) of a fresh
    GCS API holding `bucket`; gs://<other bucket> names a bucket that does not exist."""
    tokens = HTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    credentials = os.path.join(folder, "gcs-credentials.json")
    with open(credentials, "w", encoding="utf-8") as handle:
        json.dump({"type": "authorized_user", "client_id": "local", "client_secret": "local", "refresh_token": "local",
                   "token_uri": f"http://127.0.0.1:{tokens.server_port}/token"}, handle)
    port, log = free_port(), os.path.join(folder, "gcs-server.log")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                    "--port", str(port), "--in-memory", "--default-bucket", bucket],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"GCS emulator did not start: {open(log).read()[-2000:]}") from None
                time.sleep(0.2)
        query = f"endpoint_override=127.0.0.1%3A{port}&scheme=http"
        uri = (lambda prefix, name=bucket: f"gs://{name}/{prefix}?{query}")
        yield uri, {"GOOGLE_APPLICATION_CREDENTIALS": credentials}
    finally:
        process.terminate()
        process.wait(timeout=30)
        tokens.shutdown()
