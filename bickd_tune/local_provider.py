"""The node provider of cluster/local.yaml: Ray's fake multi-node provider (worker "nodes" are processes on this
machine), with the one behaviour of a cloud it lacks: a node that stops answering is lost for good, and the
autoscaler launches another one for its trials.

Ray's autoscaler replaces a worker whose raylet stopped reporting only when the provider calls that node set up
(`ray-node-status: up-to-date`). The fake provider keeps the `uninitialized` status the node was launched with
(it runs no node updaters that would advance it), so a killed fake node counted as still starting, forever, and
the trials it held waited for it. A fake node needs no set-up: it is up to date as soon as it runs.
"""
from __future__ import annotations

from ray.autoscaler.tags import STATUS_UP_TO_DATE, TAG_RAY_NODE_STATUS

from bickd_tune.ray_internals import FakeMultiNodeProvider  # Ray ships it only in a private module


class LocalNodeProvider(FakeMultiNodeProvider):
    def node_tags(self, node_id):
        return {**super().node_tags(node_id), TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
