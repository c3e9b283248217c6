"""LeaderElection against a real etcd: one leader, failover, resignation."""

from __future__ import annotations

import asyncio
import contextlib

from infermesh.store.election import LeaderElection
from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd

WAIT = 20.0  # generous bound for "eventually", never a performance target


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_leader_among_two(store: EtcdStore, etcd_prefix: str) -> None:
    key = etcd_prefix + "election"
    a = LeaderElection(store, key, "a", ttl=2)
    b = LeaderElection(store, key, "b", ttl=2)
    await asyncio.wait_for(a.campaign(), WAIT)
    standby = asyncio.create_task(b.campaign())
    try:
        await asyncio.sleep(0.5)  # b had its chance to (wrongly) take over
        assert a.is_leader and not b.is_leader and not standby.done()
        assert await a.leader() == "a" and await b.leader() == "a"
    finally:
        await _cancel(standby)
        await a.resign()
        await b.resign()


async def test_resign_hands_over_at_once(store: EtcdStore, etcd_prefix: str) -> None:
    key = etcd_prefix + "election"
    # A long TTL: only the resignation, not an expiry, can hand over within the wait.
    a = LeaderElection(store, key, "a", ttl=60)
    b = LeaderElection(store, key, "b", ttl=60)
    await asyncio.wait_for(a.campaign(), WAIT)
    standby = asyncio.create_task(b.campaign())
    try:
        await a.resign()
        assert not a.is_leader and not a.lost.is_set()  # resigning is not losing
        await asyncio.wait_for(standby, WAIT)
        assert b.is_leader and await a.leader() == "b"
    finally:
        await _cancel(standby)
        await b.resign()
    assert await a.leader() is None


async def test_failover_when_the_leaders_lease_is_revoked(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = etcd_prefix + "election"
    a = LeaderElection(store, key, "a", ttl=60)
    b = LeaderElection(store, key, "b", ttl=60)
    await asyncio.wait_for(a.campaign(), WAIT)
    standby = asyncio.create_task(b.campaign())
    try:
        held = await store.get(key)
        assert held is not None
        await store.revoke_lease(held.lease)  # e.g. an operator revoking it
        await asyncio.wait_for(a.lost.wait(), WAIT)
        assert not a.is_leader
        await asyncio.wait_for(standby, WAIT)
        assert b.is_leader and await b.leader() == "b"
    finally:
        await _cancel(standby)
        await a.resign()
        await b.resign()


async def test_failover_when_the_leader_dies(etcd: EmbeddedEtcd, etcd_prefix: str) -> None:
    key = etcd_prefix + "election"
    async with EtcdStore(etcd.endpoints) as survivor_store:
        crashed_store = EtcdStore(etcd.endpoints)
        await crashed_store.connect()
        a = LeaderElection(crashed_store, key, "a", ttl=2)
        b = LeaderElection(survivor_store, key, "b", ttl=2)
        await asyncio.wait_for(a.campaign(), WAIT)
        standby = asyncio.create_task(b.campaign())
        try:
            # A crash: the connection and keep-alives stop, nothing is revoked.
            await crashed_store.close()
            await asyncio.wait_for(standby, WAIT)
            assert b.is_leader and await b.leader() == "b"
        finally:
            await _cancel(standby)
            await b.resign()


async def test_a_leader_whose_key_is_deleted_loses_and_can_win_again(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = etcd_prefix + "election"
    a = LeaderElection(store, key, "a", ttl=60)
    await asyncio.wait_for(a.campaign(), WAIT)
    try:
        await store.delete(key)
        await asyncio.wait_for(a.lost.wait(), WAIT)
        assert not a.is_leader
        await asyncio.wait_for(a.campaign(), WAIT)
        assert a.is_leader and not a.lost.is_set() and await a.leader() == "a"
    finally:
        await a.resign()
