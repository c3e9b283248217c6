"""Rollup tiers of the series store: their marks, rollup steps, probes and range drops.

Rows of a tier are cumulative per slice (store/series_schema.py), so:

- The value of a tier at a boundary `t` for a slice, `T(t)`, is the last row that starts before
  `t` (a *probe*); zero when there is none. Everything of the slice in `[a, b)` is
  `T(b) - T(a)`, for any a <= b on the tier's boundaries.
- A rollup step appends rows after the tier's watermark and moves the watermark, in one
  transaction: it is idempotent (a step starts where the last committed one ended) and
  crash-safe (a step is all there or not at all).
- Dropping the old rows of a slice keeps its latest row before the cut (its *anchor*): the
  baseline the next rows were added to. Only a slice with nothing after the cut loses its
  anchor; its next row then starts from zero, as a slice seen for the first time.

Finality: a raw bucket is rolled up once it ended `settle_s` ago. The watermark of the first
tier is the boundary below which raw buckets are final: ingest refuses re-sends below it
(store/series.py), so no bucket counts twice and none changes after it was rolled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from infermesh.store.series_schema import (
    RAW,
    SUMS,
    VALUES,
    Tier,
    floor_to,
    insert_raw_sql,
    insert_tier_sql,
)

Matrix = npt.NDArray[np.float64]
N_VALUES = len(VALUES)
_SUMS = ", ".join(f"sum({c})" for c in VALUES)
_COLS = ", ".join(f"r.{c}" for c in VALUES)


@dataclass
class Marks:
    """Per table (`raw` and each tier): `watermark`, every bucket that starts before it is
    rolled into this tier (unused for raw), and `kept_from`, rows before it may be gone."""

    tiers: tuple[Tier, ...]
    watermark: dict[str, int] = field(default_factory=dict)
    kept_from: dict[str, int] = field(default_factory=dict)

    def load(self, db: sqlite3.Connection) -> None:
        for name, mark, kept in db.execute("SELECT name, watermark, kept_from FROM tiers"):
            self.watermark[name], self.kept_from[name] = mark, kept

    def set(
        self,
        db: sqlite3.Connection,
        name: str,
        *,
        watermark: int | None = None,
        kept_from: int | None = None,
    ) -> None:
        """Change a mark, in the caller's transaction (reload on rollback)."""
        if watermark is not None:
            self.watermark[name] = watermark
        if kept_from is not None:
            self.kept_from[name] = kept_from
        db.execute(
            "UPDATE tiers SET watermark = ?, kept_from = ? WHERE name = ?",
            (self.watermark[name], self.kept_from[name], name),
        )

    @property
    def final_before(self) -> int:
        """Raw buckets that start before this are rolled up: final, re-sends refused."""
        return self.watermark[self.tiers[0].name]


