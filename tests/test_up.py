"""`infermesh up` as a user runs it: the mesh comes up, the CLI finds it through the context
file, Ctrl-C stops every child, a restart keeps data and token, and a dying child stops the rest."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from infermesh.cli import main
from infermesh.dashboard import plot
from infermesh.store.etcd_server import free_port

CHEATSHEET = Path(__file__).resolve().parent.parent / "examples" / "seed-cheatsheet.yaml"
JOB = CHEATSHEET.parent / "job.yaml"
INVOKE = ["invoke", "chat-pro", "--stream", "--prompt", "Say hi", "-d", '{"max_tokens": 8}']


def children_of(pid: int, *, depth: int = 1 << 30) -> set[int]:
    """Every live descendant of `pid` (down to `depth` generations), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier and depth > 0:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
        depth -= 1
    return found


ONE_NODE_FLEET = """
apiVersion: v1
kind: Fleet
metadata: { name: tiny }
spec:
  groups:
    - { name: cpu, nodeClass: cpu-box, domain: lab, model: tiny@1, profile: CPU }
---
apiVersion: v1
kind: NodeClass
metadata: { name: cpu-box }
spec:
  hardware: { gpu: CPU, gpuCount: 1, vramGB: 16 }
  environment: { kind: device }
"""


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.strip()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.log = home.parent / f"up-{time.monotonic_ns()}.log"
        env = {**os.environ, "INFERMESH_HOME": str(home)}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infermesh", "up", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, since: float) -> dict:
        """The context file `up` wrote once everything was ready."""
        path = self.home / "context.json"
        deadline = time.monotonic() + 90
        while not (path.exists() and path.stat().st_mtime >= since):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)
        return json.loads(path.read_text())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)

    def kill(self) -> None:
        """Last resort after a failed test: `up` and the children it started, by PID."""
        if self.proc.poll() is None:
            children = children_of(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI in this test reads the context `up` writes here, and nothing else."""
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path / "home"))
    for var in ("INFERMESH_API", "INFERMESH_TOKEN", "INFERMESH_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_up_serves_the_cli_and_ctrl_c_stops_every_child(home: Path) -> None:
    port = free_port()
    started = time.time() - 1
    up = Up(home, "--api-port", str(port))
    try:
        ctx = up.wait_ready(started)
        assert ctx["api_url"] == f"http://127.0.0.1:{port}"
        assert ctx["token"] and ctx["etcd_endpoints"] and ctx["router_url"]
        assert (home / "context.json").stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{ctx['api_url']}/readyz").status_code == 200
        # etcd, the API, the router, the simulated fleet, the scheduler (with its Dask cluster)
        # and the dashboard, whose URL the banner lists and which answers its health check
        assert len(children_of(up.proc.pid, depth=1)) == 6
        dashboard = re.search(r"dashboard\s.*?(http://127\.0\.0\.1:\d+)", up.output())
        assert dashboard is not None, up.output()
        assert httpx.get(f"{dashboard[1]}/_stcore/health").text == "ok"
        # every page's head has the browser fetch the charts' Plotly bundle early, served
        # gzipped and cached for good (its name carries its version)
        page = httpx.get(f"{dashboard[1]}/slo", headers={"Accept": "text/html"})
        assert f'<link rel="preload" as="script" href="{plot.BUNDLE_URL}">' in page.text
        bundle = httpx.get(f"{dashboard[1]}/{plot.BUNDLE_URL}")
        assert bundle.content == plot.BUNDLE.read_bytes()
        assert bundle.headers["content-encoding"] == "gzip"
        assert "immutable" in bundle.headers["cache-control"]
        children = children_of(up.proc.pid)
        assert ctx["token"] not in up.output()  # the token is never printed

        runner = CliRunner()
        deadline = time.monotonic() + 30  # the API's watch brings the last reports
        while len(nodes := table(runner.invoke(main, ["get", "nodes"]).stdout)) < 1 + 8:
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)
        assert {row[nodes[0].index("STATUS")] for row in nodes[1:]} == {"Ready"}

        # Seed 000's endpoint streams through the router over the simulated fleet.
        deadline = time.monotonic() + 30  # the router's view brings the nodes' reports
        while (invoked := runner.invoke(main, [*INVOKE, "-v"])).exit_code != 0:
            assert time.monotonic() < deadline, invoked.output
            time.sleep(0.5)
        assert invoked.stdout.strip(), invoked.output
        assert "edge-h100-1" in invoked.stderr or "eu-" in invoked.stderr  # the node it chose

        first = runner.invoke(main, ["apply", "-f", str(CHEATSHEET)])
        assert first.exit_code == 0, first.output
        # The fleet applied the domains its nodes live in and seed 000's demo objects.
        assert first.stdout.splitlines() == [
            *(
                f"{o} unchanged"
                for o in (
                    "domain/edge-eu",
                    "capacitypool/prod-gold",
                    "strategy/hybrid_mesh@1.0",
                    "endpoint/chat-pro",
                )
            ),
            "job/ft-news-xxl created",
        ]
        again = runner.invoke(main, ["apply", "-f", str(CHEATSHEET)])
        assert [line.rsplit(" ", 1)[1] for line in again.stdout.splitlines()] == ["unchanged"] * 5

        # Seed 000's Job scaled to the fleet runs to completion on the scheduler's Dask cluster.
        submitted = runner.invoke(main, ["job", "submit", "-f", str(JOB)])
        assert submitted.exit_code == 0, submitted.output
        deadline = time.monotonic() + 120
        while (jobs := table(runner.invoke(main, ["get", "jobs"]).stdout))[1][1] != "Succeeded":
            assert time.monotonic() < deadline, jobs
            time.sleep(0.5)
        assert jobs[1][jobs[0].index("STEP")] == "200/200"
        assert list((home / "checkpoints" / "ft-news-xxl").glob("step-*.npz"))

        assert up.stop() == 0
        assert not [pid for pid in children if alive(pid)]
        assert "InferMesh stopped." in up.output()

        # Same home: same data, same token, so every context that holds it still works.
        started = time.time()
        up = Up(home, "--api-port", str(port), "--nodes", "0")
        assert up.wait_ready(started)["token"] == ctx["token"]
        listed = runner.invoke(main, ["get", "domains"])
        assert listed.exit_code == 0 and "edge-eu" in listed.stdout
        assert up.stop() == 0
    finally:
        up.kill()


@pytest.mark.parametrize(
    ("name", "argv_part"),
    [("api", "infermesh\0api"), ("etcd", "etcdbin/etcd"), ("fleet", "\0fleet\0")],
)
def test_a_dying_child_is_reported_and_stops_the_rest(
    home: Path, tmp_path: Path, name: str, argv_part: str
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(ONE_NODE_FLEET)
    started = time.time() - 1
    up = Up(home, "--api-port", str(free_port()), "--fleet", str(fleet))
    try:
        up.wait_ready(started)
        children = children_of(up.proc.pid)
        victim = next(
            pid for pid in children if argv_part in Path(f"/proc/{pid}/cmdline").read_text()
        )
        os.kill(victim, signal.SIGKILL)
        assert up.proc.wait(60) == 1
        assert f"{name} (pid {victim}) exited" in up.output()
        assert not [pid for pid in children if alive(pid)]
    finally:
        up.kill()
