"""Runtime adapters: scrape a vLLM, SGLang or TGI server's `/metrics` and `/v1/models`.

`parse_metrics(kind, text)` turns one Prometheus page into a `RuntimeSample` (pure), reading
only the sample lines the kind's names need. A `RuntimeScraper` scrapes on demand over its own
keep-alive connection (`RuntimeHttp`), skips parsing a page identical to the last one, and keeps
a short, thinned history of samples, from which it derives what one page cannot say: token
rates, TTFT/ITL medians over the last seconds, and the error ratio over the last minute. A
runtime whose scrapes keep failing is unhealthy.

Error ratio: 5xx answers over all answers on the inference routes, from the
`http_requests_total{handler,status}` counter vLLM and SGLang export (prometheus-fastapi-
instrumentator); TGI's own `tgi_request_success`/`tgi_request_failure` counters otherwise.

The runtime simulator also exports its GPU (`infermesh_sim_gpu_*{gpu_uuid}`, faults included);
those become `GpuReading`s for the simulated GPU source to report as is.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from infermesh.agent.report import GpuReading, RuntimeKind, RuntimeReading
from infermesh.agent.runtime_http import RuntimeHttp, RuntimeHttpError

log = logging.getLogger(__name__)

T = TypeVar("T")

SIM_GPU = "infermesh_sim_gpu_"
HTTP_REQUESTS = "http_requests"
_MIB = 1024 * 1024
# Routes that are not inference: their answers say nothing about the runtime's error ratio.
_NON_INFERENCE = ("/metrics", "/health", "/ping", "/version", "/v1/models", "/info")


@dataclass(frozen=True, slots=True)
class Names:
    """The metric names one runtime kind uses (sample names; counters without `_total`)."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache: tuple[str, ...] = ()  # first found wins: the legacy name comes last
    prompt_tokens: tuple[str, ...] = ()
    generation_tokens: tuple[str, ...] = ()
    ttft: tuple[str, ...] = ()  # histograms, in seconds
    itl: tuple[str, ...] = ()
    ok_requests: tuple[str, ...] = ()  # the runtime's own counters, when it has them
    failed_requests: tuple[str, ...] = ()

    def prefixes(self) -> tuple[str, ...]:
        """What the lines worth reading start with (a counter's `_total` and a histogram's
        `_bucket` lines start with its name)."""
        groups = (
            self.running,
            self.waiting,
            self.kv_cache,
            self.prompt_tokens,
            self.generation_tokens,
            self.ttft,
            self.itl,
            self.ok_requests,
            self.failed_requests,
        )
        return (*(name for group in groups for name in group), HTTP_REQUESTS, SIM_GPU)


