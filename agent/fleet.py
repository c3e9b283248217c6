"""`infermesh fleet`: a simulated GPU fleet in one process.

Each node is a vLLM-compatible runtime simulator (its own HTTP server on its own port) watched
by a real node agent that registers the node in etcd and reports its simulated GPUs. Hundreds
of them share one event loop, one etcd connection, one lease and one watch of the Node objects,
so a 2-core machine can hold a realistic fleet.

A fleet file is YAML: one `kind: Fleet` document (groups of identical nodes) and the ordinary
objects those nodes need (Domains, NodeClasses, Models), which the fleet creates through the API
before its nodes start (only those missing: operators' later changes survive a restart).
`agent/fleets/default.yaml` is the fleet `infermesh up` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from infermesh.agent.agent import Agent, AgentConfig, FactOverrides
from infermesh.agent.conditions import Deadband
from infermesh.agent.feed import SpecFeed
from infermesh.agent.http import MetricsServer
from infermesh.agent.lease import LeaseKeeper
from infermesh.agent.metrics import agent_registry
from infermesh.agent.sim.server import RunningSim, start
from infermesh.agent.sim.simulator import SimConfig
from infermesh.agent.sim.wan import DEFAULT_RTT_MS, Location, Wan
from infermesh.client import AsyncMeshClient
from infermesh.errors import Invalid, NotFound
from infermesh.manifest import load_documents, parse_documents
from infermesh.model import LinkClass, Name, Resource, StrictModel
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout

log = logging.getLogger(__name__)

DEFAULT_FLEET = "default.yaml"


class FleetGroup(StrictModel):
    """`count` identical nodes named `{name}-1`, `{name}-2`, ..."""

    name: Name
    count: int = Field(1, ge=0)
    nodeClass: Name
    domain: Name
    region: str | None = None
    zone: str | None = None
    model: Name
    profile: Literal["H100", "A100", "L4", "CPU"] = "H100"
    maxNumSeqs: int = Field(64, ge=1)
    pricePerGpuHour: float | None = Field(None, ge=0)  # USD; what training and routing charge


class FleetSpec(StrictModel):
    groups: list[FleetGroup] = Field(min_length=1)
    # Round trip (ms) per link class, paid by requests from another zone, region or domain.
    linkClasses: dict[LinkClass, float] = Field(default_factory=lambda: dict(DEFAULT_RTT_MS))


class FleetMeta(StrictModel):
    name: Name


class FleetDoc(StrictModel):
    apiVersion: Literal["v1"]
    kind: Literal["Fleet"]
    metadata: FleetMeta
    spec: FleetSpec


@dataclass(frozen=True)
class FleetFile:
    spec: FleetSpec
    objects: list[Resource]  # what the nodes refer to, applied before they start


def load_fleet(path: Path | None = None) -> FleetFile:
    """A fleet file, or the packaged default; errors name the file, line and field."""
    if path is None:
        source = files("infermesh.agent").joinpath("fleets", DEFAULT_FLEET)
        text, where = source.read_text(), f"<fleet {DEFAULT_FLEET}>"
    else:
        text, where = path.read_text(), str(path)
    docs = load_documents(text, where)
    fleets = [d for d in docs if d.data.get("kind") == "Fleet"]
    if len(fleets) != 1:
        raise Invalid(
            f"{where}: a fleet file needs exactly one 'kind: Fleet' document, found {len(fleets)}"
        )
    try:
        fleet = FleetDoc.model_validate(fleets[0].data)
    except ValueError as exc:
        raise Invalid(f"{where}:{fleets[0].line}: invalid Fleet: {exc}") from None
    objects = parse_documents([d for d in docs if d.data.get("kind") != "Fleet"])
    return FleetFile(fleet.spec, objects)


def sized(spec: FleetSpec, nodes: int | None) -> list[FleetGroup]:
    """The groups with their counts, or `nodes` nodes dealt over the groups in turn."""
    if nodes is None:
        return list(spec.groups)
    counts = [0] * len(spec.groups)
    for i in range(nodes):
        counts[i % len(counts)] += 1
    return [g.model_copy(update={"count": n}) for g, n in zip(spec.groups, counts, strict=True)]


@dataclass
class FleetNode:
    name: str
    group: FleetGroup
    sim: RunningSim
    agent: Agent


class SimulatedFleet:
    """The nodes of a fleet file, started and stopped together."""

    def __init__(
        self,
        fleet: FleetFile,
        store: EtcdStore,
        client: AsyncMeshClient,
        *,
        project: str = "default",
        etcd_prefix: str = "/infermesh",
        nodes: int | None = None,
        time_scale: float = 1.0,
        lease_ttl_s: int = 5,
        deadband: Deadband | None = None,
        agent_http: bool = False,
    ) -> None:
        self.fleet = fleet
        self._store, self._client = store, client
        self._project, self._prefix = project, etcd_prefix
        self._groups = sized(fleet.spec, nodes)
        self._domain_regions = {g.domain: g.region for g in fleet.spec.groups if g.region}
        self._time_scale = time_scale
        self._agent_http = agent_http
        self._deadband = deadband or Deadband()
        self._feed = SpecFeed(store, KeyLayout(etcd_prefix), project)
        self._lease = LeaseKeeper(store, lease_ttl_s)
        self.nodes: list[FleetNode] = []

    async def start(self) -> None:
        # The file's objects are defaults: created when missing, never re-applied over what
        # operators have since changed (a traffic split, pins, a drain) when the fleet restarts.
        missing = [o for o in self.fleet.objects if not await self._exists(o)]
        if missing:
            objects = [o.to_dict() for o in missing]
            for obj in objects:  # the fleet's project, whatever the file says
                obj["metadata"]["project"] = self._project
            await self._client.apply(objects, project=self._project)
        await self._feed.start()
        await self._lease.start()
        seed = 0
        for group in self._groups:
            for i in range(1, group.count + 1):
                seed += 1
                self.nodes.append(await self._start_node(group, f"{group.name}-{i}", seed))
        log.info("fleet: %d nodes up", len(self.nodes))

    async def _exists(self, obj: Resource) -> bool:
        try:
            found = await self._client.get(obj.plural, obj.metadata.name, project=self._project)
        except NotFound:
            return False
        return bool(found["metadata"].get("uid"))  # a built-in strategy is shown, not stored

    async def _start_node(self, group: FleetGroup, name: str, seed: int) -> FleetNode:
        wan = Wan(
            Location(group.domain, group.region, group.zone),
            self._domain_regions,
            self.fleet.spec.linkClasses,
        )
        sim = await start(
            SimConfig(
                model=group.model,
                profile=group.profile,
                max_num_seqs=group.maxNumSeqs,
                seed=seed,
                time_scale=self._time_scale,
                wan=wan,
            )
        )
        config = AgentConfig(
            node=name,
            project=self._project,
            etcd_prefix=self._prefix,
            node_class=group.nodeClass,
            facts=FactOverrides(
                domain=group.domain,
                region=group.region,
                zone=group.zone,
                price_per_gpu_hour=group.pricePerGpuHour,
            ),
            runtime_url=sim.url,
            gpu_source="simulated",
            lease_ttl_s=self._lease.ttl,
            deadband=self._deadband,
            http_port=0 if self._agent_http else None,
        )
        agent = Agent(config, self._store, self._client, feed=self._feed, lease=self._lease)
        await agent.start()
        return FleetNode(name, group, sim, agent)

    async def stop(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                await node.agent.stop()
            with contextlib.suppress(Exception):
                await node.sim.stop()
        self.nodes = []
        await self._lease.stop(revoke=True)
        await self._feed.stop()

    def describe(self) -> list[dict[str, Any]]:
        """Where each node's runtime and agent listen."""
        return [
            {
                "node": n.name,
                "group": n.group.name,
                "domain": n.group.domain,
                "model": n.group.model,
                "runtime": n.sim.url,
                "agent": n.agent.address,
            }
            for n in self.nodes
        ]


async def serve_fleet(fleet: SimulatedFleet, port: int, stop: asyncio.Event) -> None:
    """Run the fleet until `stop` is set. Once every node is registered it serves, on `port`,
    `/healthz` (where each node's runtime and agent listen) and `/metrics` (every node's
    `infermesh_*` series: one scrape target for the whole fleet)."""
    server: MetricsServer | None = None
    try:
        await fleet.start()
        registry = agent_registry(lambda: [n.agent for n in fleet.nodes])
        server = MetricsServer(registry, lambda: {"nodes": fleet.describe()}, port=port)
        await server.start()
        await stop.wait()
    finally:
        if server is not None:
            await server.stop()
        await fleet.stop()
