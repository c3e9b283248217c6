"""The peer routers bench/router.py compares ours with, as they are run: `vllm-router` (vLLM's
router) and `smg` (SGLang's model gateway), both Rust, from their PyPI wheels in `.venv-peers`
(`make bench-peers` installs them from bench/peers/requirements.txt; nothing downloads here).

Each gets the runtime URLs on its command line, a policy, a port of 127.0.0.1 and ROUTER_CORE,
as ours does. Their Prometheus listeners get free ports (both default to fixed ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, free_port  # bench/ is on sys.path
from router_mesh import ROUTER_CORE, Mesh, taskset

PEERS_VENV = ROOT / ".venv-peers"
POLICIES = ("round_robin", "power_of_two", "cache_aware")


@dataclass(frozen=True)
class Peer:
    name: str  # its command in .venv-peers/bin

    @property
    def binary(self) -> Path:
        return PEERS_VENV / "bin" / self.name

    def argv(self, port: int, workers: list[str], policy: str) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(port), "--policy", policy]
        common += ["--worker-urls", *workers]
        common += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
        common += ["--worker-startup-check-interval", "1"]
        if self.name == "smg":
            return [
                *taskset(ROUTER_CORE),
                str(self.binary),
                "launch",
                *common,
                "--log-level",
                "warn",
            ]
        return [*taskset(ROUTER_CORE), str(self.binary), *common, "--log-level", "warning"]


PEERS = (Peer("vllm-router"), Peer("smg"))


def installed() -> list[Peer]:
    return [p for p in PEERS if p.binary.exists()]


def missing_message() -> str:
    return (
        f"no peer router in {PEERS_VENV}: run `make bench-peers` (it installs vllm-router and "
        "smg there from bench/peers/requirements.txt, then runs this)"
    )


def versions() -> dict[str, str]:
    """The installed peers' versions, from their wheels' metadata in .venv-peers."""
    out: dict[str, str] = {}
    for dist in (PEERS_VENV / "lib").glob("python3*/site-packages/*.dist-info"):
        name, _, version = dist.name.removesuffix(".dist-info").partition("-")
        if name.replace("_", "-") in {p.name for p in PEERS}:
            out[name.replace("_", "-")] = version
    return out


def start_peer(mesh: Mesh, peer: Peer, workers: list[str], policy: str, tag: str) -> int:
    """The peer on ROUTER_CORE in front of `workers`; its port. Stop it with
    `mesh.stop_child(mesh.router)`."""
    port = free_port()
    mesh.router = mesh.child(f"{peer.name}-{policy}-{tag}", peer.argv(port, workers, policy))
    mesh.router_port = port
    return port
