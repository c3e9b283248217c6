"""SLO math as an SRE checks it by hand: good and valid events per SLI, burn rates, the budget
left and when it runs out, percentiles, windows, implicit SLOs, and the alert state machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infermesh.sli import Histogram, SeriesBatch, SeriesBucket
from infermesh.store.series import SeriesStore
from infermesh.store.slo import (
    AlertState,
    Counts,
    SliSpec,
    definitions,
    evaluate,
    good_total,
    percentiles,
    read_window_counts,
    select,
    step_alerts,
)
from infermesh.store.slo.alerts import RULES_BY_NAME
from infermesh.store.slo.windows import all_windows

DAY = 86400


def hist(*values: float) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def by_window(**counts: Counts) -> dict[str, Counts]:
    """Counts per window name (`h1` for "1h", `d30` for "30d": keyword-friendly spellings)."""
    names = {"m5": "5m", "m30": "30m", "h1": "1h", "h2": "2h", "h6": "6h", "d1": "1d"}
    names |= {"d3": "3d", "d30": "30d", "d28": "28d"}
    return {names[k]: v for k, v in counts.items()}


# good and valid events ----------------------------------------------------------------------


def test_availability_counts_5xx_bad_and_429_only_by_policy() -> None:
    c = Counts.of(requests=1000, errors=5, rejected=20)
    # 429s are not valid events by default: the service refused them on purpose.
    assert good_total(c, "availability", None, False) == (975.0, 980.0)
    # With rateLimitedIsBad they spend the budget like 5xx.
    assert good_total(c, "availability", None, True) == (975.0, 1000.0)


def test_latency_good_means_succeeded_within_the_threshold() -> None:
    # 90 fast, 10 slow successes; 5 failures, which are never fast enough.
    c = Counts.of(requests=105, errors=5, latency=hist(*[50] * 90, *[400] * 10))
    assert good_total(c, "latency", 300, False) == (90.0, 105.0)
    assert good_total(c, "latency", 500, False) == (100.0, 105.0)
    # Between two bucket bounds (300, 500] the bucket counts in proportion: 10 * 50/200.
    assert good_total(c, "latency", 350, False) == (92.5, 105.0)


def test_ttft_reads_the_ttft_histogram_and_client_errors_are_left_out() -> None:
    # 100 requests: 80 succeeded (TTFT histogram), 5 failed, 15 were 4xx (in no histogram).
    c = Counts.of(requests=100, errors=5, ttft=hist(*[90] * 60, *[180] * 20))
    assert good_total(c, "ttft", 120, False) == pytest.approx((60 + 0.0, 85.0))
    assert good_total(c, "ttft", 200, False) == (80.0, 85.0)


# burn table ---------------------------------------------------------------------------------


def test_burn_rate_is_the_bad_ratio_over_the_budget() -> None:
    spec = SliSpec("availability", 99.5)
    table = evaluate(
        by_window(
            h1=Counts.of(requests=1000, errors=10),  # 1 % bad: 2x
            d30=Counts.of(requests=100_000, errors=250),  # 0.25 % bad: 0.5x
        ),
        spec,
    )
    assert spec.budget == pytest.approx(0.005)
    assert [r.window for r in table.rows] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    assert table.row("1h").ratio == pytest.approx(0.99)
    assert table.burn("1h") == pytest.approx(2.0)
    assert table.burn("30d") == pytest.approx(0.5)
    # Half the 30-day budget is left; at 2x it lasts 30d * 0.5 / 2 = 7.5 days.
    assert table.budget_remaining == pytest.approx(0.5)
    assert table.exhaustion_seconds == pytest.approx(7.5 * DAY)
    # Windows without traffic burn nothing and say so.
    assert table.row("5m").ratio is None and table.burn("5m") == 0.0


def test_budget_without_traffic_is_whole_and_never_runs_out() -> None:
    table = evaluate({}, SliSpec("latency", 99.0, threshold_ms=300))
    assert table.budget_remaining == 1.0
    assert table.exhaustion_seconds is None


def test_an_overspent_budget_is_negative_and_exhausted_now() -> None:
    table = evaluate(
        by_window(h1=Counts.of(requests=100), d28=Counts.of(requests=1000, errors=30)),
        SliSpec("availability", 99.0, window="28d"),
    )
    assert table.slo_row.window == "28d"
    assert table.budget_remaining == pytest.approx(-2.0)  # 3 % bad of a 1 % budget
    assert table.exhaustion_seconds == 0.0


def test_percentiles_come_from_the_merged_histograms() -> None:
    c = Counts.of(requests=100, latency=hist(*[8] * 50, *[90] * 50), ttft=hist(*[40] * 100))
    p = percentiles(c)
    assert (p["requests"], p["p50Ms"], p["p95Ms"], p["p99Ms"]) == (100, 10.0, 97.5, 99.5)
    assert p["ttftP95Ms"] == pytest.approx(hist(*[40] * 100).quantile(0.95), abs=0.05)
    assert percentiles(Counts.zero())["p95Ms"] is None


# windows ------------------------------------------------------------------------------------


def test_a_window_holds_the_buckets_that_started_less_than_its_length_ago(tmp_path: Path) -> None:
    series = SeriesStore(tmp_path / "series.sqlite", retention_s=10 * 365 * DAY)
    series.open()
    now = 1_700_000_000

    def bucket(start: int, requests: int, endpoint: str = "chat", domain: str = "edge-eu") -> Any:
        return SeriesBucket(
            start=start,
            project="p",
            endpoint=endpoint,
            revision="chat@q4",
            domain=domain,
            requests=requests,
        )

    buckets = [
        bucket(now, 1),  # the open bucket
        bucket(now - 290, 10),  # the 5m window's oldest
        bucket(now - 300, 100),  # just outside 5m: in 30m
        bucket(now - 3 * DAY + 10, 1000),  # in 3d
        bucket(now - 31 * DAY, 10_000),  # beyond every window
        bucket(now + 10, 100_000),  # after `now`: not yet
        bucket(now - 10, 7, domain="cloud-eu"),
        bucket(now - 10, 5, endpoint="embed"),
    ]
    try:
        series.ingest(SeriesBatch(source="router-a", buckets=buckets), now=now)
        counts = read_window_counts(series, "p", now, all_windows({"30d"}))
    finally:
        series.close()
    chat = select(counts, "chat")
    assert {w: c.requests for w, c in chat.items()} == {
        "5m": 18,
        "30m": 118,
        "1h": 118,
        "2h": 118,
        "6h": 118,
        "1d": 118,
        "3d": 1118,
        "30d": 1118,
    }
    assert select(counts, "chat", domain="cloud-eu")["5m"].requests == 7
    assert select(counts, "embed")["5m"].requests == 5
    assert select(counts, "chat", revision="other") == {}


# implicit SLOs -------------------------------------------------------------------------------


def endpoint(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Endpoint",
        "metadata": {"name": name, "project": "p"},
        "spec": {"modelRef": "m", "domains": [{"name": "edge-eu"}], **spec},
    }


def test_endpoint_slo_blocks_imply_slos_and_a_standalone_one_replaces_its_namesake() -> None:
    ep = endpoint(
        "chat",
        slo={"p95_ms": 300, "availability": 99.9},
        domains=[
            {"name": "edge-eu", "weight": 60, "slo": {"ttft_ms": 120}},
            {"name": "cloud-eu", "weight": 40},
        ],
    )
    standalone = {
        "apiVersion": "v1",
        "kind": "SLO",
        "metadata": {"name": "chat-availability", "project": "p", "uid": "u-1"},
        "spec": {"target": {"kind": "Endpoint", "name": "chat"}, "sli": "availability"},
    }
    found = {d.name: d for d in definitions([standalone], [ep])}
    assert sorted(found) == ["chat-availability", "chat-edge-eu-ttft", "chat-latency-p95"]
    p95 = found["chat-latency-p95"]
    # "p95 within 300 ms" is "95 % of requests within 300 ms".
    assert (p95.spec.sli, p95.spec.threshold_ms, p95.spec.objective) == ("latency", 300.0, 95.0)
    assert p95.implicit and p95.domain is None
    assert p95.obj["metadata"]["annotations"]["slo.infermesh.io/source"] == "Endpoint/chat"
    ttft = found["chat-edge-eu-ttft"]
    assert (ttft.spec.sli, ttft.domain, ttft.spec.objective) == ("ttft", "edge-eu", 95.0)
    # The applied SLO object wins over the endpoint's availability target of the same name.
    avail = found["chat-availability"]
    assert not avail.implicit and avail.uid == "u-1" and avail.spec.objective == 99.9


def test_job_slos_are_defined_but_not_evaluated() -> None:
    job = {
        "kind": "Job",
        "metadata": {"name": "ft", "project": "p"},
        "spec": {"slo": {"step_time_p95_ms": 900, "throughput_tps": 1200}},
    }
    found = {d.name: d for d in definitions([], [job])}
    assert sorted(found) == ["ft-step-time", "ft-throughput"]
    assert not any(d.evaluated for d in found.values())


# the alert state machine --------------------------------------------------------------------


def table_with(burns: dict[str, float]) -> Any:
    """A burn table whose windows burn as given (1000 events each; 0 where not given)."""
    spec = SliSpec("availability", 99.0)
    counts = {
        w: Counts.of(requests=1000, errors=round(b * spec.budget * 1000)) for w, b in burns.items()
    }
    return evaluate(counts, spec)


def test_an_alert_fires_once_both_windows_burn_and_resolves_with_the_short_one() -> None:
    hot = table_with({"1h": 15, "5m": 20})
    states, changes = step_alerts({}, hot, now=100.0)
    page = {s.rule: s for s in states}["page-1h-5m"]
    assert page.firing and page.since == 100.0
    assert [(t.rule.name, t.firing) for t in changes] == [("page-1h-5m", True)]
    assert (
        changes[0]
        .message(hot)
        .startswith(
            "page alert page-1h-5m firing: burn 15.0x over 1h and 20.0x over 5m (threshold 14.4x)"
        )
    )

    previous = {s.rule: s for s in states}
    again, none = step_alerts(previous, hot, now=110.0)
    assert none == () and {s.rule: s for s in again}["page-1h-5m"].since == 100.0

    # The long window is still hot; the short one cooled: resolved.
    cooled = table_with({"1h": 15, "5m": 2})
    _, resolved = step_alerts(previous, cooled, now=400.0)
    assert [(t.rule.name, t.firing) for t in resolved] == [("page-1h-5m", False)]
    assert "resolved after 5m: burn 15.0x over 1h and 2.0x over 5m" in resolved[0].message(cooled)


def test_one_hot_window_alone_fires_nothing() -> None:
    for burns in ({"1h": 20, "5m": 10}, {"1h": 10, "5m": 20}, {"1d": 2.9, "2h": 50}):
        states, changes = step_alerts({}, table_with(burns), now=0.0)
        assert changes == () and not any(s.firing for s in states)


def test_each_rule_reads_its_own_windows_and_severity() -> None:
    states, changes = step_alerts({}, table_with({"3d": 1.5, "6h": 1.5, "1d": 1.5}), now=0.0)
    assert [t.rule.name for t in changes] == ["ticket-3d-6h"]
    assert {s.rule: s.severity for s in states} == {
        "page-1h-5m": "page",
        "page-6h-30m": "page",
        "ticket-1d-2h": "ticket",
        "ticket-3d-6h": "ticket",
    }
    previous = {"page-6h-30m": AlertState("page-6h-30m", "page", True, 5.0)}
    _, changes = step_alerts(previous, table_with({"6h": 7, "30m": 5}), now=9.0)
    assert [(t.rule.name, t.firing, t.previous_since) for t in changes] == [
        ("page-6h-30m", False, 5.0)
    ]
    assert RULES_BY_NAME["page-6h-30m"].factor == 6.0
