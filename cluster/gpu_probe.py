"""Does a GPU node of this cluster see its GPU? Asks for one GPU on a node that advertises RESOURCE (gpu1, gpu4:
the autoscaler starts one if none is up), prints what torch sees there, and gives up after --timeout seconds.

    ray exec cluster/aws.mine.yaml 'cd ~/bickd-tune && python cluster/gpu_probe.py gpu1'

Exit status 0 when torch sees a GPU with bf16 there, 1 when it does not, 2 when no such node came up in time.
"""
from __future__ import annotations

import argparse
import sys

from bickd_tune.ray_env import init_ray, use_loopback

DEFAULT_TIMEOUT_S = 900  # a first GPU node: the VM, the image pull, the project's install


def what_torch_sees() -> dict:
    import torch  # the probe task's own import, on the GPU node (the driver never needs torch)

    if not torch.cuda.is_available():
        return {"gpu": None, "cuda": torch.version.cuda}
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python cluster/gpu_probe.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("resource", help="the node type's shape resource: gpu1 or gpu4")
    parser.add_argument("--address", default="auto", help="the cluster (default: the one this node belongs to)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the node")
    args = parser.parse_args(argv)
    if args.address.split(":")[0] in ("127.0.0.1", "localhost"):
        use_loopback()  # before Ray is imported: a cluster on this machine, with this machine's token
    import ray  # not at the top: use_loopback() above must run before the process's first `import ray`

    init_ray(args.address)
    probe = ray.remote(num_cpus=0, num_gpus=1, resources={args.resource: 1})(what_torch_sees).remote()
    ready, _ = ray.wait([probe], timeout=args.timeout)
    if not ready:
        print(f"error: no node with {args.resource} and a free GPU came up within {args.timeout:g} s; see `ray status` "
              "(quota for the GPU type, the autoscaler's log in /tmp/ray/session_latest/logs/monitor.*)",
              file=sys.stderr)
        return 2
    seen = ray.get(probe)
    if seen["gpu"] is None:
        print(f"error: torch (CUDA {seen['cuda']}) sees no GPU on the {args.resource} node: its NVIDIA driver is "
              "probably older than that CUDA needs (580 for CUDA 13); use the VM image cluster/README.md names",
              file=sys.stderr)
        return 1
    print(f"{args.resource}: torch sees {seen['gpu']} (CUDA {seen['cuda']}), bf16 {'yes' if seen['bf16'] else 'no'}")
    return 0 if seen["bf16"] else 1


if __name__ == "__main__":
    sys.exit(main())
