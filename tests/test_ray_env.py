"""A local Ray instance started by the CLI lives on the loopback interface; joining a cluster is untouched."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bickd_tune.ray_env import joined_runtime_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import sys
from bickd_tune.ray_env import use_loopback, init_ray
took = use_loopback()
import ray
init_ray(num_cpus=1)
ip = ray.util.get_node_ip_address()
gcs = ray.get_runtime_context().gcs_address
ray.shutdown()
print(took, ip, gcs)
"""


@pytest.mark.ray
def test_local_instance_uses_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env.update(PYTHONPATH=REPO, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_ADDRESS="127.0.0.1:1")  # never joined: without --address the CLI starts its own instance
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    took, ip, gcs = out.stdout.split()[-3:]
    assert (took, ip) == ("True", "127.0.0.1")
    assert gcs.startswith("127.0.0.1:")


def test_loopback_is_not_forced_once_ray_is_imported():
    out = subprocess.run([sys.executable, "-c", "import ray; from bickd_tune.ray_env import use_loopback; "
                          "import os; os.environ.pop('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', None); "
                          "print(use_loopback())"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.stdout.split()[-1] == "False", out.stderr[-2000:]


def test_a_joined_cluster_gets_the_code_and_only_the_settings_trials_read(monkeypatch):
    """A variable a Ray job's own runtime env sets too (BICKD_GIT_COMMIT on KubeRay) would make Ray refuse to
    merge the driver's runtime env with the job's: only what trials read is passed on."""
    monkeypatch.setenv("BICKD_GIT_COMMIT", "abc123")
    monkeypatch.delenv("BICKD_CACHE_DIR", raising=False)
    assert "env_vars" not in joined_runtime_env()
    monkeypatch.setenv("BICKD_CACHE_DIR", "/scratch/bickd")
    env = joined_runtime_env()
    assert env["env_vars"] == {"BICKD_CACHE_DIR": "/scratch/bickd"}
    assert sorted(os.path.basename(path) for path in env["py_modules"]) == ["bickd", "bickd_tune"]
