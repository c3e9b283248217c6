"""The delivery controller: canary rollouts and SLO-driven degradation, one pass at a time.

A leader-elected loop in the API process, beside the SLO evaluator. Each pass takes every
Endpoint and its project's Policies from the object cache and the SLO statuses the evaluator
wrote, then per endpoint:

- canary analysis (rollout.py, analysis.py): the canary and its baseline over the window since
  the current step began, from the series store; a step forward, a promotion or a rollback is
  carried out through the same audited read-modify-write as the `:trafficSplit`, `:promote` and
  `:rollback` actions (actor `system:delivery`, an event that shows the numbers);
- degradation (degrade.py): the actions of the Policy's SLO rules that fire.

Both land in `{root}/status/endpoints/{project}/{name}` (`rollout`, `degrade`), which the API
serves as the Endpoint's status and routers watch. Status writes are fenced by the election;
a split change is a compare-and-swap on the Endpoint that re-checks the canary is still the one
judged, so a deposed leader can at worst repeat a decision that still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infermesh.errors import Conflict, MeshError
from infermesh.model import Endpoint, Policy
from infermesh.model.policy import RolloutPolicy
from infermesh.model.registry import parse_object
from infermesh.router.policy import ranked_specs
from infermesh.sli import bucket_start
from infermesh.store import split_actions as actions
from infermesh.store.committer import EventLease, event_record
from infermesh.store.delivery import degrade, rollout
from infermesh.store.delivery.analysis import Verdict, judge
from infermesh.store.election import ElectedLoop, LeaderElection
from infermesh.store.etcd import EtcdStore, Op
from infermesh.store.keys import KeyLayout
from infermesh.store.repository import Obj, ObjectRepository, Stored
from infermesh.store.slo.counts import Counts
from infermesh.store.slo.evaluator import snapshot
from infermesh.store.slo.reader import WindowSource, read_window_counts, select
from infermesh.store.slo.status import iso
from infermesh.store.watch_cache import WatchCache

log = logging.getLogger(__name__)

ACTOR = "system:delivery"
REFRESH_S = 30.0  # an unchanged status is rewritten at most this often (fresh numbers)
DEBOUNCE_S = 0.5


@dataclass
class NotLeader(Exception):
    """A fenced write failed: another controller leads now."""


@dataclass
class DeliveryPass:
    now: float
    endpoints: int = 0
    written: int = 0
    actions: list[str] = field(default_factory=list)  # "advance ep-1", ...
    events: list[Obj] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """One endpoint's decisions in a pass."""

    project: str
    name: str
    uid: str | None
    rollout: rollout.Decision
    canary: rollout.Canary | None
    degrade: Obj | None
    degrade_event: tuple[str, str, bool] | None