NAMES: dict[RuntimeKind, Names] = {
    "vllm": Names(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prompt_tokens=("vllm:prompt_tokens",),
        generation_tokens=("vllm:generation_tokens",),
        ttft=("vllm:time_to_first_token_seconds",),
        itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    ),
    # SGLang names are `sglang:` (current) or `sglang_` (older); parse_metrics maps the latter.
    "sglang": Names(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_cache=("sglang:token_usage",),
        prompt_tokens=("sglang:prompt_tokens",),
        generation_tokens=("sglang:generation_tokens",),
        ttft=("sglang:time_to_first_token_seconds",),
        itl=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    ),
    # TGI keeps token counts in histograms (their _sum is the running total) and has no KV
    # gauge or TTFT histogram.
    "tgi": Names(
        running=("tgi_batch_current_size",),
        waiting=("tgi_queue_size",),
        prompt_tokens=("tgi_request_input_length_sum",),
        generation_tokens=("tgi_request_generated_tokens_sum",),
        itl=("tgi_request_mean_time_per_token_duration",),
        ok_requests=("tgi_request_success",),
        failed_requests=("tgi_request_failure",),
    ),
}


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound (the last bound is +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def minus(self, older: Histogram) -> Histogram | None:
        """Observations since `older`; None when the buckets differ or the counts went back."""
        if older.bounds != self.bounds:
            return None
        counts = tuple(a - b for a, b in zip(self.counts, older.counts, strict=True))
        return None if any(c < 0 for c in counts) else Histogram(self.bounds, counts)

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket; None without
        observations; the highest finite bound when the quantile falls in +Inf."""
        if not self.counts or self.counts[-1] <= 0:
            return None
        rank = q * self.counts[-1]
        lower, below = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if bound == float("inf"):
                    return lower
                if count == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return lower


@dataclass(frozen=True, slots=True)
class RuntimeSample:
    """One `/metrics` page, reduced to what the agent uses. Sums over label sets (several
    models or finish reasons); None where the runtime does not export the metric."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    prompt_tokens: float | None = None  # counters: totals since the runtime started
    generation_tokens: float | None = None
    ttft: Histogram | None = None
    itl: Histogram | None = None
    ok_requests: float | None = None
    failed_requests: float | None = None
    gpus: tuple[GpuReading, ...] = ()  # the runtime simulator's own GPUs, faults included


# One sample line of the text format: name, optional {labels}, value (a timestamp may follow).
# Greedy `.*`: the labels end at the line's last `}`, since quoted label values may hold one.
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
# A bucket's bound, without parsing every label: `le="` cannot start inside a quoted value,
# where a quote is always escaped.
_LE = re.compile(r'(?:^|,)\s*le\s*=\s*"([^"]*)"')
_ESCAPED = re.compile(r"\\(.)")  # in label values: \\, \" and \n

# name -> its lines' (label text, value), in page order
Samples = dict[str, list[tuple[str, float]]]
_PREFIXES = {kind: names.prefixes() for kind, names in NAMES.items()}
_PREFIXES["sglang"] += tuple(f"sglang_{p[7:]}" for p in _PREFIXES["sglang"] if p[:7] == "sglang:")


def _samples(kind: RuntimeKind, text: str) -> Samples:
    """The sample lines of the names `kind` reads; the rest of the page is skipped unparsed.
    prometheus_client's parser took ~880 µs for a vLLM page, of which we read a third: with
    thousands of runtimes, parsing was the agent's main cost. A line that does not parse is
    skipped, as is every comment: samples are read by name, so TYPE lines are not needed."""
    prefixes = _PREFIXES[kind]
    out: Samples = {}
    for line in text.splitlines():
        if not line.startswith(prefixes) or (match := _SAMPLE.match(line)) is None:
            continue
        name, labels, value = match.groups()
        if name.startswith("sglang_"):  # older SGLang: `sglang_num_running_reqs`
            name = f"sglang:{name[7:]}"
        try:
            out.setdefault(name, []).append((labels or "", float(value)))
        except ValueError:
            continue
    return out


def _labels(text: str) -> dict[str, str]:
    return {name: _ESCAPED.sub(_unescape, value) for name, value in _LABEL.findall(text)}


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]


def _first(samples: Samples, names: Iterable[str]) -> list[tuple[str, float]] | None:
    """The samples of the first name present; counters are found with or without `_total`."""
    for name in names:
        for candidate in (name, f"{name}_total"):
            if candidate in samples:
                return samples[candidate]
    return None


def _sum(samples: Samples, names: Iterable[str]) -> float | None:
    found = _first(samples, names)
    return None if found is None else sum(value for _, value in found)


def _histogram(samples: Samples, names: Iterable[str]) -> Histogram | None:
    for name in names:
        buckets: dict[float, float] = {}
        for labels, value in samples.get(f"{name}_bucket", ()):
            if (le := _LE.search(labels)) is not None:
                bound = float(le[1])
                buckets[bound] = buckets.get(bound, 0.0) + value  # summed over models
        if buckets:
            bounds = tuple(sorted(buckets))
            return Histogram(bounds, tuple(buckets[b] for b in bounds))
    return None


