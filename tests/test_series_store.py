"""The series store at scale: rollup tiers, late re-sends, the size cap, window totals."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermesh.sli import Histogram, SeriesBatch, SeriesBucket
from infermesh.store import series_tiers
from infermesh.store.series import SeriesStore, SliceKey
from infermesh.store.series_read import WindowTotals
from infermesh.store.series_schema import Tier
from infermesh.store.slo.burn import SliSpec
from infermesh.store.slo.reader import counts_of, read_timeline, timeline

T0 = 1_700_000_000 // 3600 * 3600  # an hour boundary
# Short keeps, so that a few simulated hours cross every tier: raw 15 min, 1-minute buckets
# half an hour, 5-minute ones an hour, hourly ones the retention.
TIERS = (Tier("rollup_1m", 60, 1800), Tier("rollup_5m", 300, 3600), Tier("rollup_1h", 3600, 0))
SLICES = [
    ("p", "chat", "r1", "eu", "acme"),
    ("p", "chat", "r1", "eu", "globex"),  # the same SLO slice, another tenant
    ("p", "chat", "r2", "eu", "acme"),
    ("p", "chat", "r1", "us", "acme"),
    ("p", "embed", "r1", "eu", "acme"),
]
BY_ALL = ("endpoint", "revision", "domain", "tenant")


def hist(*values: float) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def make_bucket(start: int, key: tuple[str, ...], rng: random.Random) -> SeriesBucket:
    n = rng.randint(0, 12)
    return SeriesBucket(
        start=start,
        project=key[0],
        endpoint=key[1],
        revision=key[2],
        domain=key[3],
        tenant=key[4],
        requests=n + rng.randint(0, 2),
        errors=rng.randint(0, 1),
        hedges=rng.randint(0, 1),
        prompt_tokens=rng.randint(0, 500),
        latency=hist(*(rng.expovariate(1 / 300) for _ in range(n))),
        ttft=hist(*(rng.expovariate(1 / 60) for _ in range(n))),
    )


def open_store(path: Path, **kwargs: Any) -> SeriesStore:
    store = SeriesStore(path, 2 * 86400, tiers=TIERS, **kwargs)
    store.open(now=T0)
    return store


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SeriesStore, SeriesStore]]:
    """The same 6 hours of traffic (two routers, re-sending open buckets) in a store that rolls
    up every 5 minutes and keeps raw buckets 15 minutes, and in one that keeps only raw ones."""
    tiered = open_store(tmp_path / "tiered.sqlite", raw_retention_s=900)
    raw_only = open_store(tmp_path / "raw.sqlite", raw_retention_s=2 * 86400)
    rng = random.Random(7)
    for minute in range(T0, T0 + 6 * 3600, 60):
        buckets = [
            make_bucket(start, key, rng)
            for start in range(minute, minute + 60, 10)
            for key in SLICES
            if rng.random() < 0.8
        ]
        for source in ("router-a", "router-b"):
            mine = [b for b in buckets if rng.random() < 0.6]
            # First a partial copy of each open bucket, then the whole: the last one counts.
            partial = [b.model_copy(update={"requests": 1}) for b in mine]
            for batch in (partial, mine):
                for store in (tiered, raw_only):
                    store.ingest(SeriesBatch(source=source, buckets=batch), now=minute + 60)
        if minute % 300 == 0:
            tiered.maintain(now=minute + 60)
    tiered.maintain(now=T0 + 6 * 3600 + 5)
    yield tiered, raw_only
    tiered.close()
    raw_only.close()


def totals(store: SeriesStore, since: int, until: int, **filters: str) -> dict[str, Any]:
    [series] = store.query(
        "p", since=since, until=until, step_s=10**7, filters=filters, by=("endpoint",)
    )
    return series["total"]


def test_reads_across_raw_and_every_tier_equal_raw_only(
    stores: tuple[SeriesStore, SeriesStore],
) -> None:
    tiered, raw_only = stores
    # The data now lies in four tables: hourly, 5-minute, 1-minute and raw buckets.
    [first] = tiered.buckets("p", T0, T0 + 3600, {"endpoint": "embed"})[:1]
    assert first.width_s == 3600
    assert tiered.buckets("p", T0 + 6 * 3600 - 300, T0 + 6 * 3600, {})[0].width_s == 10
    # A read spanning every boundary, hour by hour: the same series, point for point.
    kwargs: dict[str, Any] = {"since": T0, "until": T0 + 6 * 3600, "step_s": 3600, "by": BY_ALL}
    assert tiered.query("p", **kwargs) == raw_only.query("p", **kwargs)
    # And in 10 s steps over the last 20 minutes (raw, then 1-minute buckets): the same totals.
    kwargs.update(since=T0 + 6 * 3600 - 1200, step_s=10)
    assert [s["total"] for s in tiered.query("p", **kwargs)] == [
        s["total"] for s in raw_only.query("p", **kwargs)
    ]


def test_window_totals_equal_the_sum_of_query_over_each_window(
    stores: tuple[SeriesStore, SeriesStore],
) -> None:
    tiered, raw_only = stores
    now = T0 + 6 * 3600 + 5.5
    windows = [60, 300, 1800, 3600, 7200, 6 * 3600, 86400]
    for store in (tiered, raw_only):
        got = store.window_totals(windows, now=now, project="p")
        assert set(got) == {SliceKey(*key[:4]) for key in SLICES}
        for key, by_window in got.items():
            for w, t in by_window.items():
                want = totals(
                    store, t.since, int(now) + 1, endpoint=key.endpoint, revision=key.revision,
                    domain=key.domain,
                )  # fmt: skip
                assert (t.requests, t.errors, t.hedges, t.prompt_tokens) == (
                    want["requests"],
                    want["errors"],
                    want["hedges"],
                    want["prompt_tokens"],
                ), (key, w)
                assert t.latency.quantile(0.95) == pytest.approx(want["latency_p95_ms"], abs=0.1)
                assert t.ttft.quantile(0.5) == pytest.approx(want["ttft_p50_ms"], abs=0.1)
    # Both stores agree when the window holds the same buckets: the tiered store's starts at
    # the nearest hour, T0; the raw one's with the first bucket after now - w, T0 too.
    w = 6 * 3600 + 5
    a = tiered.window_totals([w], now=T0 + 6 * 3600, endpoint="chat", domain="eu")
    b = raw_only.window_totals([w], now=T0 + 6 * 3600, endpoint="chat", domain="eu")
    assert (
        set(a) == set(b) == {SliceKey("p", "chat", "r1", "eu"), SliceKey("p", "chat", "r2", "eu")}
    )
    for key in a:
        assert a[key][w].since == T0 and b[key][w].since == T0 - 4
        assert a[key][w].values == pytest.approx(b[key][w].values)
        assert a[key][w].latency.counts == b[key][w].latency.counts


def test_a_window_before_any_rollup_counts_raw_buckets_in_it_exactly(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    rng = random.Random(1)
    buckets = [make_bucket(T0 + i * 10, SLICES[0], rng) for i in range(40)]
    store.ingest(SeriesBatch(source="r", buckets=buckets), now=T0 + 400)
    got = store.window_totals([100, 300], now=T0 + 395)[SliceKey("p", "chat", "r1", "eu")]
    # (now - w, now]: starts 300..390 and 100..390.
    assert got[100].requests == sum(b.requests for b in buckets[30:])
    assert got[300].requests == sum(b.requests for b in buckets[10:])
    assert got[300].latency.counts == hist_sum(buckets[10:]).counts
    store.close()


def hist_sum(buckets: list[SeriesBucket]) -> Histogram:
    out = Histogram()
    for b in buckets:
        out.merge(b.latency)
    return out


def test_a_bucket_resent_before_or_after_its_rollup_counts_once(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite", settle_s=120)
    key = dict(project="p", endpoint="chat", revision="r1", domain="eu")
    chat = SliceKey("p", "chat", "r1", "eu")

    def post(source: str, at: float, *buckets: SeriesBucket) -> tuple[int, int]:
        return store.ingest(SeriesBatch(source=source, buckets=list(buckets)), now=at)

    def window(at: float) -> tuple[int, int]:
        got = store.window_totals([3600], now=at)[chat][3600]
        return got.requests, got.latency.count

    first = SeriesBucket(start=T0, requests=3, latency=hist(10, 20), **key)
    assert post("r", T0 + 20, first) == (1, 0)
    again = SeriesBucket(start=T0, requests=5, latency=hist(10, 20, 30), **key)
    assert post("r", T0 + 100, again) == (1, 0)
    # Not final yet (it ended 110 s ago): not rolled; the re-send replaced the first copy.
    store.rollup(now=T0 + 120)
    assert store.final_before <= T0
    assert window(T0 + 120) == (5, 3)
    store.rollup(now=T0 + 190)
    assert store.final_before == T0 + 60
    assert window(T0 + 190) == (5, 3)
    # Rolled up now. A router that could not post for a while sends it again, and another
    # router its own copy: the repeat replaces its copy, the other adds, in raw and rollups.
    bigger = SeriesBucket(start=T0, requests=6, latency=hist(10, 20, 30, 40), **key)
    other = SeriesBucket(start=T0 + 10, requests=2, latency=hist(90), **key)
    assert post("r", T0 + 200, bigger, bigger) == (2, 0)
    assert post("r2", T0 + 200, other) == (1, 0)
    store.rollup(now=T0 + 3 * 3600)  # into every tier
    assert window(T0 + 3000) == (8, 5)
    assert totals(store, T0, T0 + 3600)["requests"] == 8
    assert post("r", T0 + 3 * 3600, bigger) == (1, 0)  # once more, the same: no change
    assert window(T0 + 3000) == (8, 5)
    # Once the raw copies are gone (raw retention: 1 day), a re-send cannot say what it
    # changes: refused (counted as expired), and the rolled-up bucket stays as it was.
    later = T0 + 47 * 3600
    store.maintain(now=later)
    assert post("r", later, bigger.model_copy(update={"requests": 60})) == (0, 1)
    got = store.window_totals([later - T0], now=later)[chat][later - T0]
    assert (got.requests, got.latency.count) == (8, 5)
    assert [b.width_s for b in store.buckets("p", T0, T0 + 3600, {})] == [3600]
    store.close()


def test_an_interrupted_rollup_leaves_nothing_behind_and_the_next_one_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = [open_store(tmp_path / f"{name}.sqlite") for name in ("crash", "clean")]
    rng = random.Random(3)
    buckets = [make_bucket(T0 + i * 10, key, rng) for i in range(720) for key in SLICES[:2]]
    for store in stores:
        store.ingest(SeriesBatch(source="r", buckets=buckets), now=T0 + 7200)
    crash, clean = stores
    real_advance = series_tiers._advance
    calls = 0

    def advance_then_die(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        real_advance(*args, **kwargs)
        if calls == 3:  # rows of a chunk written, its watermark moved, not committed
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(series_tiers, "_advance", advance_then_die)
    with pytest.raises(sqlite3.OperationalError):
        crash.rollup(now=T0 + 7300)
    monkeypatch.setattr(series_tiers, "_advance", real_advance)
    assert 0 < crash.final_before < T0 + 7200  # the committed chunks only
    for store in stores:
        store.rollup(now=T0 + 7300)
        store.rollup(now=T0 + 7300)  # nothing more to do: no change
    assert crash.final_before == clean.final_before == T0 + 7140
    for table in ("rollup_1m", "rollup_5m", "rollup_1h"):
        sql = f"SELECT * FROM {table} ORDER BY slice, start"
        assert crash.db.execute(sql).fetchall() == clean.db.execute(sql).fetchall()
    w = crash.window_totals([8000], now=T0 + 7300)[SliceKey("p", "chat", "r1", "eu")][8000]
    assert w.requests == sum(b.requests for b in buckets)
    for store in stores:
        store.close()


def test_the_cap_drops_detail_first_then_the_oldest_rollups_and_the_file_shrinks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    store = open_store(path, raw_retention_s=2 * 86400)
    rng = random.Random(5)
    keys = [("p", f"ep{i}", "r1", "eu", "acme") for i in range(60)]
    end = T0 + 36 * 3600
    for hour in range(T0, end, 3600):  # a bucket every 2 minutes per slice
        batch = [make_bucket(s, k, rng) for s in range(hour, hour + 3600, 120) for k in keys]
        store.ingest(SeriesBatch(source="r", buckets=batch), now=hour + 3600)
        store.maintain(now=hour + 3600)
    store.maintain(now=end + 200)
    full = path.stat().st_size
    day = store.window_totals([3600, 86400, 30 * 3600], now=end)
    # 1. Half the size: raw detail older than an hour goes, nothing of any window.
    store.max_bytes = full // 2
    drops = store.enforce_cap(now=end + 200)
    assert {d.table for d in drops} == {"raw"} and all(d.reason == "cap" for d in drops)
    assert store.size_bytes() <= store.max_bytes
    assert store.buckets("p", end - 3600, end, {})[0].width_s == 10  # the last hour stays raw
    assert store.window_totals([3600, 86400, 30 * 3600], now=end) == day
    # 2. Far under: all detail, then the oldest hours go; the last hour's totals stay.
    store.max_bytes = int(full * 0.05)
    drops = store.enforce_cap(now=end + 200)
    assert "rollup_1h" in {d.table for d in drops}
    assert store.size_bytes() <= store.max_bytes
    assert path.stat().st_size <= store.max_bytes
    after = store.window_totals([3600, 30 * 3600], now=end)
    some = SliceKey("p", "ep0", "r1", "eu")
    assert after[some][3600] == day[some][3600]
    assert after[some][30 * 3600].since > day[some][30 * 3600].since  # the oldest hours went
    assert after[some][30 * 3600].requests < day[some][30 * 3600].requests
    store.close()


def test_a_store_of_the_first_layout_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE buckets (
            project TEXT NOT NULL, start INTEGER NOT NULL, endpoint TEXT NOT NULL,
            revision TEXT NOT NULL, domain TEXT NOT NULL, tenant TEXT NOT NULL,
            source TEXT NOT NULL, width_s INTEGER NOT NULL, requests INTEGER NOT NULL,
            errors INTEGER NOT NULL, rejected INTEGER NOT NULL, hedges INTEGER NOT NULL,
            hedge_wins INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL, latency TEXT NOT NULL, ttft TEXT NOT NULL,
            PRIMARY KEY (project, start, endpoint, revision, domain, tenant, source)
        ) WITHOUT ROWID;
        """
    )
    for source, n in (("a", 3), ("b", 4)):
        db.execute(
            "INSERT INTO buckets VALUES (?, ?, ?, ?, ?, ?, ?, 10, ?, 1, 0, 0, 0, 0, 0, ?, ?)",
            ("p", T0, "chat", "r1", "eu", "acme", source, n, hist(*[90] * n).model_dump_json(),
             Histogram().model_dump_json()),
        )  # fmt: skip
    db.commit()
    db.close()
    store = open_store(path)
    total = totals(store, T0, T0 + 60)
    assert (total["requests"], total["errors"], total["latency_p50_ms"]) == (7, 2, 87.5)
    store.close()


