"""The SLO evaluator: a leader-elected loop in the API process that judges every SLO.

Every `interval_s` (10 s by default) the one leader among the API replicas takes the SLOs of the
object cache (standalone and implicit), reads the series store once per project (reader.py),
decides each SLO (status.py: burn table, budget, alert states, events) and writes what changed
to `{root}/status/slos/{project}/{name}`, each status with its alert events in one transaction
fenced by the election, so a deposed leader writes nothing. Alert states live in those statuses:
a new leader carries on from them, and an alert that fired stays firing (no second event).

The clock is injectable and `evaluate_once(now)` runs one pass at a given time, which is how
tests drive windows of days without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infermesh.store.committer import EventLease
from infermesh.store.election import ElectedLoop, LeaderElection
from infermesh.store.etcd import EtcdStore, LeaseNotFound, Op
from infermesh.store.keys import KeyLayout
from infermesh.store.repository import Stored
from infermesh.store.slo.alerts import AlertState
from infermesh.store.slo.counts import Counts
from infermesh.store.slo.definitions import SloDefinition, definitions
from infermesh.store.slo.reader import WindowSource, read_window_counts, select
from infermesh.store.slo.status import (
    Decision,
    alert_states,
    decide,
    epoch,
    should_write,
    window_percentiles,
)
from infermesh.store.slo.training import decide_training
from infermesh.store.slo.windows import all_windows
from infermesh.store.watch_cache import WatchCache

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SloKey = tuple[str, str]  # (project, name)

DEFAULT_INTERVAL_S = 10.0
DEFAULT_REFRESH_S = 30.0
_MAX_TXN_OPS = 120  # etcd refuses more than 128 operations in one transaction by default
_OWNER_KINDS = ("endpoints", "jobs")  # kinds whose spec.slo implies SLOs


class NotLeader(Exception):
    """A fenced write failed: another evaluator leads now."""


@dataclass
class PassResult:
    """What one pass did (for logs, tests and the benchmark)."""

    now: float
    evaluated: int = 0
    written: int = 0
    deleted: int = 0
    events: list[Obj] = field(default_factory=list)
    seconds: float = 0.0
    revision: int = 0  # etcd revision of the last write (0: nothing written)


def snapshot(objects: WatchCache[Stored], keys: KeyLayout) -> list[SloDefinition]:
    """Every SLO the object cache defines (definitions.py)."""
    slos = [s.obj for _, s in objects.items(keys.objects("slos"))]
    owners = [s.obj for plural in _OWNER_KINDS for _, s in objects.items(keys.objects(plural))]
    return definitions(slos, owners)


def decide_all(
    series: WindowSource,
    slos: list[SloDefinition],
    previous: Mapping[SloKey, Mapping[str, AlertState]],
    now: float,
) -> list[tuple[SloDefinition, Decision]]:
    """Decide every (evaluated) SLO at `now`: one series read per project, covering all its
    SLOs and windows. Blocks on the series store: call from a worker thread."""
    by_project: dict[str, list[SloDefinition]] = defaultdict(list)
    for d in slos:
        by_project[d.project].append(d)
    out = []
    for project, mine in by_project.items():
        windows = all_windows({d.spec.window for d in mine})
        targets = {d.target_name for d in mine}
        only = next(iter(targets)) if len(targets) == 1 else None
        counts = read_window_counts(series, project, now, windows, endpoint=only)
        # An endpoint's SLOs share its counts and percentiles: computed once per scope.
        scopes: dict[tuple[str, str | None], tuple[dict[str, Counts], dict[str, Obj]]] = {}
        for d in mine:
            scope = (d.target_name, d.domain)
            if scope not in scopes:
                selected = select(counts, d.target_name, domain=d.domain)
                scopes[scope] = (selected, window_percentiles(selected))
            selected, by_window = scopes[scope]
            before = previous.get((d.project, d.name), {})
            out.append((d, decide(d, selected, before, now, by_window)))
    return out


class SloEvaluator(ElectedLoop):
    def __init__(
        self,
        store: EtcdStore,
        keys: KeyLayout,
        objects: WatchCache[Stored],
        series: WindowSource,
        *,
        identity: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.time,
        job_status: Callable[[str, str], Obj | None] = lambda _project, _name: None,
    ) -> None:
        self._job_status = job_status  # (project, job) -> the scheduler's status of the job
        self._store = store
        self._keys = keys
        self._objects = objects
        self._series = series
        super().__init__(
            LeaderElection(store, keys.election("slo-evaluator"), identity), "slo-evaluator"
        )
        self._events = EventLease(store)
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._alerts: dict[SloKey, dict[str, AlertState]] = {}
        self._written: dict[str, tuple[Obj, float]] = {}  # status key -> (status, written at)
        self._lock = asyncio.Lock()  # one pass at a time

    async def evaluate_once(self, now: float | None = None) -> PassResult:
        """One pass at `now` (default: the clock), leading first if this instance does not."""
        async with self._lock:
            if not self._election.is_leader:
                await self._lead()
            return await self._pass(self.clock() if now is None else now)

    # the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                result = await self.evaluate_once()  # leads first
                while self._election.is_leader:
                    # Passes start interval_s apart; one that overran leaves a tenth of it idle.
                    pause = max(self.interval_s - result.seconds, self.interval_s / 10)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._election.lost.wait(), pause)
                    if self._election.is_leader:
                        result = await self.evaluate_once()
                log.info("SLO evaluator: lost leadership")
            except asyncio.CancelledError:
                raise
            except NotLeader as exc:
                log.info("SLO evaluator: %s", exc)
                # Our monitor may not have noticed yet: step down, then campaign afresh.
                await self._election.resign()
            except Exception as exc:  # the loop must outlive any one failure
                log.warning("SLO evaluator: %s; retrying", exc, exc_info=True)
                await asyncio.sleep(1)

    async def _lead(self) -> None:
        await self._election.campaign()
        log.info("SLO evaluator: leading")
        # Carry on from what the previous leader wrote: its alert states and statuses.
        items, _ = await self._store.list_prefix(self._keys.statuses("slos"))
        self._alerts.clear()
        self._written.clear()
        for kv in items:
            ident = self._keys.parse_status(kv.key)
            doc = json.loads(kv.value)
            self._alerts[(ident.project, ident.name)] = alert_states(doc)
            self._written[kv.key] = (doc, epoch(doc.get("updated")) or 0.0)

    async def _pass(self, now: float) -> PassResult:
        started = time.perf_counter()
        result = PassResult(now)
        every = snapshot(self._objects, self._keys)
        slos = [d for d in every if d.evaluated]
        training = [
            (d, self._job_status(d.project, d.target_name)) for d in every if d.target_kind == "Job"
        ]
        previous = {(d.project, d.name): self._alerts.get((d.project, d.name), {}) for d in slos}
        # Reads, decisions and encoding in a worker thread: the API's loop keeps serving.
        decided, writes = await asyncio.to_thread(self._decide, slos, training, previous, now)
        result.evaluated = len(decided)

        groups: list[tuple[list[Op], Callable[[], None]]] = []
        lease = await self._events.id() if any(w[2].events for w in writes) else 0
        for key, value, decision, d in writes:
            ops = [Op.put(key, value)]
            ops += [
                Op.put(self._keys.event(d.project, e["id"]), json.dumps(e), lease=lease)
                for e in decision.events
            ]
            groups.append((ops, self._remember(d, key, decision, now, result)))
        current = {self._keys.status("slos", d.project, d.name) for d, _ in decided}
        for key in [k for k in self._written if k not in current]:
            groups.append(([Op.delete(key)], self._forget(key, result)))
        result.revision = await self._commit(groups)
        result.seconds = time.perf_counter() - started
        if result.seconds > self.interval_s:
            log.warning(
                "SLO evaluation of %d SLOs took %.1fs, longer than the %.0fs interval",
                result.evaluated,
                result.seconds,
                self.interval_s,
            )
        return result

    def _decide(
        self,
        slos: list[SloDefinition],
        training: list[tuple[SloDefinition, Obj | None]],
        previous: Mapping[SloKey, Mapping[str, AlertState]],
        now: float,
    ) -> tuple[
        list[tuple[SloDefinition, Decision]], list[tuple[str, bytes, Decision, SloDefinition]]
    ]:
        """Every SLO decided, and the statuses to write (key, encoded value), in a thread."""
        decided = decide_all(self._series, slos, previous, now)
        for d, job in training:
            before, _ = self._written.get(self._keys.status("slos", d.project, d.name), (None, 0))
            status, events = decide_training(d, job, before, now)
            decided.append((d, Decision(status, {}, events, None)))
        writes = []
        for d, decision in decided:
            key = self._keys.status("slos", d.project, d.name)
            before, at = self._written.get(key, (None, None))
            if should_write(before, decision.status, at, now, self.refresh_s):
                value = json.dumps(decision.status, separators=(",", ":")).encode()
                writes.append((key, value, decision, d))
        return decided, writes

    def _remember(
        self, d: SloDefinition, key: str, decision: Decision, now: float, result: PassResult
    ) -> Callable[[], None]:
        """What to record once this SLO's status (and its events) are written. Until then the
        old alert states stand, so a failed write is decided, and evented, again next pass."""

        def done() -> None:
            self._alerts[(d.project, d.name)] = decision.alerts
            self._written[key] = (decision.status, now)
            result.written += 1
            result.events += decision.events

        return done

    def _forget(self, key: str, result: PassResult) -> Callable[[], None]:
        def done() -> None:
            ident = self._keys.parse_status(key)
            self._written.pop(key, None)
            self._alerts.pop((ident.project, ident.name), None)
            result.deleted += 1

        return done

    async def _commit(self, groups: list[tuple[list[Op], Callable[[], None]]]) -> int:
        """Write the groups in as few fenced transactions as etcd takes (a group, one status
        and its events, never spans two); returns the revision of the last."""
        batch: list[Op] = []
        after: list[Callable[[], None]] = []
        revision = 0
        for ops, done in groups:
            if batch and len(batch) + len(ops) > _MAX_TXN_OPS:
                revision = await self._fenced(batch)
                for f in after:
                    f()
                batch, after = [], []
            batch += ops
            after.append(done)
        if batch:
            revision = await self._fenced(batch)
            for f in after:
                f()
        return revision

    async def _fenced(self, ops: list[Op]) -> int:
        try:
            result = await self._store.txn([self._election.fence()], ops)
        except LeaseNotFound:
            self._events.forget()  # the events lease expired while etcd was away
            raise
        if not result.succeeded:
            raise NotLeader(f"{self._election.identity} no longer leads {self._election.key}")
        return result.revision
