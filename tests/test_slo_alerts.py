"""Burn-rate alerts firing and resolving at the right windows, over days of routers' buckets in a
real series store, driven by an injected clock (one evaluation pass every few seconds of test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infermesh.sli import SeriesBatch, SeriesBucket
from infermesh.store.series import SeriesStore
from infermesh.store.slo import AlertState, definitions
from infermesh.store.slo.evaluator import decide_all
from infermesh.store.slo.status import Decision

T0 = 1_699_999_200  # a whole hour: the burn starts here
HOUR, DAY = 3600, 86400
PROJECT = "shop"


@pytest.fixture
def series(tmp_path: Path) -> Iterator[SeriesStore]:
    store = SeriesStore(tmp_path / "series.sqlite", retention_s=10 * 365 * DAY)
    store.open()
    yield store
    store.close()


def traffic(
    series: SeriesStore, start: int, end: int, width: int, requests: int, errors: int = 0
) -> None:
    """Buckets of `width` seconds over [start, end), each with these counts, as a router posts."""
    buckets = [
        SeriesBucket(
            start=t,
            width_s=width,
            project=PROJECT,
            endpoint="checkout",
            revision="v1",
            domain="edge-eu",
            requests=requests,
            errors=errors,
        )
        for t in range(start, end, width)
    ]
    series.ingest(SeriesBatch(source="router-a", buckets=buckets), now=end)


def availability(objective: float) -> list:
    slo = {
        "apiVersion": "v1",
        "kind": "SLO",
        "metadata": {"name": "checkout-availability", "project": PROJECT},
        "spec": {
            "target": {"kind": "Endpoint", "name": "checkout"},
            "sli": "availability",
            "objective": objective,
        },
    }
    return definitions([slo], [])


def run(series: SeriesStore, slos: list, times: range) -> list[tuple[int, Decision]]:
    """One evaluation pass at each time, carrying the alert states from pass to pass."""
    states: dict[tuple[str, str], dict[str, AlertState]] = {}
    out = []
    for now in times:
        [(d, decision)] = decide_all(series, slos, states, float(now))
        states[(d.project, d.name)] = decision.alerts
        out.append((now, decision))
    return out


def transitions(passes: list[tuple[int, Decision]]) -> list[tuple[int, str, str]]:
    """(time after T0, rule, reason) of every alert event."""
    return [
        (now - T0, e["message"].split()[2], e["reason"])
        for now, decision in passes
        for e in decision.events
    ]


def test_a_ten_minute_burst_of_5xx_pages_via_1h_and_5m_and_resolves_once_5m_is_clean(
    series: SeriesStore,
) -> None:
    # Two days of steady clean traffic (10 rps), the last 7 hours in the routers' 10 s buckets,
    # then 20 % errors for 10 minutes from T0, then clean again.
    traffic(series, T0 - 2 * DAY, T0 - 7 * HOUR, HOUR, 36_000)
    traffic(series, T0 - 7 * HOUR, T0, 10, 100)
    traffic(series, T0, T0 + 600, 10, 100, errors=20)
    traffic(series, T0 + 600, T0 + HOUR, 10, 100)

    passes = run(series, availability(99.9), range(T0, T0 + 25 * 60, 30))

    # A burst bucket burns 0.2 / 0.001 = 200x, so the 1h burn is 200 * n / 360 for n burst
    # buckets: over 14.4x from n = 26 (250 s in), first seen by the pass at 270 s. The 5m window
    # lets the burst go as it slides past: at 870 s two of its 30 buckets are the burst's
    # (13.3x < 14.4x), so the alert resolves although the 1h window still burns 33x. The 6h burn
    # peaks at 200 * 60 / 2160 = 5.6x (< 6) and the 1d burn at 1.4x (< 3): no other rule fires.
    assert transitions(passes) == [
        (270, "page-1h-5m", "SLOAlertFiring"),
        (870, "page-1h-5m", "SLOAlertResolved"),
    ]
    status = dict(passes)
    firing = status[T0 + 270].status
    assert firing["phase"] == "Breaching" and firing["reason"] == "PageAlertFiring"
    burns = {r["window"]: r["burn"] for r in firing["windows"]}
    assert burns["1h"] == pytest.approx(200 * 28 / 360, rel=1e-3)
    assert burns["5m"] == pytest.approx(200 * 28 / 30, rel=1e-3)
    event = status[T0 + 270].events[0]
    assert event["type"] == "Warning" and event["kind"] == "SLO"
    assert "burn 15.6x over 1h and 186.7x over 5m (threshold 14.4x)" in event["message"]
    resolved = status[T0 + 870]
    assert resolved.events[0]["type"] == "Normal"
    message = resolved.events[0]["message"]
    assert "resolved after 10m: burn 33.3x over 1h and 13.3x over 5m" in message
    assert resolved.status["phase"] == "OK"
    page = next(a for a in resolved.status["alerts"] if a["rule"] == "page-1h-5m")
    assert page["firing"] is False and page["since"] == "2023-11-14T22:14:30.000Z"
    assert status[T0 + 1200].status["windows"][0]["burn"] == 0.0  # 5m: clean again


def test_a_slow_steady_burn_opens_a_ticket_but_never_pages(series: SeriesStore) -> None:
    # A clean month at 10 rps (its last 3 days in 5-minute buckets), then 0.4 % errors (4x).
    traffic(series, T0 - 31 * DAY, T0 - 3 * DAY, HOUR, 36_000)
    traffic(series, T0 - 3 * DAY, T0, 300, 3000)
    traffic(series, T0, T0 + 31 * HOUR, 300, 3000, errors=12)

    passes = run(series, availability(99.9), range(T0, T0 + 31 * HOUR, HOUR))

    # 4x is under both page factors (14.4, 6) whatever the window. The 1d window burns
    # 4 * n / 288 for n burning buckets and the 3d window 4 * n / 864: both cross their factors
    # (3 and 1) at n = 217, 18 hours in; the short windows (2h, 6h) burn 4x by then.
    assert transitions(passes) == [
        (18 * HOUR, "ticket-1d-2h", "SLOAlertFiring"),
        (18 * HOUR, "ticket-3d-6h", "SLOAlertFiring"),
    ]
    last = passes[-1][1].status
    assert last["phase"] == "Warning" and last["reason"] == "TicketAlertFiring"
    assert [a["rule"] for a in last["alerts"] if a["firing"]] == ["ticket-1d-2h", "ticket-3d-6h"]
    # 30 hours (361 buckets) at 4x spend 4 * 361 / 8640 of the 30-day budget, and at the last
    # hour's 4x the rest lasts 30 days * remaining / 4 (6.2 days).
    remaining = 1 - 4 * 361 / (30 * DAY // 300)
    assert last["budgetRemaining"] == pytest.approx(remaining, abs=2e-3)
    assert last["exhaustionSeconds"] == pytest.approx(30 * DAY * remaining / 4, rel=1e-2)
