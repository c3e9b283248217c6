"""The series store: routers' SLI buckets in SQLite, aggregated on read.

One row per (start, project, endpoint, revision, domain, tenant, source). A router re-sends a
bucket while it is open, each time with everything it has counted so far, so an ingest
*replaces* the row of that source: delivery may repeat but never double counts. Rows of
different sources (routers) and tenants add up when read. Rows older than the retention go.

Not etcd: SLIs are many small, high-rate, disposable writes that no component watches, so they
stay out of the state plane (and its audit log). SQLite calls block; the API runs them in a
worker thread, one at a time (one connection, a lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermesh.context import infermesh_home
from infermesh.sli import Histogram, SeriesBatch

DEFAULT_RETENTION_S = 7 * 86400
DIMENSIONS = ("endpoint", "revision", "domain", "tenant")
DEFAULT_BY = ("endpoint", "revision", "domain")
COUNTERS = (
    "requests",
    "errors",
    "rejected",
    "hedges",
    "hedge_wins",
    "prompt_tokens",
    "completion_tokens",
)
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS buckets (
    project TEXT NOT NULL,
    start INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    revision TEXT NOT NULL,
    domain TEXT NOT NULL,
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    width_s INTEGER NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL" for c in COUNTERS)},
    latency TEXT NOT NULL,
    ttft TEXT NOT NULL,
    PRIMARY KEY (project, start, endpoint, revision, domain, tenant, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_by_start ON buckets (start);
"""
_COLUMNS = (
    "project",
    "start",
    "endpoint",
    "revision",
    "domain",
    "tenant",
    "source",
    "width_s",
    *COUNTERS,
    "latency",
    "ttft",
)
_UPSERT = (
    f"INSERT OR REPLACE INTO buckets ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def default_path() -> Path:
    return infermesh_home() / "series.sqlite"


class SeriesStore:
    """The SQLite file of SLI buckets. Methods block: call them from a worker thread."""

    def __init__(self, path: Path, retention_s: int = DEFAULT_RETENTION_S) -> None:
        self.path = path
        self.retention_s = retention_s
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open (creating it if need be) and drop what outlived the retention."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False)
        # WAL with synchronous=NORMAL: a commit (one per router post) costs no fsync, and a crash
        # of the API can lose the last commits but never corrupt the file.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        self.prune()

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

    def ingest(self, batch: SeriesBatch, now: float | None = None) -> tuple[int, int]:
        """Store a batch, replacing this source's earlier copy of each bucket.
        Returns (stored, expired): buckets already past the retention are dropped."""
        horizon = (time.time() if now is None else now) - self.retention_s
        rows = []
        for b in batch.buckets:
            if b.start + b.width_s <= horizon:
                continue
            rows.append(
                (
                    b.project,
                    b.start,
                    b.endpoint,
                    b.revision,
                    b.domain,
                    b.tenant,
                    batch.source,
                    b.width_s,
                    *(getattr(b, c) for c in COUNTERS),
                    b.latency.model_dump_json(),
                    b.ttft.model_dump_json(),
                )
            )
        with self._lock, self.db:  # one transaction for the batch
            self.db.executemany(_UPSERT, rows)
        return len(rows), len(batch.buckets) - len(rows)

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than the retention; returns how many went."""
        horizon = (time.time() if now is None else now) - self.retention_s
        with self._lock, self.db:
            # `start < horizon` first: the index narrows the scan to old rows.
            return self.db.execute(
                "DELETE FROM buckets WHERE start < ? AND start + width_s <= ?", (horizon, horizon)
            ).rowcount

    def rows(
        self, project: str, since: int, until: int, filters: dict[str, str]
    ) -> list[sqlite3.Row]:
        """Raw rows of one project with since <= start < until, matching `filters`
        (dimension -> value)."""
        where = ["project = ?", "start >= ?", "start < ?"]
        args: list[Any] = [project, since, until]
        for dim, value in filters.items():
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown dimension {dim!r}")
            where.append(f"{dim} = ?")
            args.append(value)
        sql = (
            f"SELECT start, {', '.join(DIMENSIONS)}, {', '.join(COUNTERS)}, latency, ttft "
            f"FROM buckets WHERE {' AND '.join(where)}"
        )
        with self._lock:
            cursor = self.db.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

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
        return aggregate(self.rows(project, since, until, filters or {}), since, until, step_s, by)


@dataclass
class _Sum:
    """Counters and histograms of the rows that fall into one point (or one series)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)

    def add(self, row: sqlite3.Row, latency: Histogram, ttft: Histogram) -> None:
        for c in COUNTERS:
            self.counters[c] += row[c]
        self.latency.merge(latency)
        self.ttft.merge(ttft)

    def summary(self, seconds: float) -> dict[str, Any]:
        requests = self.counters["requests"]
        out: dict[str, Any] = dict(self.counters)
        out["error_rate"] = round(self.counters["errors"] / requests, 4) if requests else None
        out["rps"] = round(requests / seconds, 3) if seconds > 0 else None
        for name, hist in (("latency", self.latency), ("ttft", self.ttft)):
            for q, label in QUANTILES:
                value = hist.quantile(q)
                out[f"{name}_{label}_ms"] = None if value is None else round(value, 1)
        return out


def aggregate(
    rows: Iterable[sqlite3.Row], since: int, until: int, step_s: int, by: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows summed into series (one per distinct value of the `by` dimensions), each with its
    `total` over the window and its `points`: one per step (aligned to `since`) that has data,
    `t` its start. `rps` divides by the seconds of the window the point covers."""
    series: dict[tuple[str, ...], tuple[_Sum, dict[int, _Sum]]] = {}
    for row in rows:
        total, points = series.setdefault(tuple(row[d] for d in by), (_Sum(), {}))
        latency, ttft = _histogram(row["latency"]), _histogram(row["ttft"])
        t = since + (row["start"] - since) // step_s * step_s
        points.setdefault(t, _Sum()).add(row, latency, ttft)
        total.add(row, latency, ttft)
    out = []
    for key in sorted(series):
        total, points = series[key]
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "total": total.summary(until - since),
                "points": [
                    {"t": t, **points[t].summary(min(step_s, until - t))} for t in sorted(points)
                ],
            }
        )
    return out


def _histogram(text: str) -> Histogram:
    # Validated when ingested; skipping validation here keeps wide queries cheap.
    return Histogram.model_construct(**json.loads(text))
