"""The worker side of a training rank: the Dask task that runs one rank's entrypoint.

`run_rank` runs inside a Dask worker (one task per rank, see `executor.py`). It starts the job's
entrypoint as a subprocess in a session of its own that dies with the worker (PR_SET_PDEATHSIG on
Linux, and a kill in `finally`), reads its merged stdout/stderr and forwards it through Dask's
event log: `INFERMESH_REPORT {json}` lines to the `infermesh.ranks` topic (at most
`REPORTS_PER_S` a second, the latest winning), other lines batched to `infermesh.logs` (at most
`LOG_BATCHES_PER_S` events a second), and, when it ends, an exit event (`"exited": true`) to
`infermesh.ranks`. Running rank processes sit in a worker-local registry, so the functions
`signal_ranks`, `running_ranks` and `set_topology` (run on the worker with `Client.run`) reach
them, whether or not the Dask client that launched them is still there.

The topology hint is in the rank's INFERMESH_TOPOLOGY (as launched) and in the JSON file named by
INFERMESH_TOPOLOGY_FILE, which `set_topology` rewrites atomically when the scheduler adjusts it.

SIGUSR1 is ignored in the rank process unless the workload installs a handler, so a checkpoint
request cannot kill a workload that does not know it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import get_worker

RANKS_TOPIC = "infermesh.ranks"
LOGS_TOPIC = "infermesh.logs"
REPORT_PREFIX = "INFERMESH_REPORT "
REPORTS_PER_S = 10.0
LOG_BATCHES_PER_S = 4.0
MAX_LOG_LINES = 200  # per batch; the rest are counted, not sent
MAX_LINE = 16_384  # characters kept of one line
POLL_S = 0.5  # how often a quiet rank is checked for having exited
_PR_SET_PDEATHSIG = 1
_SIG_IGN = 1


@dataclass
class _Rank:
    proc: subprocess.Popen[bytes]
    topology_file: Path


_RUNNING: dict[tuple[str, int, int], _Rank] = {}  # (job, attempt, rank)
# Attempts told to stop here, oldest first: a rank task that only starts afterwards (it was
# queued) must not run. Bounded: an attempt is stopped long before thousands of others are.
_STOPPED: dict[tuple[str, int], None] = {}
_STOPPED_MAX = 4096
_LOCK = threading.Lock()

if sys.platform.startswith("linux"):
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    _LIBC.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    _LIBC.signal.restype = ctypes.c_void_p
else:  # no parent-death signal there; the kill in `finally` still stops the rank
    _LIBC = None

# `python -c` program for `module:function`: argv[1] names the function; it sees the job's
# args in sys.argv[1:]; its return value is the exit status.
_CALL = (
    "import importlib, sys\n"
    "target = sys.argv[1]\n"
    "module, _, name = target.partition(':')\n"
    "sys.argv = [target, *sys.argv[2:]]\n"
    "sys.exit(getattr(importlib.import_module(module), name)())\n"
)


@dataclass(frozen=True)
class RankSpec:
    """What one rank runs: the entrypoint and the environment it adds to the worker's."""

    job: str
    attempt: int
    rank: int
    entrypoint: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def is_module_function(entrypoint: str) -> bool:
    module, colon, name = entrypoint.partition(":")
    return (
        bool(colon)
        and all(part.isidentifier() for part in module.split("."))
        and name.isidentifier()
    )


def rank_command(entrypoint: str, args: tuple[str, ...] | list[str], python: str) -> list[str]:
    """The argv of a rank: `synthetic`, `module:function`, or a command line."""
    if entrypoint == "synthetic":
        return [python, "-m", "infermesh.scheduler.synthetic", *args]
    if is_module_function(entrypoint):
        return [python, "-c", _CALL, entrypoint, *args]
    argv = shlex.split(entrypoint)
    if not argv:
        raise ValueError("the workload's entrypoint is empty")
    return [*argv, *args]


