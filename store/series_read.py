"""Reading the series store across its tiers: bucket rows for a time range, and window totals.

Each time range is read from the finest table that still holds it, so every bucket is counted
from exactly one table: raw rows from raw's `kept_from` on, each tier's rows from its own
`kept_from` up to where a finer table takes over. (Those boundaries are multiples of the next
tier's width, and raw rows below the first tier's watermark are final, so the tables agree.)
A downsampled bucket is one row that starts at its tier's boundary and spans its width.

`window_totals` answers the SLO evaluator: for every slice, the totals over each window ending
at `now`, from a handful of probes per slice (two per window at most) into the cumulative tiers
plus one sum over the raw buckets not rolled up yet (store/series_tiers.py).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from infermesh.sli import Histogram
from infermesh.store.series_schema import (
    COUNTERS,
    DIMENSIONS,
    LATENCY,
    LATENCY_SUM,
    RAW,
    TTFT,
    TTFT_SUM,
    VALUES,
)
from infermesh.store.series_tiers import N_VALUES, Marks, Matrix, probe

_SUMS = ", ".join(f"sum({c})" for c in VALUES)
_COLS = ", ".join(f"r.{c}" for c in VALUES)


class Bucket(NamedTuple):
    """One stored bucket: its slice (project, endpoint, revision, domain, tenant), its start
    and width, and its values (in the order of VALUES)."""

    slice: tuple[str, str, str, str, str]
    start: int
    width_s: int
    values: Sequence[float]


def slices(
    db: sqlite3.Connection, project: str | None, filters: Mapping[str, str]
) -> dict[int, Any]:
    """The slices (id -> (project, endpoint, revision, domain, tenant)) that match."""
    where, args = ["1"], []
    if project is not None:
        where.append("project = ?")
        args.append(project)
    for dim, value in filters.items():
        if dim not in DIMENSIONS:
            raise ValueError(f"unknown dimension {dim!r}")
        where.append(f"{dim} = ?")
        args.append(value)
    sql = (
        "SELECT id, project, endpoint, revision, domain, tenant FROM slices "
        f"WHERE {' AND '.join(where)}"
    )
    return {row[0]: tuple(row[1:]) for row in db.execute(sql, args)}


def buckets(
    db: sqlite3.Connection,
    marks: Marks,
    project: str,
    since: int,
    until: int,
    filters: Mapping[str, str],
    step_s: int | None = None,
) -> Iterator[Bucket]:
    """The buckets of one project with since <= start < until that match `filters`, merged
    across sources, each from the finest table that holds its time (see the module docstring).
    With `step_s`, summed per step instead (aligned to `since`; `start` is the step's): SQL does
    the sums, so a wide read stays cheap."""
    names = slices(db, project, filters)
    if not names:
        return
    step = step_s or 1
    id_list = ",".join(map(str, sorted(names)))
    upper = until
    raw_from = max(since, marks.kept_from[RAW])
    if raw_from < upper:
        rows = db.execute(
            f"SELECT slice, (start - ?) / ? AS p, max(width_s), {_SUMS} FROM {RAW} "
            f"WHERE start >= ? AND start < ? AND slice IN ({id_list}) GROUP BY slice, p",
            (since, step, raw_from, upper),
        )
        for row in rows:
            yield Bucket(names[row[0]], since + row[1] * step, row[2], row[3:])
    upper = min(upper, raw_from)
    for tier in marks.tiers:
        lower = max(since, marks.kept_from[tier.name])
        if lower >= upper:
            continue
        # The last cumulative row of each slice in each step, less the one before it.
        rows = db.execute(
            f"SELECT r.slice, (r.start - ?) / ? AS p, max(r.start), {_COLS} FROM {tier.name} r "
            f"WHERE r.slice IN ({id_list}) AND r.start >= ? AND r.start < ? "
            "GROUP BY r.slice, p ORDER BY r.slice, p",
            (since, step, lower, upper),
        ).fetchall()
        if rows:
            table = np.array(rows, dtype=np.float64)
            ids = table[:, 0].astype(np.int64)
            values = table[:, 3:]
            first = np.ones(len(ids), dtype=bool)
            first[1:] = ids[1:] != ids[:-1]
            previous = np.empty_like(values)
            previous[1:] = values[:-1]
            previous[first] = probe(db, tier.name, ids[first].tolist(), [lower])[0]
            deltas = (values - previous).tolist()
            for sid, p, delta in zip(ids.tolist(), table[:, 1].tolist(), deltas, strict=True):
                yield Bucket(names[sid], since + int(p) * step, tier.width_s, delta)
        upper = lower


class SliceKey(NamedTuple):
    """What an SLO looks at: one revision of an endpoint in one domain (tenants summed)."""

    project: str
    endpoint: str
    revision: str
    domain: str


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """A slice's totals over one window: the buckets that start in [`since`, `now`]. Counters
    (see infermesh/sli.py for what each counts) and the merged histograms, built on access."""

    since: int
    values: Sequence[float]  # in the order of VALUES

    @property
    def requests(self) -> int:
        return int(self.values[0])

    @property
    def errors(self) -> int:
        return int(self.values[1])

    @property
    def rejected(self) -> int:
        return int(self.values[2])

    @property
    def hedges(self) -> int:
        return int(self.values[3])

    @property
    def hedge_wins(self) -> int:
        return int(self.values[4])

    @property
    def prompt_tokens(self) -> int:
        return int(self.values[5])

    @property
    def completion_tokens(self) -> int:
        return int(self.values[6])

    @property
    def counters(self) -> dict[str, int]:
        return {c: int(v) for c, v in zip(COUNTERS, self.values, strict=False)}

    @property
    def latency(self) -> Histogram:
        return histogram(self.values, LATENCY, LATENCY_SUM)

    @property
    def ttft(self) -> Histogram:
        return histogram(self.values, TTFT, TTFT_SUM)


def histogram(values: Sequence[float], counts: slice, total: int) -> Histogram:
    """The histogram at `counts` and `total` (its sum) of a value vector, unvalidated."""
    return Histogram.model_construct(
        counts=[int(n) for n in values[counts]], sum_ms=max(float(values[total]), 0.0)
    )


@dataclass(frozen=True)
class _Plan:
    """How one window is read: from `tier` (an index in marks.tiers) from boundary `since`, or
    from raw alone (tier None) for a window within the buckets not rolled up yet."""

    seconds: int
    tier: int | None
    since: int


def _plan(window: int, now: float, marks: Marks) -> _Plan:
    start = now - window
    tiers = marks.tiers
    if start >= marks.final_before:
        return _Plan(window, None, math.floor(start) + 1)  # `now - w < start`, as raw buckets
    for i, tier in enumerate(tiers):
        # Past the watermark the tier has nothing yet: finer tiers bridge from there.
        boundary = min(_nearest(start, tier.width_s), marks.watermark[tier.name])
        if boundary >= marks.kept_from[tier.name] or i == len(tiers) - 1:
            # Clamped: before the coarsest tier's first row there is nothing left to count.
            return _Plan(window, i, max(boundary, marks.kept_from[tier.name]))
    raise AssertionError("unreachable")


def _nearest(t: float, width: int) -> int:
    return math.floor(t / width + 0.5) * width


def window_totals(
    db: sqlite3.Connection,
    marks: Marks,
    windows: Sequence[int],
    now: float,
    project: str | None,
    filters: Mapping[str, str],
) -> dict[SliceKey, dict[int, WindowTotals]]:
    """See SeriesStore.window_totals."""
    names = slices(db, project, filters)
    if not names or not windows:
        return {}
    ids = sorted(names)
    index = {sid: i for i, sid in enumerate(ids)}
    plans = [_plan(w, now, marks) for w in windows]
    head_from = marks.final_before
    head = _raw_sums(db, index, head_from, now)

    # Per tier, the boundaries to probe: its watermark (its latest rows), the next tier's
    # watermark where a coarser tier is read (the stretch this tier bridges), window starts.
    tiers = marks.tiers
    deepest = max((p.tier for p in plans if p.tier is not None), default=-1)
    probes: list[Matrix] = []
    at: list[dict[int, int]] = []
    for i in range(deepest + 1):
        times = {marks.watermark[tiers[i].name]}
        if i < deepest:
            times.add(marks.watermark[tiers[i + 1].name])
        times.update(p.since for p in plans if p.tier == i)
        ordered = sorted(times)
        probes.append(probe(db, tiers[i].name, ids, ordered))
        at.append({t: k for k, t in enumerate(ordered)})

    def value(i: int, t: int) -> Matrix:
        return probes[i][at[i][t]]

    bridges = [  # what tier i holds between the next tier's watermark and its own
        value(i, marks.watermark[tiers[i].name]) - value(i, marks.watermark[tiers[i + 1].name])
        for i in range(deepest)
    ]
    groups: dict[SliceKey, int] = {}
    group_of = np.array([groups.setdefault(SliceKey(*names[s][:4]), len(groups)) for s in ids])
    totals = np.zeros((len(plans), len(groups), N_VALUES))
    for k, plan in enumerate(plans):
        if plan.tier is None:
            per_slice = _raw_sums(db, index, plan.since, now)
        else:
            i = plan.tier
            per_slice = value(i, marks.watermark[tiers[i].name]) - value(i, plan.since) + head
            for bridge in bridges[:i]:
                per_slice = per_slice + bridge
        np.add.at(totals[k], group_of, per_slice)
    seen = np.abs(totals).sum(axis=(0, 2)) > 0
    out: dict[SliceKey, dict[int, WindowTotals]] = {}
    for key, g in groups.items():
        if seen[g]:
            out[key] = {
                plan.seconds: WindowTotals(plan.since, totals[k, g].tolist())
                for k, plan in enumerate(plans)
            }
    return out


def _raw_sums(db: sqlite3.Connection, index: dict[int, int], since: int, now: float) -> Matrix:
    """Raw buckets with since <= start <= now summed per slice (rows in `index` order)."""
    out = np.zeros((len(index), N_VALUES))
    rows = db.execute(
        f"SELECT slice, {_SUMS} FROM {RAW} WHERE start >= ? AND start <= ? GROUP BY +slice",
        (since, math.floor(now)),
    ).fetchall()
    for row in rows:
        i = index.get(row[0])
        if i is not None:
            out[i] = row[1:]
    return out
