"""The router's request path, free of HTTP server types: resolve, admit, decide, forward, record.

`RouterService.plan` turns an `Invocation` into a `Plan` (revision from the traffic split,
candidates from the view, a strategy's ranked decision, the hedge settings); `forward` runs the
first-byte race over the plan's targets. The aiohttp handlers in server.py are thin around these.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from infermesh.agent.sim.wan import DEFAULT_RTT_MS, Location
from infermesh.errors import NotFound, TooManyRequests, Unavailable
from infermesh.model import Endpoint
from infermesh.router.admission import Admission
from infermesh.router.breaker import Breakers
from infermesh.router.degrade import triggered
from infermesh.router.hedging import HedgeBudget, TtftTracker, hedge_delay_ms
from infermesh.router.idempotency import IdempotencyStore
from infermesh.router.invocation import Invocation
from infermesh.router.proxy import Attempt, HedgeSettings, RaceResult, open_attempt, race
from infermesh.router.replica import Replica
from infermesh.router.replica_speed import ReplicaSpeed
from infermesh.router.shadow import compare
from infermesh.router.signals import BUCKET_S, Signals
from infermesh.router.split import Splits
from infermesh.router.strategies.base import (
    CandidateSet,
    Decision,
    LiveState,
    RequestContext,
    RoutingStrategy,
)
from infermesh.router.strategies.network import link_class_name, origin_network
from infermesh.router.strategies.registry import StrategyError, StrategyRegistry
from infermesh.router.upstream import UpstreamPool
from infermesh.router.view import MAX_REPLICAS, Route, RouterView


@dataclass(frozen=True)
class RouterSettings:
    name: str = "router"
    default_strategy: str = "hybrid_mesh@1.0"
    decision_budget_us: float = 1000.0  # decide() slower than this is replaced by the fallback
    max_body_bytes: int = 4 << 20
    max_retries: int = 2  # extra targets tried when one fails before its first byte
    location: Location | None = None  # where this router runs; the origin of unhinted requests
    rtt_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RTT_MS))
    ship_every_s: float = BUCKET_S  # how often the SLI buckets go to the control plane


@dataclass(slots=True)
class Plan:
    """Where one request goes, decided before any byte leaves."""

    endpoint: Endpoint
    revision: str
    route: Route
    ctx: RequestContext
    strategy: str
    decision: Decision
    targets: list[Replica]
    hedging: HedgeSettings | None
    domain_candidates: CandidateSet  # what the strategy ranked (a domain's tier, or all)


class RouterService:
    def __init__(self, view: RouterView, settings: RouterSettings) -> None:
        self.view, self.settings = view, settings
        self.live = LiveState.sized(MAX_REPLICAS, settings.rtt_ms)
        self.strategies = StrategyRegistry()
        self.admission = Admission()
        self.breakers = Breakers(self.live.ejected)
        self.hedge_budget = HedgeBudget()
        self.ttft = TtftTracker(self.live.ttft_p95_ms)
        self.speed = ReplicaSpeed(self.live)
        self.idempotency = IdempotencyStore()
        self.splits = Splits()
        self.signals = Signals(settings.name)
        self.upstream = UpstreamPool()  # to runtimes: the request path
        self.session: aiohttp.ClientSession | None = None  # to the control plane
        self._tiers: dict[tuple[int, str], CandidateSet] = {}
        self._tiers_generation = -1

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0))

    async def stop(self) -> None:
        await self.upstream.close()
        if self.session is not None:
            await self.session.close()

    # resolve -----------------------------------------------------------------------------
    def endpoint(self, project: str, name: str) -> Endpoint:
        endpoint = self.view.endpoint(project, name)
        if endpoint is None:
            raise NotFound(
                f"endpoint {name!r} not found in project {project!r}",
                {"endpoint": name, "project": project},
            )
        return endpoint

    # decide ------------------------------------------------------------------------------
    def plan(self, inv: Invocation, endpoint: Endpoint, tenant: str) -> Plan:
        project = inv.project
        key = f"{project}/{endpoint.metadata.name}"
        now = time.monotonic()
        self.breakers.tick(now)  # ejections that are over become half-open
        self.ttft.expire(now)  # TTFTs of replicas that went quiet are no longer news
        self.speed.expire(now)
        revision = self.splits.pick_revision(endpoint)
        route = self.view.route(project, endpoint, revision)
        if not len(route.candidates):
            raise Unavailable(
                f"no ready replica serves endpoint {endpoint.metadata.name!r} "
                f"(revision {revision!r})",
                {"revision": revision, "excluded": route.eligibility.excluded},
            )
        strategy = self._strategy(project, endpoint, route)
        origin = self._origin(inv, endpoint)
        preferred = self.splits.pick_domain(endpoint) if origin is None else origin.domain
        slo = endpoint.spec.slo
        on_slo = self.view.slo_degrade(project, endpoint.metadata.name)
        ctx = RequestContext(
            endpoint=endpoint.metadata.name,
            project=project,
            tenant=tenant,
            revision=revision,
            origin=origin or (Location(domain=preferred) if preferred else None),
            preferred_domain=preferred,
            prefix_key=inv.prefix_key(),
            session_key=inv.session_key(),
            prompt_tokens=inv.prompt_tokens_estimate(),
            max_tokens=inv.max_tokens,
            slo_ttft_ms=slo.ttft_ms if slo is not None else None,
            explain=inv.explain,
            relax_cost="relax-cost-cap" in on_slo,
        )
        candidates = route.candidates
        if preferred and not strategy.network_aware:
            tier = self._tier(route, preferred)
            if len(tier) and (~self.live.ejected[tier.slots]).any():
                candidates = tier
        decision = self._decide(strategy, ctx, candidates)
        if not decision.admit:
            raise TooManyRequests(
                f"strategy {decision.strategy} shed the request: {decision.reason}",
                {"limit": "strategy", "endpoint": ctx.endpoint},
            )
        if decision.ranked:
            self._shadow(project, ctx, candidates, decision)
        targets = [candidates.replicas[i] for i in decision.ranked]
        if candidates is not route.candidates:  # spill to the other domains after the tier
            chosen = {r.node for r in targets}
            targets += [r for r in route.candidates.replicas if r.node not in chosen]
        degraded = self._degrade(route, ctx, candidates, decision, on_slo)
        if "local-only" in degraded and ctx.origin is not None and ctx.origin.domain:
            local = [r for r in targets if r.domain == ctx.origin.domain]
            targets = local or targets  # no local replica: serving beats failing
        return Plan(
            endpoint,
            revision,
            route,
            ctx,
            decision.strategy,
            decision,
            targets,
            self._hedging(route, key, ctx, targets, force="hedge" in degraded),
            candidates,
        )

    def _degrade(
        self,
        route: Route,
        ctx: RequestContext,
        candidates: CandidateSet,
        decision: Decision,
        on_slo: frozenset[str],
    ) -> frozenset[str]:
        """The degradation actions in force: those the endpoint's burning SLOs switched on, and
        those the link to the first-ranked target calls for."""
        policy = route.policy
        actions = on_slo
        if policy.degrade_rules and decision.ranked:
            network = origin_network(ctx.origin, candidates, self.live)
            first = decision.ranked[0]
            actions |= triggered(
                policy.degrade_rules,
                link_class_name(int(network.codes[first])),
                float(network.rtt_ms[first]),
                policy.rtt_budget_ms,
            )
        for action in actions:
            self.signals.degraded.labels(ctx.endpoint, action).inc()
        return actions

    def _strategy(self, project: str, endpoint: Endpoint, route: Route) -> RoutingStrategy:
        ref = endpoint.spec.strategy or route.policy.strategy
        name = ref.ref if ref is not None else self.settings.default_strategy
        params = dict(ref.params) if ref is not None else {}
        try:
            return self.strategies.resolve(name, self.view.strategies(project), params)
        except StrategyError:
            return self.strategies.fallback()

    def _shadow(
        self, project: str, ctx: RequestContext, candidates: CandidateSet, decision: Decision
    ) -> None:
        """Let the project's shadow strategies decide too, and count how they compare."""
        objects = self.view.strategies(project)
        for name, obj in objects.items():
            if not obj.spec.shadow or obj.spec.kind != "inference" or name == decision.strategy:
                continue
            try:
                shadow = self.strategies.resolve(name, objects, {})
            except StrategyError:
                continue
            ranked = shadow.decide(ctx, candidates, self.live).ranked
            if not ranked:
                continue
            agreed, faster = compare(candidates, self.live, decision.ranked[0], ranked[0])
            labels = (ctx.endpoint, name, decision.strategy)
            self.signals.shadow_agreement.labels(*labels, str(agreed).lower()).inc()
            if faster:
                self.signals.shadow_wins.labels(*labels).inc()

    def _origin(self, inv: Invocation, endpoint: Endpoint) -> Location | None:
        if inv.domain_hint:
            return Location(domain=inv.domain_hint)
        return self.settings.location

    def _tier(self, route: Route, domain: str) -> CandidateSet:
        if self._tiers_generation != self.view.generation:
            self._tiers, self._tiers_generation = {}, self.view.generation
        key = (id(route.candidates), domain)
        tier = self._tiers.get(key)
        if tier is None:
            tier = self._tiers[key] = CandidateSet(
                [r for r in route.candidates.replicas if r.domain == domain],
                route.candidates.domain_regions,
            )
        return tier

    def _decide(
        self, strategy: RoutingStrategy, ctx: RequestContext, candidates: CandidateSet
    ) -> Decision:
        started = time.perf_counter()
        decision = strategy.decide(ctx, candidates, self.live)
        took = time.perf_counter() - started
        self.signals.decision.labels(strategy.name).observe(took)
        if took * 1e6 > self.settings.decision_budget_us and not ctx.explain:
            self.signals.overruns.labels(strategy.name).inc()
            decision = self.strategies.fallback().decide(ctx, candidates, self.live)
        return decision

    def _hedging(
        self,
        route: Route,
        key: str,
        ctx: RequestContext,
        targets: list[Replica],
        *,
        force: bool = False,
    ) -> HedgeSettings | None:
        hedging = route.policy.hedging
        if not (hedging.enabled or force) or len(targets) < 2:
            return None
        p95 = float(self.live.ttft_p95_ms[targets[0].slot])
        delay = hedge_delay_ms(hedging, None if np.isnan(p95) else p95, ctx.slo_ttft_ms)

        def allow() -> bool:
            if not self.hedge_budget.allow(key, hedging.budgetPercent, time.monotonic()):
                return False
            self.hedge_budget.record_hedge(key, time.monotonic())
            return True

        return HedgeSettings(delay, hedging.maxHedges, allow)

    # forward -----------------------------------------------------------------------------
    async def forward(self, plan: Plan, inv: Invocation) -> RaceResult:
        upstream = self.upstream
        body = json.dumps({**inv.body, "model": plan.revision}).encode()
        headers = {"Content-Type": "application/json"}
        if inv.traceparent:
            headers["traceparent"] = inv.traceparent
        caller = Location(domain=inv.domain_hint) if inv.domain_hint else self.settings.location
        if caller is not None:  # the runtime (or WAN) sees where the caller is
            for name, value in (
                ("X-InferMesh-Client-Domain", caller.domain),
                ("X-InferMesh-Client-Region", caller.region),
                ("X-InferMesh-Client-Zone", caller.zone),
            ):
                if value:
                    headers[name] = value
        key = f"{inv.project}/{plan.ctx.endpoint}"
        self.hedge_budget.record_request(key, time.monotonic())
        inflight, starting, speed = self.live.inflight, self.live.starting, self.speed
        loop = asyncio.get_running_loop()

        def finished(attempt: Attempt) -> None:
            inflight[attempt.replica.slot] -= 1
            if attempt.status < 400 and attempt.response.at_eof():  # a whole answer
                now = time.monotonic()
                speed.finished(attempt.replica.slot, (now - attempt.first_at) * 1e3, now)

        async def attempt(replica: Replica, hedge: bool) -> Attempt:
            slot = replica.slot
            queued = bool(starting[slot]) or replica.waiting > 0  # behind others' first bytes
            inflight[slot] += 1
            starting[slot] += 1
            try:
                opened = await open_attempt(
                    upstream,
                    replica,
                    inv.upstream_path,
                    body,
                    headers,
                    hedge=hedge,
                    on_finish=finished,
                )
            except BaseException:
                inflight[slot] -= 1
                raise
            finally:
                starting[slot] -= 1
            if opened.status < 400:
                loop.call_soon(speed.first_byte, slot, opened.ttft_ms, queued, opened.first_at)
            return opened

        result = await race(
            attempt, plan.targets, max_retries=self.settings.max_retries, hedging=plan.hedging
        )
        # What the answer teaches waits until its first byte has gone on to the caller: the
        # handler writes it before it next waits, and only then does the loop run these.
        loop.call_soon(self._learn, plan, result)
        return result

    def _learn(self, plan: Plan, result: RaceResult) -> None:
        now = time.monotonic()
        for failure in result.failures:
            self.breakers.record_failure(failure.replica.slot, now, len(plan.route.candidates))
        winner = result.winner
        if winner.status < 500:
            self.breakers.record_success(winner.replica.slot, now)
            self.ttft.observe(winner.replica.slot, winner.ttft_ms, now)
        if result.retries:
            self.signals.retries.labels(plan.ctx.endpoint).inc(result.retries)
        if result.hedges_fired:
            hedges = self.signals.hedges
            hedges.labels(plan.ctx.endpoint, "fired").inc(result.hedges_fired)
            hedges.labels(plan.ctx.endpoint, "won" if winner.hedge else "wasted").inc()

    # explain -----------------------------------------------------------------------------
    def explain(self, plan: Plan) -> dict[str, Any]:
        """Why the request would go where it goes: every candidate's score parts."""
        cands = plan.domain_candidates
        parts = plan.decision.explain or ()
        return {
            "endpoint": plan.ctx.endpoint,
            "revision": plan.revision,
            "strategy": plan.strategy,
            "preferredDomain": plan.ctx.preferred_domain,
            "ranked": [r.node for r in plan.targets],
            "hedge": (
                {"delayMs": plan.hedging.delay_ms, "maxHedges": plan.hedging.max_hedges}
                if plan.hedging
                else None
            ),
            "candidates": [
                {
                    "node": r.node,
                    "domain": r.domain,
                    "inflight": int(self.live.inflight[r.slot]),
                    "running": r.running,
                    "waiting": r.waiting,
                    "ejected": bool(self.live.ejected[r.slot]),
                    "score": parts[i] if i < len(parts) else {},
                }
                for i, r in enumerate(cands.replicas)
            ],
            "excluded": plan.route.eligibility.excluded,
        }