class DeliveryController(ElectedLoop):
    def __init__(
        self,
        store: EtcdStore,
        keys: KeyLayout,
        objects: WatchCache[Stored],
        reports: dict[str, WatchCache[dict[str, Any]]],
        repo: ObjectRepository,
        series: WindowSource,
        *,
        identity: str,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store, self._keys, self._objects = store, keys, objects
        self._reports, self._repo, self._series = reports, repo, series
        super().__init__(LeaderElection(store, keys.election("delivery"), identity), "delivery")
        self._events = EventLease(store)
        self.interval_s = interval_s
        self.clock = clock
        self._written: dict[str, tuple[Obj, float]] = {}
        self._lock = asyncio.Lock()
        # An Endpoint or Policy change wakes the loop: a split set by hand shows in the
        # rollout status at once, not an interval later.
        self._changed = asyncio.Event()
        watched = (keys.objects("endpoints"), keys.objects("policies"))
        objects.add_listener(lambda c: c.key.startswith(watched) and self._changed.set())

    async def run_once(self, now: float | None = None) -> DeliveryPass:
        """One pass at `now` (default: the clock), leading first if this instance does not."""
        async with self._lock:
            if not self._election.is_leader:
                await self._election.campaign()
                self._written.clear()
            return await self._pass(self.clock() if now is None else now)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
                await self._pause()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any one failure
                log.warning("delivery controller: %s; retrying", exc, exc_info=True)
                await self._election.resign()
                await asyncio.sleep(1)

    async def _pause(self) -> None:
        """Until the interval is over, an Endpoint or Policy changes, or leadership is lost."""
        waits = [
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(self._election.lost.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._changed.is_set():
            await asyncio.sleep(DEBOUNCE_S)  # a burst of changes: one pass
            self._changed.clear()

    # one pass ------------------------------------------------------------------------------
    async def _pass(self, now: float) -> DeliveryPass:
        result = DeliveryPass(now)
        endpoints = [s.obj for _, s in self._objects.items(self._keys.objects("endpoints"))]
        policies: dict[str, list[Policy]] = defaultdict(list)
        for _, s in self._objects.items(self._keys.objects("policies")):
            policy = _parsed(s.obj)
            if isinstance(policy, Policy):
                policies[policy.metadata.project].append(policy)
        slos = self._slo_statuses()
        plans = await asyncio.to_thread(self._plan_all, endpoints, policies, slos, now)
        result.endpoints = len(plans)
        for plan in plans:
            with contextlib.suppress(Conflict):  # the endpoint changed under us: next pass
                await self._carry_out(plan, now, result)
        return result

    def _slo_statuses(self) -> dict[tuple[str, str], list[tuple[str, Obj]]]:
        """(project, endpoint) -> its SLOs' (name, status) as the evaluator wrote them."""
        out: dict[tuple[str, str], list[tuple[str, Obj]]] = defaultdict(list)
        cache = self._reports["slos"]
        for d in snapshot(self._objects, self._keys):
            if d.target_kind != "Endpoint":
                continue
            status = cache.get(self._keys.status("slos", d.project, d.name))
            if status is not None:
                out[(d.project, d.target_name)].append((d.name, status))
        return out

    def _plan_all(
        self,
        endpoints: list[Obj],
        policies: dict[str, list[Policy]],
        slos: dict[tuple[str, str], list[tuple[str, Obj]]],
        now: float,
    ) -> list[_Plan]:
        """Every endpoint's decisions (reads the series store: runs in a worker thread)."""
        plans = []
        for obj in endpoints:
            meta = obj["metadata"]
            project, name = meta.get("project", "default"), meta["name"]
            key = self._keys.status("endpoints", project, name)
            previous = self._reports["endpoints"].get(key) or {}
            if previous.get("uid") not in (None, meta.get("uid")):
                previous = {}  # an earlier endpoint of the same name
            endpoint = _parsed(obj)
            if not isinstance(endpoint, Endpoint):
                continue
            specs = ranked_specs(policies.get(project, []), endpoint)
            policy = next((s.rollout for s in specs if s.rollout is not None), None)
            rules = next((s.degrade.rules for s in specs if s.degrade is not None), [])
            canary = rollout.canary_of(obj["spec"])
            before = previous.get("rollout")
            verdict, started = None, now
            if canary is not None:
                started = rollout.step_started(canary, before, now)
                verdict = self._judge(project, name, canary, policy, started, now)
            decided = rollout.decide(
                canary, obj["spec"]["modelRef"], policy, before, verdict, started, now
            )
            status, event = degrade.decide(
                rules, slos.get((project, name), []), previous.get("degrade"), now
            )
            plans.append(_Plan(project, name, meta.get("uid"), decided, canary, status, event))
        return plans

    def _judge(
        self,
        project: str,
        endpoint: str,
        canary: rollout.Canary,
        policy: RolloutPolicy | None,
        started: float,
        now: float,
    ) -> Verdict:
        # From the start of the 10 s bucket the step began in: a window of the store holds
        # whole buckets, and the traffic right after a step change shares that bucket.
        seconds = int(now - bucket_start(started)) + 1
        by_revision: dict[str, Counts] = {}
        if now > started:
            counts = read_window_counts(
                self._series, project, now, (("step", seconds),), endpoint=endpoint
            )
            for revision in (canary.canary, canary.baseline):
                found = select(counts, endpoint, revision=revision).get("step")
                by_revision[revision] = found if found is not None else Counts.zero()
        zero = Counts.zero()
        return judge(
            by_revision.get(canary.canary, zero),
            by_revision.get(canary.baseline, zero),
            policy or RolloutPolicy(),
        )

    # carrying a decision out ---------------------------------------------------------------
    async def _carry_out(self, plan: _Plan, now: float, result: DeliveryPass) -> None:
        decided, events = plan.rollout, []
        if decided.action is not None and decided.event is not None:
            assert plan.canary is not None
            await self._act(plan, plan.canary, decided)
            result.actions.append(f"{decided.action} {plan.name}")
        elif decided.event is not None:
            events.append(self._event(plan, *decided.event))
        if plan.degrade_event is not None:
            events.append(self._event(plan, *plan.degrade_event))
        status = {"rollout": decided.status, "degrade": plan.degrade}
        key = self._keys.status("endpoints", plan.project, plan.name)
        if decided.status is None and plan.degrade is None:
            if key in self._written or self._reports["endpoints"].get(key) is not None:
                await self._fenced([Op.delete(key)], events)
                self._written.pop(key, None)
                result.events += events
            return
        if not events and not self._due(key, status, now):
            return
        document = {**status, "uid": plan.uid, "updated": iso(now)}
        await self._fenced([Op.put(key, json.dumps(document, separators=(",", ":")))], events)
        self._written[key] = (status, now)
        result.written += 1
        result.events += events

    def _due(self, key: str, status: Obj, now: float) -> bool:
        """Write when something that matters changed, else refresh the numbers now and then."""
        before, at = self._written.get(key, (None, 0.0))
        if before is None:
            stored = self._reports["endpoints"].get(key)
            before = {k: (stored or {}).get(k) for k in ("rollout", "degrade")}
        if _gist(before) != _gist(status):
            return True
        live = (status.get("rollout") or {}).get("phase") in rollout.ACTIVE or status["degrade"]
        return bool(live) and now - at >= REFRESH_S

    async def _act(self, plan: _Plan, canary: rollout.Canary, decided: rollout.Decision) -> None:
        """The split change, as the matching action would make it, on the endpoint as judged."""
        assert decided.event is not None
        reason, message, warning = decided.event
        body: Obj = {"reason": reason}
        if decided.action == "advance":
            change, verb, body = actions.traffic_split, "trafficSplit", {"split": decided.split}
        elif decided.action == "promote":
            change, verb, body = actions.promote, "promote", body | {"revision": canary.canary}
        else:
            change, verb = actions.rollback, "rollback"

        def apply(obj: Obj) -> Obj:
            if rollout.canary_of(obj["spec"]) != canary:
                raise Conflict(f"endpoint {plan.name}: the traffic split changed since judged")
            return change(obj, dict(body), ACTOR)[0]

        try:
            await self._repo.mutate(
                "Endpoint",
                plan.project,
                plan.name,
                ACTOR,
                apply,
                action=verb,
                reason=reason,
                message=f"Endpoint {plan.name} {message}",
                warning=warning,
            )
        except MeshError as exc:
            log.warning("delivery: %s of %s/%s: %s", verb, plan.project, plan.name, exc)
            raise

    def _event(self, plan: _Plan, reason: str, message: str, warning: bool) -> Obj:
        return event_record(
            kind="Endpoint",
            project=plan.project,
            name=plan.name,
            reason=reason,
            message=f"Endpoint {plan.name} {message}",
            actor=ACTOR,
            warning=warning,
        )

    async def _fenced(self, ops: list[Op], events: list[Obj]) -> None:
        if events:
            lease = await self._events.id()
            ops = ops + [
                Op.put(self._keys.event(e["project"], e["id"]), json.dumps(e), lease=lease)
                for e in events
            ]
        outcome = await self._store.txn([self._election.fence()], ops)
        if not outcome.succeeded:
            raise NotLeader(f"{self._election.identity} no longer leads {self._election.key}")


def _parsed(obj: Obj) -> Any:
    """The typed object; None for one stored before a schema change (it reports that itself)."""
    try:
        return parse_object({k: v for k, v in obj.items() if k != "status"})
    except MeshError:
        return None


def _gist(status: Obj) -> Any:
    """What a status write must not wait for: phase, step and weight, verdict, actions."""
    r, d = status.get("rollout") or {}, status.get("degrade") or {}
    return (
        r.get("phase"),
        r.get("canary"),
        r.get("weight"),
        r.get("verdict"),
        tuple(d.get("actions") or ()),
    )
