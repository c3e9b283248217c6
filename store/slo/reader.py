"""Counts per window and per slice of traffic, from the series store.

One read per project and pass: `SeriesStore.window_totals` sums every slice (endpoint,
revision, domain; tenants and routers summed) over every window at once, from the store's
cumulative rollup tiers (store/series.py). SLOs, and later canary analysis, add up the slices
they look at (`select`). Window edges are the store's: exact, `now - w < start <= now`, while a
window lies within the buckets not rolled up yet; else rounded to the nearest boundary of the
finest tier that holds it (a minute up to 3 hours back, 5 minutes up to a day, an hour beyond).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from infermesh.store.series_read import SliceKey as StoreSliceKey
from infermesh.store.series_read import WindowTotals
from infermesh.store.slo.burn import SliSpec, WindowBurn
from infermesh.store.slo.counts import Counts, good_total
from infermesh.store.slo.windows import Windows


class WindowSource(Protocol):
    """Where window totals come from: the series store (`SeriesStore`), or an existing
    Prometheus (`PrometheusSeries`, `--prometheus-url`)."""

    def window_totals(
        self,
        windows: Sequence[int],
        *,
        now: float,
        project: str | None = None,
        endpoint: str | None = None,
    ) -> dict[StoreSliceKey, dict[int, WindowTotals]]: ...


SliceKey = tuple[str, str, str]  # (endpoint, revision, domain)
WindowCounts = dict[SliceKey, dict[str, Counts]]  # slice -> window name -> counts


def counts_of(totals: WindowTotals) -> Counts:
    """The store's totals of a slice over a window (or of one bucket) as `Counts`."""
    return Counts.of(
        requests=totals.requests,
        errors=totals.errors,
        rejected=totals.rejected,
        latency=totals.latency,
        ttft=totals.ttft,
    )


def read_window_counts(
    series: WindowSource,
    project: str,
    now: float,
    windows: Windows,
    endpoint: str | None = None,
) -> WindowCounts:
    """Counts of each slice of a project (of one endpoint, when given) over each window ending
    at `now`. Blocks: call from a worker thread."""
    name_of = {seconds: name for name, seconds in windows}
    totals = series.window_totals(list(name_of), now=now, project=project, endpoint=endpoint)
    return {
        (key[1], key[2], key[3]): {name_of[w]: counts_of(t) for w, t in by_window.items()}
        for key, by_window in totals.items()
    }


def select(
    counts: WindowCounts,
    endpoint: str,
    *,
    domain: str | None = None,
    revision: str | None = None,
) -> dict[str, Counts]:
    """An endpoint's counts per window, summed over its slices (only one domain's, or one
    revision's, when given)."""
    out: dict[str, Counts] = {}
    for (ep, rev, dom), by_window in counts.items():
        if ep != endpoint or (domain is not None and dom != domain):
            continue
        if revision is not None and rev != revision:
            continue
        for window, c in by_window.items():
            have = out.get(window)
            out[window] = c if have is None else have + c
    return out


def timeline(
    buckets: Iterable[tuple[int, Counts]], since: int, until: int, step_s: int, spec: SliSpec
) -> list[dict[str, Any]]:
    """Good and valid events, ratio and burn rate per step (aligned to `since`) of the buckets
    (start, counts) of an SLO's slice; only steps with data are listed. A downsampled bucket
    counts in the step that holds its start."""
    steps: dict[int, Counts] = {}
    for start, counts in buckets:
        t = since + (start - since) // step_s * step_s
        have = steps.get(t)
        steps[t] = counts if have is None else have + counts
    points = []
    for t in sorted(steps):
        if not since <= t < until:
            continue
        good, total = good_total(steps[t], spec.sli, spec.threshold_ms, spec.rate_limited_is_bad)
        row = WindowBurn("", step_s, good, total, spec.budget).to_json()
        points.append({"t": t, **{k: row[k] for k in ("good", "total", "ratio", "burn")}})
    return points


def read_timeline(
    series: WindowSource,
    project: str,
    filters: dict[str, str],
    since: int,
    until: int,
    step_s: int,
    spec: SliSpec,
) -> list[dict[str, Any]]:
    """`timeline` of the buckets of one project matching `filters` (endpoint, domain). Blocks:
    call from a worker thread.

    The store sums the buckets per step in SQL (`step_s`, aligned to `since` as `timeline`
    aligns them), so a 30-day window is a few hundred rows per slice instead of every bucket
    turned into `Counts` here: the same points, about 4x faster."""
    buckets = series.buckets(project, since, until, filters, step_s)
    return timeline(
        ((b.start, counts_of(WindowTotals(b.start, b.values))) for b in buckets),
        since,
        until,
        step_s,
        spec,
    )
