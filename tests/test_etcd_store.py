"""EtcdStore against a real etcd: KV with revisions, transactions, list+watch, leases, outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infermesh.errors import Conflict, EtcdUnavailable, NotFound, PayloadTooLarge
from infermesh.store.etcd import (
    Compare,
    EtcdStore,
    LeaseNotFound,
    Op,
    RevisionCompacted,
    WatchEvent,
)
from infermesh.store.etcd_server import EmbeddedEtcd

WAIT = 20.0  # generous bound for "eventually", never a performance target


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """An etcd of this test's own, for tests that stop, restart or compact it."""
    server = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def collecting(
    store: EtcdStore, prefix: str, start: int, **kwargs: bool
) -> AsyncIterator[list[WatchEvent]]:
    """Watch `prefix` in a background task, appending every event to the yielded list."""
    events: list[WatchEvent] = []

    async def consume() -> None:
        async for batch in store.watch_prefix(prefix, start, **kwargs):
            events.extend(batch)

    task = asyncio.create_task(consume())
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(predicate: object, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)
    assert predicate(), what  # type: ignore[operator]


# -- KV -----------------------------------------------------------------------------------------
async def test_crud_round_trip(store: EtcdStore, etcd_prefix: str) -> None:
    key = etcd_prefix + "a"
    assert await store.get(key) is None

    created = await store.create(key, b"one")
    kv = await store.get(key)
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        key,
        b"one",
        created,
        created,
        1,
        0,
    )

    updated = await store.update(key, b"two", expected_mod_revision=created)
    assert updated > created
    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision, kv.version) == (b"two", updated, 2)

    put = await store.put(key, "three")  # str values are stored as UTF-8
    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision) == (b"three", put)

    deleted = await store.delete(key, expected_mod_revision=put)
    assert deleted > put
    assert await store.get(key) is None


async def test_newest_reads_backwards_in_pages(store: EtcdStore, etcd_prefix: str) -> None:
    for i in range(5):
        await store.put(f"{etcd_prefix}e{i}", str(i))
    await store.put(etcd_prefix + "f", "outside the prefix asked for")
    page, revision = await store.newest(etcd_prefix + "e", 2)
    assert [kv.value for kv in page] == [b"4", b"3"]
    assert revision == await store.revision()
    older, _ = await store.newest(etcd_prefix + "e", 2, before=page[-1].key)
    assert [kv.value for kv in older] == [b"2", b"1"]


async def test_create_on_existing_key_is_a_conflict(store: EtcdStore, etcd_prefix: str) -> None:
    key = etcd_prefix + "taken"
    revision = await store.create(key, b"first")
    with pytest.raises(Conflict, match="already exists") as info:
        await store.create(key, b"second")
    assert key in info.value.message
    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision) == (b"first", revision)


async def test_update_with_a_stale_revision_changes_nothing(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = etcd_prefix + "obj"
    first = await store.create(key, b"v1")
    second = await store.update(key, b"v2", expected_mod_revision=first)

    with pytest.raises(Conflict) as info:
        await store.update(key, b"v3", expected_mod_revision=first)
    assert str(second) in info.value.message and str(first) in info.value.message
    with pytest.raises(Conflict):
        await store.delete(key, expected_mod_revision=first)

    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision) == (b"v2", second)


