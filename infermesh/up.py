"""`infermesh up`: the whole local mesh in one command.

Starts etcd (embedded, unless `--etcd` names a cluster), then each service in `services()` as a
child process, waits for each to be ready, writes the context file and supervises: Ctrl-C or
SIGTERM stops everything in reverse order; a child that dies takes the rest down with it.
Later services (the dashboard) are one more `Service` line each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from infermesh.context import Context, context_path, read_context_file, write_context
from infermesh.store.auth import new_token
from infermesh.store.etcd_server import EmbeddedEtcd, EtcdStartError, free_port

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 60.0
TOKEN_ENV = "INFERMESH_BOOTSTRAP_TOKEN"

console = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Service:
    """One child of `up`, as data: how to start it and how to know it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of ours; secrets go here
    ready_url: str | None = None
    url: str | None = None  # shown to the user


@dataclass
class Child:
    service: Service
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Plan:
    """What `up` will run, decided before anything starts."""

    home: Path
    etcd_endpoints: list[str]
    api_port: int
    token: str
    embedded_etcd: EmbeddedEtcd | None
    nodes: int | None = None  # fleet size; None: the fleet file's own counts; 0: no fleet
    fleet_port: int = 0
    project: str = "default"
    fleet_file: Path | None = None  # None: the built-in fleet
    router_port: int = 0
    scheduler_port: int = 0  # the scheduler's /metrics (and readiness)
    dask_port: int = 0  # the local Dask cluster's scheduler
    dashboard_port: int = 0  # the Streamlit dashboard; 0: none (--no-dashboard)

    @property
    def dask_address(self) -> str:
        return f"tcp://127.0.0.1:{self.dask_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"


def services(plan: Plan) -> list[Service]:
    """The mesh's processes in start order (stopped in reverse)."""
    python = [sys.executable, "-m", "infermesh"]
    out = [
        Service(
            "api",
            [
                *python,
                "api",
                "--etcd",
                ",".join(plan.etcd_endpoints),
                "--host",
                "127.0.0.1",
                "--port",
                str(plan.api_port),
            ],
            env={TOKEN_ENV: plan.token},  # never on the command line, where `ps` shows it
            ready_url=f"{plan.api_url}/readyz",
            url=plan.api_url,
        ),
    ]
    out.append(
        Service(
            "router",
            [
                *python,
                "--api",
                plan.api_url,
                "router",
                "--etcd",
                ",".join(plan.etcd_endpoints),
                "--port",
                str(plan.router_port),
            ],
            env={"INFERMESH_TOKEN": plan.token},  # to ship its SLI series to the API
            ready_url=f"{plan.router_url}/healthz",
            url=plan.router_url,
        )
    )
    if plan.nodes != 0:
        fleet_url = f"http://127.0.0.1:{plan.fleet_port}"
        argv = [
            *python,
            "--api",
            plan.api_url,
            "-p",
            plan.project,
            "fleet",
            "--etcd",
            ",".join(plan.etcd_endpoints),
            "--port",
            str(plan.fleet_port),
        ]
        if plan.nodes is not None:
            argv += ["--nodes", str(plan.nodes)]
        if plan.fleet_file is not None:
            argv += ["--fleet", str(plan.fleet_file)]
        out.append(
            Service(
                "fleet",
                argv,
                env={"INFERMESH_TOKEN": plan.token},
                ready_url=f"{fleet_url}/healthz",
                url=fleet_url,
            )
        )
        scheduler_url = f"http://127.0.0.1:{plan.scheduler_port}"
        out.append(
            Service(
                "scheduler",
                [
                    *python,
                    "scheduler",
                    "--etcd",
                    ",".join(plan.etcd_endpoints),
                    "--local-dask-port",
                    str(plan.dask_port),
                    "--metrics-port",
                    str(plan.scheduler_port),
                ],
                ready_url=f"{scheduler_url}/metrics",
                url=plan.dask_address,
            )
        )
    if plan.dashboard_port:  # a client of the API like any other: started last, stopped first
        dashboard_url = f"http://127.0.0.1:{plan.dashboard_port}"
        argv = [*python, "--api", plan.api_url, "-p", plan.project, "dashboard"]
        argv += ["--address", "127.0.0.1", "--port", str(plan.dashboard_port)]
        out.append(
            Service(
                "dashboard",
                argv,
                env={"INFERMESH_TOKEN": plan.token},
                ready_url=f"{dashboard_url}/_stcore/health",
                url=dashboard_url,
            )
        )
    return out


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def make_plan(
    home: Path,
    etcd: list[str] | None,
    api_port: int | None,
    nodes: int | None = None,
    project: str = "default",
    fleet_file: Path | None = None,
    dashboard: bool = True,
) -> Plan:
    etcd_dir = home / "etcd"
    reused = bool(etcd) or (etcd_dir / "data").exists()
    previous = read_context_file(context_path(home))
    # The tokens of a reused etcd stay valid; keep the one every shell's context already holds.
    token = previous.token if reused and previous and previous.token else None
    if api_port is None:
        api_port = 8080 if port_is_free(8080) else free_port()
    return Plan(
        home=home,
        etcd_endpoints=etcd or [],
        api_port=api_port,
        token=token or new_token(),
        embedded_etcd=None if etcd else EmbeddedEtcd(etcd_dir),
        nodes=nodes,
        fleet_port=free_port(),
        scheduler_port=free_port(),
        dask_port=free_port(),
        project=project,
        router_port=8090 if port_is_free(8090) else free_port(),
        fleet_file=fleet_file,
        dashboard_port=(8501 if port_is_free(8501) else free_port()) if dashboard else 0,
    )


class ChildFailed(Exception):
    pass


class Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.log_dir = plan.home / "logs"

    # lifecycle --------------------------------------------------------------------------
    def start_etcd(self) -> None:
        etcd = self.plan.embedded_etcd
        if etcd is None:
            return
        with console.status(f"starting etcd (data in {etcd.data_dir})"):
            etcd.start()
        self.plan.etcd_endpoints = etcd.endpoints

    def start(self, service: Service) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - open as long as the child runs
        env = {**os.environ, "INFERMESH_HOME": str(self.plan.home), **service.env}
        proc = subprocess.Popen(
            service.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
            start_new_session=True,
        )
        child = Child(service, proc, log_path, log)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, timeout: float = READY_TIMEOUT) -> None:
        url = child.service.ready_url
        if url is None:
            return
        deadline = time.monotonic() + timeout
        with console.status(f"waiting for {child.service.name} ({url})"):
            while not self.stopping.is_set():
                self.check(child)
                try:
                    if httpx.get(url, timeout=1.0).is_success:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"{child.service.name} (pid {child.pid}) was not ready "
                        f"within {timeout:.0f}s; log: {child.log_path}\n"
                        f"{log_tail(child.log_path)}"
                    )
                self.stopping.wait(0.1)

    def check(self, child: Child) -> None:
        code = child.proc.poll()
        if code is not None and not self.stopping.is_set():
            raise ChildFailed(
                f"{child.service.name} (pid {child.pid}) exited with status {code}; "
                f"log: {child.log_path}\n{log_tail(child.log_path)}"
            )

    def check_etcd(self) -> None:
        etcd = self.plan.embedded_etcd
        if etcd is not None and not etcd.running and not self.stopping.is_set():
            raise ChildFailed(
                f"etcd (pid {etcd.pid}) exited; log: {etcd.log_path}\n{log_tail(etcd.log_path)}"
            )

    def supervise(self) -> None:
        """Block until asked to stop; raise ChildFailed when a child dies on its own."""
        while not self.stopping.wait(0.5):
            self.check_etcd()
            for child in self.children:
                self.check(child)

    def stop_all(self) -> None:
        """Reverse start order: SIGTERM, then SIGKILL after the grace period."""
        self.stopping.set()
        for child in reversed(self.children):
            stop_process(child.proc, child.service.name)
            child.log.close()
        self.children.clear()
        if self.plan.embedded_etcd is not None:
            with console.status("stopping etcd"):
                self.plan.embedded_etcd.stop()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM end supervision; they are restored afterwards."""

        def on_signal(signum: int, _frame: object) -> None:
            self.stopping.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def stop_process(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        console.print(
            f"[yellow]{name} (pid {proc.pid}) ignored SIGTERM for {STOP_GRACE:.0f}s; killing it[/]"
        )
        proc.kill()
        proc.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read the log: {exc})"


def summary(plan: Plan, sup: Supervisor, ctx_file: Path) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    etcd = plan.embedded_etcd
    if etcd is not None:
        table.add_row("etcd", f"{etcd.endpoint}\n[dim]pid {etcd.pid} · data {etcd.data_dir}[/]")
    else:
        table.add_row("etcd", f"{', '.join(plan.etcd_endpoints)} [dim](external)[/]")
    for child in sup.children:
        table.add_row(
            child.service.name,
            f"{child.service.url or ''}\n[dim]pid {child.pid} · log {child.log_path}[/]",
        )
    table.add_row("context", str(ctx_file))
    table.add_row("", "")
    table.add_row("next", "mesh apply -f examples/seed-cheatsheet.yaml")
    table.add_row("", "mesh get endpoints")
    table.add_row("", "mesh events tail -f")
    table.add_row("stop", "Ctrl-C")
    return Panel(table, title="InferMesh is up", border_style="green", expand=False)


def run(
    *,
    home: Path,
    etcd: list[str] | None = None,
    api_port: int | None = None,
    project: str | None = None,
    nodes: int | None = None,
    fleet_file: Path | None = None,
    dashboard: bool = True,
) -> int:
    """Run the local mesh until SIGINT/SIGTERM (exit 0) or a child's death (exit 1).

    `etcd`: endpoints of an etcd to use instead of starting one; `project`: the context's
    project (default: the one the context file already names, else `default`); `nodes`: the
    simulated fleet's size (None: the fleet file's own counts; 0: no fleet); `fleet_file`: a
    fleet file instead of the built-in 8-node fleet; `dashboard`: start the Streamlit
    dashboard too."""
    home.mkdir(parents=True, exist_ok=True)
    previous = read_context_file(context_path(home))
    project = project or (previous.project if previous else None) or "default"
    plan = make_plan(home, etcd, api_port, nodes, project, fleet_file, dashboard)
    sup = Supervisor(plan)
    with sup.signals():
        try:
            sup.start_etcd()
            for service in services(plan):
                if sup.stopping.is_set():
                    break
                sup.wait_ready(sup.start(service))
            if not sup.stopping.is_set():
                ctx = read_context_file(context_path(home)) or Context()
                ctx.api_url, ctx.token = plan.api_url, plan.token
                ctx.etcd_endpoints = plan.etcd_endpoints
                ctx.router_url = plan.router_url
                ctx.dask_scheduler = plan.dask_address if plan.nodes != 0 else None
                ctx.project = project
                console.print(summary(plan, sup, write_context(ctx, home=home)))
                sup.supervise()
        except ChildFailed as exc:
            console.print(
                f"[red]error:[/] {escape(str(exc))}\n[red]stopping the mesh[/]", soft_wrap=True
            )
            return 1
        except (EtcdStartError, OSError) as exc:  # say it, then stop whatever did start
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            return 1
        finally:
            sup.stop_all()
    console.print("InferMesh stopped.")
    return 0