def test_good_events_under_a_threshold_round_down_to_a_bucket_bound() -> None:
    h = hist(3, 5, 8, 40, 60, 60, 250, 900, 40000)
    assert h.count_at_most(50) == 4  # a bound: exact (5 ms counts in <= 5, 50 in <= 50)
    assert h.count_at_most(5) == 2
    # 60 ms lies in (50, 75]: that bucket counts as over unless interpolated (10/25 of it).
    assert h.count_at_most(60) == 4
    assert h.count_at_most(60, interpolate=True) == pytest.approx(4 + 2 * 10 / 25)
    assert h.count_at_most(1e9) == 8  # the +Inf bucket is never under a threshold
    assert h.count_at_most(0) == 0 and h.count_at_most(-1, interpolate=True) == 0


@pytest.mark.parametrize(
    "spec",
    [SliSpec("availability", 99.5), SliSpec("latency", 99.0, threshold_ms=300)],
    ids=["availability", "latency"],
)
def test_an_slo_timeline_summed_per_step_by_the_store_equals_one_summed_bucket_by_bucket(
    stores: tuple[SeriesStore, SeriesStore], spec: SliSpec
) -> None:
    tiered, _ = stores
    end = T0 + 6 * 3600
    # Ranges over raw and every tier, starting off any step boundary, in chart and window steps.
    for since, step, filters in (
        (T0 + 7, 3600, {"endpoint": "chat"}),
        (T0 + 95, 300, {"endpoint": "chat", "domain": "eu"}),
        (end - 1203, 60, {"endpoint": "chat"}),
        (end - 1203, 10, {"endpoint": "chat", "domain": "us"}),
    ):
        one_by_one = timeline(
            (
                (b.start, counts_of(WindowTotals(b.start, b.values)))
                for b in tiered.buckets("p", since, end, filters)
            ),
            since,
            end,
            step,
            spec,
        )
        assert one_by_one, (since, step)
        assert read_timeline(tiered, "p", filters, since, end, step, spec) == one_by_one
