"""Keeping the series store's file bounded: retention per tier, the size cap, page reuse.

Retention (every pass): raw rows past the store's retention go whatever their state; raw rows
older than the raw retention go once rolled up; a tier's rows older than its `keep_s` go once
the next tier has rolled them; the coarsest tier keeps the store's retention.

The cap (`max_bytes`, pages in use): when over it, data goes in this order, oldest first, each
step down to 90 % of the cap (so the next ingest does not trip it again at once):
1. raw rows already rolled up, but the last `RAW_FLOOR_S` (the 10 s detail of the last hour);
2. rows of each finer tier already rolled into the next (finer detail of older time);
3. the rest of the rolled-up raw rows;
4. the coarsest tier's oldest rows: the only copy of that time, so the SLO window shrinks.
Detail goes before data: what a dropped row held is still in a coarser tier, until step 4.
Rows not rolled up yet are never dropped: a cap smaller than them is exceeded (and logged).
Every drop for the cap says so in a warning and in `infermesh_series_dropped_rows_total`.

Deleted rows free pages that later writes reuse; the file itself shrinks (incremental vacuum,
the file is created with auto_vacuum=INCREMENTAL) only when it is over the cap.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from infermesh.store.series_schema import RAW, floor_to, transaction
from infermesh.store.series_tiers import Marks, drop_before

log = logging.getLogger(__name__)

RAW_FLOOR_S = 3600
CAP_TARGET = 0.9
CHUNKS = 8  # a drop for the cap goes in steps of an eighth of what may go, checking the size
RAW_STEP_S = 1800  # and raw half an hour at most: a step holds the store's lock
VACUUM_PAGES = 4096  # pages handed back to the file system per step (16 MiB)

DROPPED = Counter(
    "infermesh_series_dropped_rows",
    "Series store rows deleted, by table and reason (retention, cap)",
    ("table", "reason"),
)
LATE = Counter(
    "infermesh_series_late_buckets",
    "Buckets posted after they were rolled up: applied to the tiers, or refused (raw copy gone)",
    ("outcome",),
)
SIZE = Gauge("infermesh_series_bytes", "Size of the series store's file (pages in use)")
KEPT_FROM = Gauge(
    "infermesh_series_kept_from_seconds",
    "Epoch second from which each table of the series store is complete",
    ("table",),
)


@dataclass(frozen=True)
class Drop:
    table: str
    before: int  # rows that started before this went
    rows: int
    reason: str


def prune(
    db: sqlite3.Connection, marks: Marks, now: float, retention_s: int, raw_retention_s: int
) -> list[Drop]:
    """Retention, one transaction; see the module docstring."""
    drops: list[Drop] = []
    horizon = now - retention_s
    first = marks.tiers[0]
    with transaction(db):
        # By bucket end: a bucket goes once all of it is past the retention.
        n = db.execute(
            f"DELETE FROM {RAW} WHERE start < ? AND start + width_s <= ?", (horizon, horizon)
        ).rowcount
        drops.append(Drop(RAW, int(horizon), n, "retention"))
        raw_cut = floor_to(now - min(raw_retention_s, retention_s), first.width_s)
        drops.append(_drop_raw(db, marks, min(raw_cut, marks.watermark[first.name]), "retention"))
        for i, tier in enumerate(marks.tiers):
            if i + 1 < len(marks.tiers):
                upper = marks.tiers[i + 1]
                keep = min(tier.keep_s or retention_s, retention_s)
                cut = min(floor_to(now - keep, upper.width_s), marks.watermark[upper.name])
            else:  # rows that end by the horizon; none beyond the rows there are
                cut = min(floor_to(horizon, tier.width_s), marks.watermark[tier.name])
            drops.append(_drop_tier(db, marks, tier.name, cut, "retention"))
        # Slices with no row left anywhere (an endpoint gone for the whole retention).
        tables = (RAW, *(t.name for t in marks.tiers))
        db.execute(
            "DELETE FROM slices WHERE "
            + " AND ".join(
                f"NOT EXISTS (SELECT 1 FROM {t} WHERE slice = slices.id)" for t in tables
            )
        )
    return [d for d in drops if d.rows]


def _drop_raw(db: sqlite3.Connection, marks: Marks, before: int, reason: str) -> Drop:
    if before <= marks.kept_from[RAW]:
        return Drop(RAW, before, 0, reason)
    n = db.execute(f"DELETE FROM {RAW} WHERE start < ?", (before,)).rowcount
    marks.set(db, RAW, kept_from=before)
    return Drop(RAW, before, n, reason)


def _drop_tier(db: sqlite3.Connection, marks: Marks, table: str, before: int, reason: str) -> Drop:
    if before <= marks.kept_from[table]:
        return Drop(table, before, 0, reason)
    n = drop_before(db, table, before)
    marks.set(db, table, kept_from=before)
    return Drop(table, before, n, reason)


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the pages in use (the file less its free pages)."""
    page = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page)