def free_port(host: str) -> int:
    """A TCP port free right now on this machine's `host` interface (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def signal_ranks(job: str, attempt: int, sig: int) -> list[int]:
    """Send `sig` to the process group of every running rank of (job, attempt) here; the
    ranks reached (signal 0: the ranks alive). Run on a worker with `Client.run`."""
    reached = []
    with _LOCK:
        if sig in (signal.SIGTERM, signal.SIGKILL):
            _STOPPED[(job, attempt)] = None
            while len(_STOPPED) > _STOPPED_MAX:
                del _STOPPED[next(iter(_STOPPED))]
        for (j, a, rank), running in _RUNNING.items():
            if j == job and a == attempt and running.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.proc.pid, sig)
                    reached.append(rank)
    return sorted(reached)


def running_ranks() -> list[tuple[str, int, int]]:
    """(job, attempt, rank) of every rank process running here. Run with `Client.run`."""
    with _LOCK:
        return sorted(k for k, running in _RUNNING.items() if running.proc.returncode is None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_topology(job: str, attempt: int, topology: str) -> list[int]:
    """Rewrite the topology file (JSON text `topology`) of every rank of (job, attempt) here;
    the ranks updated. Run with `Client.run`."""
    with _LOCK:
        ranks = {
            r: run.topology_file for (j, a, r), run in _RUNNING.items() if (j, a) == (job, attempt)
        }
    for path in ranks.values():
        _write_atomic(path, topology)
    return sorted(ranks)


def _child_setup(parent: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the forked child: async-signal-safe calls only
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            _LIBC.signal(signal.SIGUSR1, _SIG_IGN)
        if os.getppid() != parent:  # the worker died before the death signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


class _Forwarder:
    """Turns a rank's output lines into throttled events on the worker's event log."""

    def __init__(self, spec: RankSpec, publish: Callable[[str, dict[str, Any]], None]) -> None:
        self.ident = {"job": spec.job, "attempt": spec.attempt, "rank": spec.rank}
        self.publish = publish
        self.report: dict[str, Any] | None = None
        self.report_sent = 0.0
        self.lines: list[str] = []
        self.dropped = 0
        self.logs_sent = 0.0
        self.last = ""  # the last log line: why a failed rank failed, most often

    def line(self, raw: bytes) -> None:
        text = raw[:MAX_LINE].decode(errors="replace").rstrip("\r")
        if text.startswith(REPORT_PREFIX):
            with contextlib.suppress(ValueError):
                report = json.loads(text[len(REPORT_PREFIX) :])
                if isinstance(report, dict):
                    self.report = {**report, **self.ident, "time": time.time()}
                    return
        self.last = text
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append(text)
        else:
            self.dropped += 1

    def due_in(self, now: float) -> float | None:
        """Seconds until something held back may go out; None when nothing is held."""
        waits = []
        if self.report is not None:
            waits.append(self.report_sent + 1 / REPORTS_PER_S - now)
        if self.lines:
            waits.append(self.logs_sent + 1 / LOG_BATCHES_PER_S - now)
        return max(0.0, min(waits)) if waits else None

    def flush(self, now: float, force: bool = False) -> None:
        if self.report is not None and (force or now - self.report_sent >= 1 / REPORTS_PER_S):
            self.publish(RANKS_TOPIC, self.report)
            self.report, self.report_sent = None, now
        if self.lines and (force or now - self.logs_sent >= 1 / LOG_BATCHES_PER_S):
            lines = self.lines
            if self.dropped:
                lines = [*lines, f"[infermesh: {self.dropped} more lines not forwarded]"]
            self.publish(LOGS_TOPIC, {**self.ident, "lines": lines})
            self.lines, self.dropped, self.logs_sent = [], 0, now


def _pump(proc: subprocess.Popen[bytes], out: _Forwarder) -> None:
    """Read the rank's output until it closes, or until the rank has exited and nothing more
    is there (something it left behind may hold the pipe open), forwarding as it goes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            due = out.due_in(time.monotonic())
            if sel.select(POLL_S if due is None else min(due, POLL_S)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, buffer = (buffer + chunk).split(b"\n")
                if len(buffer) > MAX_LINE:
                    lines.append(buffer)
                    buffer = b""
                for line in lines:
                    out.line(line)
            elif proc.poll() is not None:
                break
            out.flush(time.monotonic())
    if buffer:
        out.line(buffer)
    out.flush(time.monotonic(), force=True)


def _exit_error(returncode: int, last_line: str) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with {returncode}" + (f": {last_line}" if last_line else "")


def _exited(
    worker: Any, out: _Forwarder, returncode: int | None, error: str | None
) -> dict[str, Any]:
    result = {"returncode": returncode, "error": error}
    worker.log_event(RANKS_TOPIC, {**out.ident, "exited": True, **result})
    return result


def run_rank(spec: RankSpec) -> dict[str, Any]:
    """The Dask task of one rank: run its entrypoint to the end; its exit status and, when it
    failed, why (the last line of its output)."""
    worker = get_worker()
    out = _Forwarder(spec, worker.log_event)
    key = (spec.job, spec.attempt, spec.rank)
    fd, name = tempfile.mkstemp(
        prefix="infermesh-topology-", suffix=".json", dir=worker.local_directory
    )
    os.close(fd)
    topology_file = Path(name)
    try:
        _write_atomic(topology_file, spec.env.get("INFERMESH_TOPOLOGY", "{}"))
        argv = rank_command(spec.entrypoint, spec.args, sys.executable)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        env["INFERMESH_TOPOLOGY_FILE"] = str(topology_file)
        with _LOCK:  # a stop that came first wins; one that comes later finds the process
            if key[:2] in _STOPPED:
                topology_file.unlink(missing_ok=True)
                return _exited(worker, out, None, "stopped before it started")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),
            )
            _RUNNING[key] = _Rank(proc, topology_file)
    except Exception as exc:
        topology_file.unlink(missing_ok=True)
        _exited(worker, out, None, f"the rank did not start: {type(exc).__name__}: {exc}")
        raise
    try:
        _pump(proc, out)
        proc.wait()
    finally:
        with _LOCK:
            _RUNNING.pop(key, None)
        # Also reaps what the rank left behind in its session (e.g. torchrun's children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        topology_file.unlink(missing_ok=True)
    return _exited(worker, out, returncode, _exit_error(returncode, out.last))
