"""The series store: routers' SLI buckets in SQLite, rolled up into tiers, aggregated on read.

Raw buckets: one row per (start, slice, source), a slice being (project, endpoint, revision,
domain, tenant). A router re-sends a bucket while it is open, each time with everything it has
counted so far, so an ingest *replaces* the row of that source: delivery may repeat but never
double counts. Rows of different sources (routers) and tenants add up when read.

Tiers (store/series_schema.py DEFAULT_TIERS): once a raw bucket is final (it ended `settle_s`
ago), `rollup` merges it across sources into 1-minute buckets, those into 5-minute ones and those
into hourly ones. Raw buckets are kept `raw_retention_s` (1 day), the finer tiers long enough for
the windows they answer, the hourly tier the whole `retention_s` (the SLO window and a margin).
A bucket posted again after it was rolled up (a router that could not post for a while) replaces
its raw copy, and the tiers take the difference; once its raw copy is gone it is refused
(counted as expired): no bucket counts twice nor goes missing. Reads take each stretch of time
from the finest table that holds it (store/series_read.py). The file stays under `max_bytes`
(store/series_housekeeping.py).

Not etcd: SLIs are many small, high-rate, disposable writes that no component watches, so they
stay out of the state plane (and its audit log). SQLite calls block; the API runs them in a
worker thread, one at a time (one connection, a lock; long passes take it chunk by chunk).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infermesh.context import infermesh_home
from infermesh.sli import SeriesBatch, SeriesBucket
from infermesh.store import series_housekeeping as housekeeping
from infermesh.store.series_read import (
    Bucket,
    SliceKey,
    WindowTotals,
    buckets,
    histogram,
    window_totals,
)
from infermesh.store.series_schema import (
    COUNTERS,
    DEFAULT_TIERS,
    DIMENSIONS,
    LATENCY,
    LATENCY_SUM,
    TTFT,
    TTFT_SUM,
    VALUES,
    Tier,
    bucket_values,
    connect,
    insert_raw_sql,
    slice_id_of,
    source_id_of,
    transaction,
)
from infermesh.store.series_tiers import Marks, apply_late, late_accepted, roll_raw, roll_tier

__all__ = [
    "COUNTERS",
    "DEFAULT_BY",
    "DIMENSIONS",
    "SeriesStore",
    "SliceKey",
    "WindowTotals",
    "aggregate",
    "default_path",
]

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 31 * 86400  # the longest SLO window (30 days) and a day of margin
DEFAULT_RAW_RETENTION_S = 86400
DEFAULT_MAX_BYTES = 512 << 20
DEFAULT_SETTLE_S = 120  # a router re-sends an open bucket every 10 s: 2 minutes is final
DEFAULT_BY = ("endpoint", "revision", "domain")
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
RAW_CHUNK_S = 300  # raw time rolled up per transaction: the lock is held for one chunk
TIER_CHUNK = 12  # buckets of a tier rolled up per transaction


def default_path() -> Path:
    return infermesh_home() / "series.sqlite"


@dataclass
class Maintenance:
    """What one `maintain` pass did."""

    rolled: int = 0  # rollup rows written
    drops: list[housekeeping.Drop] = field(default_factory=list)  # for the cap
    size_bytes: int = 0
    seconds: float = 0.0


class SeriesStore:
    """The SQLite file of SLI buckets. Methods block: call them from a worker thread.

    `retention_s`: how long anything is kept (the coarsest tier); `raw_retention_s`: raw 10 s
    buckets; `max_bytes`: the cap on the file; `settle_s`: how long after its end a bucket is
    final (rolled up; a later re-send changes the rollups by its difference)."""

    def __init__(
        self,
        path: Path,
        retention_s: int = DEFAULT_RETENTION_S,
        *,
        raw_retention_s: int = DEFAULT_RAW_RETENTION_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        settle_s: int = DEFAULT_SETTLE_S,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
    ) -> None:
        self.path = path
        self.retention_s = retention_s
        self.raw_retention_s = raw_retention_s
        self.max_bytes = max_bytes
        self.settle_s = settle_s
        self.tiers = tuple(tiers)
        self._marks = Marks(self.tiers)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._slice_ids: dict[tuple[str, ...], int] = {}
        self._source_ids: dict[str, int] = {}

    def open(self, now: float | None = None) -> None:
        """Open (creating or migrating it if need be) and drop what outlived the retention."""
        self._db = connect(self.path, self.tiers)
        # The write-ahead log is truncated back to this after a checkpoint: a share of the cap.
        self._db.execute(f"PRAGMA journal_size_limit={min(64 << 20, self.max_bytes // 8)}")
        self._marks.load(self._db)
        self.prune(now)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"series store {self.path} is not open")
        return self._db

    @property
    def final_before(self) -> int:
        """Raw buckets that start before this epoch second are rolled up and final."""
        return self._marks.final_before

    # writes ---------------------------------------------------------------------------------
    def ingest(self, batch: SeriesBatch, now: float | None = None) -> tuple[int, int]:
        """Store a batch, replacing this source's earlier copy of each bucket. Returns (stored,
        expired): a bucket past the retention is not stored, nor a late one (already rolled
        up) whose earlier copy is no longer kept raw: what it would change is unknown. A late
        bucket still kept raw replaces its copy, and the tiers that rolled it take the
        difference: late or repeated, a bucket counts once."""
        horizon = (time.time() if now is None else now) - self.retention_s
        with self._lock:
            final_before = self._marks.final_before
            fresh, late = [], []
            refused = 0
            for b in batch.buckets:
                if b.start + b.width_s <= horizon:
                    continue
                if b.start >= final_before:
                    fresh.append(b)
                elif late_accepted(self._marks, b.start):
                    late.append(b)
                else:
                    refused += 1
            try:
                with transaction(self.db):  # one transaction for the batch
                    source = self._source_id(batch.source)
                    self.db.executemany(insert_raw_sql(), self._rows(fresh, source))
                    if late:
                        apply_late(self.db, self._marks, self._rows(late, source))
            except BaseException:
                self._forget_ids()  # ids created in the rolled-back transaction are gone
                raise
        if late:
            housekeeping.LATE.labels("applied").inc(len(late))
        if refused:
            housekeeping.LATE.labels("refused").inc(refused)
            log.warning(
                "series: %d buckets from %s came after their raw copies were dropped; refused",
                refused,
                batch.source,
            )
        stored = len(fresh) + len(late)
        return stored, len(batch.buckets) - stored

    def _rows(self, buckets: list[SeriesBucket], source: int) -> list[tuple[Any, ...]]:
        return [
            (
                b.start,
                self._slice_id((b.project, b.endpoint, b.revision, b.domain, b.tenant)),
                source,
                b.width_s,
                *bucket_values(b),
            )
            for b in buckets
        ]

    def _slice_id(self, key: tuple[str, ...]) -> int:
        sid = self._slice_ids.get(key)
        if sid is None:
            sid = self._slice_ids[key] = slice_id_of(self.db, key)
        return sid

    def _source_id(self, name: str) -> int:
        sid = self._source_ids.get(name)
        if sid is None:
            sid = self._source_ids[name] = source_id_of(self.db, name)
        return sid

    def _forget_ids(self) -> None:
        self._slice_ids.clear()
        self._source_ids.clear()

    def rollup(self, now: float | None = None) -> int:
        """Roll every final raw bucket into the first tier and each tier into the next, chunk by
        chunk (one transaction each); returns the rows written. Idempotent."""
        now = time.time() if now is None else now
        steps: list[Callable[[], tuple[int, bool]]] = [
            lambda: roll_raw(self.db, self._marks, now, self.settle_s, RAW_CHUNK_S)
        ]
        for i in range(1, len(self.tiers)):
            span = TIER_CHUNK * self.tiers[i].width_s
            steps.append(lambda i=i, span=span: roll_tier(self.db, self._marks, i, span))
        written = 0
        for step in steps:
            done = False
            while not done:
                n, done = self._write(step)
                written += n
        return written

    def prune(self, now: float | None = None) -> int:
        """Delete what outlived its retention (see store/series_housekeeping.py); returns how
        many rows went."""
        now = time.time() if now is None else now
        drops = self._write(
            lambda: housekeeping.prune(
                self.db, self._marks, now, self.retention_s, self.raw_retention_s
            ),
            transactional=False,  # one transaction, inside
        )
        with self._lock:
            self._forget_ids()  # slices left with no rows are deleted
            housekeeping.count(drops, self._marks, self.db)
        return sum(d.rows for d in drops)

    def enforce_cap(self, now: float | None = None) -> list[housekeeping.Drop]:
        """Drop the oldest data, finer detail first, until the file is under `max_bytes`. Takes
        the lock step by step: ingest and reads go on meanwhile."""
        now = time.time() if now is None else now
        try:
            drops = housekeeping.enforce_cap(self.db, self._marks, now, self.max_bytes, self._lock)
        except BaseException:
            with self._lock:
                self._marks.load(self.db)  # the marks as committed
            raise
        with self._lock:
            housekeeping.count(drops, self._marks, self.db)
        return drops

    def maintain(self, now: float | None = None) -> Maintenance:
        """The periodic pass: rollup, retention, cap."""
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        report = Maintenance(rolled=self.rollup(now))
        self.prune(now)
        report.drops = self.enforce_cap(now)
        report.size_bytes = self.size_bytes()
        report.seconds = time.perf_counter() - t0
        return report

    def _write(self, step: Callable[[], Any], transactional: bool = True) -> Any:
        with self._lock:
            try:
                if not transactional:
                    return step()
                with transaction(self.db):
                    return step()
            except BaseException:
                self._marks.load(self.db)  # the marks as committed
                raise

    def size_bytes(self) -> int:
        """Bytes on disk: the file and its write-ahead log."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    # reads ----------------------------------------------------------------------------------
    def buckets(
        self,
        project: str,
        since: int,
        until: int,
        filters: dict[str, str] | None = None,
        step_s: int | None = None,
    ) -> list[Bucket]:
        """The buckets of one project with since <= start < until that match `filters`
        (dimension -> value), merged across sources: raw ones where raw is kept, downsampled ones
        before. With `step_s`, summed per step (aligned to `since`)."""
        with self._lock:
            return list(buckets(self.db, self._marks, project, since, until, filters or {}, step_s))

    def query(
        self,
        project: str,
        *,
        since: int,
        until: int,
        step_s: int,
        filters: dict[str, str] | None = None,
        by: Sequence[str] = DEFAULT_BY,
    ) -> list[dict[str, Any]]:
        """Series over [since, until) in steps of `step_s`, summed over sources and over the
        dimensions not in `by`; see `aggregate`."""
        rows = self.buckets(project, since, until, filters, step_s)
        return aggregate(rows, since, until, step_s, by)

    def window_totals(
        self,
        windows: Sequence[int],
        *,
        now: float,
        project: str | None = None,
        endpoint: str | None = None,
        revision: str | None = None,
        domain: str | None = None,
        tenant: str | None = None,
    ) -> dict[SliceKey, dict[int, WindowTotals]]:
        """For every slice (project, endpoint, revision, domain; tenants summed) with traffic in
        any of `windows` (seconds, each ending at `now`), its totals per window: counters and
        merged latency/TTFT histograms (`WindowTotals`). Filtered by any of the keywords.

        One pass reads each tier once: two probes per window and slice into the cumulative
        tiers (store/series_tiers.py) plus one sum of the raw buckets not rolled up yet.

        Window edges: a window holds the buckets that start in (now - w, now] when all of them
        are still raw (w shorter than the settle delay, about). Otherwise its start is rounded
        to the nearest boundary of the finest tier that still holds it: to the minute up to 3
        hours back, to 5 minutes up to a day, to the hour beyond; and clamped to the oldest
        data kept. `WindowTotals.since` is the start used."""
        filters = {
            d: v
            for d, v in (("endpoint", endpoint), ("revision", revision), ("domain", domain))
            if v is not None
        }
        if tenant is not None:
            filters["tenant"] = tenant
        with self._lock:
            return window_totals(self.db, self._marks, windows, now, project, filters)


