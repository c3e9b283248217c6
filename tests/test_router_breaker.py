"""Circuit breakers per replica: eject on failures, come back through one probe, and never take
out more of the fleet than the cap allows."""

from __future__ import annotations

from typing import Any

import numpy as np

from infermesh.router.breaker import Breakers, BreakerState, RollingCounts

LIVE = 10  # replicas that can serve, for the ejection cap


def breakers(n: int = LIVE, **options: Any) -> Breakers:
    return Breakers(np.zeros(n, dtype=bool), **options)


def fail(b: Breakers, slot: int, now: float, times: int = 1) -> None:
    for _ in range(times):
        b.record_failure(slot, now, live_slots=LIVE)


def test_three_failures_in_a_row_eject_the_replica() -> None:
    b = breakers()
    fail(b, 2, 0.0, times=2)
    b.record_success(2, 0.1)
    fail(b, 2, 0.2, times=2)
    assert not b.ejected[2] and b.allow_probe(2, 0.3)
    fail(b, 2, 0.4)
    assert b.ejected[2]
    assert not b.allow_probe(2, 0.5)
    assert b.state(2, 0.5) is BreakerState.EJECTED
    assert b.ejected.sum() == 1  # nothing else touched


def test_an_error_ratio_over_half_ejects_once_there_are_enough_requests() -> None:
    b = breakers()
    pattern = ["F", "F", "S"] * 3  # never three failures in a row; 2/3 fail
    for i, outcome in enumerate(pattern):
        now = i * 0.1
        if outcome == "F":
            fail(b, 0, now)
        else:
            b.record_success(0, now)
    assert not b.ejected[0]  # 9 requests: too few to judge a ratio
    fail(b, 0, 1.0)
    assert b.ejected[0]


def test_exactly_half_failing_is_not_enough() -> None:
    b = breakers()
    for i in range(20):
        if i % 2:
            fail(b, 0, i * 0.1)
        else:
            b.record_success(0, i * 0.1)
    assert not b.ejected[0]


def test_old_failures_fall_out_of_the_window() -> None:
    b = breakers()
    for _ in range(4):
        fail(b, 0, 0.0)
        b.record_success(0, 0.0)
    b.record_success(0, 20.0)
    fail(b, 0, 20.0, times=2)  # with the old 8 this would be 6 of 11 failing
    assert not b.ejected[0]


def test_an_ejection_ends_in_one_probe_that_decides() -> None:
    b = breakers()
    fail(b, 1, 100.0, times=3)
    b.tick(104.9)
    assert b.ejected[1]
    b.tick(105.0)
    assert not b.ejected[1]  # strategies may rank it again...
    assert b.state(1, 105.0) is BreakerState.HALF_OPEN
    assert b.allow_probe(1, 105.0)  # ...but only one request goes through
    assert not b.allow_probe(1, 105.1)
    b.record_success(1, 105.2)
    assert b.state(1, 105.2) is BreakerState.CLOSED
    assert all(b.allow_probe(1, 105.3) for _ in range(5))


def test_a_failed_probe_ejects_again_for_longer_up_to_a_minute() -> None:
    b = breakers()
    now = 0.0
    fail(b, 3, now, times=3)
    durations = []
    for _ in range(14):
        start = now
        while b.ejected[3]:
            now += 1.0
            b.tick(now)
        durations.append(now - start)
        assert b.allow_probe(3, now)
        fail(b, 3, now)  # the probe fails
    assert durations[:4] == [5.0, 10.0, 15.0, 20.0]
    assert max(durations) == 60.0 and durations[-1] == 60.0


def test_a_replica_healthy_for_a_minute_starts_again_from_the_base_ejection() -> None:
    b = breakers()
    fail(b, 0, 0.0, times=3)
    assert b.allow_probe(0, 5.0)
    fail(b, 0, 5.0)  # second ejection: 10 s
    assert b.allow_probe(0, 15.0)
    b.record_success(0, 15.0)
    fail(b, 0, 100.0, times=3)  # 85 s later
    b.tick(105.0)
    assert not b.ejected[0]


def test_requests_sent_before_the_ejection_do_not_end_it() -> None:
    b = breakers()
    fail(b, 0, 0.0, times=3)
    b.record_success(0, 1.0)
    fail(b, 0, 1.0)
    assert b.ejected[0] and b.state(0, 1.0) is BreakerState.EJECTED
    b.tick(5.0)
    assert not b.ejected[0]


def test_never_more_than_half_of_the_live_replicas_are_ejected() -> None:
    b = breakers(8)
    for slot in range(4):
        for _ in range(5):
            b.record_failure(slot, 0.0, live_slots=4)
    assert b.ejected.sum() == 2
    assert b.allow_probe(2, 0.0) and b.allow_probe(3, 0.0)
    # When an ejection ends, the room goes to the next failing replica.
    b.tick(5.0)
    b.record_failure(2, 5.0, live_slots=4)
    assert b.ejected[2]


def test_a_lone_replica_is_never_ejected() -> None:
    b = breakers(1)
    for _ in range(10):
        b.record_failure(0, 0.0, live_slots=1)
    assert not b.ejected[0] and b.allow_probe(0, 0.0)


def test_a_probe_that_never_reports_stops_blocking_after_a_while() -> None:
    b = breakers(probe_timeout_s=30.0)
    fail(b, 0, 0.0, times=3)
    assert b.allow_probe(0, 5.0)
    assert not b.allow_probe(0, 20.0)
    assert b.allow_probe(0, 35.0)


def test_rolling_counts_keep_the_last_window() -> None:
    counts = RollingCounts(10.0, 2)
    for second in range(20):
        counts.add(second + 0.5, 0)
    counts.add(19.9, 1)
    assert counts.totals(19.99) == [10, 1]
    assert counts.totals(25.0) == [4, 1]
    assert counts.totals(100.0) == [0, 0]
