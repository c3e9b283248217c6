"""The runtime simulator over real HTTP: the official `openai` client, raw SSE, /metrics,
errors, fault injection and client disconnects.

Most tests share one simulator run as its own process through `serve()` (as `infermesh
sim-runtime` runs it); the in-process fleet mode (`start()`) has tests of its own at the end.
Waits are for outcomes, bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infermesh.agent.sim.server import start
from infermesh.agent.sim.simulator import SimConfig
from infermesh.store.etcd_server import free_port
from tests.processes import wait_until_serving

MODEL = "sim-model"
HELLO = [{"role": "user", "content": "Hello, world!"}]
HELLO_PROMPT_TOKENS = 14  # the chat template's 10 + 4 for "Hello, world!" (see sim/tokens.py)
LONG = 4000  # output tokens of a request that is still running when the test looks


@dataclass
class SimProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(log_dir: Path, **options: object) -> SimProcess:
    port = free_port()
    kwargs = {"port": port, "model": MODEL, **options}
    code = f"from infermesh.agent.sim.server import serve; serve(**{kwargs!r})"
    log = log_dir / f"sim-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT
        )
    sim = SimProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_serving(process, f"{sim.url}/health", log, "simulator")
    except RuntimeError:
        sim.stop()
        raise
    return sim


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    # Four slots so a few long requests fill the batch; 50x faster than the model.
    server = launch(
        tmp_path_factory.mktemp("sim"),
        profile="H100",
        max_num_seqs=4,
        seed=1,
        time_scale=0.02,
        max_model_len=4096,
    )
    yield server
    server.stop()


@pytest.fixture
def client(sim: SimProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def http(sim: SimProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


@pytest.fixture
def no_faults(http: httpx.Client) -> Iterator[None]:
    yield
    http.delete("/admin/faults")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: Samples, name: str, /, *, missing: float | None = None, **labels: str) -> float:
    """One sample's value; `missing` stands for a labelled series not yet created."""
    labels.setdefault("model_name", MODEL)
    if name.startswith(("infermesh_sim_", "http_")):
        del labels["model_name"]
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    if not matches and missing is not None:
        return missing
    assert len(matches) == 1, f"{name}{labels}: {matches}"
    return matches[0]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sse_data(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking vLLM's framing: `data: ...\\n\\n` only."""
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


def long_stream(http: httpx.Client, **extra: object) -> httpx.Response:
    """Open a streaming chat that keeps running; the caller closes it (a client disconnect)."""
    body = {"messages": HELLO, "max_tokens": LONG, "stream": True, **extra}
    response = http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    assert response.status_code == 200
    return response


# --- the official client -----------------------------------------------------------------------


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, seed=3)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == MODEL and reply.created > 0
    (choice,) = reply.choices
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (HELLO_PROMPT_TOKENS, 5)
    assert reply.usage.total_tokens == HELLO_PROMPT_TOKENS + 5


def test_streaming_chat_matches_the_whole_reply(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, seed=9)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=12,
            seed=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    first, *content, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len(content) == 12  # one chunk a token
    assert [c.choices[0].finish_reason for c in content] == [None] * 11 + ["length"]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == whole.choices[0].message.content  # the same seed, the same reply
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
        "prompt_tokens": HELLO_PROMPT_TOKENS,
        "completion_tokens": 12,
    }


def test_completions_streaming_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", seed=5)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (5, 16)  # 16: default
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *pieces, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"
    assert usage_chunk.usage is not None and usage_chunk.usage.total_tokens == 21


def test_a_reply_without_max_tokens_ends_on_its_own(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, seed=11)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and 16 <= reply.usage.completion_tokens <= 256


