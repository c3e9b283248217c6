"""Admission: per-tenant rate, per-endpoint concurrency with a FIFO queue, 429s that say why."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infermesh.errors import MeshError, TooManyRequests
from infermesh.model.policy import AdmissionPolicy
from infermesh.router.admission import Admission, Rejected, Ticket

EP = "team-a/chat"


def limits(**fields: Any) -> AdmissionPolicy:
    return AdmissionPolicy.model_validate(fields)


async def settle() -> None:
    """Let queued tasks run up to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def rejected(coro: Any) -> Rejected:
    with pytest.raises(Rejected) as caught:
        await coro
    return caught.value


async def test_without_a_policy_everything_is_admitted_and_counted() -> None:
    admission = Admission()
    tickets = [await admission.try_acquire(EP, "t", None) for _ in range(100)]
    assert admission.running(EP) == 100
    for ticket in tickets:
        ticket.release()
    assert admission.running(EP) == 0
    assert admission.queued(EP) == 0


async def test_tenant_rate_limit_answers_429_with_retry_after() -> None:
    admission = Admission()
    policy = limits(tenantRatePerSecond=2)
    await admission.try_acquire(EP, "acme", policy, now=0.0)
    await admission.try_acquire(EP, "acme", policy, now=0.0)
    err = await rejected(admission.try_acquire(EP, "acme", policy, now=0.0))
    assert isinstance(err, TooManyRequests) and err.status == 429
    assert err.limit == "tenant-rate"
    assert err.retry_after_s == 1
    assert err.to_json()["error"]["details"] == {
        "limit": "tenant-rate",
        "endpoint": EP,
        "tenant": "acme",
    }
    assert "acme" in err.message
    # Other tenants and other endpoints have buckets of their own.
    await admission.try_acquire(EP, "globex", policy, now=0.0)
    await admission.try_acquire("team-a/embed", "acme", policy, now=0.0)
    # Half a second refills one token at 2/s.
    await admission.try_acquire(EP, "acme", policy, now=0.5)
    await rejected(admission.try_acquire(EP, "acme", policy, now=0.5))


async def test_burst_and_slow_rates() -> None:
    admission = Admission()
    bursty = limits(tenantRatePerSecond=1, tenantBurst=5)
    for _ in range(5):
        await admission.try_acquire(EP, "acme", bursty, now=10.0)
    await rejected(admission.try_acquire(EP, "acme", bursty, now=10.0))
    slow = limits(tenantRatePerSecond=0.1)
    await admission.try_acquire(EP, "slow", slow, now=0.0)  # burst defaults to one token
    err = await rejected(admission.try_acquire(EP, "slow", slow, now=0.0))
    assert err.retry_after_s == 10
    err = await rejected(admission.try_acquire(EP, "slow", slow, now=9.5))
    assert err.retry_after_s == 1  # never 0: Retry-After is whole seconds, at least one


async def test_concurrency_limit_without_a_queue() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=2)
    first = await admission.try_acquire(EP, "t", policy)
    await admission.try_acquire(EP, "t", policy)
    err = await rejected(admission.try_acquire(EP, "t", policy))
    assert err.limit == "endpoint-queue-full" and err.retry_after_s >= 1
    first.release()
    await admission.try_acquire(EP, "t", policy)
    assert admission.running(EP) == 2


async def test_waiters_are_served_first_come_first_served() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=1, queueSize=2, queueTimeoutMs=60_000)
    holder = await admission.try_acquire(EP, "t", policy)
    order: list[str] = []

    async def request(name: str) -> Ticket:
        ticket = await admission.try_acquire(EP, name, policy)
        order.append(name)
        return ticket

    a = asyncio.create_task(request("a"))
    await settle()
    b = asyncio.create_task(request("b"))
    await settle()
    assert admission.queued(EP) == 2
    err = await rejected(admission.try_acquire(EP, "c", policy))
    assert err.limit == "endpoint-queue-full"
    # A newcomer does not overtake the queue even when a slot frees.
    holder.release()
    await settle()
    assert order == ["a"] and admission.running(EP) == 1 and admission.queued(EP) == 1
    (await a).release()
    (await b).release()
    assert order == ["a", "b"]
    assert admission.running(EP) == 0 and admission.queued(EP) == 0


