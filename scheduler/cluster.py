"""The Dask cluster the training executor runs on: which worker stands for which GPU node.

Each GPU node is one Dask worker named after the node (`project/name`), with `resources={"GPU":
n}` and the node's facts (node class, zone, region, domain, NVLink island, spot) handed to the
scheduler when the worker registers: `NodeFactsPlugin` adds them to the worker's startup
information, which the scheduler keeps in the worker's identity. `start_local_cluster` starts such
workers on this machine (one Nanny each, as the embedded fleet does); on a real cluster workers
started with `--preload infermesh.scheduler.worker` register the same way (see `worker.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from distributed import Client, Nanny, Scheduler, SpecCluster, WorkerPlugin

from infermesh.model.meta import _NAME_RE
from infermesh.scheduler.snapshot import NodeKey

FACTS_KEY = "infermesh_node_facts"  # where the facts appear in the worker's identity
CLOSE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class WorkerNode:
    """A GPU node to stand up as a local Dask worker."""

    node: NodeKey
    gpus: int
    facts: dict[str, str] = field(default_factory=dict)  # node_class, zone, region, domain, ...


class WorkerInfo(NamedTuple):
    """What the scheduler knows of the worker standing for a node."""

    address: str
    gpus: int
    facts: dict[str, str]


class NodeFactsPlugin(WorkerPlugin):
    """Hands the node's facts to the scheduler when the worker registers.

    It must be set up before the worker registers (Nanny/Worker `plugins=`, or a preload), since
    startup information travels only with the registration."""

    name = "infermesh-node-facts"

    def __init__(self, facts: Mapping[str, str]) -> None:
        self.facts = {str(k): str(v) for k, v in facts.items()}

    def setup(self, worker: Any) -> None:
        worker.startup_information[FACTS_KEY] = self._report

    def _report(self, _worker: Any) -> dict[str, str]:
        return dict(self.facts)


def is_node_key(name: object) -> bool:
    """Whether a worker name reads as a node key (`project/name`)."""
    if not isinstance(name, str):
        return False
    project, slash, node = name.partition("/")
    return bool(slash) and all(_NAME_RE.fullmatch(part) for part in (project, node))


def worker_spec(node: WorkerNode) -> dict[str, Any]:
    """The SpecCluster entry of a node's worker: a Nanny on 127.0.0.1 named after the node, a
    thread per GPU plus one spare (ranks only wait on their subprocesses), no memory limit."""
    if not is_node_key(node.node):
        raise ValueError(f"'{node.node}' is not a node key (project/name)")
    if node.gpus < 1:
        raise ValueError(f"node '{node.node}' needs at least one GPU, not {node.gpus}")
    return {
        "cls": Nanny,
        "options": {
            "name": node.node,
            "host": "127.0.0.1",
            "nthreads": node.gpus + 1,
            "resources": {"GPU": node.gpus},
            "memory_limit": 0,
            "dashboard": False,
            "silence_logs": logging.WARNING,
            "plugins": (NodeFactsPlugin(node.facts),),
        },
    }


async def start_local_cluster(nodes: Sequence[WorkerNode], *, port: int = 0) -> SpecCluster:
    """A scheduler on 127.0.0.1:`port` (0: a free one) and a worker per node, no dashboards."""
    keys = [n.node for n in nodes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"node keys must be unique: {keys}")
    workers = {n.node: worker_spec(n) for n in nodes}
    scheduler = {
        "cls": Scheduler,
        # The HTTP server starts anyway: keep it on a free 127.0.0.1 port, not 8787.
        "options": {
            "host": "127.0.0.1",
            "port": port,
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
        },
    }
    cluster = SpecCluster(workers=workers, scheduler=scheduler, asynchronous=True, name="infermesh")
    try:
        await cluster
    except BaseException:
        await close_cluster(cluster)
        raise
    return cluster


async def close_cluster(cluster: SpecCluster) -> None:
    """Close the workers (their rank subprocesses die with them) and the scheduler."""
    await asyncio.wait_for(cluster.close(), CLOSE_TIMEOUT_S)


def workers_from_identity(identity: Mapping[str, Any]) -> dict[NodeKey, WorkerInfo]:
    """The node workers in a scheduler identity (`Scheduler.identity()`); others are skipped."""
    out: dict[NodeKey, WorkerInfo] = {}
    for address, info in identity.get("workers", {}).items():
        name = info.get("name")
        if not is_node_key(name):
            continue
        gpus = int((info.get("resources") or {}).get("GPU", 0))
        facts = {str(k): str(v) for k, v in (info.get(FACTS_KEY) or {}).items()}
        out[name] = WorkerInfo(address, gpus, facts)
    return out


async def cluster_workers(client: Client) -> dict[NodeKey, WorkerInfo]:
    """Which Dask worker stands for which node, read from the scheduler now (every worker;
    `Client.scheduler_info` would list only the first few)."""
    return workers_from_identity(await client.scheduler.identity(n_workers=-1))
