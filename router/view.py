"""The router's view of the mesh: a watch-fed, in-memory mirror of what routing needs.

Endpoints, Models, Domains, Policies, Strategies, Projects, Node objects, the agents' node reports
and the API tokens, each a list+watch `WatchCache`. Derived tables (replicas, candidate sets,
resolved policies) are rebuilt lazily on the next request that needs them: at once after an
object changes (an operator's quarantine acts on the next request), and at most every
`REPORT_REFRESH_S` for agents' reports, so thousands of nodes reporting cost a few rebuilds a
second, not one per report. `generation` counts the rebuilds. When etcd goes away the caches
keep their last-known state and the router keeps routing from it (`stale` says so); they catch
up on return.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infermesh.agent.report import availability
from infermesh.model import Domain, Endpoint, Strategy
from infermesh.router.candidates import CandidateRules, Eligibility, eligible
from infermesh.router.policy import RoutingPolicy, resolve_policy
from infermesh.router.replica import Replica
from infermesh.router.strategies.base import CandidateSet
from infermesh.store import auth
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import CLUSTER_SCOPE, KeyLayout
from infermesh.store.watch_cache import Change, WatchCache, decode_json, decode_resource

TOKEN_KEYS_MAX = 4096  # tokens whose etcd key is remembered
MAX_REPLICAS = 1 << 16  # slots in the live per-replica arrays; one per node ever seen
# NVML throttle reasons that slow a GPU down (GpuIdle or application clocks are benign).
SLOWDOWNS = frozenset(
    {"HwSlowdown", "HwThermalSlowdown", "SwThermalSlowdown", "HwPowerBrakeSlowdown"}
)
REPORT_REFRESH_S = 0.1  # how stale agents' telemetry may be in a decision
_KINDS = ("endpoints", "models", "domains", "policies", "strategies", "projects", "nodes")


def _decode_principal(_: str, value: bytes, __: int) -> auth.Principal:
    return auth.Principal.from_json(json.loads(value))


@dataclass(frozen=True, slots=True)
class Route:
    """Everything one request to one endpoint revision needs, resolved once per generation."""

    endpoint: Endpoint
    policy: RoutingPolicy
    candidates: CandidateSet
    eligibility: Eligibility


class RouterView:
    def __init__(self, store: EtcdStore, keys: KeyLayout) -> None:
        self.keys = keys
        self._caches: dict[str, WatchCache[Any]] = {
            plural: WatchCache(store, keys.objects(plural), decode_resource) for plural in _KINDS
        }
        self._caches["reports"] = WatchCache(store, keys.statuses("nodes"), decode_json)
        # The delivery controller's endpoint status: the degrade actions SLO rules switched on.
        self._caches["delivery"] = WatchCache(store, keys.statuses("endpoints"), decode_json)
        self._token_keys: dict[str, str] = {}
        self.tokens: WatchCache[auth.Principal] = WatchCache(
            store, keys.tokens(), _decode_principal
        )
        self.generation = 0  # bumped by every rebuild of the derived tables
        self._object_changes = 0
        self._report_changes = 0
        self._built_at = (-1, -1, 0.0)  # (object changes, report changes, monotonic time)
        self._replicas: dict[str, list[Replica]] = {}  # project -> replicas
        self._routes: dict[tuple[str, str, str], Route] = {}
        self._strategies: dict[str, dict[str, Strategy]] = {}
        self._slots: dict[tuple[str, str], int] = {}  # (project, node) -> slot, never reused
        self._peak_running: dict[int, int] = {}  # slot -> most requests a report showed running
        for plural in _KINDS:
            self._caches[plural].add_listener(self._object_changed)
        self._caches["reports"].add_listener(self._report_changed)

    async def start(self, timeout: float = 30.0) -> None:
        caches = [*self._caches.values(), self.tokens]
        for cache in caches:
            await cache.start()
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in caches)), timeout)

    async def stop(self) -> None:
        for cache in [*self._caches.values(), self.tokens]:
            await cache.stop()

    @property
    def stale(self) -> bool:
        """True while etcd is unreachable: routing goes on from the last-known view."""
        return any(c.stale for c in self._caches.values())

    def _object_changed(self, _: Change[Any]) -> None:
        self._object_changes += 1

    def _report_changed(self, _: Change[Any]) -> None:
        self._report_changes += 1

    # objects -----------------------------------------------------------------------------
    def objects(self, plural: str, project: str) -> list[Any]:
        return [obj for _, obj in self._caches[plural].items(self.keys.objects(plural, project))]

    def get(self, plural: str, project: str, name: str) -> Any | None:
        return self._caches[plural].get(self.keys.object(plural, project, name))

    def endpoint(self, project: str, name: str) -> Endpoint | None:
        found: Endpoint | None = self.get("endpoints", project, name)
        return found

    def slo_degrade(self, project: str, endpoint: str) -> frozenset[str]:
        """The degrade actions on SLO state in force for the endpoint (store/delivery)."""
        status = self._caches["delivery"].get(self.keys.status("endpoints", project, endpoint))
        degrade = (status or {}).get("degrade") or {}
        return frozenset(degrade.get("actions") or ())

    def tenant_of(self, project: str) -> str:
        record = self.get("projects", CLUSTER_SCOPE, project)
        return record.spec.tenant if record is not None else "default"

    def principal(self, token: str) -> auth.Principal | None:
        # The hash is remembered per token (it costs a SHA-256 per request); the token's record
        # is looked up every time, so a revoked one stops at once.
        key = self._token_keys.get(token)
        if key is None:
            if len(self._token_keys) >= TOKEN_KEYS_MAX:  # callers choose tokens: bound them
                self._token_keys.clear()
            key = self._token_keys[token] = self.keys.token(auth.token_hash(token))
        return self.tokens.get(key)

    def strategies(self, project: str) -> dict[str, Strategy]:
        """The project's Strategy objects by name (built once per view change)."""
        self._refresh()
        found = self._strategies.get(project)
        if found is None:
            found = self._strategies[project] = {
                s.metadata.name: s for s in self.objects("strategies", project)
            }
        return found

    def slot_count(self) -> int:
        return len(self._slots)

    # derived tables ----------------------------------------------------------------------
    def route(self, project: str, endpoint: Endpoint, revision: str) -> Route:
        """The endpoint's candidates for one revision, and its resolved policy."""
        self._refresh()
        key = (project, endpoint.metadata.name, revision)
        route = self._routes.get(key)
        if route is None or route.endpoint is not endpoint:
            policy = resolve_policy(self.objects("policies", project), endpoint)
            domains: Mapping[str, Domain] = {
                d.metadata.name: d for d in self.objects("domains", project)
            }
            rules = CandidateRules(
                allowed_regions=policy.allowed_regions,
                allowed_link_classes=policy.allowed_link_classes,
            )
            replicas = self._replicas.get(project, [])
            found = eligible(endpoint, revision, replicas, domains, rules)
            # Where every domain of the project is, so a caller's domain prices its links.
            regions = {r.domain: r.region for r in replicas if r.domain and r.region}
            route = Route(endpoint, policy, CandidateSet(found.candidates, regions), found)
            self._routes[key] = route
        return route

    def replicas(self, project: str) -> list[Replica]:
        self._refresh()
        return self._replicas.get(project, [])

    def _refresh(self) -> None:
        objects, reports, at = self._built_at
        if objects == self._object_changes and (
            reports == self._report_changes or time.monotonic() - at < REPORT_REFRESH_S
        ):
            return
        self._built_at = (self._object_changes, self._report_changes, time.monotonic())
        self.generation += 1
        self._routes, self._strategies = {}, {}
        by_project: dict[str, list[Replica]] = {}
        reports = self._caches["reports"]
        for key, report in reports.items(self.keys.statuses("nodes")):
            where = self.keys.parse_status(key)
            node = self.get("nodes", where.project, where.name)
            domains = {d.metadata.name: d for d in self.objects("domains", where.project)}
            slot = self._slot(where.project, where.name)
            running = (report.get("runtime") or {}).get("running") or 0
            peak = self._peak_running[slot] = max(self._peak_running.get(slot, 0), running)
            by_project.setdefault(where.project, []).extend(
                replicas_of(where.name, slot, report, node, domains, peak)
            )
        self._replicas = by_project

    def _slot(self, project: str, node: str) -> int:
        slot = self._slots.get((project, node))
        if slot is None:
            slot = len(self._slots)
            if slot >= MAX_REPLICAS:
                raise RuntimeError(f"more than {MAX_REPLICAS} nodes seen; restart the router")
            self._slots[(project, node)] = slot
        return slot


