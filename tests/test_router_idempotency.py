"""Idempotency-Key: one run per key, replays of its answer, 422 for a reused key with another
body, waiting on a run in flight, and bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from infermesh.errors import Conflict
from infermesh.router.idempotency import (
    Abandoned,
    IdempotencyStore,
    Outcome,
    StoredResponse,
    fingerprint,
)

ACME = ("acme", "team-a/chat")
BODY = fingerprint(b'{"prompt": "hi"}')
OTHER = fingerprint(b'{"prompt": "bye"}')
OK = StoredResponse(200, {"content-type": "application/json"}, b'{"text": "hello"}')
STREAMED = StoredResponse(
    200,
    {"content-type": "text/event-stream"},
    b"",
    [b'data: {"text": "hel"}\n\n', b'data: {"text": "lo"}\n\n', b"data: [DONE]\n\n"],
)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_first_request_runs_and_repeats_get_its_answer() -> None:
    store = IdempotencyStore()
    first = store.begin(ACME, "k1", BODY, ttl_s=600, now=0.0)
    assert first.new and first.outcome is Outcome.NEW
    store.complete(ACME, "k1", OK, now=1.0)
    again = store.begin(ACME, "k1", BODY, ttl_s=600, now=2.0)
    assert again.completed and again.response == OK


def test_a_streamed_answer_replays_the_same_chunks() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600, now=0.0)
    store.complete(ACME, "k1", STREAMED, now=1.0)
    replay = store.begin(ACME, "k1", BODY, ttl_s=600, now=2.0).response
    assert replay is not None and replay.chunks == STREAMED.chunks


def test_the_same_key_with_another_body_is_a_mismatch() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600, now=0.0)
    assert store.begin(ACME, "k1", OTHER, ttl_s=600, now=0.5).mismatch  # while running
    store.complete(ACME, "k1", OK, now=1.0)
    assert store.begin(ACME, "k1", OTHER, ttl_s=600, now=2.0).mismatch  # and after
    assert store.begin(ACME, "k1", BODY, ttl_s=600, now=2.0).completed


def test_keys_belong_to_a_tenant_and_an_endpoint() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600, now=0.0)
    assert store.begin(("globex", "team-a/chat"), "k1", OTHER, ttl_s=600, now=0.0).new
    assert store.begin(("acme", "team-a/embed"), "k1", OTHER, ttl_s=600, now=0.0).new


async def test_repeats_in_flight_can_wait_for_the_first_answer() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600)
    repeats = [store.begin(ACME, "k1", BODY, ttl_s=600) for _ in range(3)]
    assert all(r.in_flight and r.outcome is Outcome.IN_FLIGHT for r in repeats)
    waits = [asyncio.create_task(r.wait()) for r in repeats]
    await settle()
    assert not any(w.done() for w in waits)
    store.complete(ACME, "k1", STREAMED)
    assert [await w for w in waits] == [STREAMED] * 3
    assert await repeats[0].wait() == STREAMED  # asking again after it finished


async def test_an_abandoned_run_frees_the_key_and_tells_the_waiters() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600)
    waiting = asyncio.create_task(store.begin(ACME, "k1", BODY, ttl_s=600).wait())
    await settle()
    store.abandon(ACME, "k1")
    with pytest.raises(Abandoned) as caught:
        await waiting
    assert isinstance(caught.value, Conflict) and "k1" in caught.value.message
    assert store.begin(ACME, "k1", OTHER, ttl_s=600).new  # a retry runs, with any body


async def test_a_cancelled_wait_does_not_disturb_the_others() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=600)
    repeat = store.begin(ACME, "k1", BODY, ttl_s=600)
    gone, stays = asyncio.create_task(repeat.wait()), asyncio.create_task(repeat.wait())
    await settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    store.complete(ACME, "k1", OK)
    assert await stays == OK


def test_keys_expire_their_ttl_after_the_answer() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=10, now=0.0)
    store.complete(ACME, "k1", OK, now=5.0)
    assert store.begin(ACME, "k1", BODY, ttl_s=10, now=14.9).completed
    assert store.begin(ACME, "k1", OTHER, ttl_s=10, now=15.0).new
    assert len(store) == 1


async def test_a_run_that_outlives_its_ttl_lets_the_key_go() -> None:
    store = IdempotencyStore()
    store.begin(ACME, "k1", BODY, ttl_s=10, now=0.0)
    waiting = asyncio.create_task(store.begin(ACME, "k1", BODY, ttl_s=10, now=1.0).wait())
    await settle()
    assert store.begin(ACME, "k1", BODY, ttl_s=10, now=10.0).new
    with pytest.raises(Abandoned):
        await waiting
    store.complete(ACME, "k1", OK, now=11.0)  # the new run's answer
    assert store.begin(ACME, "k1", BODY, ttl_s=10, now=12.0).response == OK


def test_memory_is_bounded_by_evicting_the_oldest_answers() -> None:
    store = IdempotencyStore(max_entries=3)
    store.begin(ACME, "running", BODY, ttl_s=600, now=0.0)
    for i, key in enumerate(("old", "newer")):
        store.begin(ACME, key, BODY, ttl_s=600, now=float(i))
        store.complete(ACME, key, OK, now=float(i))
    assert store.begin(ACME, "fresh", BODY, ttl_s=600, now=5.0).new
    assert len(store) == 3
    assert store.begin(ACME, "running", BODY, ttl_s=600, now=5.0).in_flight
    assert store.begin(ACME, "newer", BODY, ttl_s=600, now=5.0).completed
    # "old" was evicted, so it runs again (and makes room by evicting "newer").
    assert store.begin(ACME, "old", BODY, ttl_s=600, now=5.0).new


def test_late_completions_and_abandons_are_harmless() -> None:
    store = IdempotencyStore()
    store.complete(ACME, "never-begun", OK)
    store.abandon(ACME, "never-begun")
    store.begin(ACME, "k1", BODY, ttl_s=600, now=0.0)
    store.complete(ACME, "k1", OK, now=1.0)
    store.abandon(ACME, "k1")  # too late: the answer stands
    store.complete(ACME, "k1", STREAMED, now=2.0)  # and is not overwritten
    assert store.begin(ACME, "k1", BODY, ttl_s=600, now=3.0).response == OK


def test_fingerprints_tell_bodies_apart() -> None:
    assert fingerprint(b"a") == fingerprint(b"a") != fingerprint(b"b")