def test_stop_strings_end_the_reply(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=400, stop=["."], seed=2
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and "." not in (choice.message.content or "")
    assert reply.usage is not None and reply.usage.completion_tokens < 400


def test_unknown_fields_are_ignored_and_max_completion_tokens_counts(
    client: openai.OpenAI,
) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_completion_tokens=3,
        temperature=0.7,
        user="someone",
        extra_body={"ignore_eos": True, "no_such_field": {"x": 1}},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_models_and_health(client: openai.OpenAI, http: httpx.Client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "vllm"
    health = http.get("/health")
    assert health.status_code == 200 and health.content == b""


# --- raw SSE -----------------------------------------------------------------------------------


def test_raw_chat_stream_chunk_sequence(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_data(response.text)
    assert done == "[DONE]"
    decoded = [json.loads(c) for c in chunks]
    choices = [d["choices"] for d in decoded]
    assert choices[0] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    assert [c[0]["finish_reason"] for c in choices[1:5]] == [None, None, None, "length"]
    assert all(set(c[0]["delta"]) == {"content"} for c in choices[1:5])
    assert choices[5] == [] and decoded[5]["usage"]["completion_tokens"] == 4
    assert len(decoded) == 6
    assert {d["object"] for d in decoded} == {"chat.completion.chunk"}


def test_raw_streams_without_usage_and_for_completions(http: httpx.Client) -> None:
    chat = http.post(
        "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "stream": True}
    )
    *chunks, done = sse_data(chat.text)
    assert done == "[DONE]" and len(chunks) == 3  # role, 2 tokens: no usage chunk
    assert all("usage" not in json.loads(c) for c in chunks)
    completion = http.post(
        "/v1/completions",
        json={
            "prompt": "x",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *chunks, done = sse_data(completion.text)
    decoded = [json.loads(c) for c in chunks]
    assert done == "[DONE]" and len(decoded) == 4  # 3 tokens (no role chunk), then usage
    assert [d["choices"][0]["finish_reason"] for d in decoded[:3]] == [None, None, "length"]
    assert decoded[3]["choices"] == [] and decoded[3]["usage"]["prompt_tokens"] == 2


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 2}, "n must be 1"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"extra_body": {"temperature": "hot"}}, "temperature must be a number"),
        ({"messages": [{"content": "no role"}]}, "role"),
        ({"messages": []}, "non-empty"),
        ({"max_tokens": 5000}, "maximum context length is 4096 tokens"),
    ],
)
def test_bad_requests_raise_bad_request_error(
    client: openai.OpenAI, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": MODEL, "messages": HELLO, **kwargs})
    assert caught.value.status_code == 400 and caught.value.type == "BadRequestError"
    assert message in caught.value.message


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert "The model `nope` does not exist." in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"", None),
        ("/v1/chat/completions", b'{"model": "sim-model"}', "messages"),
        ("/v1/chat/completions", b'["messages"]', None),
        ("/v1/completions", b'{"max_tokens": 3}', "prompt"),
        ("/v1/completions", b'{"prompt": ["a", "b"]}', "prompt"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "stream_options": {}}', None),
    ],
)
def test_malformed_bodies_get_openai_style_400(
    http: httpx.Client, path: str, body: bytes, param: str | None
) -> None:
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]
    if param is not None:
        assert error["param"] == param


# --- headers -----------------------------------------------------------------------------------


def test_request_id_is_echoed_or_made_up(http: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 1}
    mine = http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "req-42"})
    assert mine.headers["x-request-id"] == "req-42"
    assert mine.json()["id"] == "chatcmpl-req-42"
    made_up = http.post("/v1/chat/completions", json=body)
    assert made_up.headers["x-request-id"] and made_up.json()["id"].endswith(
        made_up.headers["x-request-id"]
    )
    failed = http.post("/v1/chat/completions", json={}, headers={"X-Request-Id": "bad-1"})
    assert failed.status_code == 400 and failed.headers["x-request-id"] == "bad-1"


