"""The embedded Dask cluster: one local Nanny worker per GPU node the fleet's agents report.

Used when `infermesh scheduler` gets no `--dask` address (as under `infermesh up`). Workers follow
the fleet like a controller follows its objects: a node whose agent reports GPUs gets a worker
named after it, with its GPUs as resources and its facts; a node that is gone loses its worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from distributed import SpecCluster

from infermesh.scheduler.cluster import WorkerNode, close_cluster, start_local_cluster, worker_spec
from infermesh.scheduler.inventory import ISLAND_LABEL

log = logging.getLogger(__name__)

FIRST_NODES_WAIT_S = 30.0  # how long to wait for the fleet's first reports before starting
SETTLE_S = 2.0  # more reports arriving within this are started together

Reported = Callable[[], Mapping[str, tuple[Mapping[str, Any], Any]]]  # SchedulerService.nodes


def worker_nodes(reported: Mapping[str, tuple[Mapping[str, Any], Any]]) -> list[WorkerNode]:
    """A WorkerNode for every reported node with GPUs, facts as the agent reports them."""
    out = []
    for key, (report, node) in sorted(reported.items()):
        facts = report.get("facts") or {}
        gpus = int(facts.get("gpuCount") or 0)
        if gpus <= 0:
            continue
        labels = node.metadata.labels if node is not None else {}
        out.append(
            WorkerNode(
                node=key,
                gpus=gpus,
                facts={
                    "node_class": str(facts.get("nodeClass") or ""),
                    "zone": str(facts.get("zone") or ""),
                    "region": str(facts.get("region") or ""),
                    "domain": str(facts.get("domain") or ""),
                    "island": labels.get(ISLAND_LABEL, key),
                    "spot": str(bool(facts.get("spot"))).lower(),
                },
            )
        )
    return out


class LocalFleetCluster:
    def __init__(self, reported: Reported, *, port: int = 0) -> None:
        self._reported = reported
        self._port = port
        self.cluster: SpecCluster | None = None

    @property
    def address(self) -> str:
        assert self.cluster is not None
        return str(self.cluster.scheduler_address)

    async def start(self) -> None:
        """Start once the fleet has reported (or after FIRST_NODES_WAIT_S with what there is)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_NODES_WAIT_S
        while not worker_nodes(self._reported()) and loop.time() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(SETTLE_S)
        nodes = worker_nodes(self._reported())
        log.info("starting a local Dask cluster with %d GPU node workers", len(nodes))
        self.cluster = await start_local_cluster(nodes, port=self._port)

    async def follow(self) -> None:
        """Keep one worker per reported GPU node; runs until cancelled."""
        while True:
            await asyncio.sleep(SETTLE_S)
            cluster = self.cluster
            if cluster is None:
                continue
            wanted = {n.node: n for n in worker_nodes(self._reported())}
            have = set(cluster.worker_spec)
            if wanted.keys() == have:
                continue
            for name in have - wanted.keys():
                del cluster.worker_spec[name]
            for name in wanted.keys() - have:
                cluster.worker_spec[name] = worker_spec(wanted[name])
            log.info("local Dask cluster now stands for %d nodes", len(wanted))
            await cluster._correct_state()  # SpecCluster's own way to apply a changed spec

    async def close(self) -> None:
        if self.cluster is not None:
            await close_cluster(self.cluster)
