"""A multi-node Ray cluster on one machine, from a launcher YAML (cluster/local.yaml), with Ray's fake
multi-node provider: worker "nodes" are local processes that the autoscaler starts and stops like VMs.

    python -m bickd_tune.local_cluster up [--config cluster/local.yaml] [--port 6379]
    python -m bickd_tune.local_cluster services           # an S3 API (moto) and an MLflow server beside it
    python -m bickd_tune.local_cluster nodes              # node types launched so far, alive or lost
    python -m bickd_tune.local_cluster kill-node NODE_ID  # a lost machine: its raylet and all it started
    python -m bickd_tune.local_cluster down               # stops this cluster's processes only

Every address is 127.0.0.1; the cluster's processes are found by its own Ray temp folder, so `down` never
touches another Ray on the machine (`ray stop` would). Token authentication is on, with this machine's Ray
token (~/.ray/auth_token: the one a local `ray.init()` wrote, else a new one): the platform's drivers and
these commands find it themselves (bickd_tune.ray_env.use_loopback).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

from bickd_tune.processes import kill, node_processes, stop_processes_under
from bickd_tune.ray_env import AUTH_MODE, LOOPBACK_SWITCH, machine_token, use_loopback

CONNECT_TIMEOUT_S = 5
# Generous bounds for commands and servers that take seconds: past them they are stuck, not slow, and the error
# says which one and where its log is.
TOKEN_COMMAND_TIMEOUT_S = 120  # `ray get-auth-token --generate`
RAY_START_TIMEOUT_S = 180      # `ray start --head` with the autoscaler
SERVICE_START_TIMEOUT_S = 120  # moto's S3 and the MLflow server answering their health URL
SERVICE_POLL_S, SERVICE_PROBE_TIMEOUT_S = 0.5, 2
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster", "local.yaml")


def default_temp_dir(port: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"bickd-cluster-{port}")


def cluster_env() -> dict[str, str]:
    """Ray's fake provider on; loopback only (no node may use the machine's outward address); token
    authentication on unless the user chose a mode (the autoscaler starts the worker nodes with this too)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", AUTH_MODE: "token", **os.environ, "RAY_FAKE_CLUSTER": "1",
            LOOPBACK_SWITCH: "0"}


def ensure_token(env: dict[str, str]) -> str | None:
    """This machine's Ray token, created with Ray's own command (`ray get-auth-token --generate`) when there is
    none yet; returns where it is (None when token authentication is off)."""
    if env.get(AUTH_MODE) != "token":
        return None
    if machine_token() is None:
        # it prints the token: captured, kept out of the terminal
        result = subprocess.run([ray_command(), "get-auth-token", "--generate"], env=env, capture_output=True,
                                text=True, timeout=TOKEN_COMMAND_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"ray get-auth-token --generate failed: {result.stderr.strip()[-1000:]}")
    return machine_token()


