"""`EtcdStore`: the one etcd adapter of a process (KV with revisions, transactions, list+watch
with resync, leases).

Everything goes through one `etcd3aio.Etcd3Client`, so one gRPC channel per process. Unary calls
are bounded by `timeout` and never retried here: when etcd is down they fail fast with
`EtcdUnavailable` (callers such as the HTTP API answer 503), and they work again on their own once
etcd is back, because the channel reconnects within about a second (its backoff is capped).

Watches do not use etcd3aio's `watch()`: it resumes a broken stream from the last response's
header revision, which can skip events (the "created" answer and catch-up batches carry a header
revision ahead of the events delivered so far), and it waits forever after a server-side cancel.
`watch_prefix` runs the stream itself and resumes from the last delivered event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdError,
    EtcdTransientError,
    SortOrder,
    SortTarget,
    prefix_range_end,
)
from etcd3aio import _protobuf as rpc
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from infermesh.errors import (
    BadRequest,
    Conflict,
    EtcdUnavailable,
    MeshError,
    NotFound,
    PayloadTooLarge,
)
from infermesh.store.etcd_types import (
    Compare,
    CompareOp,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    RevisionCompacted,
    TxnResult,
    WatchEvent,
    as_bytes,
    event_from_pb,
    kv_from_pb,
    op_response_from_pb,
)

__all__ = [
    "Compare",
    "CompareOp",
    "EtcdStore",
    "EventType",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Op",
    "RevisionCompacted",
    "TxnResult",
    "WatchEvent",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE_SIZE = 1000
_PROBE_KEY = b"/infermesh-probe"  # never written: reading it only costs a linearizable round trip
_WATCH_BACKOFF_MIN = 0.1
_WATCH_BACKOFF_MAX = 2.0
# gRPC waits up to 120 s between reconnects by default; cap it so calls work soon after etcd
# returns. Big pages of big objects exceed the default 4 MiB receive limit.
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]
_FATAL_WATCH_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
)


class Lease:
    """An etcd lease: keys put with its `id` vanish when it expires or is revoked.

    `start_keepalive()` refreshes it every ttl/3 in the background. `lost` is set when a refresh
    finds the lease gone, or when etcd has not confirmed it for longer than its TTL (it may have
    expired meanwhile): whoever relies on the lease must stop and grant a new one.
    """

    def __init__(self, store: EtcdStore, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._store = store
        self._task: asyncio.Task[None] | None = None

    def start_keepalive(self) -> None:
        if self._task is None and not self.lost.is_set():
            self._task = asyncio.create_task(self._keepalive(), name=f"etcd-lease-{self.id:x}")
            self._store._leases.add(self)

    async def revoke(self) -> None:
        """Stop refreshing and revoke, deleting the keys bound to the lease. An already expired
        lease is not an error."""
        await self.close()
        with contextlib.suppress(LeaseNotFound):
            await self._store.revoke_lease(self.id)

    async def close(self) -> None:
        """Stop refreshing; the lease then expires on its own after its TTL."""
        task, self._task = self._task, None
        self._store._leases.discard(self)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        confirmed_at = loop.time()
        delay = interval
        while True:
            await asyncio.sleep(delay)
            sent_at = loop.time()
            try:
                remaining = await self._store.keepalive_once(self.id)
            except EtcdUnavailable as exc:
                if loop.time() - confirmed_at > self.ttl:
                    log.warning(
                        "lease %x lost: etcd unreachable for over %ss (%s)", self.id, self.ttl, exc
                    )
                    break
                delay = min(interval, 1.0)  # the lease is running out: retry sooner
                continue
            except MeshError as exc:
                log.warning("lease %x lost: %s", self.id, exc)
                break
            if remaining <= 0:
                log.warning("lease %x lost: etcd no longer knows it", self.id)
                break
            confirmed_at, delay = sent_at, interval
        self.lost.set()
        self._store._leases.discard(self)


class EtcdStore:
    """Async access to etcd for one process. Keys are `str`, values `bytes`.

    `connect()` only opens the channel (it succeeds while etcd is down); use `healthy()` to probe.
    Every call that cannot reach etcd raises `EtcdUnavailable` within `timeout` seconds.
    """

    def __init__(self, endpoints: list[str], *, timeout: float = 3.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._endpoints = [_strip_scheme(e) for e in endpoints]
        self._timeout = timeout
        self._client: Etcd3Client | None = None
        self._kv: KVService
        self._lease: LeaseService
        self._watch: rpc.WatchStub
        self._closed = False
        self._leases: set[Lease] = set()

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    # -- lifecycle --------------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._client is not None:
            return
        # One attempt per call: a retried write whose first attempt was applied would then
        # report a false conflict, and callers want a prompt answer when etcd is down.
        client = Etcd3Client(await _resolve(self._endpoints), rpc_max_attempts=1)
        # etcd3aio offers no way to pass channel options; its manager's list is the only hook.
        client._manager.grpc_options.extend(_CHANNEL_OPTIONS)
        await client.connect()
        assert client.kv is not None and client.lease is not None and client._channel is not None
        self._client, self._kv, self._lease = client, client.kv, client.lease
        self._watch = rpc.WatchStub(client._channel)
        self._closed = False

    async def close(self) -> None:
        """Stop lease keep-alives and close the channel; live watches end with EtcdUnavailable."""
        self._closed = True
        for lease in list(self._leases):
            await lease.close()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> EtcdStore:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reads ------------------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call(self._kv.get(key.encode(), timeout=self._timeout))
        return kv_from_pb(resp.kvs[0]) if resp.kvs else None

    async def list_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` in key order, as of one revision, and that revision.

        Watch from the returned revision + 1 to see every later change. Raises
        `RevisionCompacted` when `revision` is older than etcd's history.
        """
        start = prefix.encode()
        end = prefix_range_end(start)
        items: list[KeyValue] = []
        while True:
            # Pages are read at the first page's revision, so the listing is one snapshot.
            resp = await self._call(
                self._kv.get(
                    start,
                    range_end=end,
                    revision=revision,
                    limit=_PAGE_SIZE,
                    timeout=self._timeout,
                )
            )
            if revision == 0:
                revision = resp.header.revision
            items.extend(kv_from_pb(kv) for kv in resp.kvs)  # etcd returns ranges in key order
            if not resp.more:
                return items, revision
            start = resp.kvs[-1].key + b"\0"

    async def newest(self, prefix: str, limit: int, *, before: str | None = None) -> list[KeyValue]:
        """The last `limit` keys under `prefix` (before `before`, when given), last first: how
        time-ordered keys such as events are read newest first without listing them all."""
        start = prefix.encode()
        end = before.encode() if before is not None else prefix_range_end(start)
        resp = await self._call(
            self._kv.get(
                start,
                range_end=end,
                limit=limit,
                sort_order=SortOrder.DESCEND,
                sort_target=SortTarget.KEY,
                timeout=self._timeout,
            )
        )
        return [kv_from_pb(kv) for kv in resp.kvs], int(resp.header.revision)

    async def revision(self) -> int:
        """etcd's current revision (a linearizable read)."""
        resp = await self._call(self._kv.get(_PROBE_KEY, count_only=True, timeout=self._timeout))
        return int(resp.header.revision)

    async def healthy(self) -> bool:
        """True if etcd answers a linearizable read (it has a leader) within `timeout`."""
        try:
            await self.revision()
        except MeshError:
            return False
        return True

    # -- writes -----------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Write unconditionally; returns the new mod revision."""
        resp = await self._call(
            self._kv.put(key.encode(), as_bytes(value), lease, timeout=self._timeout)
        )
        return int(resp.header.revision)

    async def create(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Write `key` only if it does not exist (else `Conflict`); returns its mod revision."""
        resp = await self._txn(
            [Compare.mod_revision(key, "==", 0).pb], [Op.put(key, value, lease).pb], ()
        )
        if not resp.succeeded:
            raise Conflict(f"{key} already exists", {"key": key})
        return int(resp.header.revision)

    async def update(
        self,
        key: str,
        value: bytes | str,
        *,
        expected_mod_revision: int | None = None,
        lease: int = 0,
    ) -> int:
        """Replace an existing key (`NotFound` if absent). With `expected_mod_revision`, only if
        it was not modified since (`Conflict` otherwise). Returns the new mod revision."""
        return await self._guarded(key, Op.put(key, value, lease), expected_mod_revision)

    async def delete(self, key: str, *, expected_mod_revision: int | None = None) -> int:
        """Delete an existing key (`NotFound` if absent), optionally only if not modified since
        `expected_mod_revision` (`Conflict` otherwise). Returns the deletion's revision."""
        return await self._guarded(key, Op.delete(key), expected_mod_revision)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many there were."""
        start = prefix.encode()
        resp = await self._call(
            self._kv.delete(start, prefix_range_end(start), timeout=self._timeout)
        )
        return int(resp.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] | None = None,
    ) -> TxnResult:
        """Run `success` if every compare holds, else `failure`, atomically at one revision."""
        resp = await self._txn(
            [c.pb for c in compares],
            [o.pb for o in success],
            [o.pb for o in failure] if failure else (),
        )
        return TxnResult(
            resp.succeeded,
            int(resp.header.revision),
            [op_response_from_pb(r) for r in resp.responses],
        )

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`; watches resuming from earlier get a RESYNC."""
        await self._call(self._kv.compact(revision, timeout=self._timeout))

    # -- watch ------------------------------------------------------------------------------------
    async def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        *,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> AsyncIterator[list[WatchEvent]]:
        """Changes under `prefix` from `start_revision` on, one list per etcd response.

        Each change is delivered once, in revision order, across etcd restarts and broken
        streams (it reconnects with backoff and resumes after the last delivered revision). If
        that revision has been compacted it yields `[WatchEvent("RESYNC", ...)]` and ends: list
        the prefix again and watch from the listing's revision + 1. `start_revision <= 0` means
        "from now". `prev_kv` fills `prev_value`; `progress_notify` adds PROGRESS events when
        quiet (every 5 s on `EmbeddedEtcd`, 10 min by etcd's default). Cancel the consuming task
        (or `aclose()` the iterator) to stop.
        """
        key = prefix.encode()
        async for batch in self.watch_range(
            prefix,
            prefix_range_end(key).decode("latin-1"),
            start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        ):
            yield batch

    async def watch_range(
        self,
        start: str,
        end: str,
        start_revision: int,
        *,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> AsyncIterator[list[WatchEvent]]:
        """`watch_prefix` over the keys in [start, end): one ordered stream for keys under
        several prefixes (a node's object and its agent's report), filtered by the caller."""
        if start_revision <= 0:
            start_revision = await self.revision() + 1
        prefix = start
        key = start.encode()
        range_end = end.encode("latin-1")
        next_rev = start_revision
        backoff = _WATCH_BACKOFF_MIN
        broken = False
        while True:
            create = rpc.WatchCreateRequest(
                key=key,
                range_end=range_end,
                start_revision=next_rev,
                prev_kv=prev_kv,
                progress_notify=progress_notify,
            )
            try:
                call = self._watch.Watch(_hold_open(rpc.WatchRequest(create_request=create)))
            except grpc.aio.UsageError as exc:  # the channel was closed under us
                raise self._error(exc) from exc
            try:
                async for resp in call:
                    if broken:
                        log.info("watch on %s resumed at revision %d", prefix, next_rev)
                        broken, backoff = False, _WATCH_BACKOFF_MIN
                    if resp.compact_revision:
                        yield [WatchEvent("RESYNC", prefix, b"", int(resp.compact_revision))]
                        return
                    if resp.canceled:
                        raise MeshError(
                            f"etcd canceled the watch on {prefix}: "
                            f"{resp.cancel_reason or 'no reason given'}"
                        )
                    if resp.events:
                        # The filter only matters if etcd ever replays: a change is never repeated.
                        batch = [
                            event_from_pb(ev)
                            for ev in resp.events
                            if ev.kv.mod_revision >= next_rev
                        ]
                        if batch:
                            next_rev = batch[-1].mod_revision + 1
                            yield batch
                    elif not resp.created:
                        yield [WatchEvent("PROGRESS", prefix, b"", int(resp.header.revision))]
                        next_rev = max(next_rev, resp.header.revision + 1)
                # The stream ended without an error (etcd shutting down): resume like after one.
            except asyncio.CancelledError:
                if self._closed_under_us():
                    raise self._unavailable("this EtcdStore is closed") from None
                raise
            except grpc.aio.AioRpcError as exc:
                if self._closed or exc.code() in _FATAL_WATCH_CODES:
                    raise self._error(exc) from exc
                if not broken:
                    log.warning(
                        "watch on %s broke (%s: %s); resuming from revision %d",
                        prefix,
                        exc.code().name,
                        exc.details(),
                        next_rev,
                    )
            finally:
                call.cancel()
            broken = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)

    # -- leases -----------------------------------------------------------------------------------
    async def grant_lease(self, ttl: int) -> Lease:
        """A new lease of `ttl` seconds (etcd may round it up; see `Lease.ttl`)."""
        resp = await self._call(self._lease.grant(ttl, timeout=self._timeout))
        return Lease(self, int(resp.ID), int(resp.TTL))

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke any lease by id, deleting its keys (`LeaseNotFound` if it is gone already)."""
        await self._call(self._lease.revoke(lease_id, timeout=self._timeout))

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its remaining TTL (0 when etcd no longer knows it)."""
        try:
            call = self._lease.keep_alive(lease_id)
        except grpc.aio.UsageError as exc:
            raise self._error(exc) from exc
        try:
            resp = await self._call(asyncio.wait_for(call.read(), self._timeout))
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise self._unavailable("the lease keep-alive stream closed")
        return int(resp.TTL)

    # -- internals --------------------------------------------------------------------------------
    async def _txn(
        self,
        compares: Sequence[rpc.Compare],
        success: Sequence[rpc.RequestOp],
        failure: Sequence[rpc.RequestOp],
    ) -> rpc.TxnResponse:
        return await self._call(self._kv.txn(compares, success, failure, timeout=self._timeout))

    async def _guarded(self, key: str, op: Op, expected: int | None) -> int:
        cond = (
            Compare.version(key, ">", 0)
            if expected is None
            else Compare.mod_revision(key, "==", expected)
        )
        resp = await self._txn([cond.pb], [op.pb], [Op.get(key).pb])
        if resp.succeeded:
            return int(resp.header.revision)
        kvs = resp.responses[0].response_range.kvs
        if not kvs:
            raise NotFound(f"{key} not found", {"key": key})
        stored = int(kvs[0].mod_revision)
        raise Conflict(
            f"{key} was modified: its stored mod_revision is {stored}, the given one is {expected}",
            {"key": key, "mod_revision": stored, "expected_mod_revision": expected},
        )

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (EtcdError, grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError) as exc:
            raise self._error(exc) from exc
        except asyncio.CancelledError:
            if self._closed_under_us():
                raise self._unavailable("this EtcdStore is closed") from None
            raise

    def _closed_under_us(self) -> bool:
        """True if a CancelledError came from `close()` ending our call, not from our task being
        cancelled (gRPC reports calls ended by closing the channel as cancelled)."""
        task = asyncio.current_task()
        return self._closed and task is not None and not task.cancelling()

    def _error(self, exc: BaseException) -> MeshError:
        """Our error for whatever etcd3aio or gRPC raised."""
        if isinstance(exc, (EtcdConnectionError, EtcdTransientError)):
            return self._unavailable(str(exc))
        if isinstance(exc, TimeoutError):
            return self._unavailable(f"no answer within {self._timeout:g}s")
        if isinstance(exc, grpc.aio.UsageError) or self._closed:
            return self._unavailable("this EtcdStore is closed")
        if not isinstance(exc, grpc.aio.AioRpcError):
            return MeshError(f"etcd refused the request: {exc}")
        code, detail = exc.code(), exc.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return self._unavailable(f"{code.name} ({detail})")
        if "revision has been compacted" in detail:
            return RevisionCompacted(f"etcd refused the request: {detail}")
        if "lease not found" in detail:
            return LeaseNotFound(f"etcd refused the request: {detail}")
        if "request is too large" in detail or "larger than max" in detail:  # etcd's, gRPC's
            return PayloadTooLarge(f"etcd refused the request: {detail}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return BadRequest(f"etcd refused the request: {detail}")
        return MeshError(f"etcd refused the request: {code.name} ({detail})")

    def _unavailable(self, why: str) -> EtcdUnavailable:
        where = ", ".join(self._endpoints)
        return EtcdUnavailable(
            f"etcd at {where} is unavailable: {why}", {"endpoints": list(self._endpoints)}
        )


def _strip_scheme(endpoint: str) -> str:
    if endpoint.startswith("https://"):
        raise ValueError(f"TLS etcd endpoints are not supported: {endpoint}")
    return endpoint.removeprefix("http://").rstrip("/")


async def _resolve(endpoints: list[str]) -> list[str]:
    """IPv4 `host:port` for each endpoint: etcd3aio dials `ipv4:` targets, which take no names."""
    loop = asyncio.get_running_loop()
    resolved = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint must be host:port, got {endpoint!r}")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(
                    host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise EtcdUnavailable(f"etcd at {endpoint} is unavailable: {exc}") from exc
            host = infos[0][4][0]
        resolved.append(f"{host}:{port}")
    return resolved


async def _hold_open(request: rpc.WatchRequest) -> AsyncIterator[rpc.WatchRequest]:
    yield request
    await asyncio.Event().wait()  # ending the request stream would end the watch