def probe(
    db: sqlite3.Connection, table: str, slices: Sequence[int], times: Sequence[int]
) -> Matrix:
    """T(t) for every slice and time: an array [len(times), len(slices), N_VALUES], zeros where
    a slice has no row before t. One query, whatever the number of probes."""
    out = np.zeros((len(times), len(slices), N_VALUES))
    if not slices or not times:
        return out
    n = len(slices)
    db.execute("DELETE FROM probe")
    db.executemany(
        "INSERT INTO probe (slice, t) VALUES (?, ?)", [(s, t) for t in times for s in slices]
    )
    # The rowid of a probe row is its position: time-major, then slice.
    rows = db.execute(
        f"SELECT p.rowid - 1, {_COLS} FROM probe p JOIN {table} r ON r.slice = p.slice AND "
        f"r.start = (SELECT max(g.start) FROM {table} g WHERE g.slice = p.slice AND g.start < p.t)"
    ).fetchall()
    db.execute("DELETE FROM probe")
    if rows:
        found = np.array(rows, dtype=np.float64)
        index = found[:, 0].astype(np.int64)
        out[index // n, index % n] = found[:, 1:]
    return out


def roll_raw(
    db: sqlite3.Connection, marks: Marks, now: float, settle_s: int, max_span_s: int
) -> tuple[int, bool]:
    """One step of raw -> first tier, over at most `max_span_s` of final buckets. Returns (rows
    written, caught up). Call inside a transaction."""
    tier = marks.tiers[0]
    width = tier.width_s
    mark = marks.watermark[tier.name]
    final = now - settle_s
    target = floor_to(final, width)
    if target <= mark:
        return 0, True
    first = db.execute(f"SELECT min(start) FROM {RAW} WHERE start >= ?", (mark,)).fetchone()[0]
    if first is None or first >= target:
        _advance(db, marks, tier.name, target)
        return 0, True
    lo = max(mark, floor_to(first, width))  # nothing to roll between the mark and `first`
    hi = min(target, lo + max_span_s)
    # A bucket wider than the rest may start in range and still be open: stop before it.
    still_open = db.execute(
        f"SELECT min(start) FROM {RAW} WHERE start >= ? AND start < ? AND start + width_s > ?",
        (lo, hi, final),
    ).fetchone()[0]
    if still_open is not None:
        hi = floor_to(still_open, width)
        if hi <= lo:
            _advance(db, marks, tier.name, lo)
            return 0, True
    # `+slice`: group from the time-ordered key (a range) rather than scan the slice index.
    sums = db.execute(
        f"SELECT slice, start / {width} * {width} AS b, {_SUMS} FROM {RAW} "
        "WHERE start >= ? AND start < ? GROUP BY +slice, b",
        (lo, hi),
    ).fetchall()
    written = _append(db, tier.name, sums, marks.watermark[tier.name])
    _advance(db, marks, tier.name, hi, first_data=lo)
    return written, hi >= target


def roll_tier(
    db: sqlite3.Connection, marks: Marks, upper: int, max_span_s: int
) -> tuple[int, bool]:
    """One step of tier `upper - 1` -> tier `upper` (indexes in `marks.tiers`), over at most
    `max_span_s`. Returns (rows written, caught up). Call inside a transaction."""
    lower, tier = marks.tiers[upper - 1], marks.tiers[upper]
    width = tier.width_s
    mark = marks.watermark[tier.name]
    target = floor_to(marks.watermark[lower.name], width)
    if target <= mark:
        return 0, True
    first = db.execute(
        f"SELECT min(r.start) FROM slices s JOIN {lower.name} r ON r.slice = s.id AND r.start >= ?",
        (mark,),
    ).fetchone()[0]
    if first is None or first >= target:
        _advance(db, marks, tier.name, target)
        return 0, True
    lo = max(mark, floor_to(first, width))
    hi = min(target, lo + max_span_s)
    # The last row of each slice in each bucket of the upper tier: the lower tier's value at
    # the bucket's end (SQLite returns the bare columns of the max() row).
    ends = db.execute(
        f"SELECT r.slice, r.start / {width} * {width} AS b, max(r.start), {_COLS} "
        f"FROM slices s JOIN {lower.name} r ON r.slice = s.id AND r.start >= ? AND r.start < ? "
        "GROUP BY r.slice, b",
        (lo, hi),
    ).fetchall()
    slices = sorted({row[0] for row in ends})
    before = probe(db, lower.name, slices, [lo])[0]
    base = {s: list(before[i]) for i, s in enumerate(slices)}
    deltas = []
    for row in sorted(ends, key=lambda r: (r[0], r[1])):
        slice_id, values = row[0], row[3:]
        prev = base[slice_id]
        deltas.append((slice_id, row[1], *(v - p for v, p in zip(values, prev, strict=True))))
        base[slice_id] = list(values)
    written = _append(db, tier.name, deltas, mark)
    _advance(db, marks, tier.name, hi, first_data=lo)
    return written, hi >= target


def _append(db: sqlite3.Connection, table: str, deltas: list[tuple], mark: int) -> int:
    """Add (slice, start, *delta) rows, in time order per slice, onto each slice's last row."""
    slices = sorted({d[0] for d in deltas})
    last = probe(db, table, slices, [mark])[0]
    running = {s: python_values(last[i]) for i, s in enumerate(slices)}
    rows = []
    for d in sorted(deltas, key=lambda d: (d[0], d[1])):
        cum = running[d[0]]
        for i, v in enumerate(d[2:]):
            cum[i] += v
        rows.append((d[0], d[1], *python_values(cum)))
    db.executemany(insert_tier_sql(table), rows)
    return len(rows)


def python_values(values: Sequence[float]) -> list[int | float]:
    """A value vector as SQLite should store it: counts as integers, the sums as floats."""
    return [float(v) if i in SUMS else int(v) for i, v in enumerate(values)]


def _advance(
    db: sqlite3.Connection, marks: Marks, name: str, watermark: int, first_data: int | None = None
) -> None:
    kept = marks.kept_from[name]
    if not kept:  # the tier's first rows: nothing before them was ever kept here
        kept = first_data if first_data is not None else watermark
    marks.set(db, name, watermark=watermark, kept_from=kept)


def drop_before(db: sqlite3.Connection, table: str, horizon: int) -> int:
    """Delete a tier's rows that start before `horizon`, but each slice's anchor (see the module
    docstring). Returns how many went. Call inside a transaction."""
    ids = [(sid, horizon) for (sid,) in db.execute("SELECT id FROM slices")]
    cursor = db.executemany(
        f"DELETE FROM {table} WHERE slice = ?1 AND start < ?2 AND ("
        f"start < (SELECT max(start) FROM {table} WHERE slice = ?1 AND start < ?2) "
        f"OR NOT EXISTS (SELECT 1 FROM {table} WHERE slice = ?1 AND start >= ?2))",
        ids,
    )
    return max(cursor.rowcount, 0)


def late_accepted(marks: Marks, start: int) -> bool:
    """Whether a raw bucket that starts below the first tier's watermark (already rolled up) can
    still be taken: its raw copy, if any, is still kept (so what it changes is known), and every
    tier that rolled its time still keeps it."""
    if start < marks.kept_from[RAW]:
        return False
    for tier in marks.tiers:
        b = floor_to(start, tier.width_s)
        if b < marks.watermark[tier.name] and b < marks.kept_from[tier.name]:
            return False
    return True


def apply_late(db: sqlite3.Connection, marks: Marks, rows: Sequence[Sequence[Any]]) -> None:
    """Store late raw rows (start, slice, source, width_s, *values) whose start `late_accepted`,
    and add what each changes (its values less its earlier copy's) to every tier that already
    rolled its time, rewriting the slice's later cumulative rows. Call inside a transaction."""
    rows = list({tuple(row[:3]): row for row in rows}.values())  # a repeat in a batch: the last
    deltas: dict[int, dict[int, list[float]]] = {}
    where = "start = ? AND slice = ? AND source = ?"
    for row in rows:
        old = db.execute(f"SELECT {', '.join(VALUES)} FROM {RAW} WHERE {where}", row[:3]).fetchone()
        by_start = deltas.setdefault(row[1], {})
        acc = by_start.setdefault(row[0], [0.0] * N_VALUES)
        for i, (new, was) in enumerate(zip(row[4:], old or [0] * N_VALUES, strict=True)):
            acc[i] += new - was
    db.executemany(insert_raw_sql(), rows)
    for tier in marks.tiers:
        mark = marks.watermark[tier.name]
        for slice_id, by_start in deltas.items():
            per_bucket: dict[int, list[float]] = {}
            for start, delta in by_start.items():
                b = floor_to(start, tier.width_s)
                if b < mark:  # else not rolled into this tier yet: it will be, from below
                    acc = per_bucket.setdefault(b, [0.0] * N_VALUES)
                    for i, d in enumerate(delta):
                        acc[i] += d
            if per_bucket:
                _add_to_tier(db, tier.name, slice_id, per_bucket)


def _add_to_tier(
    db: sqlite3.Connection, table: str, slice_id: int, deltas: dict[int, list[float]]
) -> None:
    """Add `deltas` (bucket start -> values) to a slice's cumulative rows: the bucket's own row
    (created when the slice had none there) and every later one."""
    first = min(deltas)
    rows = {
        row[0]: list(row[1:])
        for row in db.execute(
            f"SELECT start, {', '.join(VALUES)} FROM {table} WHERE slice = ? AND start >= ?",
            (slice_id, first),
        )
    }
    previous = list(probe(db, table, [slice_id], [first])[0, 0])  # the cum before `first`
    running = [0.0] * N_VALUES
    out = []
    for b in sorted(rows.keys() | deltas.keys()):
        for i, d in enumerate(deltas.get(b, ())):
            running[i] += d
        if b in rows:
            previous = rows[b]
        out.append(
            (slice_id, b, *python_values([p + r for p, r in zip(previous, running, strict=True)]))
        )
    db.executemany(insert_tier_sql(table, replace=True), out)
