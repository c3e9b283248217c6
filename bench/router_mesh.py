"""The processes bench/router.py measures and measures with, each a child stopped by its PID.

- the state plane: an `EmbeddedEtcd` and the real API (`infermesh api`, bootstrap token);
- the fixed-answer upstream (`router_upstream.py`, one port per simulated node) and one real
  `infermesh agent` per port, which registers the node and reports its runtime like any vLLM's;
- the simulated heterogeneous fleet (`infermesh fleet --fleet FILE`: simulators and agents);
- the router under test: ours (`infermesh router`) or a peer (`vllm-router`, `smg`).

Cores: the router under test alone on `ROUTER_CORE`; everything else, this process (the load
generator) included, on `LOAD_CORE`. Every process here is pinned when it starts (`taskset`)
or, for etcd, right after (every thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
from harness import Api, Child, http_ready, proc_cpu_s  # bench/ is on sys.path

from infermesh.client import MeshClient
from infermesh.store.etcd_server import EmbeddedEtcd, free_port

LOAD_CORE, ROUTER_CORE = 0, 1
BENCH = Path(__file__).resolve().parent
UPSTREAM_MODEL = "bench@1"
UPSTREAM_DOMAIN = "bench-local"
OVERHEAD_ENDPOINT = "bench-overhead"


def cores_available() -> set[int]:
    return set(os.sched_getaffinity(0))


def pin(pid: int, core: int) -> None:
    """Every thread of `pid` onto `core` (threads started later inherit it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {core})


