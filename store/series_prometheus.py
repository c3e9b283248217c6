"""`window_totals` from a Prometheus server that scrapes the routers (`--prometheus-url`).

The same answer as `SeriesStore.window_totals`, for an evaluator that reads an existing
Prometheus instead of the series store: per window, three instant queries at `now` on the
routers' own metrics (router/signals.py), each summed by (endpoint, revision, domain):

- `increase(infermesh_inference_requests_total[w])` by `code`: requests (all codes), errors
  (5xx), rejected (429);
- `increase(infermesh_inference_request_latency_seconds_bucket[w])` and
  `increase(infermesh_inference_ttft_seconds_bucket[w])` by `le`: the histograms.

What differs from the series store, because of what the routers export:
- There is no project label: the adapter serves the one project it is configured with.
- The routers' Prometheus buckets (seconds) are not all of LATENCY_BUCKETS_MS: a bound missing
  there (75 ms, 150 ms) takes the count of the next lower bound, so good events under it are
  rounded down, never overstated. Beyond 30 s, everything is +Inf.
- Their latency histogram observes every request, failed ones too; hedges, tokens and the
  histograms' sums are not exported per revision and domain: they read as 0.
- `increase()` extrapolates to the window's edges: counts are rounded to whole requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import httpx

from infermesh.sli import LATENCY_BUCKETS_MS
from infermesh.store.series_read import SliceKey, WindowTotals
from infermesh.store.series_schema import LATENCY, TTFT, VALUES

REQUESTS = "infermesh_inference_requests_total"
LATENCY_BUCKET = "infermesh_inference_request_latency_seconds_bucket"
TTFT_BUCKET = "infermesh_inference_ttft_seconds_bucket"
BY = ("endpoint", "revision", "domain")


class PrometheusError(RuntimeError):
    """Prometheus could not answer (unreachable, or an error status)."""


class PrometheusSeries:
    """Reads window totals from Prometheus's HTTP API (`/api/v1/query`). Blocks."""

    def __init__(
        self,
        url: str,
        *,
        project: str = "default",
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.project = project
        self._client = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._client.close()

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
        """See SeriesStore.window_totals; the windows end at `now` exactly."""
        if project is not None and project != self.project:
            return {}
        labels = {"endpoint": endpoint, "revision": revision, "domain": domain, "tenant": tenant}
        selector = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if v is not None)
        out: dict[SliceKey, dict[int, WindowTotals]] = {}
        for w in windows:
            values: dict[tuple[str, ...], list[float]] = {}
            by = ", ".join(BY)
            requests = self._query(
                f"sum by ({by}, code) (increase({REQUESTS}{{{selector}}}[{w}s]))", now
            )
            for metric, value in requests:
                v = values.setdefault(_key(metric), [0.0] * len(VALUES))
                code = metric.get("code", "")
                v[0] += value
                v[1] += value if code.startswith("5") else 0.0
                v[2] += value if code == "429" else 0.0
            for name, part in ((LATENCY_BUCKET, LATENCY), (TTFT_BUCKET, TTFT)):
                result = self._query(
                    f"sum by ({by}, le) (increase({name}{{{selector}}}[{w}s]))", now
                )
                cumulative: dict[tuple[str, ...], dict[float, float]] = {}
                for metric, value in result:
                    le = float(metric.get("le", "+Inf"))  # "+Inf" parses as inf
                    cumulative.setdefault(_key(metric), {})[le * 1000.0] = value
                for key, by_le in cumulative.items():
                    v = values.setdefault(key, [0.0] * len(VALUES))
                    v[part] = _our_buckets(by_le)
            for key, v in values.items():
                counted = [float(round(x)) for x in v]
                if any(counted):
                    slice_key = SliceKey(self.project, *key)
                    out.setdefault(slice_key, {})[w] = WindowTotals(math.ceil(now - w), counted)
        for by_window in out.values():  # a slice without traffic in a window: zeros there
            for w in windows:
                by_window.setdefault(w, WindowTotals(math.ceil(now - w), [0.0] * len(VALUES)))
        return out

    def _query(self, promql: str, now: float) -> list[tuple[dict[str, str], float]]:
        try:
            r = self._client.get("/api/v1/query", params={"query": promql, "time": f"{now:.3f}"})
            body: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self._client.base_url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus at {self._client.base_url} refused {promql!r}: "
                f"{body.get('errorType', r.status_code)}: {body.get('error', r.text[:200])}"
            )
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(f"expected a vector for {promql!r}, got {data.get('resultType')}")
        out = []
        for sample in data.get("result") or []:
            value = float(sample["value"][1])
            if math.isfinite(value):
                out.append((sample.get("metric") or {}, value))
        return out


def _key(metric: dict[str, str]) -> tuple[str, ...]:
    return tuple(metric.get(d, "") for d in BY)


def _our_buckets(cumulative_by_le_ms: dict[float, float]) -> list[float]:
    """Counts per LATENCY_BUCKETS_MS bucket (then +Inf) from Prometheus's cumulative ones: each
    bound takes the count of the highest Prometheus bound at or below it (see the module
    docstring)."""
    bounds = sorted(cumulative_by_le_ms)
    total = cumulative_by_le_ms.get(math.inf, max(cumulative_by_le_ms.values(), default=0.0))

    def at(limit: float) -> float:
        below = [b for b in bounds if b <= limit and math.isfinite(b)]
        return cumulative_by_le_ms[below[-1]] if below else 0.0

    cumulative = [at(b) for b in LATENCY_BUCKETS_MS] + [total]
    return [max(c - p, 0.0) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
