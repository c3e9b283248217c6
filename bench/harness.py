"""What every benchmark here needs: a lean HTTP/1.1 load client, latency statistics, CPU and
memory accounting of the processes under test, child processes stopped by PID, an event-loop lag
probe, and the facts of the machine a figure came from."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infermesh.store.auth import new_token
from infermesh.store.etcd_server import free_port

ROOT = Path(__file__).resolve().parent.parent

Sample = Callable[[], dict[str, float]]
MAX_REQUESTS_PER_PHASE = 1_000_000
DRAIN_S = 15.0  # how long in-flight requests may take to finish after a phase ends


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


def wait_until_idle(max_wait_s: float, busy_below: float = 15.0) -> float | None:
    """Wait (at most `max_wait_s`) until the machine's busy CPU over 2 s is under `busy_below`
    percent of one core; returns the last reading. Others' workloads skew every figure."""
    deadline = time.monotonic() + max_wait_s
    told = False
    while True:
        before = machine_busy_s()
        time.sleep(2.0)
        after = machine_busy_s()
        if before is None or after is None:
            return None
        busy = 100 * (after - before) / 2.0
        if busy < busy_below or time.monotonic() >= deadline:
            return round(busy, 1)
        if not told:
            print(f"  waiting for the machine to go quiet (busy {busy:.0f}% of a core)", flush=True)
            told = True


def processes_sampler(pids: dict[str, int | None], own: str | None = "client") -> Sample:
    """CPU seconds so far of each named process (`pids`), of this process (as `own`, threads
    included; None leaves it out) and of the whole machine, with a wall-clock stamp."""

    def sample() -> dict[str, float]:
        out = {"wall": time.perf_counter()}
        for name, pid in pids.items():
            value = proc_cpu_s(pid)
            if value is not None:
                out[name] = value
        if own is not None:
            t = os.times()
            out[own] = t.user + t.system
        machine = machine_busy_s()
        if machine is not None:
            out["machine"] = machine
        return out

    return sample


def cpu_sampler(api_pid: int, etcd_pid: int | None) -> Sample:
    return processes_sampler({"api": api_pid, "etcd": etcd_pid}, own="client")


def cpu_percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Percent of one core per process over the window; `other` is everything else running on
    the machine meanwhile (another workload there makes the figures worth less)."""
    wall = after["wall"] - before["wall"]
    if wall <= 0:
        return {}
    out = {
        k: round(100 * (after[k] - before[k]) / wall, 1)
        for k in before
        if k != "wall" and k in after
    }
    if "machine" in out:
        ours = sum(v for k, v in out.items() if k != "machine")
        out["other"] = round(max(0.0, out.pop("machine") - ours), 1)
    return out


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory of a process (this one by default), in MiB; None when it is gone."""
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class LoopLag:
    """How late this event loop wakes a task that sleeps `interval` s: a busy loop (CPU-bound
    callbacks) shows as lag. `start()`, then `summary()` of the lags seen since the last
    `reset()`, in ms."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe(), name="loop-lag")

    def reset(self) -> None:
        self.lags = []

    async def _probe(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - t0 - self.interval))

    def summary(self) -> dict[str, float]:
        return latency_summary(self.lags)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
    commit, dirty = None, None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        run = {"capture_output": True, "text": True, "timeout": 5}
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = bool(
            subprocess.run(
                [*git, "--no-optional-locks", "status", "--porcelain"], **run
            ).stdout.strip()
        )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_uncommitted_changes": dirty,
    }


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
    on_ok: Callable[[bytes], None] | None = None,
) -> PhaseResult:
    """`len(conns)` workers, each sending its next request as soon as the last one answered;
    `on_ok` sees the body of every successful answer counted in the window."""
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
            data = b""
            try:
                status, data = await conn.request(method, path, body)
                outcome = "ok" if status == ok_status else f"HTTP {status}"
            except (
                OSError,
                ValueError,  # a malformed answer
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                outcome = type(exc).__name__
                await asyncio.sleep(0.01)  # the server is gone or refusing: do not spin
            t1 = time.perf_counter()
            if t1 < record_from:
                continue
            if outcome != "ok":
                result.errors[outcome] += 1
            elif t1 <= end:
                result.ok += 1
                result.latencies.append(t1 - t0)
                if on_ok is not None:
                    on_ok(data)

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
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return result


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

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the API exited with {self.process.returncode} during the benchmark:\n"
                + self.tail()
            )

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


class Child:
    """A child process of this benchmark, its output in `log`, stopped by its PID (SIGTERM,
    then SIGKILL after `grace` s)."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str = "ready") -> None:
        """Poll `ready()` until it holds; RuntimeError (with the log's tail) if the process
        exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} not {what} in {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        """Its exit status; stops it (and raises) when it runs past `timeout`."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"{self.name} ran past {timeout:.0f} s and was stopped:\n{self.tail()}"
            ) from None

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def http_ready(url: str) -> Callable[[], bool]:
    """A `Child.wait_for` probe: `url` answers 2xx."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1).is_success
        except httpx.TransportError:
            return False

    return probe


def run_async(coro: Any) -> Any:
    """On uvloop when it is installed (it comes with uvicorn[standard]): a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def interrupt_on_signals() -> None:
    """SIGTERM as well as Ctrl-C unwinds the main thread with KeyboardInterrupt, so `finally`
    blocks stop the children by PID."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)


def etcd_revision(endpoint: str, timeout: float = 5.0) -> int:
    """etcd's current revision through its HTTP/JSON gateway: a blocking call of a millisecond
    that works when the caller's event loop is too busy to answer a gRPC call in time."""
    req = urllib.request.Request(
        f"http://{endpoint}/v3/kv/range",
        data=json.dumps({"key": "AA==", "count_only": True}).encode(),  # key "\0"
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(json.loads(resp.read())["header"]["revision"])


def write_report(path: Path, report: dict[str, Any], started: dt.datetime) -> None:
    """Write a benchmark's JSON result (with its wall time, unless it has one) and say where."""
    report.setdefault("wall_s", round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}", flush=True)