async def test_a_waiter_times_out_with_429() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=1, queueSize=1, queueTimeoutMs=10)
    holder = await admission.try_acquire(EP, "t", policy)
    err = await rejected(admission.try_acquire(EP, "t", policy))
    assert err.limit == "endpoint-queue-timeout" and err.retry_after_s == 1
    assert admission.queued(EP) == 0 and admission.running(EP) == 1
    holder.release()
    assert admission.running(EP) == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=1, queueSize=1, queueTimeoutMs=60_000)
    holder = await admission.try_acquire(EP, "t", policy)
    waiter = asyncio.create_task(admission.try_acquire(EP, "t", policy))
    await settle()
    assert admission.queued(EP) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.queued(EP) == 0 and admission.running(EP) == 1
    # Its place in the queue is free again, and the freed slot goes to a live request.
    nxt = asyncio.create_task(admission.try_acquire(EP, "t", policy))
    await settle()
    holder.release()
    (await nxt).release()
    assert admission.running(EP) == 0 and admission.queued(EP) == 0


async def test_a_slot_handed_to_a_waiter_that_gives_up_is_passed_on() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=1, queueSize=1, queueTimeoutMs=60_000)
    holder = await admission.try_acquire(EP, "t", policy)
    waiter = asyncio.create_task(admission.try_acquire(EP, "t", policy))
    await settle()
    holder.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.running(EP) == 0
    (await admission.try_acquire(EP, "t", policy)).release()


async def test_release_is_idempotent_and_tickets_are_context_managers() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=2)
    keep = await admission.try_acquire(EP, "t", policy)
    with await admission.try_acquire(EP, "t", policy) as ticket:
        assert admission.running(EP) == 2
    ticket.release()
    ticket.release()
    assert admission.running(EP) == 1
    keep.release()


async def test_a_full_endpoint_does_not_spend_the_tenants_tokens() -> None:
    admission = Admission()
    policy = limits(maxConcurrency=1, tenantRatePerSecond=1)
    holder = await admission.try_acquire(EP, "acme", policy, now=0.0)
    err = await rejected(admission.try_acquire(EP, "acme", policy, now=1.0))
    assert err.limit == "endpoint-queue-full"
    holder.release()
    (await admission.try_acquire(EP, "acme", policy, now=1.0)).release()


async def test_raising_the_limit_lets_waiters_in() -> None:
    admission = Admission()
    tight = limits(maxConcurrency=1, queueSize=5, queueTimeoutMs=60_000)
    holder = await admission.try_acquire(EP, "t", tight)
    waiter = asyncio.create_task(admission.try_acquire(EP, "t", tight))
    await settle()
    assert admission.queued(EP) == 1
    roomy = limits(maxConcurrency=3)
    third = await admission.try_acquire(EP, "t", roomy)
    (await waiter).release()
    for ticket in (holder, third):
        ticket.release()
    assert admission.running(EP) == 0


def test_a_rejection_reaches_clients_as_429() -> None:
    err = Rejected("tenant-rate", 0.2, "tenant acme is over its rate", "team-a/chat", "acme")
    back = MeshError.from_json(err.status, err.to_json())
    assert isinstance(back, TooManyRequests)
    assert back.details["limit"] == "tenant-rate"
    assert back.message == "tenant acme is over its rate"


async def test_many_tenants_do_not_reset_a_busy_tenants_limit() -> None:
    admission = Admission()
    policy = limits(tenantRatePerSecond=1)
    (await admission.try_acquire(EP, "busy", policy, now=0.0)).release()
    for i in range(12_000):  # enough new tenants to make the router drop idle buckets
        (await admission.try_acquire(EP, f"tenant-{i}", policy, now=0.5 + i / 100_000)).release()
    err = await rejected(admission.try_acquire(EP, "busy", policy, now=0.7))
    assert err.limit == "tenant-rate"
    (await admission.try_acquire(EP, "busy", policy, now=1.0)).release()
