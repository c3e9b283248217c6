"""Runtime adapters: vLLM (both KV-cache metric names), SGLang (both prefixes) and TGI pages,
and a scraper against a real HTTP server: rates between scrapes, medians, error ratio, models,
unhealthy after failed scrapes, and one kept-alive connection per runtime.

`CannedRuntime` (a real HTTP server in a thread, serving whatever page the test sets) stands in
for an external runtime; the agent tests use it too.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infermesh.agent.runtime_adapter import Histogram, RuntimeScraper, parse_metrics

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class CannedRuntime:
    """An HTTP server answering `/metrics` with `metrics`, `/v1/models` with `models`, and 503
    on everything while `down`; it counts the connections opened to it and the requests by path.

    By default it speaks HTTP/1.0 and closes every connection after one answer, as Python's
    http.server does. `keep_alive` answers in HTTP/1.1 on persistent connections (as uvicorn,
    vLLM's server, does), `chunked` sends bodies chunked, and `drop_idle` closes each connection
    after its answer without saying so (a keep-alive timeout racing the next request)."""

    def __init__(
        self, *, keep_alive: bool = False, chunked: bool = False, drop_idle: bool = False
    ) -> None:
        self.metrics = ""
        self.models = [MODEL]
        self.down = False
        self.connections = 0
        self.requests: Counter[str] = Counter()
        runtime, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive or chunked or drop_idle else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                with lock:
                    runtime.connections += 1

            def do_GET(self) -> None:
                with lock:
                    runtime.requests[self.path] += 1
                if runtime.down:
                    self._answer(503, "text/plain", b"unavailable")
                elif self.path == "/metrics":
                    self._answer(200, "text/plain; version=0.0.4", runtime.metrics.encode())
                elif self.path == "/v1/models":
                    data = [{"id": m, "object": "model"} for m in runtime.models]
                    body = json.dumps({"object": "list", "data": data}).encode()
                    self._answer(200, "application/json", body)
                else:
                    self._answer(404, "text/plain", b"not found")
                if drop_idle:
                    self.close_connection = True

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 1000):
                        part = body[i : i + 1000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def runtime() -> Iterator[CannedRuntime]:
    server = CannedRuntime()
    yield server
    server.stop()


def vllm_page(
    *,
    running: int = 0,
    waiting: int = 0,
    kv: float = 0.0,
    prompt: float = 0,
    generation: float = 0,
    ttft: tuple[float, float, float, float] = (0, 0, 0, 0),
    ok: float = 0,
    failed: float = 0,
    legacy: bool = False,
    gpu_dbe: int | None = None,
    gpu_temp: float | None = None,
) -> str:
    """A vLLM /metrics page (v1 engine names, or the v0 ones with `legacy`). `ttft` are the
    cumulative counts of the buckets le=0.05, 0.1, 0.25 and +Inf."""
    labels = f'engine="0",model_name="{MODEL}"'
    kv_name = "vllm:gpu_cache_usage_perc" if legacy else "vllm:kv_cache_usage_perc"
    itl_name = (
        "vllm:time_per_output_token_seconds" if legacy else "vllm:inter_token_latency_seconds"
    )
    b = ttft
    chat = 'handler="/v1/chat/completions",method="POST"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {running}.0",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {waiting}.0",
        f"# TYPE {kv_name} gauge",
        f"{kv_name}{{{labels}}} {kv}",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {prompt}",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {generation}",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.05"}} {b[0]}',
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} {b[1]}',
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.25"}} {b[2]}',
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {b[3]}',
        f"vllm:time_to_first_token_seconds_count{{{labels}}} {b[3]}",
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} 0.5",
        f"# TYPE {itl_name} histogram",
        f'{itl_name}_bucket{{{labels},le="0.01"}} 0.0',
        f'{itl_name}_bucket{{{labels},le="0.025"}} 10.0',
        f'{itl_name}_bucket{{{labels},le="+Inf"}} 10.0',
        f"{itl_name}_count{{{labels}}} 10.0",
        f"{itl_name}_sum{{{labels}}} 0.2",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="+Inf"}} 5.0',
        "# TYPE http_requests_total counter",
        f'http_requests_total{{{chat},status="2xx"}} {ok}',
        f'http_requests_total{{{chat},status="5xx"}} {failed}',
        'http_requests_total{handler="/v1/completions",method="POST",status="4xx"} 7.0',
        'http_requests_total{handler="/metrics",method="GET",status="2xx"} 1000.0',
    ]
    if gpu_dbe is not None or gpu_temp is not None:
        gpu = 'gpu_uuid="GPU-sim-0"'
        lines += [
            "# TYPE infermesh_sim_gpu_info gauge",
            f'infermesh_sim_gpu_info{{{gpu},name="NVIDIA H100 80GB HBM3",profile="H100"}} 1.0',
            f"infermesh_sim_gpu_utilization_percent{{{gpu}}} 97.0",
            f"infermesh_sim_gpu_memory_used_bytes{{{gpu}}} {40 * 2**30}",
            f"infermesh_sim_gpu_memory_total_bytes{{{gpu}}} {80 * 2**30}",
            f"infermesh_sim_gpu_temperature_celsius{{{gpu}}} {gpu_temp or 50.0}",
            f"infermesh_sim_gpu_power_watts{{{gpu}}} 650.0",
            f"infermesh_sim_gpu_power_limit_watts{{{gpu}}} 700.0",
            "# TYPE infermesh_sim_gpu_ecc_volatile_dbe_total counter",
            f"infermesh_sim_gpu_ecc_volatile_dbe_total{{{gpu}}} {gpu_dbe or 0}.0",
            "# TYPE infermesh_sim_gpu_ecc_volatile_sbe_total counter",
            f"infermesh_sim_gpu_ecc_volatile_sbe_total{{{gpu}}} 3.0",
            f'infermesh_sim_gpu_throttle_active{{{gpu},reason="hw_thermal_slowdown"}} '
            f"{1 if (gpu_temp or 0) >= 87 else 0}",
        ]
    return "\n".join(lines) + "\n"


SGLANG_PAGE = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen2.5-7b"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen2.5-7b"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen2.5-7b"} 0.42
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="qwen2.5-7b"} 812.5
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="qwen2.5-7b"} 1000.0
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="qwen2.5-7b"} 4000.0
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="qwen2.5-7b"} 1.0
sglang:time_to_first_token_seconds_bucket{le="0.2",model_name="qwen2.5-7b"} 3.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="qwen2.5-7b"} 3.0
sglang:time_to_first_token_seconds_count{model_name="qwen2.5-7b"} 3.0
sglang:time_to_first_token_seconds_sum{model_name="qwen2.5-7b"} 0.4
"""

TGI_PAGE = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 6
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 12000
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="100"} 5
tgi_request_input_length_bucket{le="+Inf"} 20
tgi_request_input_length_sum 5000
tgi_request_input_length_count 20
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 20
tgi_request_generated_tokens_sum 8000
tgi_request_generated_tokens_count 20
# TYPE tgi_request_mean_time_per_token_duration histogram
tgi_request_mean_time_per_token_duration_bucket{le="0.01"} 0
tgi_request_mean_time_per_token_duration_bucket{le="0.02"} 20
tgi_request_mean_time_per_token_duration_bucket{le="+Inf"} 20
tgi_request_mean_time_per_token_duration_sum 0.3
tgi_request_mean_time_per_token_duration_count 20
# TYPE tgi_request_success counter
tgi_request_success 18
# TYPE tgi_request_failure counter
tgi_request_failure{err="generation"} 2
"""


def test_vllm_page_reads_gauges_counters_and_histograms() -> None:
    sample = parse_metrics(
        "vllm",
        vllm_page(running=3, waiting=2, kv=0.25, prompt=1200, generation=3400, ttft=(2, 8, 10, 10)),
    )
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (3, 2, 0.25)
    assert (sample.prompt_tokens, sample.generation_tokens) == (1200, 3400)
    assert sample.ttft is not None and sample.ttft.quantile(0.5) == pytest.approx(0.075)
    assert sample.itl is not None and sample.itl.quantile(0.5) == pytest.approx(0.0175)
    assert sample.gpus == ()  # a real vLLM exports no GPU of its own


def test_vllm_legacy_kv_cache_and_itl_names_are_read() -> None:
    sample = parse_metrics("vllm", vllm_page(kv=0.6, legacy=True))
    assert sample.kv_cache_usage == 0.6
    assert sample.itl is not None and sample.itl.counts[-1] == 10


def test_vllm_errors_are_5xx_on_inference_routes_only() -> None:
    sample = parse_metrics("vllm", vllm_page(ok=40, failed=10))
    # 4xx are the client's errors and /metrics is not inference: neither counts.
    assert (sample.ok_requests, sample.failed_requests) == (40, 10)


def test_sglang_current_and_older_prefixes() -> None:
    for page in (SGLANG_PAGE, SGLANG_PAGE.replace("sglang:", "sglang_")):
        sample = parse_metrics("sglang", page)
        assert (sample.running, sample.waiting, sample.kv_cache_usage) == (7, 2, 0.42)
        assert (sample.prompt_tokens, sample.generation_tokens) == (1000, 4000)
        assert sample.ttft is not None and sample.ttft.quantile(0.5) == pytest.approx(0.125)


def test_tgi_page() -> None:
    sample = parse_metrics("tgi", TGI_PAGE)
    assert (sample.running, sample.waiting, sample.kv_cache_usage) == (6, 4, None)
    assert (sample.prompt_tokens, sample.generation_tokens) == (5000, 8000)
    assert (sample.ok_requests, sample.failed_requests) == (18, 2)
    assert sample.itl is not None and sample.itl.quantile(0.5) == pytest.approx(0.015)
    assert sample.ttft is None  # TGI has no TTFT histogram


def test_simulator_gpu_is_read_with_its_faults() -> None:
    sample = parse_metrics("vllm", vllm_page(gpu_dbe=1, gpu_temp=95.0))
    (gpu,) = sample.gpus
    assert gpu.uuid == "GPU-sim-0" and gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.eccVolatileDbe, gpu.eccVolatileSbe, gpu.tempC) == (1, 3, 95.0)
    assert (gpu.memUsedMiB, gpu.memTotalMiB, gpu.utilPct) == (40 * 1024, 80 * 1024, 97.0)
    assert gpu.throttleReasons == ["HwThermalSlowdown"]


def test_histogram_quantile_edges() -> None:
    empty = Histogram((0.1, float("inf")), (0.0, 0.0))
    assert empty.quantile(0.5) is None
    all_slow = Histogram((0.1, 0.5, float("inf")), (0.0, 0.0, 4.0))
    assert all_slow.quantile(0.5) == 0.5  # beyond the last finite bound: that bound
    assert Histogram((0.1, float("inf")), (1.0, 1.0)).minus(all_slow) is None


async def test_scraper_rates_medians_and_error_ratio_between_scrapes(
    runtime: CannedRuntime,
) -> None:
    scraper = RuntimeScraper("vllm", runtime.url)
    runtime.metrics = vllm_page(prompt=1000, generation=2000, ttft=(0, 0, 0, 0), ok=100)
    first = await scraper.scrape(100.0)
    assert first.reading.healthy and first.reading.models == [MODEL]
    assert first.reading.generationTokensPerS is None  # one sample says nothing of rates

    runtime.metrics = vllm_page(
        running=4, prompt=1500, generation=3000, ttft=(2, 8, 10, 10), ok=130, failed=20
    )
    second = await scraper.scrape(105.0)
    reading = second.reading
    assert (reading.promptTokensPerS, reading.generationTokensPerS) == (100.0, 200.0)
    assert reading.ttftP50Ms == pytest.approx(75.0)
    assert reading.errorRatio == pytest.approx(0.4)  # 20 of the 50 answers since
    assert second.requests_last_minute == 50
    assert reading.running == 4


async def test_runtime_restart_resets_the_rates(runtime: CannedRuntime) -> None:
    scraper = RuntimeScraper("vllm", runtime.url)
    runtime.metrics = vllm_page(generation=5000)
    await scraper.scrape(10.0)
    runtime.metrics = vllm_page(generation=100)  # counters began again
    after = await scraper.scrape(11.0)
    assert after.reading.generationTokensPerS is None
    runtime.metrics = vllm_page(generation=300)
    assert (await scraper.scrape(13.0)).reading.generationTokensPerS == 100.0


async def test_failed_scrapes_make_the_runtime_unhealthy(runtime: CannedRuntime) -> None:
    scraper = RuntimeScraper("vllm", runtime.url, unhealthy_after=2)
    runtime.metrics = vllm_page(running=1)
    assert (await scraper.scrape(1.0)).reading.healthy
    runtime.down = True
    assert (await scraper.scrape(2.0)).reading.healthy  # one miss is forgiven
    third = await scraper.scrape(3.0)
    assert not third.reading.healthy and third.sample is None
    assert "503" in scraper.last_error
    runtime.down = False
    assert (await scraper.scrape(4.0)).reading.healthy


async def test_a_runtime_never_reached_is_unhealthy() -> None:
    server = CannedRuntime()
    url = server.url
    server.stop()  # nothing listens there any more
    state = await RuntimeScraper("tgi", url).scrape(1.0)
    assert not state.reading.healthy


@pytest.mark.parametrize("chunked", [False, True])
async def test_scrapes_keep_one_connection_and_ask_for_models_now_and_then(
    chunked: bool,
) -> None:
    server = CannedRuntime(keep_alive=True, chunked=chunked)
    try:
        scraper = RuntimeScraper("vllm", server.url, models_every=30)
        for t in range(1, 11):
            server.metrics = vllm_page(running=t)  # a page that changes on every scrape
            state = await scraper.scrape(float(t))
            assert state.reading.healthy and state.reading.running == t
        assert server.connections == 1
        assert server.requests == {"/metrics": 10, "/v1/models": 1}
        await scraper.scrape(45.0)  # 30 s on: the models are asked again
        assert server.requests["/v1/models"] == 2
        scraper.close()
    finally:
        server.stop()


async def test_a_restarted_runtime_is_asked_for_its_models_at_once() -> None:
    server = CannedRuntime(keep_alive=True)
    try:
        scraper = RuntimeScraper("vllm", server.url, models_every=30)
        server.metrics = vllm_page(generation=5000)
        assert (await scraper.scrape(1.0)).reading.models == [MODEL]
        server.models = ["another-model"]  # restarted with another model: counters began again
        server.metrics = vllm_page(generation=10)
        assert (await scraper.scrape(2.0)).reading.models == ["another-model"]
        scraper.close()
    finally:
        server.stop()


async def test_an_unchanged_page_reads_the_same_and_a_change_is_read() -> None:
    server = CannedRuntime(keep_alive=True)
    try:
        scraper = RuntimeScraper("vllm", server.url)
        server.metrics = vllm_page(running=2, kv=0.5)
        first = await scraper.scrape(1.0)
        again = await scraper.scrape(2.0)
        assert (again.reading.running, again.reading.kvCacheUsage) == (2, 0.5)
        assert again.sample == first.sample
        server.metrics = vllm_page(running=5, kv=0.5)
        assert (await scraper.scrape(3.0)).reading.running == 5
        scraper.close()
    finally:
        server.stop()


async def test_a_connection_the_runtime_dropped_is_opened_again_without_a_failure() -> None:
    server = CannedRuntime(drop_idle=True)
    try:
        scraper = RuntimeScraper("vllm", server.url)
        server.metrics = vllm_page(running=1)
        for t in range(1, 4):
            assert (await scraper.scrape(float(t))).reading.healthy
        assert scraper.scrape_failures == 0
        scraper.close()
    finally:
        server.stop()


async def test_an_answer_that_is_not_http_is_a_failed_scrape() -> None:
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        scraper = RuntimeScraper("vllm", f"http://127.0.0.1:{port}")
        state = await scraper.scrape(1.0)
        assert not state.reading.healthy and "not an HTTP/1.x answer" in scraper.last_error
        scraper.close()
    finally:
        server.close()
        await server.wait_closed()