def _summary(values: Sequence[float], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {c: int(v) for c, v in zip(COUNTERS, values, strict=False)}
    requests = out["requests"]
    out["error_rate"] = round(out["errors"] / requests, 4) if requests else None
    out["rps"] = round(requests / seconds, 3) if seconds > 0 else None
    for name, hist in (
        ("latency", histogram(values, LATENCY, LATENCY_SUM)),
        ("ttft", histogram(values, TTFT, TTFT_SUM)),
    ):
        for q, label in QUANTILES:
            value = hist.quantile(q)
            out[f"{name}_{label}_ms"] = None if value is None else round(value, 1)
    return out


def aggregate(
    rows: Iterable[Bucket], since: int, until: int, step_s: int, by: Sequence[str]
) -> list[dict[str, Any]]:
    """Buckets summed into series (one per distinct value of the `by` dimensions), each with its
    `total` over the window and its `points`: one per step (aligned to `since`) that has data,
    `t` its start. A downsampled bucket counts in the point that holds its start; `rps` divides
    by the seconds the point covers (its step, or its buckets' width when wider)."""
    dims = [1 + DIMENSIONS.index(d) for d in by]  # Bucket.slice starts with the project
    series: dict[tuple[str, ...], int] = {}
    points: dict[tuple[int, int], int] = {}
    widths: list[int] = []
    at: list[int] = []
    values: list[Sequence[float]] = []
    for b in rows:
        key = series.setdefault(tuple(b.slice[d] for d in dims), len(series))
        t = since + (b.start - since) // step_s * step_s
        p = points.setdefault((key, t), len(points))
        if p == len(widths):
            widths.append(b.width_s)
        elif b.width_s > widths[p]:
            widths[p] = b.width_s
        at.append(p)
        values.append(b.values)
    if not values:
        return []
    sums = np.zeros((len(points), len(VALUES)))
    np.add.at(sums, np.array(at), np.array(values, dtype=np.float64))
    totals = np.zeros((len(series), len(VALUES)))
    np.add.at(totals, np.array([k for k, _ in points]), sums)
    by_series: dict[int, list[tuple[int, int]]] = {}
    for (k, t), p in points.items():
        by_series.setdefault(k, []).append((t, p))
    out = []
    for key, k in sorted(series.items()):
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "total": _summary(totals[k].tolist(), until - since),
                "points": [
                    {"t": t, **_summary(sums[p].tolist(), min(max(step_s, widths[p]), until - t))}
                    for t, p in sorted(by_series[k])
                ],
            }
        )
    return out