async def test_update_and_delete_of_a_missing_key_are_not_found(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = etcd_prefix + "missing"
    with pytest.raises(NotFound, match="missing"):
        await store.update(key, b"x")
    with pytest.raises(NotFound):
        await store.update(key, b"x", expected_mod_revision=5)
    with pytest.raises(NotFound):
        await store.delete(key)
    assert await store.get(key) is None


async def test_delete_prefix_counts_and_spares_neighbours(
    store: EtcdStore, etcd_prefix: str
) -> None:
    for name in ("a", "b", "c"):
        await store.put(f"{etcd_prefix}dir/{name}", b"x")
    await store.put(f"{etcd_prefix}dir2", b"neighbour")
    assert await store.delete_prefix(f"{etcd_prefix}dir/") == 3
    items, _ = await store.list_prefix(etcd_prefix)
    assert [kv.key for kv in items] == [f"{etcd_prefix}dir2"]


# -- transactions -------------------------------------------------------------------------------
async def test_txn_writes_all_or_nothing(store: EtcdStore, etcd_prefix: str) -> None:
    obj, event, head = (etcd_prefix + k for k in ("obj", "event", "head"))
    ok = await store.txn(
        [Compare.mod_revision(obj, "==", 0), Compare.mod_revision(head, "==", 0)],
        [Op.put(obj, b"o1"), Op.put(event, b"e1"), Op.put(head, b"h1"), Op.get(obj)],
    )
    assert ok.succeeded
    assert ok.responses[:3] == [None, None, None]
    got = ok.responses[3]
    assert isinstance(got, list) and got[0].value == b"o1" and got[0].mod_revision == ok.revision

    # A stale audit head fails the whole transaction: nothing of it is written.
    failed = await store.txn(
        [Compare.mod_revision(obj, "==", ok.revision), Compare.mod_revision(head, "==", 0)],
        [Op.put(obj, b"o2"), Op.put(event, b"e2"), Op.put(head, b"h2")],
        [Op.get(head), Op.delete(etcd_prefix + "nothing-here")],
    )
    assert not failed.succeeded
    head_now = failed.responses[0]
    assert isinstance(head_now, list) and head_now[0].mod_revision == ok.revision
    assert failed.responses[1] == 0
    items, _ = await store.list_prefix(etcd_prefix)
    assert {kv.key: kv.value for kv in items} == {obj: b"o1", event: b"e1", head: b"h1"}


async def test_txn_compares_on_version_value_and_create_revision(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = etcd_prefix + "k"
    created = await store.create(key, b"abc")
    checks = [
        (Compare.version(key, "==", 1), True),
        (Compare.version(key, ">", 1), False),
        (Compare.value(key, "==", b"abc"), True),
        (Compare.value(key, "!=", "abc"), False),
        (Compare.create_revision(key, "==", created), True),
        (Compare.create_revision(key, "<", created), False),
    ]
    for compare, expected in checks:
        result = await store.txn([compare], [])
        assert result.succeeded is expected
    with pytest.raises(ValueError, match="compare operator"):
        Compare.version(key, ">=", 1)  # type: ignore[arg-type]


# -- list and watch -----------------------------------------------------------------------------
async def test_list_prefix_is_sorted_paginated_and_can_read_the_past(
    store: EtcdStore, etcd_prefix: str
) -> None:
    names = [f"{i:04d}" for i in range(2100)]  # over two pages of 1000
    for name in reversed(names):
        await store.put(etcd_prefix + name, name)
    items, at = await store.list_prefix(etcd_prefix)
    assert [kv.key for kv in items] == [etcd_prefix + n for n in names]
    assert at == await store.revision()

    await store.put(etcd_prefix + "0000", b"changed")
    await store.delete(etcd_prefix + "2099")
    past, past_at = await store.list_prefix(etcd_prefix, revision=at)
    assert past_at == at
    assert [(kv.key, kv.value) for kv in past] == [(kv.key, kv.value) for kv in items]
    now, _ = await store.list_prefix(etcd_prefix)
    assert len(now) == 2099 and now[0].value == b"changed"


async def test_watch_from_a_revision_sees_only_later_changes_in_order(
    store: EtcdStore, etcd_prefix: str
) -> None:
    await store.put(etcd_prefix + "before", b"old")
    _, at = await store.list_prefix(etcd_prefix)
    revs = [await store.put(etcd_prefix + "a", b"1"), await store.put(etcd_prefix + "b", b"2")]
    revs.append(await store.delete(etcd_prefix + "a"))
    await store.put(etcd_prefix.rstrip("/") + "-outside", b"not under the prefix")

    async with collecting(store, etcd_prefix, at + 1, prev_kv=True) as events:
        await eventually(lambda: len(events) >= 3, "three changes")
        revs.append(await store.put(etcd_prefix + "b", b"3"))
        await eventually(lambda: len(events) >= 4, "a fourth change")
    assert [(e.type, e.key, e.value, e.mod_revision) for e in events] == [
        ("PUT", etcd_prefix + "a", b"1", revs[0]),
        ("PUT", etcd_prefix + "b", b"2", revs[1]),
        ("DELETE", etcd_prefix + "a", b"", revs[2]),
        ("PUT", etcd_prefix + "b", b"3", revs[3]),
    ]
    assert [e.prev_value for e in events] == [None, None, b"1", b"2"]


async def test_watch_survives_an_etcd_restart_without_gap_or_duplicate(
    own_etcd: EmbeddedEtcd,
) -> None:
    prefix = "/restart/"
    async with EtcdStore(own_etcd.endpoints) as writer, EtcdStore(own_etcd.endpoints) as watcher:
        start = await writer.revision() + 1
        written: list[tuple[str, int]] = []

        async def write(tag: str, count: int) -> None:
            for i in range(count):
                key = f"{prefix}{tag}-{i}"
                written.append((key, await writer.put(key, tag)))

        async with collecting(watcher, prefix, start) as events:
            await write("before", 20)
            await eventually(lambda: len(events) == 20, "the writes before the restart")

            await asyncio.to_thread(own_etcd.restart)
            # Written while the watcher is still backing off from the broken stream.
            async with asyncio.timeout(WAIT):
                while True:
                    try:
                        await write("during", 20)
                        break
                    except EtcdUnavailable:
                        await asyncio.sleep(0.05)
            await eventually(lambda: len(events) >= 40, "the writes during reconnect")
            await write("after", 20)
            await eventually(lambda: len(events) >= 60, "the writes after the restart")
            await asyncio.sleep(0.5)  # room for a stray duplicate to show up

    assert [(e.key, e.mod_revision) for e in events] == written
    assert all(e.type == "PUT" for e in events)


async def test_compaction_gives_resync_then_a_relist_watches_on(own_etcd: EmbeddedEtcd) -> None:
    prefix = "/compact/"
    async with EtcdStore(own_etcd.endpoints) as store:
        first = await store.put(prefix + "a", b"1")
        await store.put(prefix + "b", b"2")
        latest = await store.put(prefix + "a", b"3")
        await store.compact(latest)

        with pytest.raises(RevisionCompacted):
            await store.list_prefix(prefix, revision=first)

        batches = [batch async for batch in store.watch_prefix(prefix, first)]
        assert batches == [[WatchEvent("RESYNC", prefix, b"", latest)]]

        items, at = await store.list_prefix(prefix)
        assert {kv.key: kv.value for kv in items} == {prefix + "a": b"3", prefix + "b": b"2"}
        async with collecting(store, prefix, at + 1) as events:
            revision = await store.put(prefix + "c", b"4")
            await eventually(lambda: len(events) == 1, "the change after the re-list")
        assert (events[0].key, events[0].mod_revision) == (prefix + "c", revision)


async def test_progress_notify_reports_a_current_revision(
    store: EtcdStore, etcd_prefix: str
) -> None:
    revision = await store.put(etcd_prefix + "x", b"1")
    async with collecting(store, etcd_prefix, revision + 1, progress_notify=True) as events:
        await eventually(lambda: any(e.type == "PROGRESS" for e in events), "a progress event")
    progress = next(e for e in events if e.type == "PROGRESS")
    assert progress.mod_revision >= revision


# -- outages ------------------------------------------------------------------------------------
async def test_calls_fail_fast_while_etcd_is_down_and_recover_on_their_own(
    own_etcd: EmbeddedEtcd,
) -> None:
    timeout = 1.0
    async with EtcdStore(own_etcd.endpoints, timeout=timeout) as store:
        await store.put("/outage/k", b"v")
        own_etcd.stop()

        for call in (
            store.get("/outage/k"),
            store.put("/outage/k", b"w"),
            store.list_prefix("/outage/"),
            store.grant_lease(5),
        ):
            with pytest.raises(EtcdUnavailable, match=own_etcd.endpoint):
                # The store's own timeout must end it: this bound is only a safety net.
                await asyncio.wait_for(call, timeout * 5)
        assert await store.healthy() is False

        await asyncio.to_thread(own_etcd.start)
        async with asyncio.timeout(WAIT):  # no reconnect call: the same store works again
            while not await store.healthy():
                await asyncio.sleep(0.1)
        kv = await store.get("/outage/k")
        assert kv is not None and kv.value == b"v"


async def test_closing_the_store_ends_its_watches_and_calls(
    etcd: EmbeddedEtcd, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd.endpoints)
    await store.connect()
    watch = store.watch_prefix(etcd_prefix, await store.revision() + 1)
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)  # the watch is open and waiting
    await store.close()
    with pytest.raises(EtcdUnavailable, match="closed"):
        await asyncio.wait_for(pending, WAIT)
    with pytest.raises(EtcdUnavailable, match="closed"):
        await store.get(etcd_prefix + "k")


# -- leases -------------------------------------------------------------------------------------
async def test_lease_expiry_deletes_its_keys(store: EtcdStore, etcd_prefix: str) -> None:
    lease = await store.grant_lease(1)
    key = etcd_prefix + "ephemeral"
    revision = await store.put(key, b"x", lease=lease.id)
    kv = await store.get(key)
    assert kv is not None and kv.lease == lease.id

    async with collecting(store, etcd_prefix, revision + 1) as events:
        await eventually(lambda: any(e.type == "DELETE" for e in events), "the key to expire")
    assert await store.get(key) is None
    with pytest.raises(LeaseNotFound):
        await store.put(key, b"y", lease=lease.id)


async def test_keepalive_holds_a_lease_past_its_ttl(store: EtcdStore, etcd_prefix: str) -> None:
    lease = await store.grant_lease(2)
    key = etcd_prefix + "kept"
    await store.put(key, b"x", lease=lease.id)
    lease.start_keepalive()
    try:
        await asyncio.sleep(lease.ttl * 2)  # the behaviour itself is "still there after the TTL"
        assert await store.get(key) is not None
        assert not lease.lost.is_set()
    finally:
        await lease.revoke()
    assert await store.get(key) is None


async def test_keepalive_reports_a_revoked_lease_as_lost(
    store: EtcdStore, etcd_prefix: str
) -> None:
    lease = await store.grant_lease(2)
    await store.put(etcd_prefix + "k", b"x", lease=lease.id)
    lease.start_keepalive()
    try:
        await store.revoke_lease(lease.id)  # as an operator (or another process) would
        await asyncio.wait_for(lease.lost.wait(), WAIT)
    finally:
        await lease.close()
    assert await store.get(etcd_prefix + "k") is None


async def test_a_lease_is_lost_when_etcd_is_away_longer_than_its_ttl(
    own_etcd: EmbeddedEtcd,
) -> None:
    async with EtcdStore(own_etcd.endpoints, timeout=1.0) as store:
        lease = await store.grant_lease(2)
        lease.start_keepalive()
        try:
            await asyncio.to_thread(own_etcd.stop)
            await asyncio.wait_for(lease.lost.wait(), WAIT)
        finally:
            await lease.close()


async def test_a_value_over_etcds_request_limit_is_payload_too_large(
    store: EtcdStore, etcd_prefix: str
) -> None:
    for size_mib in (1.6, 3):  # etcd refuses the first, its gRPC server the second
        with pytest.raises(PayloadTooLarge):
            await store.put(etcd_prefix + "big", b"x" * int(size_mib * 1024 * 1024))
    assert await store.get(etcd_prefix + "big") is None
