"""Fixtures that run the real control-plane API (`infermesh api`) as a child process on real etcd.

`api` is one server for the session (tests keep apart by project names); `start_api` starts a
private one, for tests that stop etcd or need an empty store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermesh.store.auth import new_token
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from tests.processes import wait_until_serving


@dataclass
class ApiServer:
    url: str
    token: str
    etcd: EmbeddedEtcd
    prefix: str
    process: subprocess.Popen[bytes]
    log: Path

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_api(
    etcd: EmbeddedEtcd,
    log_dir: Path,
    *,
    max_body_bytes: int | None = None,
    series_db: Path | None = None,
    series_retention: int | None = None,
) -> ApiServer:
    """Start `infermesh api`; its series store is a file in `log_dir` unless `series_db`."""
    port = free_port()
    prefix = f"/t-{uuid.uuid4().hex[:10]}"
    token = new_token()
    log = log_dir / f"api-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "infermesh",
        "api",
        "--etcd",
        etcd.endpoint,
        "--port",
        str(port),
        "--etcd-prefix",
        prefix,
        "--series-db",
        str(series_db or log_dir / f"series-{port}.sqlite"),
    ]
    if series_retention:
        argv += ["--series-retention", str(series_retention)]
    if max_body_bytes:
        argv += ["--max-body-bytes", str(max_body_bytes)]
    env = {**os.environ, "INFERMESH_BOOTSTRAP_TOKEN": token}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ApiServer(f"http://127.0.0.1:{port}", token, etcd, prefix, process, log)
    try:
        wait_until_serving(process, f"{server.url}/readyz", log, "API")
    except RuntimeError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def api(etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = launch_api(etcd, tmp_path_factory.mktemp("api"))
    yield server
    server.stop()


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """Start private APIs (on a given etcd); all are stopped after the test."""
    started: list[ApiServer] = []

    def start(etcd: EmbeddedEtcd, **kwargs: Any) -> ApiServer:
        server = launch_api(etcd, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """An etcd of this test's own, for tests that stop or restart it."""
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True)
    etcd.start()
    yield etcd
    etcd.stop()


@pytest.fixture
def project() -> str:
    """A fresh project name, so tests sharing the session API never see each other's objects."""
    return f"p-{uuid.uuid4().hex[:8]}"
