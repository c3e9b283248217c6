"""The SLO benchmark's traffic and its fast path into the series store (bench/slo.py).

Workload: `slos` slices (project, endpoint, revision, domain): endpoints x 2 revisions (a stable
one and a canary taking 10 % of the traffic, or two at 50 %) x 2 domains (60/40); a tenth of the
slices serve two tenants. Endpoint rates are log-uniform between 0.02 and 20 requests/s; two
routers per domain share each slice's requests. Per slice: a base 5xx rate of 0.05-0.5 %, 0.2 %
429s, 3 % hedged; latency log-normal around a median of 80 ms-2 s (TTFT three buckets lower). A few
slices have an incident (5xx at 5-30 %) of 20-90 minutes within the last three days, so that
burn-rate alerts have something to find. Counts come from Poisson draws: the requests that land
in a histogram bucket are Poisson with the bucket's share of the rate (the splitting property),
so a bucket costs a handful of draws.

Fast path (`write`): instead of posting 30 days of 10 s buckets (259 million per slice and
router), it writes what the store holds after 30 days of ingest, rollup and retention: raw rows
for the last `raw_hours` exactly as `SeriesStore.ingest` writes them, and the rollup tiers as
the rollup computes them: the sums, over routers and time, of those raw buckets (for older time,
of buckets drawn straight at the tier's width), cumulative per slice. Then the store's own prune
cuts each tier to its retention. `check_fast_path` compares it, on a small span, with
ingest + rollup of the same buckets: the tables must be identical.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infermesh.sli import LATENCY_BUCKETS_MS, Histogram, SeriesBatch, SeriesBucket
from infermesh.store.series import SeriesStore
from infermesh.store.series_schema import (
    COUNTERS,
    N_HIST,
    RAW,
    VALUES,
    floor_to,
    insert_raw_sql,
    insert_tier_sql,
    slice_id_of,
    source_id_of,
    transaction,
)
from infermesh.store.series_tiers import Marks

Array = npt.NDArray[np.float64]
ROUTERS = 2  # per domain
TTFT_SHIFT = 3
RAW_WIDTH = 10
N = len(VALUES)
_REQ, _ERR, _REJ, _HEDGE, _WON, _PROMPT, _COMPL = range(len(COUNTERS))
_LAT = len(COUNTERS)
_LSUM = _LAT + N_HIST
_TTFT = _LSUM + 1
_TSUM = _TTFT + N_HIST
# Where a bucket's observations sit, for its sum: the middle of the bucket (+Inf: 45 s).
_MIDS = np.array(
    [(lo + hi) / 2 for lo, hi in zip((0, *LATENCY_BUCKETS_MS), LATENCY_BUCKETS_MS, strict=False)]
    + [45000.0]
)


@dataclass
class Workload:
    keys: list[tuple[str, str, str, str, str]]  # (project, endpoint, revision, domain, tenant)
    rate: Array  # requests/s per key
    p_err: Array
    lat: Array  # keys x N_HIST: share of successful requests per latency bucket
    median_ms: Array  # of the latency, per key
    incidents: list[tuple[int, float, float, float]]  # (slice key, start, end, 5xx share)

    @property
    def slos(self) -> list[tuple[str, str, str, str]]:
        return sorted({k[:4] for k in self.keys})


def _shares(median_ms: Array, sigma: float = 0.6) -> Array:
    """Log-normal shares per histogram bucket, rows per median; tiny shares dropped (fewer
    draws), the rest renormalised."""
    bounds = np.log(np.array(LATENCY_BUCKETS_MS))[None, :]
    z = (bounds - np.log(median_ms)[:, None]) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    cdf = np.concatenate([np.zeros((len(median_ms), 1)), cdf, np.ones((len(median_ms), 1))], 1)
    shares = np.diff(cdf, axis=1)
    shares[shares < 1e-3] = 0
    return shares / shares.sum(axis=1, keepdims=True)


def workload(slos: int, now: int, seed: int = 1) -> Workload:
    rng = np.random.default_rng(seed)
    keys, rate, p_err, medians = [], [], [], []
    for e in range(max(1, slos // 4)):
        endpoint_rate = math.exp(rng.uniform(math.log(0.02), math.log(20)))
        canary = 0.1 if rng.random() < 0.7 else 0.5
        median = math.exp(rng.uniform(math.log(80), math.log(2000)))
        for revision, r_share in (("stable", 1 - canary), ("canary", canary)):
            for domain, d_share in (("cloud-eu", 0.6), ("cloud-us", 0.4)):
                tenants = [("acme", 0.7), ("globex", 0.3)] if rng.random() < 0.1 else [("acme", 1)]
                base_err = rng.uniform(0.0005, 0.005)
                m = median * rng.uniform(0.8, 1.25)
                for tenant, t_share in tenants:
                    keys.append(("bench", f"ep{e:04d}", f"ep{e:04d}@{revision}", domain, tenant))
                    rate.append(endpoint_rate * r_share * d_share * t_share)
                    p_err.append(base_err)
                    medians.append(m)
    med = np.array(medians)
    incidents = []
    for key in rng.choice(len(keys), size=max(1, len(keys) // 30), replace=False):
        start = now - rng.uniform(0, 3 * 86400)
        incidents.append((int(key), start, start + rng.uniform(1200, 5400), rng.uniform(0.05, 0.3)))
    return Workload(keys, np.array(rate), np.array(p_err), _shares(med), med, incidents)


def draw(w: Workload, starts: npt.NDArray[np.int64], width: int, rng: np.random.Generator,
         routers: int = 1) -> Array:  # fmt: skip
    """Values (starts x routers x keys x VALUES) of buckets `width` s wide."""
    shape = (len(starts), routers, len(w.keys))
    mu = np.broadcast_to(w.rate * width / routers, shape)
    p_err = np.broadcast_to(w.p_err, shape).copy()
    for key, t0, t1, share in w.incidents:
        hit = (starts + width > t0) & (starts < t1)
        p_err[hit, :, key] = share
    out = np.zeros((*shape, N))
    out[..., _ERR] = rng.poisson(mu * p_err)
    out[..., _REJ] = rng.poisson(mu * 0.002)
    ok_mu = mu * (1 - p_err - 0.002)
    used = np.nonzero(w.lat.any(axis=0))[0]
    out[..., _LAT + used] = rng.poisson(ok_mu[..., None] * w.lat[:, used])
    # TTFT: each request's latency bucket, TTFT_SHIFT buckets lower (about a fifth).
    out[..., _TTFT] = out[..., _LAT : _LAT + TTFT_SHIFT + 1].sum(axis=-1)
    out[..., _TTFT + 1 : _TSUM - TTFT_SHIFT] = out[..., _LAT + TTFT_SHIFT + 1 : _LSUM]
    ok = out[..., _LAT : _LAT + N_HIST].sum(axis=-1)
    out[..., _REQ] = ok + out[..., _ERR] + out[..., _REJ]
    out[..., _HEDGE] = rng.binomial(out[..., _REQ].astype(np.int64), 0.03)
    out[..., _WON] = rng.binomial(out[..., _HEDGE].astype(np.int64), 0.4)
    out[..., _PROMPT] = out[..., _REQ] * 400
    out[..., _COMPL] = ok * 180
    out[..., _LSUM] = out[..., _LAT : _LAT + N_HIST] @ _MIDS
    out[..., _TSUM] = out[..., _TTFT : _TTFT + N_HIST] @ _MIDS
    return out


def raw_rows(values: Array, starts: npt.NDArray[np.int64], slice_ids: Array,
             source_ids: Array) -> list[list[int | float]]:  # fmt: skip
    """The rows ingest writes for these buckets: a router posts a bucket only when it served
    something in it. Row: start, slice, source, width_s, values."""
    t, r, k = np.nonzero(values[..., _REQ] > 0)
    table = np.empty((len(t), 4 + N))
    table[:, 0] = starts[t]
    table[:, 1] = slice_ids[k]
    table[:, 2] = source_ids[r, k]
    table[:, 3] = RAW_WIDTH
    table[:, 4:] = values[t, r, k]
    return _python_rows(table, (4 + _LSUM, 4 + _TSUM))


def _python_rows(table: Array, sums: tuple[int, int]) -> list[list[int | float]]:
    """Rows as ingest binds them: ints (small ones are shared objects: cheap to make) and
    floats for the two sum columns."""
    rows: list[list[int | float]] = table.astype(np.int64).tolist()
    i, j = sums
    for row, a, b in zip(rows, table[:, i].tolist(), table[:, j].tolist(), strict=True):
        row[i], row[j] = a, b
    return rows


def buckets_of(w: Workload, values: Array, starts: npt.NDArray[np.int64],
               router: int) -> list[SeriesBucket]:  # fmt: skip
    """The same buckets as router `router` would post them (for the fast path's check)."""
    out = []
    for ti, ki in zip(*np.nonzero(values[:, router, :, _REQ] > 0), strict=True):
        v = values[ti, router, ki]
        project, endpoint, revision, domain, tenant = w.keys[ki]
        out.append(
            SeriesBucket(
                start=int(starts[ti]),
                width_s=RAW_WIDTH,
                project=project,
                endpoint=endpoint,
                revision=revision,
                domain=domain,
                tenant=tenant,
                **{c: int(v[i]) for i, c in enumerate(COUNTERS)},
                latency=Histogram(counts=[int(x) for x in v[_LAT:_LSUM]], sum_ms=float(v[_LSUM])),
                ttft=Histogram(counts=[int(x) for x in v[_TTFT:_TSUM]], sum_ms=float(v[_TSUM])),
            )
        )
    return out


@dataclass
class Written:
    raw_rows: int
    tier_rows: dict[str, int]


def write(store: SeriesStore, w: Workload, days: float, raw_hours: float, now: int,
          seed: int = 2) -> Written:  # fmt: skip
    """Fill an empty, open store with `days` of traffic ending at `now` (see the module
    docstring); the store's prune then applies its retention."""
    rng = np.random.default_rng(seed)
    db = store.db
    tiers = store.tiers
    final = floor_to(now - store.settle_s, tiers[0].width_s)  # what rollup would have reached
    raw_from = floor_to(now - raw_hours * 3600, 3600)
    start = floor_to(now - days * 86400, 3600)
    # Per tier: the time written (from its keep and an hour back, to where rollup got), and
    # its buckets' sums there, dense (buckets x keys x VALUES).
    spans: list[tuple[int, int]] = []
    upper_mark = final
    for tier in tiers:
        lo = max(start, floor_to(now - (tier.keep_s or store.retention_s) - 3600, 3600))
        upper_mark = floor_to(upper_mark, tier.width_s)
        spans.append((lo, max(lo, upper_mark)))
    sums = [
        np.zeros(((m - lo) // t.width_s, len(w.keys), N))
        for t, (lo, m) in zip(tiers, spans, strict=True)
    ]
    with transaction(db):
        slice_ids = np.array([slice_id_of(db, k) for k in w.keys], dtype=np.float64)
        sources = np.array(
            [[source_id_of(db, f"router-{k[3]}-{r}") for k in w.keys] for r in range(ROUTERS)],
            dtype=np.float64,
        )
    # Older time, drawn at the finest width a tier keeps it in: coarsest first (oldest).
    edges = [min(lo, raw_from) for lo, _ in spans]
    for i in reversed(range(len(tiers))):
        lo, hi = (start if i == len(tiers) - 1 else edges[i]), (edges[i - 1] if i else raw_from)
        if lo < hi:
            width = tiers[i].width_s
            starts = np.arange(lo, hi, width)
            _add(tiers, spans, sums, draw(w, starts, width, rng)[:, 0], lo, width, first=i)
    # The raw span, an hour at a time: raw rows as ingest writes them, and into the tiers.
    raw_count = 0
    for hour in range(raw_from, now, 3600):
        starts = np.arange(hour, min(hour + 3600, now), RAW_WIDTH)
        values = draw(w, starts, RAW_WIDTH, rng, ROUTERS)
        with transaction(db):
            rows = raw_rows(values, starts, slice_ids, sources)
            db.executemany(insert_raw_sql(), rows)
        raw_count += len(rows)
        _add(tiers, spans, sums, values.sum(axis=1), hour, RAW_WIDTH, first=0)
    counts = {}
    with transaction(db):
        for tier, (lo, _), dense in zip(tiers, spans, sums, strict=True):
            counts[tier.name] = _write_tier(db, tier.name, lo, tier.width_s, dense, slice_ids)
        marks = Marks(store.tiers)
        marks.load(db)
        for tier, (lo, mark) in zip(tiers, spans, strict=True):
            marks.set(db, tier.name, watermark=mark, kept_from=lo)
        marks.set(db, RAW, kept_from=raw_from)
    store.close()
    store.open(now=now)  # reload the marks; the store's prune applies its retention
    return Written(raw_count, counts)


def _add(tiers, spans, sums, values: Array, first_start: int, width: int,
         first: int) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """Add contiguous buckets (`values`: buckets x keys x VALUES, the first starting at
    `first_start`, aligned) into tiers `first`.. : each tier's buckets are sums of them."""
    for tier, (lo, _), dense in list(zip(tiers, spans, sums, strict=True))[first:]:
        group = tier.width_s // width
        pad = (-len(values)) % group
        v = np.concatenate([values, np.zeros((pad, *values.shape[1:]))]) if pad else values
        summed = v.reshape(-1, group, *values.shape[1:]).sum(axis=1)
        j0 = (first_start - lo) // tier.width_s
        a, b = max(0, -j0), min(len(summed), len(dense) - j0)
        if a < b:
            dense[j0 + a : j0 + b] += summed[a:b]


def _write_tier(db: sqlite3.Connection, table: str, lo: int, width: int, dense: Array,
                slice_ids: Array) -> int:  # fmt: skip
    """Cumulative rows, where a bucket had requests, in key order (the table's own)."""
    busy = dense[..., _REQ] > 0
    np.cumsum(dense, axis=0, out=dense)
    k, t = np.nonzero(busy.T)
    for i in range(0, len(k), 200_000):
        kk, tt = k[i : i + 200_000], t[i : i + 200_000]
        rows = np.empty((len(kk), 2 + N))
        rows[:, 0] = slice_ids[kk]
        rows[:, 1] = lo + tt * width
        rows[:, 2:] = dense[tt, kk]
        db.executemany(insert_tier_sql(table), _python_rows(rows, (2 + _LSUM, 2 + _TSUM)))
    return len(k)


def check_fast_path(tmp: Path, now: int) -> None:
    """The fast path against ingest + rollup of the same buckets: identical tables."""
    w = workload(12, now, seed=9)
    fast = SeriesStore(tmp / "fast.sqlite")
    fast.open(now=now)
    write(fast, w, days=0.25, raw_hours=6, now=now, seed=5)
    slow = SeriesStore(tmp / "slow.sqlite")
    slow.open(now=now)
    rng = np.random.default_rng(5)
    start = floor_to(now - 0.25 * 86400, 3600)
    for hour in range(start, now, 3600):
        starts = np.arange(hour, min(hour + 3600, now), RAW_WIDTH)
        values = draw(w, starts, RAW_WIDTH, rng, ROUTERS)
        for r in range(ROUTERS):
            by_domain: dict[str, list[SeriesBucket]] = {}
            for b in buckets_of(w, values, starts, r):
                by_domain.setdefault(b.domain, []).append(b)
            for domain, batch in sorted(by_domain.items()):
                slow.ingest(SeriesBatch(source=f"router-{domain}-{r}", buckets=batch), now=now)
    slow.rollup(now=now)
    slow.prune(now=now)
    names = "s.project, s.endpoint, s.revision, s.domain, s.tenant"
    values = ", ".join(f"r.{c}" for c in VALUES)
    for table in (RAW, *(t.name for t in slow.tiers)):
        # Ids differ between the two files: compare by name. Tier rows are cumulative from each
        # slice's first row, which lies further back in the ingested store: compare increments.
        sql = (
            f"SELECT {names}, r.start, src.name, r.width_s, {values} FROM {RAW} r "
            "JOIN slices s ON s.id = r.slice JOIN sources src ON src.id = r.source"
            if table == RAW
            else f"SELECT {names}, r.start, {values} FROM {table} r JOIN slices s ON s.id = r.slice"
        )
        a, b = (sorted(store.db.execute(sql).fetchall()) for store in (fast, slow))
        if table != RAW:
            a, b = _increments(a), _increments(b)
        if not a or a != b:
            raise AssertionError(f"fast path differs from ingest + rollup in {table}")
    windows = [300, 3600, 6 * 3600]
    if fast.window_totals(windows, now=now) != slow.window_totals(windows, now=now):
        raise AssertionError("fast path and ingest + rollup give different window totals")
    fast.close()
    slow.close()


def _increments(rows: list[tuple]) -> list[tuple]:
    """(slice names, start, row - the slice's previous row) of all but each slice's first."""
    out = []
    for prev, row in itertools.pairwise(rows):
        if prev[:5] == row[:5]:
            out.append((*row[:6], *(x - y for x, y in zip(row[6:], prev[6:], strict=True))))
    return out


def chunks(items: list[SeriesBucket], size: int) -> Iterator[list[SeriesBucket]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