def file_bytes(db: sqlite3.Connection) -> int:
    page = db.execute("PRAGMA page_size").fetchone()[0]
    return int(db.execute("PRAGMA page_count").fetchone()[0] * page)


def enforce_cap(
    db: sqlite3.Connection, marks: Marks, now: float, max_bytes: int, lock: threading.Lock
) -> list[Drop]:
    """Drop data, in the order of the module docstring, until the pages in use are under 90 % of
    `max_bytes`; then shrink the file if it is over the cap. Step by step, each a transaction
    under `lock`, released between steps so that ingest goes on meanwhile."""
    drops: list[Drop] = []
    target = int(max_bytes * CAP_TARGET)
    tiers = marks.tiers
    first = tiers[0]
    with lock:
        over = used_bytes(db) > max_bytes
        # (table, alignment of its cut, no cut beyond), in the order of the module docstring.
        rolled = marks.watermark[first.name]
        raw_floor = floor_to(now - RAW_FLOOR_S, first.width_s)
        stages = [(RAW, first.width_s, min(raw_floor, rolled))]
        for lower, upper in itertools.pairwise(tiers):
            stages.append((lower.name, upper.width_s, marks.watermark[upper.name]))
        stages.append((RAW, first.width_s, rolled))
        stages.append((tiers[-1].name, tiers[-1].width_s, marks.watermark[tiers[-1].name]))
    if over:
        for table, align, limit in stages:
            drops += _shrink(db, marks, table, align, limit, target, lock)
            with lock:
                if used_bytes(db) <= target:
                    break
        else:
            log.warning(
                "series store %.0f MB stays over its cap of %.0f MB: the rest is not rolled up "
                "yet (raise --series-max-mb)",
                used_bytes(db) / 1e6,
                max_bytes / 1e6,
            )
    shrink = False
    while True:
        with lock:
            if file_bytes(db) <= max_bytes or not db.execute("PRAGMA freelist_count").fetchone()[0]:
                break
            shrink = True
            # executescript steps it to the end (execute() would free a single page).
            db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
    if drops or shrink:  # the pages they rewrote sit in the write-ahead log too: empty it
        with lock:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return drops


def _shrink(
    db: sqlite3.Connection,
    marks: Marks,
    table: str,
    align: int,
    limit: int,
    target: int,
    lock: threading.Lock,
) -> list[Drop]:
    """Drop `table`'s oldest rows, an eighth of what may go at a time (raw: at most half an
    hour), until under `target`."""
    drops: list[Drop] = []
    with lock:
        oldest = marks.kept_from[table]
        if table == RAW:
            first = db.execute(f"SELECT min(start) FROM {RAW}").fetchone()[0]
            oldest = max(oldest, first if first is not None else limit)
    step = max(align, floor_to((limit - oldest) / CHUNKS, align))
    if table == RAW:
        step = min(step, RAW_STEP_S)
    while oldest < limit:
        before = min(limit, floor_to(oldest, align) + step)
        with lock:
            if used_bytes(db) <= target:
                break
            with transaction(db):
                if table == RAW:
                    drop = _drop_raw(db, marks, before, "cap")
                else:
                    drop = _drop_tier(db, marks, table, before, "cap")
        if drop.rows:
            drops.append(drop)
        oldest = before
    if drops:
        log.warning(
            "series store over its size cap: dropped %d rows of %s, those older than %s",
            sum(d.rows for d in drops),
            table,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(oldest)),
        )
    return drops


def count(drops: list[Drop], marks: Marks, db: sqlite3.Connection) -> None:
    """Publish what a housekeeping pass did (metrics)."""
    for d in drops:
        DROPPED.labels(d.table, d.reason).inc(d.rows)
    SIZE.set(used_bytes(db))
    for name, kept in marks.kept_from.items():
        KEPT_FROM.labels(name).set(kept)