def taskset(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def memory_kib(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out: dict[str, int] = {}
    if pid is None:
        return out
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


class Mesh:
    """etcd and the API, then whatever a part asks for; `stop()` ends every child by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "home"  # children never read the user's ~/.infermesh
        self.home.mkdir(parents=True, exist_ok=True)
        self.etcd = EmbeddedEtcd(workdir / "etcd")
        self.api: Api | None = None
        self.children: list[Child] = []
        self.upstream: Child | None = None
        self.upstream_ports: list[int] = []
        self.router: Child | None = None
        self.router_port = 0
        self.fleet: Child | None = None
        self.fleet_runtimes: list[dict[str, Any]] = []
        self._client: MeshClient | None = None

    # the state plane -------------------------------------------------------------------------
    def start(self) -> None:
        self.etcd.start()
        if self.etcd.pid is not None:
            pin(self.etcd.pid, LOAD_CORE)
        self.api = Api(self.etcd.endpoint, self.workdir / "api.log")
        pin(self.api.process.pid, LOAD_CORE)
        self.api.wait_ready()
        self._client = MeshClient(self.api.url, self.api.token, project="default")

    @property
    def token(self) -> str:
        assert self.api is not None
        return self.api.token

    def env(self) -> dict[str, str]:
        return {
            "INFERMESH_HOME": str(self.home),
            "INFERMESH_TOKEN": self.token,
            "INFERMESH_PROJECT": "default",
        }

    def infermesh(self, core: int, *args: str) -> list[str]:
        assert self.api is not None
        return [*taskset(core), sys.executable, "-m", "infermesh", "--api", self.api.url, *args]

    def etcd_args(self) -> list[str]:
        assert self.api is not None
        return ["--etcd", self.etcd.endpoint, "--etcd-prefix", self.api.prefix]

    def apply(self, objects: list[dict[str, Any]]) -> None:
        assert self._client is not None
        self._client.apply(objects, project="default")

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.workdir / f"{name}.log", env={**self.env(), **(env or {})})
        self.children.append(child)
        return child

    # the fixed-answer upstream and its agents ------------------------------------------------
    def start_upstream(self, nodes: int, agents: bool = True) -> list[int]:
        """The upstream's ports; with `agents`, each registered in etcd by its own agent."""
        ready = self.workdir / "upstream.ready"
        argv = [*taskset(LOAD_CORE), sys.executable, str(BENCH / "router_upstream.py")]
        argv += ["--ports", str(nodes), "--model", UPSTREAM_MODEL, "--ready", str(ready)]
        argv += ["--stats", str(self.workdir / "upstream.stats")]
        self.upstream = self.child("upstream", argv)
        self.upstream.wait_for(ready.exists, 30)
        self.upstream_ports = json.loads(ready.read_text())["ports"]
        if not agents:  # a peer gets the URLs on its command line
            return self.upstream_ports
        self.apply(
            [
                _obj("Domain", UPSTREAM_DOMAIN, {"residency": {"region": "EU"}}),
                _obj("Model", UPSTREAM_MODEL, {}),
            ]
        )
        for i, port in enumerate(self.upstream_ports):
            argv = self.infermesh(
                LOAD_CORE,
                "agent",
                "--node",
                f"bench-node-{i + 1}",
                *self.etcd_args(),
                "--runtime-url",
                f"http://127.0.0.1:{port}",
                "--gpu-source",
                "simulated",
                "--gpu",
                "H100-80G",
                "--gpu-count",
                "1",
                "--vram-gb",
                "80",
                "--domain",
                UPSTREAM_DOMAIN,
                "--region",
                "eu-west",
                "--zone",
                "eu-west-1a",
                "--no-http",
                "--log-level",
                "warning",
            )
            self.child(f"agent-{i + 1}", argv)
        return self.upstream_ports

    def pacing(self, ttft_ms: float, itl_ms: float) -> None:
        """How the upstream paces its next answers (every port shares it)."""
        url = f"http://127.0.0.1:{self.upstream_ports[0]}/admin/pacing"
        httpx.post(url, json={"ttft_ms": ttft_ms, "itl_ms": itl_ms}, timeout=5).raise_for_status()

    def overhead_endpoint(self, strategy: str) -> None:
        spec = {
            "modelRef": UPSTREAM_MODEL,
            "domains": [{"name": UPSTREAM_DOMAIN, "weight": 100}],
            "strategy": {"ref": strategy},
            "auth": {"required": True},
        }
        self.apply([_obj("Endpoint", OVERHEAD_ENDPOINT, spec)])

    # our router ------------------------------------------------------------------------------
    def start_router(self, loop: str = "uvloop") -> int:
        """`infermesh router` on ROUTER_CORE, shipping its SLI series as `up` runs it, on the
        event loop `loop` (`--event-loop`; uvloop is its default)."""
        port = free_port()
        args = ["router", *self.etcd_args(), "--port", str(port), "--name", "bench-router"]
        argv = self.infermesh(ROUTER_CORE, *args, "--event-loop", loop)
        self.router = self.child("router", argv)
        self.router.wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 60)
        self.router_port = port
        return port

    # the simulated heterogeneous fleet ---------------------------------------------------------
    def start_fleet(self, fleet_file: Path, time_scale: float, expect: int) -> list[dict[str, Any]]:
        port = free_port()
        argv = self.infermesh(
            LOAD_CORE,
            "fleet",
            "--fleet",
            str(fleet_file),
            *self.etcd_args(),
            "--port",
            str(port),
            "--time-scale",
            str(time_scale),
        )
        self.fleet = self.child("fleet", argv)
        url = f"http://127.0.0.1:{port}/healthz"
        self.fleet.wait_for(http_ready(url), 90)
        nodes = httpx.get(url, timeout=5).json()["nodes"]
        if len(nodes) != expect:
            raise RuntimeError(f"the fleet runs {len(nodes)} nodes, expected {expect}")
        self.fleet_runtimes = nodes
        return nodes

    # accounting --------------------------------------------------------------------------------
    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {"etcd": self.etcd.pid}
        if self.api is not None:
            out["api"] = self.api.process.pid
        for child in self.children:
            if child.name.startswith("agent-"):
                continue  # summed as "agents"
            out[child.name] = child.pid
        return out

    def agents_cpu_s(self) -> float:
        return sum(proc_cpu_s(c.pid) or 0.0 for c in self.children if c.name.startswith("agent-"))

    def check_alive(self) -> None:
        if self.api is not None:
            self.api.check_alive()
        for child in self.children:
            child.check_alive()

    def stop_child(self, child: Child | None) -> None:
        if child is not None:
            child.stop()
            if child in self.children:
                self.children.remove(child)

    def stop(self) -> dict[str, Any]:
        """Every child in reverse start order, then the API and etcd; the upstream's counts."""
        served: dict[str, Any] = {}
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        with contextlib.suppress(OSError, ValueError):
            served = json.loads((self.workdir / "upstream.stats").read_text())
        if self._client is not None:
            self._client.close()
        if self.api is not None:
            self.api.stop()
        self.etcd.stop()
        return served


def _obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "project": "default"},
        "spec": spec,
    }