def _sim_gpus(samples: Samples) -> tuple[GpuReading, ...]:
    """The GPUs the runtime simulator exports (`infermesh_sim_gpu_*{gpu_uuid}`), in the order
    they appear; nothing for a real runtime."""
    fields: dict[str, dict[str, float]] = {}
    names: dict[str, str] = {}
    throttles: dict[str, list[str]] = {}
    for name, found in samples.items():
        if not name.startswith(SIM_GPU) or name.endswith("_created"):
            continue
        what = name.removeprefix(SIM_GPU).removesuffix("_total")
        for text, value in found:
            labels = _labels(text)
            gpu = labels.get("gpu_uuid", "")
            values = fields.setdefault(gpu, {})
            if what == "info":
                names[gpu] = labels.get("name", "")
            elif what == "throttle_active":
                if value > 0:  # hw_thermal_slowdown -> HwThermalSlowdown, as NVML names it
                    reason = "".join(w.capitalize() for w in labels.get("reason", "").split("_"))
                    throttles.setdefault(gpu, []).append(reason)
            else:
                values[what] = value
    return tuple(
        GpuReading(
            index=i,
            uuid=gpu,
            name=names.get(gpu, ""),
            utilPct=v.get("utilization_percent", 0.0),
            memUsedMiB=int(v.get("memory_used_bytes", 0) // _MIB),
            memTotalMiB=int(v.get("memory_total_bytes", 0) // _MIB),
            tempC=v.get("temperature_celsius", 0.0),
            powerW=v.get("power_watts", 0.0),
            powerLimitW=v.get("power_limit_watts", 0.0),
            eccVolatileSbe=int(v.get("ecc_volatile_sbe", 0)),
            eccVolatileDbe=int(v.get("ecc_volatile_dbe", 0)),
            throttleReasons=throttles.get(gpu, []),
        )
        for i, (gpu, v) in enumerate(fields.items())
    )


def _http_requests(samples: Samples) -> tuple[float, float] | None:
    """(ok, failed) answers on the inference routes; 4xx are the client's errors, not the
    runtime's, so they count as neither."""
    found = _first(samples, (HTTP_REQUESTS,))
    if found is None:
        return None
    ok = failed = 0.0
    for text, value in found:
        labels = _labels(text)
        if labels.get("handler", "") in _NON_INFERENCE:
            continue
        status = labels.get("status", "")
        if status.startswith("5"):
            failed += value
        elif status[:1] in ("2", "3"):
            ok += value
    return ok, failed


def parse_metrics(kind: RuntimeKind, text: str) -> RuntimeSample:
    """One Prometheus text page of a `kind` runtime as a `RuntimeSample`."""
    names = NAMES[kind]
    samples = _samples(kind, text)
    http = _http_requests(samples)
    ok, failed = http if http is not None else (None, None)
    return RuntimeSample(
        running=int(_sum(samples, names.running) or 0),
        waiting=int(_sum(samples, names.waiting) or 0),
        kv_cache_usage=_mean(_first(samples, names.kv_cache)),
        prompt_tokens=_sum(samples, names.prompt_tokens),
        generation_tokens=_sum(samples, names.generation_tokens),
        ttft=_histogram(samples, names.ttft),
        itl=_histogram(samples, names.itl),
        ok_requests=ok if http is not None else _sum(samples, names.ok_requests),
        failed_requests=failed if http is not None else _sum(samples, names.failed_requests),
        gpus=_sim_gpus(samples),
    )


def _mean(samples: list[tuple[str, float]] | None) -> float | None:
    """A usage ratio over several label sets (models) is their mean, not their sum."""
    if not samples:
        return None
    return sum(value for _, value in samples) / len(samples)


# History -----------------------------------------------------------------------------------


class _History(Generic[T]):
    """Samples over the last `span` seconds, thinned to one per `spacing` seconds (the newest is
    always kept), plus one at or before the window's start so deltas cover the whole span."""

    def __init__(self, span: float, spacing: float) -> None:
        self.span, self.spacing = span, spacing
        self._items: deque[tuple[float, T]] = deque()

    def add(self, t: float, item: T) -> None:
        items = self._items
        if len(items) >= 2 and t - items[-2][0] < self.spacing:
            items[-1] = (t, item)
        else:
            items.append((t, item))
        while len(items) > 2 and items[1][0] <= t - self.span:
            items.popleft()

    def oldest(self) -> tuple[float, T] | None:
        """The sample a delta to the newest should start from (None with fewer than two)."""
        return self._items[0] if len(self._items) >= 2 else None

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True, slots=True)
class _Recent:
    prompt: float | None
    generation: float | None
    ttft: Histogram | None
    itl: Histogram | None


@dataclass(frozen=True, slots=True)
class _Answers:
    ok: float | None
    failed: float | None


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """What the agent learns from one scrape: the report's reading, plus what its rules use."""

    reading: RuntimeReading
    sample: RuntimeSample | None  # None when the scrape failed
    requests_last_minute: float = 0.0  # answers behind `errorRatio`


def _rate(new: float | None, old: float | None, dt: float) -> float | None:
    if new is None or old is None or dt <= 0:
        return None
    return round((new - old) / dt, 2)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _went_back(pairs: Iterable[tuple[float | None, float | None]]) -> bool:
    return any(new is not None and old is not None and new < old for new, old in pairs)


class RuntimeScraper:
    """Scrapes one runtime, on a keep-alive connection of its own. Token rates and latency
    medians are over the last `rate_window` seconds, the error ratio over the last
    `error_window`; the runtime is unhealthy after `unhealthy_after` failed scrapes in a row
    (and until its first good one). Its models are asked every `models_every` seconds, and at
    once when it comes back from a failure or restarted (its counters began again)."""

    def __init__(
        self,
        kind: RuntimeKind,
        url: str,
        *,
        timeout: float = 2.0,
        unhealthy_after: int = 2,
        models_every: float = 30.0,
        rate_window: float = 10.0,
        error_window: float = 60.0,
    ) -> None:
        self.kind, self.url = kind, url.rstrip("/")
        self._http = RuntimeHttp(self.url, timeout=timeout)
        self._unhealthy_after = unhealthy_after
        self._models_every = models_every
        self._failures = 0
        self._ever_ok = False
        self._models: list[str] = []
        self._models_at: float | None = None
        self._page: tuple[int, RuntimeSample] | None = None  # the last page's hash, parsed
        self._recent: _History[_Recent] = _History(rate_window, rate_window / 5)
        self._minute: _History[_Answers] = _History(error_window, error_window / 12)
        self.last_error = ""
        self.scrapes = 0
        self.scrape_failures = 0

    async def scrape(self, now: float) -> RuntimeState:
        """Scrape once; `now` is monotonic seconds."""
        self.scrapes += 1
        last = self._page[1] if self._page is not None else None
        try:
            sample = await self._metrics()
            restarted = last is not None and _went_back(
                [
                    (sample.prompt_tokens, last.prompt_tokens),
                    (sample.generation_tokens, last.generation_tokens),
                    (sample.ok_requests, last.ok_requests),
                    (sample.failed_requests, last.failed_requests),
                ]
            )
            if restarted or self._models_at is None or now - self._models_at >= self._models_every:
                self._models = await self._fetch_models()
                self._models_at = now
        except (OSError, RuntimeHttpError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._failed(exc)
        if restarted:  # its counters began again: deltas across the restart mean nothing
            self._recent.clear()
            self._minute.clear()
        self._failures, self._ever_ok, self.last_error = 0, True, ""
        return self._derive(now, sample)

    def close(self) -> None:
        self._http.close()

    async def _get(self, path: str) -> bytes:
        status, body = await self._http.get(path)
        if not 200 <= status < 300:
            raise RuntimeHttpError(f"{path}: HTTP {status}")
        return body

    async def _metrics(self) -> RuntimeSample:
        """The page, parsed unless it is byte for byte the last one (an idle runtime's is):
        then comparing its hash is all the work."""
        body = await self._get("/metrics")
        digest = hash(body)  # the process' siphash: 64 bits, a few µs for a 15 KB page
        if self._page is None or self._page[0] != digest:
            self._page = (digest, parse_metrics(self.kind, body.decode("utf-8", "replace")))
        return self._page[1]

    async def _fetch_models(self) -> list[str]:
        status, body = await self._http.get("/v1/models")
        if status == 404 and self.kind == "tgi":  # older TGI: only /info
            return [str(json.loads(await self._get("/info"))["model_id"])]
        if not 200 <= status < 300:
            raise RuntimeHttpError(f"/v1/models: HTTP {status}")
        return [str(m["id"]) for m in json.loads(body).get("data", [])]

    def _failed(self, exc: Exception) -> RuntimeState:
        self.scrape_failures += 1
        self._failures += 1
        self._models_at = None  # ask again once it is back: it may serve other models
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if why != self.last_error:
            log.info("runtime %s: scrape failed (%s)", self.url, why)
        self.last_error = why
        healthy = self._ever_ok and self._failures < self._unhealthy_after
        reading = RuntimeReading(kind=self.kind, url=self.url, healthy=healthy, models=self._models)
        return RuntimeState(reading, None)

    def _derive(self, now: float, sample: RuntimeSample) -> RuntimeState:
        recent = _Recent(sample.prompt_tokens, sample.generation_tokens, sample.ttft, sample.itl)
        answers = _Answers(sample.ok_requests, sample.failed_requests)
        self._recent.add(now, recent)
        self._minute.add(now, answers)

        prompt_rate = gen_rate = ttft = itl = error_ratio = None
        requests = 0.0
        if (start := self._recent.oldest()) is not None:
            t0, old = start
            prompt_rate = _rate(recent.prompt, old.prompt, now - t0)
            gen_rate = _rate(recent.generation, old.generation, now - t0)
            ttft = _median_since(recent.ttft, old.ttft)
            itl = _median_since(recent.itl, old.itl)
        if (first := self._minute.oldest()) is not None:
            old_answers = first[1]
            if None not in (answers.ok, answers.failed, old_answers.ok, old_answers.failed):
                failed = answers.failed - old_answers.failed  # type: ignore[operator]
                requests = failed + answers.ok - old_answers.ok  # type: ignore[operator]
                error_ratio = round(failed / requests, 4) if requests > 0 else None
        reading = RuntimeReading(
            kind=self.kind,
            url=self.url,
            healthy=True,
            models=self._models,
            running=sample.running,
            waiting=sample.waiting,
            kvCacheUsage=sample.kv_cache_usage,
            promptTokensPerS=prompt_rate,
            generationTokensPerS=gen_rate,
            ttftP50Ms=_ms(ttft),
            itlP50Ms=_ms(itl),
            errorRatio=error_ratio,
        )
        return RuntimeState(reading, sample, requests)


def _median_since(new: Histogram | None, old: Histogram | None) -> float | None:
    if new is None or old is None:
        return None
    delta = new.minus(old)
    return None if delta is None else delta.quantile(0.5)
