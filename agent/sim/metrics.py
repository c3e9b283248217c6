"""Prometheus metrics of one simulator, in its own registry (many simulators share a process).

vLLM's names and buckets (v1 engine), each labelled `model_name`:

| name | type | meaning |
|---|---|---|
| `vllm:num_requests_running` | gauge | sequences in the running batch |
| `vllm:num_requests_waiting` | gauge | sequences in the waiting queue (preempted ones included) |
| `vllm:kv_cache_usage_perc` | gauge | share of KV blocks in use, 0..1 |
| `vllm:gpu_cache_usage_perc` | gauge | the same value under its legacy name |
| `vllm:prompt_tokens_total` | counter | prompt tokens of requests that got a first token |
| `vllm:generation_tokens_total` | counter | tokens generated |
| `vllm:request_success_total` | counter | finished, by `finished_reason`: stop, length, abort |
| `vllm:num_preemptions_total` | counter | sequences preempted for lack of KV cache |
| `vllm:prefix_cache_queries_total` | counter | prompt tokens looked up in the prefix cache |
| `vllm:prefix_cache_hits_total` | counter | of those, tokens found |
| `vllm:time_to_first_token_seconds` | histogram | arrival to first token |
| `vllm:inter_token_latency_seconds` | histogram | between consecutive tokens of a request |
| `vllm:time_per_output_token_seconds` | histogram | the same observations under the legacy name |
| `vllm:e2e_request_latency_seconds` | histogram | arrival to the last token |

`http_requests_total{handler, method, status}` counts responses by status class ("2xx", "4xx",
"5xx"), as vLLM's prometheus-fastapi-instrumentator does; error ratios come from it.

The simulated GPU (one per simulator), each labelled `gpu_uuid`; an agent scrapes these where it
would read NVML on a real node:

| name | type | meaning |
|---|---|---|
| `infermesh_sim_gpu_info` | gauge | 1, with labels `name` (NVML product name) and `profile` |
| `infermesh_sim_gpu_utilization_percent` | gauge | 0..100 |
| `infermesh_sim_gpu_memory_used_bytes` | gauge | weights + KV cache in use |
| `infermesh_sim_gpu_memory_total_bytes` | gauge | VRAM |
| `infermesh_sim_gpu_temperature_celsius` | gauge | |
| `infermesh_sim_gpu_power_watts` | gauge | |
| `infermesh_sim_gpu_power_limit_watts` | gauge | |
| `infermesh_sim_gpu_ecc_volatile_sbe_total` | counter | single-bit ECC errors (corrected) |
| `infermesh_sim_gpu_ecc_volatile_dbe_total` | counter | double-bit ECC errors (uncorrectable) |
| `infermesh_sim_gpu_throttle_active` | gauge | 1 while throttled, by `reason` |

The one throttle reason simulated is `hw_thermal_slowdown` (see `gpu`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermesh.agent.sim.gpu import GpuReading

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class LiveState:
    """What gauges show, read when /metrics is scraped."""

    num_running: int
    num_waiting: int
    kv_usage: float
    gpu: GpuReading


class SimMetrics:
    def __init__(self, model_name: str, profile: str, live: Callable[[], LiveState]) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        model = {"model_name": model_name}

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["model_name"], registry=reg).labels(**model)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model_name"], registry=reg, buckets=buckets).labels(
                **model
            )

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption.")
        self.cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of tokens."
        )
        self.cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of tokens."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        self.success = {r: success.labels(model_name, r) for r in FINISH_REASONS}
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency.", ITL_BUCKETS
        )
        self.tpot = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token (deprecated: use inter_token_latency).",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency.",
            E2E_BUCKETS,
        )
        self.http = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=reg,
        )
        reg.register(_LiveCollector(model_name, profile, live))

    def first_token(self, prompt_tokens: int, ttft_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc()
        self.ttft.observe(ttft_s)

    def next_token(self, itl_s: float) -> None:
        self.generation_tokens.inc()
        self.itl.observe(itl_s)
        self.tpot.observe(itl_s)

    def finished(self, reason: str, e2e_s: float) -> None:
        self.success[reason].inc()
        self.e2e.observe(e2e_s)

    def http_response(self, handler: str, method: str, status: int) -> None:
        self.http.labels(handler, method, f"{status // 100}xx").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges read from the engine and the GPU at scrape time (nothing to keep in sync)."""

    def __init__(self, model_name: str, profile: str, live: Callable[[], LiveState]) -> None:
        self._model = model_name
        self._profile = profile
        self._live = live

    def collect(self) -> Iterator[Metric]:
        state = self._live()
        yield from self._engine(state)
        yield from self._gpu(state.gpu)

    def _engine(self, state: LiveState) -> Iterator[Metric]:
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             state.num_running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             state.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             state.kv_usage),
            ("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage "
             "(deprecated: use kv_cache_usage_perc).", state.kv_usage),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model], value)
            yield family

    def _gpu(self, gpu: GpuReading) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "infermesh_sim_gpu_info", "Simulated GPU.", labels=["gpu_uuid", "name", "profile"]
        )
        info.add_metric([gpu.uuid, gpu.name, self._profile], 1)
        yield info
        for name, doc, value in (
            ("utilization_percent", "GPU utilisation, percent of time busy.",
             gpu.utilization_pct),
            ("memory_used_bytes", "VRAM in use (weights and KV cache).", gpu.memory_used_bytes),
            ("memory_total_bytes", "VRAM.", gpu.memory_total_bytes),
            ("temperature_celsius", "GPU temperature.", gpu.temperature_c),
            ("power_watts", "Power draw.", gpu.power_w),
            ("power_limit_watts", "Power limit.", gpu.power_limit_w),
        ):  # fmt: skip
            family = GaugeMetricFamily(f"infermesh_sim_gpu_{name}", doc, labels=["gpu_uuid"])
            family.add_metric([gpu.uuid], value)
            yield family
        for name, doc, count in (
            ("ecc_volatile_sbe", "Volatile single-bit ECC errors.", gpu.ecc_volatile_sbe),
            ("ecc_volatile_dbe", "Volatile double-bit ECC errors.", gpu.ecc_volatile_dbe),
        ):
            family = CounterMetricFamily(f"infermesh_sim_gpu_{name}", doc, labels=["gpu_uuid"])
            family.add_metric([gpu.uuid], count)
            yield family
        throttle = GaugeMetricFamily(
            "infermesh_sim_gpu_throttle_active",
            "1 while the GPU is throttled, by reason.",
            labels=["gpu_uuid", "reason"],
        )
        throttle.add_metric([gpu.uuid, "hw_thermal_slowdown"], int(gpu.thermal_throttle))
        yield throttle