def test_x_return_error_answers_that_error_without_work(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    before = scrape(http)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers={"X-Return-Error": "503"}
        )
    assert caught.value.status_code == 503 and caught.value.type == "ServiceUnavailableError"
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="x", extra_headers={"X-Return-Error": "429"})
    bad = http.post("/v1/completions", json={"prompt": "x"}, headers={"X-Return-Error": "teapot"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Return-Error"
    after = scrape(http)
    assert metric(after, "vllm:prompt_tokens_total") == metric(before, "vllm:prompt_tokens_total")
    handler = {"handler": "/v1/chat/completions", "method": "POST", "status": "5xx"}
    assert metric(after, "http_requests_total", **handler) == (
        metric(before, "http_requests_total", missing=0, **handler) + 1
    )


# --- metrics under load, disconnects -----------------------------------------------------------


def test_metrics_follow_load_and_disconnects_cancel_streams(http: httpx.Client) -> None:
    before = scrape(http)
    streams = [long_stream(http) for _ in range(6)]  # 4 slots: 4 run, 2 wait
    try:

        def full() -> bool:
            now = scrape(http)
            return (
                metric(now, "vllm:num_requests_running") == 4
                and metric(now, "vllm:num_requests_waiting") == 2
            )

        wait_for(full, "4 running and 2 waiting")
        loaded = scrape(http)
        assert metric(loaded, "vllm:kv_cache_usage_perc") > 0
        assert metric(loaded, "vllm:gpu_cache_usage_perc") == metric(
            loaded, "vllm:kv_cache_usage_perc"
        )
        assert metric(loaded, "infermesh_sim_gpu_utilization_percent") > 0
        assert metric(loaded, "infermesh_sim_gpu_memory_used_bytes") > metric(
            before, "infermesh_sim_gpu_memory_used_bytes"
        )
    finally:
        for stream in streams:
            stream.close()  # the client goes away mid-stream

    def idle() -> bool:
        now = scrape(http)
        return (
            metric(now, "vllm:num_requests_running") == 0
            and metric(now, "vllm:num_requests_waiting") == 0
        )

    wait_for(idle, "the abandoned requests to be cancelled")
    after = scrape(http)
    aborted = metric(after, "vllm:request_success_total", finished_reason="abort") - metric(
        before, "vllm:request_success_total", finished_reason="abort"
    )
    assert aborted == 6
    assert metric(after, "vllm:kv_cache_usage_perc") == 0
    assert (
        metric(after, "vllm:prompt_tokens_total")
        >= metric(before, "vllm:prompt_tokens_total") + 4 * HELLO_PROMPT_TOKENS
    )
    for name in ("vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count"):
        assert metric(after, name) > metric(before, name)
    for name in (
        "vllm:inter_token_latency_seconds_count",
        "vllm:time_per_output_token_seconds_count",
    ):
        assert metric(after, name) > metric(before, name)


def test_finished_requests_count_by_reason(client: openai.OpenAI, http: httpx.Client) -> None:
    before = scrape(http)
    question = [{"role": "user", "content": "Why is the sky blue? " * 20}]
    client.chat.completions.create(model=MODEL, messages=question, max_tokens=3)
    client.chat.completions.create(model=MODEL, messages=question, seed=4)
    after = scrape(http)
    for reason in ("length", "stop"):
        name = "vllm:request_success_total"
        assert metric(after, name, finished_reason=reason) == (
            metric(before, name, finished_reason=reason) + 1
        )
    name = "vllm:e2e_request_latency_seconds_count"
    assert metric(after, name) == metric(before, name) + 2
    assert metric(after, "vllm:prefix_cache_hits_total") > metric(
        before, "vllm:prefix_cache_hits_total"
    )  # the second request reused the first one's prompt blocks
    assert metric(after, "vllm:num_preemptions_total") == 0


def test_a_non_streaming_client_that_hangs_up_cancels_its_request(http: httpx.Client) -> None:
    before = scrape(http)
    body = {"messages": HELLO, "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body, timeout=0.5)

    def cancelled() -> bool:
        now = scrape(http)
        return metric(now, "vllm:request_success_total", finished_reason="abort") == (
            metric(before, "vllm:request_success_total", finished_reason="abort") + 1
        )

    wait_for(cancelled, "the request to be aborted")
    assert metric(scrape(http), "vllm:num_requests_running") == 0


# --- faults ------------------------------------------------------------------------------------


def test_error_rate_fault(client: openai.OpenAI, http: httpx.Client, no_faults: None) -> None:
    assert http.post("/admin/faults", json={"error_rate": 1.0}).status_code == 200
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert caught.value.status_code == 500
    assert http.delete("/admin/faults").json()["error_rate"] == 0
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)


def test_ecc_and_thermal_faults_show_in_metrics(http: httpx.Client, no_faults: None) -> None:
    before = scrape(http)
    dbe = "infermesh_sim_gpu_ecc_volatile_dbe_total"
    assert metric(before, "infermesh_sim_gpu_info", name="NVIDIA H100 80GB HBM3") == 1
    assert http.post("/admin/faults", json={"ecc_dbe": 2, "ecc_sbe": True}).status_code == 200
    after = scrape(http)
    assert metric(after, dbe) == metric(before, dbe) + 2
    sbe = "infermesh_sim_gpu_ecc_volatile_sbe_total"
    assert metric(after, sbe) == metric(before, sbe) + 1

    assert http.post("/admin/faults", json={"thermal": True}).json()["thermal"] is True

    def hot() -> bool:
        now = scrape(http)
        return (
            metric(now, "infermesh_sim_gpu_temperature_celsius") > 87
            and metric(now, "infermesh_sim_gpu_throttle_active", reason="hw_thermal_slowdown") == 1
        )

    wait_for(hot, "the thermal runaway to throttle the GPU")
    faults = http.delete("/admin/faults").json()
    assert faults["thermal"] is False and faults["ecc_dbe"] >= 2  # ECC counts never go back


def test_fault_admin_validates_and_reports(http: httpx.Client, no_faults: None) -> None:
    bad = http.post("/admin/faults", json={"slow_factor": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "slow_factor"
    assert http.post("/admin/faults", json={"slow_factor": 3}).status_code == 200
    assert http.get("/admin/faults").json()["slow_factor"] == 3


def test_crash_fault_exits_the_process(tmp_path: Path) -> None:
    proc = launch(tmp_path, profile="L4", time_scale=0.1)
    try:
        response = httpx.post(f"{proc.url}/admin/faults", json={"crash": True}, timeout=5)
        assert response.status_code == 200 and response.json()["crash"] is True
        proc.process.wait(10)
        assert proc.process.returncode == 1
    finally:
        proc.stop()


# --- in-process fleet mode ---------------------------------------------------------------------


async def test_simulators_share_a_process_each_on_its_own_port() -> None:
    a = await start(SimConfig(model="a", profile="A100", time_scale=0.05))
    b = await start(SimConfig(model="b", profile="L4", time_scale=0.05))
    try:
        assert a.port != b.port and a.running and b.running
        async with openai.AsyncOpenAI(base_url=f"{a.url}/v1", api_key="x", max_retries=0) as ca:
            reply = await ca.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
            assert reply.model == "a"
            with pytest.raises(openai.NotFoundError):
                await ca.chat.completions.create(model="b", messages=HELLO)
        async with httpx.AsyncClient(timeout=5) as http:
            text_a = (await http.get(f"{a.url}/metrics")).text
            text_b = (await http.get(f"{b.url}/metrics")).text
            assert 'vllm:generation_tokens_total{model_name="a"} 2.0' in text_a
            assert 'vllm:generation_tokens_total{model_name="b"} 0.0' in text_b
            assert 'profile="L4"' in text_b

            # The crash fault in a shared process stops that simulator only.
            await http.post(f"{a.url}/admin/faults", json={"crash": True})
            for _ in range(500):
                if not a.running:
                    break
                await asyncio.sleep(0.01)
            assert a.crashed and not a.running
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{a.url}/health")
            assert (await http.get(f"{b.url}/health")).status_code == 200
    finally:
        await a.stop()
        await b.stop()
    assert not b.running


async def test_stop_ends_streams_in_flight() -> None:
    sim = await start(SimConfig(model="m", profile="CPU", time_scale=0.5))
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"messages": HELLO, "max_tokens": LONG, "stream": True}
            async with http.stream("POST", f"{sim.url}/v1/chat/completions", json=body) as resp:
                lines = resp.aiter_lines()
                assert (await anext(lines)).startswith("data: ")  # the first token is out
                await sim.stop()
                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2].removeprefix("data: "))["error"]["code"] == 503
    finally:
        await sim.stop()
    assert not sim.running


async def test_a_taken_port_is_refused_up_front() -> None:
    first = await start(SimConfig(model="a"))
    try:
        with pytest.raises(OSError):
            await start(SimConfig(model="b", port=first.port))
        assert first.running
    finally:
        await first.stop()
