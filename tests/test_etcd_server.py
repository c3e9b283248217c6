"""EmbeddedEtcd: the etcd child process that `infermesh up` and the tests run."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd, EtcdStartError


def _health(server: EmbeddedEtcd) -> dict[str, str]:
    with urllib.request.urlopen(f"{server.client_url}/health", timeout=5) as resp:
        return json.loads(resp.read())


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_serves_health_and_stop_ends_the_process(tmp_path: Path) -> None:
    server = EmbeddedEtcd(tmp_path, unsafe_no_fsync=True)
    try:
        server.start()
        pid = server.pid
        assert pid is not None and server.running
        assert server.endpoint.startswith("127.0.0.1:")
        assert server.endpoints == [server.endpoint]
        assert _health(server)["health"] == "true"
        assert (tmp_path / "etcd.log").stat().st_size > 0
    finally:
        server.stop()
    assert not server.running
    assert not _process_exists(pid)
    server.stop()  # a second stop is harmless


def test_context_manager_stops_etcd(tmp_path: Path) -> None:
    with EmbeddedEtcd(tmp_path, unsafe_no_fsync=True) as server:
        pid = server.pid
        assert pid is not None and _health(server)["health"] == "true"
    assert not server.running and not _process_exists(pid)


async def test_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    server = EmbeddedEtcd(tmp_path, unsafe_no_fsync=True)
    try:
        server.start()
        endpoint, old_pid = server.endpoint, server.pid
        async with EtcdStore(server.endpoints) as store:
            revision = await store.put("/restart/kept", b"still here")
        server.restart()
        assert server.endpoint == endpoint and server.pid != old_pid
        async with EtcdStore(server.endpoints) as store:
            kv = await store.get("/restart/kept")
        assert kv is not None and kv.value == b"still here" and kv.mod_revision == revision
    finally:
        server.stop()


def test_port_in_use_fails_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedEtcd(tmp_path, client_port=taken.getsockname()[1], unsafe_no_fsync=True)
        with pytest.raises(EtcdStartError, match="address already in use") as info:
            server.start(timeout=20)
    assert str(tmp_path / "etcd.log") in str(info.value)
    assert not server.running
