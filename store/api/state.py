"""What the API process holds: the etcd connection, caches, committer, repository, controllers.

Routes reach it through `request.app.state.mesh`. Everything starts and stops with the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from infermesh.errors import Conflict, Forbidden, MeshError, Unauthorized
from infermesh.store import auth
from infermesh.store.committer import Committer, Mutation, event_record
from infermesh.store.delivery.controller import DeliveryController
from infermesh.store.etcd import EtcdStore, Op
from infermesh.store.keys import CLUSTER_SCOPE, KeyLayout
from infermesh.store.reference_controller import ReferenceController
from infermesh.store.repository import ObjectRepository, Stored, decode, now
from infermesh.store.series import (
    DEFAULT_MAX_BYTES,
    DEFAULT_RAW_RETENTION_S,
    DEFAULT_RETENTION_S,
    DEFAULT_SETTLE_S,
    SeriesStore,
    default_path,
)
from infermesh.store.series_prometheus import PrometheusSeries
from infermesh.store.slo.evaluator import DEFAULT_INTERVAL_S, SloEvaluator
from infermesh.store.slo.reader import WindowSource
from infermesh.store.watch_cache import WatchCache, decode_json

log = logging.getLogger(__name__)

# Kinds whose owner writes their status straight into etcd (DESIGN.md §2): the API mirrors each
# `status/{plural}` prefix and serves it merged into the objects (store/api/owner_status.py).
# SLO status is written by the API's own SLO evaluator (store/slo/evaluator.py), the same way.
OWNER_STATUS = ("nodes", "jobs", "slos", "endpoints")
# Owners' keys that go when the object is deleted, so a re-created one starts clean. A node's
# report stays: it is bound to its agent's lease and describes a live machine, not the object.
DELETED_WITH_OBJECT: frozenset[str] = frozenset({"jobs", "slos", "endpoints"})  # status and logs


@dataclass
class Settings:
    etcd_endpoints: list[str]
    prefix: str = "/infermesh"
    bootstrap_token: str | None = None
    max_body_bytes: int = 1 << 20
    identity: str = "api"
    series_db: Path = field(default_factory=default_path)
    series_retention_s: int = DEFAULT_RETENTION_S
    series_raw_retention_s: int = DEFAULT_RAW_RETENTION_S
    series_max_bytes: int = DEFAULT_MAX_BYTES
    series_settle_s: int = DEFAULT_SETTLE_S
    slo_interval_s: float = DEFAULT_INTERVAL_S  # 0: this API evaluates no SLOs
    # SLOs and canaries judged from an existing Prometheus that scrapes the routers (one
    # project's) instead of the series store; charts still read the series store.
    prometheus_url: str | None = None
    prometheus_project: str = "default"


def _decode_principal(_: str, value: bytes, __: int) -> auth.Principal:
    return auth.Principal.from_json(json.loads(value))


@dataclass
class ApiState:
    settings: Settings
    keys: KeyLayout = field(init=False)
    store: EtcdStore = field(init=False)
    objects: WatchCache[Stored] = field(init=False)
    tokens: WatchCache[auth.Principal] = field(init=False)
    reports: dict[str, WatchCache[dict[str, Any]]] = field(init=False)  # OWNER_STATUS, by plural
    committer: Committer = field(init=False)
    repo: ObjectRepository = field(init=False)
    controller: ReferenceController = field(init=False)
    series: SeriesStore = field(init=False)  # routers' SLI buckets (SQLite, not etcd)
    slos: SloEvaluator = field(init=False)
    delivery: DeliveryController = field(init=False)  # canary rollouts, SLO degradation
    _maintainer: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.keys = KeyLayout(self.settings.prefix)
        self.store = EtcdStore(self.settings.etcd_endpoints)
        self.objects = WatchCache(self.store, self.keys.objects(), decode)
        self.tokens = WatchCache(self.store, self.keys.tokens(), _decode_principal)
        self.reports = {
            plural: WatchCache(self.store, self.keys.statuses(plural), decode_json)
            for plural in OWNER_STATUS
        }
        self.committer = Committer(self.store, self.keys)
        self.repo = ObjectRepository(self.store, self.keys, self.committer, self.objects)
        self.controller = ReferenceController(
            self.store, self.keys, self.repo, identity=self.settings.identity
        )
        self.series = SeriesStore(
            self.settings.series_db,
            self.settings.series_retention_s,
            raw_retention_s=self.settings.series_raw_retention_s,
            max_bytes=self.settings.series_max_bytes,
            settle_s=self.settings.series_settle_s,
        )
        windows: WindowSource = self.series
        if self.settings.prometheus_url:
            windows = PrometheusSeries(
                self.settings.prometheus_url, project=self.settings.prometheus_project
            )
        self.slos = SloEvaluator(
            self.store,
            self.keys,
            self.objects,
            windows,
            identity=self.settings.identity,
            interval_s=self.settings.slo_interval_s or DEFAULT_INTERVAL_S,
            job_status=lambda project, job: self.reports["jobs"].get(
                self.keys.status("jobs", project, job)
            ),
        )
        self.delivery = DeliveryController(
            self.store,
            self.keys,
            self.objects,
            self.reports,
            self.repo,
            windows,
            identity=self.settings.identity,
            interval_s=self.settings.slo_interval_s or DEFAULT_INTERVAL_S,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.series.open)  # first: a bad --series-db fails at once
        self._maintainer = asyncio.create_task(self._maintain_series(), name="series-rollup")
        await self.store.connect()
        await self.committer.start()
        await self.objects.start()
        await self.tokens.start()
        for reports in self.reports.values():
            await reports.start()
        caches = (self.objects, self.tokens, *self.reports.values())
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in caches)), timeout=30)
        if self.settings.bootstrap_token:
            await self.ensure_token(
                self.settings.bootstrap_token,
                auth.Principal("admin", ("orgAdmin",), ("*",)),
                actor="system:bootstrap",
            )
        await self.controller.start()
        if self.settings.slo_interval_s > 0:
            await self.slos.start()
            await self.delivery.start()

    async def stop(self) -> None:
        await self.delivery.stop()
        await self.slos.stop()
        await self.controller.stop()
        for reports in self.reports.values():
            await reports.stop()
        await self.tokens.stop()
        await self.objects.stop()
        await self.committer.stop()
        await self.store.close()
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        await asyncio.to_thread(self.series.close)

    async def _maintain_series(self) -> None:
        # Rollup, retention and the size cap, every 30 s (or a tenth of a shorter retention):
        # the raw buckets not rolled up yet, which every window read sums, stay few. The first
        # pass waits the settle delay: routers re-send what they buffered while the API was
        # down before that time is finalised.
        every = max(1.0, min(self.settings.series_retention_s / 10, 30.0))
        await asyncio.sleep(max(every, self.settings.series_settle_s))
        while True:
            try:
                report = await asyncio.to_thread(self.series.maintain)
                if report.seconds > 5:
                    log.info(
                        "series maintenance took %.1fs (%d rows rolled up)",
                        report.seconds,
                        report.rolled,
                    )
            except sqlite3.Error:
                log.exception("series maintenance failed; retrying in %.0fs", every)
            await asyncio.sleep(every)

    async def drop_owner_keys(self, plural: str, project: str, name: str) -> None:
        """Delete what owners wrote for a deleted object (DELETED_WITH_OBJECT)."""
        if plural not in DELETED_WITH_OBJECT:
            return
        keys = [self.keys.status(plural, project, name), self.keys.logs(plural, project, name)]
        try:
            await self.store.txn([], [Op.delete(k) for k in keys])
        except MeshError as exc:  # the delete itself was accepted; the owner drops them too
            log.warning("%s %s/%s deleted, its owner's keys not: %s", plural, project, name, exc)

    # tenancy and auth ----------------------------------------------------------------------
    def tenant_of(self, project: str) -> str:
        stored = self.objects.get(self.keys.object("projects", CLUSTER_SCOPE, project))
        return ((stored.obj.get("spec") or {}) if stored else {}).get("tenant") or "default"

    def authenticate(self, request: Request) -> auth.Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise Unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>' "
                "(the token is in your context file or INFERMESH_TOKEN)"
            )
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        principal = self.tokens.get(self.keys.token(auth.token_hash(token.strip())))
        if principal is None:
            raise Unauthorized("invalid or revoked token")
        return principal

    def check(self, principal: auth.Principal, verb: auth.Verb, kind: str, project: str) -> None:
        auth.check(principal, verb, kind, project, self.tenant_of)

    def require_admin(self, principal: auth.Principal, to: str) -> None:
        # The audit log and tokens span every project: an org admin's alone.
        if "orgAdmin" not in principal.roles:
            raise Forbidden(
                f"role orgAdmin required to {to} ({principal.subject} has: "
                f"{', '.join(principal.roles) or 'no roles'})",
                {"requiredRoles": ["orgAdmin"]},
            )

    async def ensure_token(self, token: str, principal: auth.Principal, actor: str) -> bool:
        """Store a token's principal (hash only); False if that token already exists."""
        digest = auth.token_hash(token)
        key = self.keys.token(digest)
        if self.tokens.get(key) is not None:
            return False
        stamp = now()
        record: dict[str, Any] = {
            "time": stamp,
            "actor": actor,
            "action": "create",
            "kind": "Token",
            "project": CLUSTER_SCOPE,
            "name": principal.subject,
            "diff": [{"path": "principal", "before": None, "after": principal.to_json()}],
        }
        event = event_record(
            kind="Token",
            project=CLUSTER_SCOPE,
            name=principal.subject,
            reason="TokenCreated",
            message=f"token for {principal.subject} ({', '.join(principal.roles)}) created",
            actor=actor,
            time=stamp,
        )
        value = json.dumps({**principal.to_json(), "created": stamp, "createdBy": actor}).encode()
        try:
            revision = await self.committer.commit(
                Mutation(key, value, 0, CLUSTER_SCOPE, event, record)
            )
        except Conflict:
            return False
        await self.tokens.wait_for(revision)
        return True


def mesh(request: Request) -> ApiState:
    state: ApiState = request.app.state.mesh
    return state