def ray_command() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def up(config_path: str = DEFAULT_CONFIG, port: int = 6379, temp_dir: str | None = None) -> str:
    """Starts the head from `config_path` (its head node type's resources) and returns the address."""
    temp_dir = temp_dir or default_temp_dir(port)
    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    os.makedirs(temp_dir, exist_ok=True)
    written = os.path.join(temp_dir, "autoscaling.yaml")
    with open(written, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    head = dict(config["available_node_types"][config["head_node_type"]]["resources"])
    cpus, gpus = head.pop("CPU", 0), head.pop("GPU", 0)
    command = [ray_command(), "start", "--head", f"--port={port}",
               f"--num-cpus={cpus:g}", f"--num-gpus={gpus:g}", f"--resources={json.dumps(head)}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--autoscaling-config={written}",
               f"--temp-dir={temp_dir}"]
    env = cluster_env()
    ensure_token(env)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RAY_START_TIMEOUT_S)
    if result.returncode != 0:
        stop_processes_under(temp_dir)
        raise RuntimeError(f"ray start failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return f"127.0.0.1:{port}"


# moto checks no credentials, but S3 clients sign requests: these are the emulator's dummy pair.
DUMMY_KEYS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


def services(temp_dir: str, s3_port: int = 9000, mlflow_port: int = 5000, bucket: str = "bickd") -> tuple[str, str]:
    """Starts an S3 API (moto's server) holding `bucket` and an MLflow server whose artifacts go to it, both on
    127.0.0.1 and logging into `temp_dir` (so `down` stops them too); returns (storage URI, tracking URI)."""
    os.makedirs(temp_dir, exist_ok=True)
    env = {**os.environ, **DUMMY_KEYS, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}
    bin_dir = os.path.dirname(sys.executable)
    commands = {
        f"http://127.0.0.1:{s3_port}/": [os.path.join(bin_dir, "moto_server"), "-H", "127.0.0.1", "-p",
                                                  str(s3_port)],
        f"http://127.0.0.1:{mlflow_port}/health": [
            os.path.join(bin_dir, "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{os.path.join(temp_dir, 'mlflow.db')}",
            "--artifacts-destination", f"s3://{bucket}/mlflow"]}
    for health, command in commands.items():
        log = open(os.path.join(temp_dir, os.path.basename(command[0]) + ".log"), "w")
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + SERVICE_START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(health, timeout=SERVICE_PROBE_TIMEOUT_S)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{command[0]} did not start; see {log.name}") from None
                time.sleep(SERVICE_POLL_S)
        if "moto" in command[0]:
            import boto3  # optional: comes with the test extra (moto), which this local S3 needs anyway
            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", **_boto_keys()).create_bucket(Bucket=bucket)
    keys = f"{DUMMY_KEYS['AWS_ACCESS_KEY_ID']}:{DUMMY_KEYS['AWS_SECRET_ACCESS_KEY']}"
    storage = (f"s3://{keys}@{bucket}/experiments?endpoint_override=127.0.0.1%3A{s3_port}&scheme=http"
               f"&region={DUMMY_KEYS['AWS_DEFAULT_REGION']}")
    return storage, f"http://127.0.0.1:{mlflow_port}"


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"], "region_name": DUMMY_KEYS["AWS_DEFAULT_REGION"]}


def down(temp_dir: str) -> int:
    return stop_processes_under(temp_dir)


def node_types(config_path: str) -> dict[str, dict[str, float]]:
    with open(config_path, encoding="utf-8") as handle:
        return {name: spec["resources"] for name, spec in yaml.safe_load(handle)["available_node_types"].items()}


def type_of(resources: dict[str, float], types: dict[str, dict[str, float]]) -> str:
    """The node type whose custom resources (and GPU count) a node advertises."""
    for name, declared in types.items():
        custom = {k: v for k, v in declared.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        if all(resources.get(k) == v for k, v in custom.items()) and resources.get("GPU", 0) == declared.get("GPU", 0):
            return name
    return "unknown"


def nodes(address: str, config_path: str = DEFAULT_CONFIG) -> list[dict]:
    """Every node the cluster has had: id, type, alive (lost nodes stay listed, not alive). Joins as a second
    driver: call `use_loopback()` before Ray is imported (main does)."""
    import ray  # not at the top: use_loopback() must run before the process's first `import ray`

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        raise RuntimeError(f"no cluster answers at {address} (start it with `python -m bickd_tune.local_cluster "
                           "up`, or pass its --port)") from None
    types = node_types(config_path)
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return [{"node_id": n["NodeID"], "type": type_of(n["Resources"], types), "alive": n["Alive"]}
                for n in ray.nodes()]
    finally:
        ray.shutdown()


def kill_node(node_id: str) -> int:
    """What losing a machine does: its raylet and every process it started die at once."""
    victims = node_processes(node_id)
    kill(victims, grace_s=0)
    return len(victims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bickd_tune.local_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "services", "down", "nodes", "kill-node"])
    parser.add_argument("node_id", nargs="?", help="for kill-node")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="launcher YAML (default: cluster/local.yaml)")
    parser.add_argument("--port", type=int, default=6379, help="the head's GCS port")
    parser.add_argument("--temp-dir", default=None, help="Ray temp folder (default: /tmp/bickd-cluster-<port>)")
    args = parser.parse_args(argv)
    use_loopback()  # before Ray is imported: `nodes` joins the cluster at 127.0.0.1 with this machine's token
    temp_dir = args.temp_dir or default_temp_dir(args.port)
    if args.action == "up":
        address = up(args.config, args.port, temp_dir)
        token = machine_token() if cluster_env().get(AUTH_MODE) == "token" else None
        print(f"cluster up at {address} (Ray temp folder {temp_dir}); run an experiment with --address {address}\n"
              + (f"token authentication on, with this machine's token ({token}); a Ray driver of your own joins "
                 f"with {LOOPBACK_SWITCH}=0 {AUTH_MODE}=token" if token else "token authentication off"))
    elif args.action == "services":
        storage, tracking = services(temp_dir)
        print(f"S3 API and MLflow server up (logs in {temp_dir}); run an experiment with\n"
              f'  --storage "{storage}" --tracking-uri {tracking}')
    elif args.action == "down":
        print(f"stopped {down(temp_dir)} processes of the cluster in {temp_dir}")
    elif args.action == "nodes":
        try:
            print(json.dumps(nodes(f"127.0.0.1:{args.port}", args.config), indent=1))
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    else:
        if not args.node_id:
            parser.error("kill-node needs the NODE_ID (see the nodes action)")
        print(f"killed {kill_node(args.node_id)} processes of node {args.node_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
