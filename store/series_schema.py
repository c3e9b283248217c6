"""The series store's SQLite layout: tables, tiers, how a bucket becomes a row, and migration.

Every stored bucket is one row of the same value columns (`VALUES`): the counters, then the
latency histogram's counts and sum, then TTFT's. Histograms are columns, not JSON, so SQL sums
them (a rollup is one GROUP BY) and SQLite stores a count of 0 or 1 in no payload byte at all.

- `slices` names each (project, endpoint, revision, domain, tenant) once; rows carry its id.
- `sources` names each router (a bucket's `source`) once.
- `raw`: the routers' buckets as posted, one row per (start, slice, source); a re-post replaces
  its row. Time-first key: ingest appends, rollups and retention read and delete ranges.
- one table per rollup tier (`TIERS`): buckets of `width_s` merged across sources, one row per
  (slice, start), holding *cumulative* values: everything of the slice up to the end of the
  bucket. A window's total is then the difference of two rows, whatever its length.
- `tiers`: per tier its `watermark` (every bucket that starts before it is rolled into the tier;
  for `raw` unused) and `kept_from` (rows before it may be gone).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infermesh.sli import LATENCY_BUCKETS_MS, SeriesBucket

DIMENSIONS = ("endpoint", "revision", "domain", "tenant")
COUNTERS = (
    "requests",
    "errors",
    "rejected",
    "hedges",
    "hedge_wins",
    "prompt_tokens",
    "completion_tokens",
)
N_HIST = len(LATENCY_BUCKETS_MS) + 1  # the finite bounds, then +Inf
LATENCY_COLUMNS = (*(f"l{i}" for i in range(N_HIST)), "l_sum")
TTFT_COLUMNS = (*(f"t{i}" for i in range(N_HIST)), "t_sum")
VALUES = (*COUNTERS, *LATENCY_COLUMNS, *TTFT_COLUMNS)
# Positions in a value vector.
LATENCY = slice(len(COUNTERS), len(COUNTERS) + N_HIST)
LATENCY_SUM = len(COUNTERS) + N_HIST
TTFT = slice(LATENCY_SUM + 1, LATENCY_SUM + 1 + N_HIST)
TTFT_SUM = LATENCY_SUM + 1 + N_HIST
SUMS = (LATENCY_SUM, TTFT_SUM)

RAW = "raw"


@dataclass(frozen=True)
class Tier:
    """A rollup tier: buckets `width_s` wide, kept `keep_s` (the coarsest: the retention)."""

    name: str
    width_s: int
    keep_s: int


# 1-minute buckets answer the short windows (5m .. 2h) to the minute, 5-minute ones the day, hourly
# ones the SLO window. Each width divides the next, and each tier keeps what the next one has not
# rolled yet, whatever its `keep_s`.
DEFAULT_TIERS = (
    Tier("rollup_1m", 60, 3 * 3600),
    Tier("rollup_5m", 300, 86400 + 3600),
    Tier("rollup_1h", 3600, 0),  # 0: the store's retention
)


def _value_columns() -> str:
    sums = {"l_sum", "t_sum"}
    return ", ".join(f"{c} {'REAL' if c in sums else 'INTEGER'} NOT NULL" for c in VALUES)


def schema(tiers: Sequence[Tier]) -> str:
    ddl = f"""
    CREATE TABLE IF NOT EXISTS slices (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL, endpoint TEXT NOT NULL, revision TEXT NOT NULL,
        domain TEXT NOT NULL, tenant TEXT NOT NULL,
        UNIQUE (project, endpoint, revision, domain, tenant)
    );
    CREATE TABLE IF NOT EXISTS sources (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE IF NOT EXISTS tiers (
        name TEXT PRIMARY KEY, watermark INTEGER NOT NULL, kept_from INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {RAW} (
        start INTEGER NOT NULL, slice INTEGER NOT NULL, source INTEGER NOT NULL,
        width_s INTEGER NOT NULL, {_value_columns()},
        PRIMARY KEY (start, slice, source)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS {RAW}_by_slice ON {RAW} (slice, start);
    """
    for tier in tiers:
        ddl += f"""
        CREATE TABLE IF NOT EXISTS {tier.name} (
            slice INTEGER NOT NULL, start INTEGER NOT NULL, {_value_columns()},
            PRIMARY KEY (slice, start)
        ) WITHOUT ROWID;
        """
    return ddl


def bucket_values(b: SeriesBucket) -> list[Any]:
    """A bucket's value vector, in the order of VALUES."""
    return [
        *(getattr(b, c) for c in COUNTERS),
        *b.latency.counts,
        b.latency.sum_ms,
        *b.ttft.counts,
        b.ttft.sum_ms,
    ]


def connect(path: Path, tiers: Sequence[Tier]) -> sqlite3.Connection:
    """Open (creating it if need be) the store's file, migrated to this layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    fresh = not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
    if fresh:
        # Freed pages can then be handed back to the file system (`PRAGMA incremental_vacuum`)
        # without rewriting the file: what keeps it under the cap. Only settable before tables.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    # WAL with synchronous=NORMAL: a commit (one per router post) costs no fsync, and a crash
    # of the API can lose the last commits but never corrupt the file.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-32768")  # 32 MiB: the raw tier's recent pages stay hot
    db.execute("PRAGMA temp_store=MEMORY")
    db.executescript(schema(tiers))
    db.execute("CREATE TEMP TABLE IF NOT EXISTS probe (slice INTEGER NOT NULL, t INTEGER NOT NULL)")
    for name in (RAW, *(t.name for t in tiers)):
        db.execute("INSERT OR IGNORE INTO tiers VALUES (?, 0, 0)", (name,))
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'buckets'").fetchone():
        _migrate_v1(db)
    return db


def _migrate_v1(db: sqlite3.Connection) -> None:
    """The first layout (one `buckets` table, JSON histograms) into `raw`; the rollup takes the
    rows from there. One transaction, then VACUUM to turn incremental vacuum on."""
    with transaction(db):
        rows = db.execute(
            "SELECT project, start, endpoint, revision, domain, tenant, source, width_s, "
            f"{', '.join(COUNTERS)}, latency, ttft FROM buckets"
        ).fetchall()
        out = []
        for row in rows:
            slice_id = slice_id_of(db, tuple(row[0:1] + row[2:6]))
            source = source_id_of(db, row[6])
            latency, ttft = json.loads(row[-2]), json.loads(row[-1])
            values = [
                *row[8:-2],
                *latency["counts"],
                latency["sum_ms"],
                *ttft["counts"],
                ttft["sum_ms"],
            ]
            out.append((row[1], slice_id, source, row[7], *values))
        db.executemany(insert_raw_sql(), out)
        db.execute("DROP TABLE buckets")
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("VACUUM")


def insert_raw_sql() -> str:
    columns = ("start", "slice", "source", "width_s", *VALUES)
    return (
        f"INSERT OR REPLACE INTO {RAW} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )


def insert_tier_sql(table: str, *, replace: bool = False) -> str:
    columns = ("slice", "start", *VALUES)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def slice_id_of(db: sqlite3.Connection, key: tuple[str, ...]) -> int:
    """The id of (project, endpoint, revision, domain, tenant), created when new."""
    db.execute(
        "INSERT OR IGNORE INTO slices (project, endpoint, revision, domain, tenant) "
        "VALUES (?, ?, ?, ?, ?)",
        key,
    )
    row = db.execute(
        "SELECT id FROM slices WHERE project = ? AND endpoint = ? AND revision = ? "
        "AND domain = ? AND tenant = ?",
        key,
    ).fetchone()
    return int(row[0])


def source_id_of(db: sqlite3.Connection, name: str) -> int:
    db.execute("INSERT OR IGNORE INTO sources (name) VALUES (?)", (name,))
    return int(db.execute("SELECT id FROM sources WHERE name = ?", (name,)).fetchone()[0])


def floor_to(t: float, width: int) -> int:
    return int(t // width * width)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (the connection is in autocommit mode): all of it or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
