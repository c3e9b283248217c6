"""The services one run of bench/fleet.py measures against (etcd, the API, the fake runtimes)
and its worker children, every one stopped by its PID."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from harness import Api, Child  # bench/ is on sys.path when run as a script

from infermesh.store.etcd_server import EmbeddedEtcd

SCRIPT = Path(__file__).resolve().parent / "fleet.py"


class Services:
    """etcd (fsync on), the API and the fake runtimes of one run, stopped by PID."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.workdir = workdir
        self.etcd = EmbeddedEtcd(workdir / "etcd")
        self.api: Api | None = None
        self.runtimes: Child | None = None
        self.ports: list[int] = []
        self.args = args

    def start(self) -> None:
        self.etcd.start()
        self.api = Api(self.etcd.endpoint, self.workdir / "api.log")
        self.api.wait_ready()
        ready = self.workdir / "runtimes.ready"
        nports = self.args.runtime_ports or max(self.args.sizes, default=1)
        spec = {
            "ports": nports,
            "models": ["chat-8b@fp16", "chat-70b@q4_k_m"],
            "ready_file": str(ready),
            "stats_file": str(self.workdir / "runtimes.stats"),
        }
        self.runtimes = Child(
            "fake runtimes",
            [sys.executable, str(SCRIPT), "--role", "runtimes", "--spec", spec_file(spec, ready)],
            self.workdir / "runtimes.log",
        )
        self.runtimes.wait_for(ready.exists, 30)
        self.ports = json.loads(ready.read_text())["ports"]

    def pids(self) -> dict[str, int | None]:
        return {
            "etcd": self.etcd.pid,
            "api": self.api.process.pid if self.api else None,
            "runtimes": self.runtimes.pid if self.runtimes else None,
        }

    def stop(self) -> dict[str, Any]:
        served: dict[str, Any] = {}
        if self.runtimes is not None:
            self.runtimes.stop()
            with contextlib.suppress(OSError, ValueError):
                served = json.loads((self.workdir / "runtimes.stats").read_text())
        if self.api is not None:
            self.api.stop()
        self.etcd.stop()
        return served


def spec_file(spec: dict[str, Any], beside: Path) -> str:
    """A child's parameters, in a file next to its output (argv would be long for 2,000 ports)."""
    path = beside.with_suffix(".spec")
    path.write_text(json.dumps(spec))
    return str(path)


class Worker:
    """A worker child (`fleet.py --role ROLE`) with its spec; it writes its result to `result`."""

    def __init__(self, role: str, spec: dict[str, Any], svc: Services) -> None:
        assert svc.api is not None
        tag = f"{role}-{uuid.uuid4().hex[:6]}"
        self.role, self.svc = role, svc
        self.result = svc.workdir / f"{tag}.json"
        self.ready = svc.workdir / f"{tag}.ready"
        spec = {
            **spec,
            "etcd": svc.etcd.endpoint,
            "api_url": svc.api.url,
            "prefix": svc.api.prefix,
            "result": str(self.result),
            "ready_file": str(self.ready),
        }
        self.child = Child(
            f"{role} worker",
            [sys.executable, str(SCRIPT), "--role", role, "--spec", spec_file(spec, self.result)],
            svc.workdir / f"{tag}.log",
            env={"FLEET_BENCH_TOKEN": svc.api.token},
        )

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for its end (bounded by `timeout`) and read its result."""
        try:
            rc = self.child.wait(timeout)
        finally:
            self.child.stop()
        if rc != 0 or not self.result.exists():
            raise RuntimeError(f"{self.role} worker failed (exit {rc}):\n{self.child.tail()}")
        assert self.svc.api is not None
        self.svc.api.check_alive()
        return json.loads(self.result.read_text())


def run_worker(role: str, spec: dict[str, Any], svc: Services, timeout: float) -> dict[str, Any]:
    """Run a worker child to its end (bounded by `timeout`) and read its result."""
    return Worker(role, spec, svc).finish(timeout)
