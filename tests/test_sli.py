"""The SLI model shared by routers and the series store: histograms, buckets, durations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infermesh.sli import (
    LATENCY_BUCKETS_MS,
    Histogram,
    SeriesBucket,
    bucket_start,
    parse_duration,
)


def hist(*values: float) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    h = hist(*[8.0] * 50, *[90.0] * 50)  # 50 in (5, 10], 50 in (75, 100]
    assert h.count == 100 and h.sum_ms == pytest.approx(4900)
    assert h.quantile(0.5) == pytest.approx(10.0)  # rank 50: the top of (5, 10]
    assert h.quantile(0.95) == pytest.approx(75 + 25 * 45 / 50)
    assert h.quantile(0.99) == pytest.approx(75 + 25 * 49 / 50)
    assert h.quantile(0.0) == pytest.approx(5.0)  # the first bucket with anything in it
    assert hist(60.0).quantile(0.5) == pytest.approx(62.5)  # one value: the bucket's middle
    assert hist(1.0).quantile(1.0) == pytest.approx(5.0)  # first bucket starts at 0


def test_a_value_on_a_bound_counts_in_that_bucket_and_overflow_reports_the_top_bound() -> None:
    h = hist(100.0)
    assert h.counts[LATENCY_BUCKETS_MS.index(100)] == 1
    over = hist(60_000.0, 60_000.0)
    assert over.counts[-1] == 2
    assert over.quantile(0.5) == LATENCY_BUCKETS_MS[-1]


def test_empty_histograms_have_no_quantile_and_q_must_be_a_fraction() -> None:
    assert Histogram().quantile(0.99) is None
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        hist(1).quantile(99)


def test_merge_adds_observations() -> None:
    a, b = hist(8, 8), hist(90, 20_000)
    a.merge(b)
    assert a.count == 4 and a.sum_ms == pytest.approx(20_106)
    assert a.counts == hist(8, 8, 90, 20_000).counts
    assert b.count == 2  # the merged-in histogram is unchanged


def test_buckets_are_validated() -> None:
    with pytest.raises(ValidationError, match="not a multiple of width_s"):
        SeriesBucket(start=1005, project="p", endpoint="e")
    with pytest.raises(ValidationError, match="counts"):
        SeriesBucket(start=1000, project="p", endpoint="e", latency={"counts": [1, 2]})
    with pytest.raises(ValidationError, match="requests"):
        SeriesBucket(start=1000, project="p", endpoint="e", requests=-1)
    ok = SeriesBucket(start=bucket_start(1007.9), project="p", endpoint="e")
    assert (ok.start, ok.width_s, ok.domain, ok.latency.count) == (1000, 10, "", 0)


def test_durations() -> None:
    assert [parse_duration(d) for d in ("30s", "5m", "1.5h", "7d", "90")] == [
        30,
        300,
        5400,
        604800,
        90,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