def replicas_of(
    name: str,
    slot: int,
    report: Mapping[str, Any],
    node: Any | None,
    domains: Mapping[str, Domain],
    peak_running: int = 0,
) -> Iterable[Replica]:
    """One Replica per model the node's runtime serves; `peak_running` is the most requests
    earlier reports showed running."""
    runtime = report.get("runtime")
    if not runtime or not runtime.get("url"):
        return []
    facts = report.get("facts") or {}
    spec = node.spec if node is not None else None
    avail = availability(report, spec)
    domain = facts.get("domain") or (spec.domain if spec is not None else None)
    domain_obj = domains.get(domain or "")
    residency = facts.get("residency") or (
        domain_obj.spec.residency.region if domain_obj is not None else None
    )
    gpus = report.get("gpus") or []
    temps = [g["tempC"] for g in gpus if g.get("tempC") is not None]
    base = {
        "node": name,
        "url": runtime["url"].rstrip("/"),
        "slot": slot,
        "domain": domain,
        "region": facts.get("region") or (spec.region if spec is not None else None),
        "zone": facts.get("zone") or (spec.zone if spec is not None else None),
        "residency": residency,
        "link_classes": tuple(facts.get("linkClasses") or ()),
        "gpu": facts.get("gpu"),
        "gpu_count": facts.get("gpuCount") or 0,
        "price_per_gpu_hour": facts.get("pricePerGpuHour"),
        "ready": avail.ready,
        "cordoned": avail.cordoned,
        "draining": avail.draining,
        "quarantined": avail.quarantined,
        "runtime_healthy": bool(runtime.get("healthy", True)),
        "running": runtime.get("running") or 0,
        "waiting": runtime.get("waiting") or 0,
        "peak_running": max(peak_running, runtime.get("running") or 0),
        "kv_cache_usage": runtime.get("kvCacheUsage"),
        "generation_tokens_per_s": runtime.get("generationTokensPerS"),
        "ttft_p50_ms": runtime.get("ttftP50Ms"),
        "max_temp_c": max(temps) if temps else None,
        "ecc_dbe": sum(g.get("eccVolatileDbe") or 0 for g in gpus),
        "throttled": any(SLOWDOWNS.intersection(g.get("throttleReasons") or ()) for g in gpus),
    }
    return [Replica(model=model, **base) for model in runtime.get("models") or []]
