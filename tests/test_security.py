"""Static guarantees: safe loading everywhere, no eval of config text, no credentials committed."""
from __future__ import annotations

import os
import re
import subprocess

from cluster.check import CREDENTIAL_PATTERNS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked(suffixes: tuple[str, ...]) -> list[str]:
    files = subprocess.run(["git", "-C", REPO, "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    return [os.path.join(REPO, f) for f in files if f.endswith(suffixes) and os.path.isfile(os.path.join(REPO, f))]


def _code() -> dict[str, str]:
    return {path: open(path, encoding="utf-8").read() for path in _tracked((".py",))
            if "/tests/" not in path}


def _calls(text: str, name: str) -> list[str]:
    """Every `name(...)` call with its balanced argument list."""
    calls = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start():end + 1])
    return calls


def test_checkpoints_load_weights_only_and_yaml_safely():
    for path, text in _code().items():
        for call in _calls(text, "torch.load"):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), path
        assert "pickle.load(" not in text or path.endswith("bickd/data/cifar.py"), path  # CIFAR's own format


def test_servers_listen_on_loopback_only():
    for path in _tracked((".py", ".md", ".yaml")):
        if "/tests/" in path:
            continue  # the tests name the forbidden settings in order to refuse them
        text = open(path, encoding="utf-8").read()
        for block in re.split(r"^```", text, flags=re.MULTILINE):
            for host in re.findall(r"--host[= ](\S+)", block) + re.findall(r"--dashboard-host[= ](\S+)", block):
                host = host.strip("`'\",")
                if host == "0.0.0.0" and _cluster_internal(block):
                    continue  # a pod serving its ClusterIP Service: unreachable from outside the Kubernetes cluster
                assert host in ("127.0.0.1", "localhost"), f"{path}: {host}"


def _cluster_internal(manifest: str) -> bool:
    """A Kubernetes manifest whose only exposure is a ClusterIP Service (no LoadBalancer, NodePort, host port)."""
    return ("kind: Service" in manifest and "type: ClusterIP" in manifest
            and not re.search(r"LoadBalancer|NodePort|hostNetwork|hostPort|kind: Ingress", manifest))


def test_the_cluster_internal_exception_is_narrow():
    service = "kind: Deployment\n  mlflow server --host 0.0.0.0\n---\nkind: Service\nspec:\n  type: ClusterIP\n"
    assert _cluster_internal(service)
    assert not _cluster_internal(service.replace("ClusterIP", "LoadBalancer"))
    assert not _cluster_internal(service.replace("type: ClusterIP", "type: NodePort"))
    assert not _cluster_internal("mlflow server --host 0.0.0.0")


def test_no_credentials_in_any_committed_file():
    """The patterns cluster/check.py refuses in a cluster config, applied to every committed file."""
    for path in _tracked((".py", ".md", ".yaml", ".yml", ".toml", ".json", ".txt", "run")):
        if "/tests/" in path:
            continue  # tests hold deliberately fake keys to prove the checks catch them
        text = open(path, encoding="utf-8", errors="ignore").read()
        for what, pattern in CREDENTIAL_PATTERNS.items():
            assert not pattern.search(text), f"{path}: {what} ({pattern.pattern})"


def test_the_credential_patterns_catch_pasted_keys():
    leaks = {"AWS access key id": "key: AKIAABCDEFGHIJKLMNOP", "private key block": "-----BEGIN RSA PRIVATE KEY-----",
             "AWS secret key": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
             "Azure storage key": "DefaultEndpointsProtocol=https;AccountKey=abcdefghijklmnopqrstuvwxyz0123==",
             "Ray token": "RAY_AUTH_TOKEN=0123456789abcdef0123", "GitHub token": "ghp_" + "a" * 36,
             "password": 'password: "hunter2"'}
    assert set(leaks) == set(CREDENTIAL_PATTERNS)
    for what, text in leaks.items():
        assert CREDENTIAL_PATTERNS[what].search(text), what
        assert not CREDENTIAL_PATTERNS[what].search("aws_secret_access_key, password and AKIA are words"), what
