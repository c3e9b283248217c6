"""Fake vLLM runtimes for bench/fleet.py: the /metrics pages of thousands of nodes, served by
one small process, idle (never changing) or loaded (changing every scrape)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, cast

MODES = ("idle", "loaded")


# -- fake runtimes: vLLM /metrics pages for thousands of nodes from one small process ----------
# Sample name -> the value slot it shows. Histogram buckets follow from HISTOGRAM_AT below.
SLOTS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:gpu_cache_usage_perc": "kv",
    "vllm:prompt_tokens_total": "prompt",
    "vllm:generation_tokens_total": "gen",
    "vllm:prefix_cache_queries_total": "prompt",
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:time_to_first_token_seconds_count": "reqs",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum",
    "vllm:inter_token_latency_seconds_count": "gen",
    "vllm:inter_token_latency_seconds_sum": "itl_sum",
    "vllm:time_per_output_token_seconds_count": "gen",
    "vllm:time_per_output_token_seconds_sum": "itl_sum",
    "vllm:e2e_request_latency_seconds_count": "reqs",
    "vllm:e2e_request_latency_seconds_sum": "e2e_sum",
    "infermesh_sim_gpu_utilization_percent": "util",
    "infermesh_sim_gpu_memory_used_bytes": "mem",
    "infermesh_sim_gpu_temperature_celsius": "temp",
    "infermesh_sim_gpu_power_watts": "power",
}
# Every observation of a histogram sits at this value: buckets at or above it hold the count.
HISTOGRAM_AT = {
    "vllm:time_to_first_token_seconds": ("reqs", 0.08),
    "vllm:inter_token_latency_seconds": ("gen", 0.012),
    "vllm:time_per_output_token_seconds": ("gen", 0.012),
    "vllm:e2e_request_latency_seconds": ("reqs", 2.4),
}


class PageTemplate:
    """One model's `/metrics` page as the simulator renders it, with its values as slots."""

    def __init__(self, profile_name: str, model: str) -> None:
        from infermesh.agent.sim.profiles import GIB, get_profile
        from infermesh.agent.sim.simulator import SimConfig, Simulator

        sim = Simulator(SimConfig(model=model, profile=profile_name, seed=1))
        sim.metrics.http_response("/v1/completions", "POST", 200)
        page = sim.metrics.render().decode()
        self.profile = get_profile(profile_name)
        self.weights = 15 * GIB
        self.pool = int(self.profile.vram_gib * 0.9 * GIB) - self.weights
        lines = []
        for line in page.splitlines():
            esc = line.replace("{", "{{").replace("}", "}}")
            if not line or line.startswith("#"):
                lines.append(esc)
                continue
            head = line.rsplit(" ", 1)[0]
            name = head.split("{", 1)[0]
            slot = SLOTS.get(name)
            if name == "http_requests_total" or (
                name == "vllm:request_success_total" and 'finished_reason="length"' in head
            ):
                slot = "reqs"
            elif name.endswith("_bucket") and name[: -len("_bucket")] in HISTOGRAM_AT:
                count, at = HISTOGRAM_AT[name[: -len("_bucket")]]
                le = float(head.split('le="', 1)[1].split('"', 1)[0])
                slot = count if le >= at else None
                if slot is None:
                    lines.append(esc.rsplit(" ", 1)[0] + " 0.0")
                    continue
            if slot is None:
                lines.append(esc)
            else:
                lines.append(esc.rsplit(" ", 1)[0] + " {" + slot + "}")
        self.format = ("\n".join(lines) + "\n").replace(sim.gpu.uuid, "{uuid}")
        self.models = json.dumps(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "owned_by": "vllm", "root": model}],
            }
        ).encode()

    def idle_values(self, gpu_uuid: str) -> dict[str, Any]:
        p = self.profile  # a node that served for a while and is quiet now
        return {
            "uuid": gpu_uuid,
            "running": 0,
            "waiting": 0,
            "kv": 0.0,
            "prompt": 2.5e6,
            "gen": 1.0e6,
            "hits": 7.5e5,
            "reqs": 5000.0,
            "ttft_sum": 400.0,
            "itl_sum": 12000.0,
            "e2e_sum": 12000.0,
            "util": 0.0,
            "mem": float(self.weights),
            "temp": p.idle_temp_c,
            "power": p.idle_power_w,
        }


