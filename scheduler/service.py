"""`SchedulerService`: the one active training scheduler (leader-elected), list-watch-reconcile.

Desired state comes from etcd (Jobs, Nodes and their agents' reports, CapacityPools, Policies);
what runs comes from Dask (the executor's rank reports, exits and worker losses). Each turn of the
loop folds both into the jobs' state machines (`Controller`), asks the pure planner what to start,
resize, evict or leave waiting, carries that out on Dask, and writes each changed job's status.

A standby campaigns for the `scheduler` election and, when it wins, reads the statuses its
predecessor wrote and the rank tasks still alive on the Dask cluster: a gang that is still running
is adopted, never launched twice; one that is gone is recovered from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from distributed import Client

from infermesh.errors import EtcdUnavailable
from infermesh.model import CapacityPool, Domain, Job, Node, Policy
from infermesh.scheduler.controller import Controller
from infermesh.scheduler.executor import GangExecutor
from infermesh.scheduler.jobstate import JobState
from infermesh.scheduler.records import NotLeader, Records
from infermesh.store.election import LeaderElection
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from infermesh.store.watch_cache import WatchCache, decode_json, decode_resource

log = logging.getLogger(__name__)

TURN_S = 0.5  # longest wait between reconcile turns (accrual, grace deadlines, status writes)

# Connects a Dask client; the default connects to `--dask`, `infermesh up` also starts a cluster.
ClientFactory = Callable[[], Awaitable[Client]]


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    identity: str
    status_interval_s: float = 1.0  # how often a running job's progress is written at most
    election_ttl_s: int = 5


class SchedulerService:
    def __init__(
        self,
        store: EtcdStore,
        keys: KeyLayout,
        settings: SchedulerSettings,
        connect: ClientFactory,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self._store = store
        self._connect = connect
        self.election = LeaderElection(
            store, keys.election("scheduler"), settings.identity, ttl=settings.election_ttl_s
        )
        self.caches: dict[str, WatchCache[Any]] = {
            plural: WatchCache(store, keys.objects(plural), decode_resource)
            for plural in ("jobs", "nodes", "capacitypools", "policies", "domains")
        }
        self.caches["reports"] = WatchCache(store, keys.statuses("nodes"), decode_json)
        self._wake = asyncio.Event()
        for cache in self.caches.values():
            cache.add_listener(lambda _change: self._wake.set())
        self.controller: Controller | None = None  # while leading
        self.leading = asyncio.Event()
        self._watching = False

    async def watch(self) -> None:
        """Start the watch caches (once) and wait until each has listed."""
        if not self._watching:
            self._watching = True
            for cache in self.caches.values():
                await cache.start()
        await asyncio.gather(*(c.synced.wait() for c in self.caches.values()))

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead until leadership is lost, campaign again; until `stop` is set."""
        await self.watch()
        try:
            while not stop.is_set():
                campaign = asyncio.create_task(self.election.campaign())
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    campaign.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await campaign
                    break
                stopped.cancel()
                await self._lead(stop)
        finally:
            with contextlib.suppress(Exception):
                await self.election.resign()
            for cache in self.caches.values():
                await cache.stop()

    # -- leading --------------------------------------------------------------------------------
    async def _lead(self, stop: asyncio.Event) -> None:
        log.info("scheduler %s leads", self.settings.identity)
        client = await self._connect()
        executor = GangExecutor(client)
        await executor.start()
        records = Records(self._store, self.keys, self.election)
        controller = Controller(self, executor, records)
        self.controller = controller
        try:
            await controller.take_over(await records.read_statuses())
            self.leading.set()
            while not (stop.is_set() or self.election.lost.is_set()):
                await self._turn(controller)
                await self._wait(controller)
        except NotLeader as exc:
            log.warning("scheduler: %s; standing down", exc)
        finally:
            self.leading.clear()
            self.controller = None
            await controller.close()
            await executor.close()
            await client.close()

    async def _turn(self, controller: Controller) -> None:
        try:
            await controller.turn(time.time())
        except EtcdUnavailable as exc:  # keep what runs running; write again when etcd returns
            log.warning("scheduler: etcd unavailable (%s); retrying", exc)
        except NotLeader:
            raise
        except Exception:  # a bug in one turn must not take down every running gang
            log.exception("scheduler: reconcile turn failed; retrying")

    async def _wait(self, controller: Controller) -> None:
        """Until something changed in etcd or on Dask, or TURN_S passed."""
        self._wake.clear()
        event = asyncio.create_task(controller.executor.events.get())
        waits = [event, asyncio.create_task(self._wake.wait())]
        waits.append(asyncio.create_task(self.election.lost.wait()))
        try:
            await asyncio.wait(waits, timeout=TURN_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if event.done() and not event.cancelled():
            controller.inbox.append(event.result())
        while not controller.executor.events.empty():
            controller.inbox.append(controller.executor.events.get_nowait())

    def wake(self) -> None:
        self._wake.set()

    # -- what etcd says -------------------------------------------------------------------------
    def jobs(self) -> dict[str, Job]:
        out = {}
        for _, job in self.caches["jobs"].items():
            out[f"{job.metadata.project}/{job.metadata.name}"] = job
        return out

    def nodes(self) -> dict[str, tuple[dict[str, Any], Node | None]]:
        """Every node an agent reports, by `project/name`, with its Node object if any."""
        out = {}
        for key, report in self.caches["reports"].items():
            ident = self.keys.parse_status(key)
            node = self.caches["nodes"].get(self.keys.object("nodes", ident.project, ident.name))
            out[f"{ident.project}/{ident.name}"] = (report, node)
        return out

    def domains(self, project: str) -> dict[str, Domain]:
        prefix = self.keys.objects("domains", project)
        return {d.metadata.name: d for _, d in self.caches["domains"].items(prefix)}

    def pools(self) -> list[CapacityPool]:
        return [pool for _, pool in self.caches["capacitypools"].items()]

    def policies(self, project: str) -> list[Policy]:
        return [p for _, p in self.caches["policies"].items(self.keys.objects("policies", project))]

    def state(self, job: str) -> JobState | None:
        return self.controller.states.get(job) if self.controller else None