class BusyNode:
    """A busy vLLM's numbers: they move on every scrape and the counters only grow."""

    def __init__(self, index: int, base: dict[str, Any]) -> None:
        self.index, self.scrapes = index, 0
        self.at: float | None = None
        self.values = dict(base)

    def next(self, template: PageTemplate, now: float) -> dict[str, Any]:
        v, i = self.values, self.index
        self.scrapes += 1
        c = self.scrapes
        elapsed = 0.0 if self.at is None else now - self.at
        self.at = now
        running = 8 + (c * 5 + i * 3) % 41  # 8..48, a different value on every scrape
        tokens = running * 55.0 * elapsed  # generated since the last scrape
        v["running"] = running
        v["waiting"] = (c * 3 + i) % 7
        v["kv"] = round(0.3 + 0.05 * ((c * 7 + i) % 11), 3)
        v["gen"] += tokens
        v["prompt"] += 2.5 * tokens
        v["hits"] += 0.75 * tokens
        v["reqs"] += tokens / 180
        v["ttft_sum"] += 0.08 * tokens / 180
        v["itl_sum"] += 0.012 * tokens
        v["e2e_sum"] += 2.4 * tokens / 180
        v["util"] = float(min(100, 55 + running))
        v["temp"] = round(58 + 0.3 * running, 1)
        v["power"] = float(250 + 9 * running)
        v["mem"] = float(template.weights + int(template.pool * v["kv"]))
        return v


class FakeRuntimes:
    """Routes `/{idle|loaded}/{profile}/{model}/{index}/metrics` and `.../v1/models`."""

    def __init__(self) -> None:
        self.templates: dict[tuple[str, str], PageTemplate] = {}
        self.idle_pages: dict[tuple[str, int], bytes] = {}
        self.busy: dict[tuple[str, int], BusyNode] = {}
        self.served: Counter[str] = Counter()

    def template(self, profile: str, model: str) -> PageTemplate:
        key = (profile, model)
        if key not in self.templates:
            self.templates[key] = PageTemplate(profile, model)
        return self.templates[key]

    def route(self, target: str) -> tuple[int, str, bytes]:
        parts = target.split("?", 1)[0].split("/")
        if parts[1:] == ["health"]:
            return 200, "text/plain", b""
        if len(parts) < 6 or parts[1] not in MODES:
            return 404, "text/plain", b"not found\n"
        mode, profile, model, index, what = parts[1], parts[2], parts[3], parts[4], parts[5:]
        try:
            template, i = self.template(profile, model), int(index)
        except ValueError as exc:
            return 404, "text/plain", f"{exc}\n".encode()
        if what == ["v1", "models"]:
            self.served["models"] += 1
            return 200, "application/json", template.models
        if what != ["metrics"]:
            return 404, "text/plain", b"not found\n"
        self.served[mode] += 1
        gpu_uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'fleet-bench/{model}/{i}')}"
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        if mode == "idle":
            page = self.idle_pages.get((model, i))
            if page is None:
                page = template.format.format_map(template.idle_values(gpu_uuid)).encode()
                self.idle_pages[(model, i)] = page
            return 200, content_type, page
        node = self.busy.get((model, i))
        if node is None:
            node = self.busy[(model, i)] = BusyNode(i, template.idle_values(gpu_uuid))
        values = node.next(template, time.monotonic())
        return 200, content_type, template.format.format_map(values).encode()


class _RuntimeConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, just enough for httpx."""

    def __init__(self, runtimes: FakeRuntimes) -> None:
        self.runtimes = runtimes
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.runtimes.served["connections"] += 1  # keep-alive scrapers open one each

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            request_line, _, headers = head.partition(b"\r\n")
            try:
                method, target, _version = request_line.decode("latin-1").split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            if method == "GET":
                status, content_type, body = self.runtimes.route(target)
            else:
                status, content_type, body = 405, "text/plain", b"GET only\n"
            close = b"connection: close" in headers.lower()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
            self.transport.write(
                (
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            if close:
                self.transport.close()
                return
        if len(self.buffer) > 65536:
            self.transport.close()


async def serve_runtimes(spec: dict[str, Any]) -> None:
    """The `runtimes` role: listen on `ports` ports, say so in `ready_file`, serve until
    SIGTERM; then write what was served to `stats_file`."""
    loop = asyncio.get_running_loop()
    runtimes = FakeRuntimes()
    for profile in ("H100", "A100", "L4"):  # build the templates before anyone scrapes
        for model in spec["models"]:
            runtimes.template(profile, model)
    servers = []
    for _ in range(spec["ports"]):
        servers.append(
            await loop.create_server(lambda: _RuntimeConnection(runtimes), "127.0.0.1", 0)
        )
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tmp = Path(spec["ready_file"] + ".tmp")
    tmp.write_text(json.dumps({"ports": ports}))
    tmp.rename(spec["ready_file"])
    await stop.wait()
    for s in servers:
        s.close()
    Path(spec["stats_file"]).write_text(json.dumps(dict(runtimes.served)))
