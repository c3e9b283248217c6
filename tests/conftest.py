"""Shared fixtures: one real etcd for the whole session, and a per-test key prefix.

Tests share the session etcd and stay apart by writing only under their own `etcd_prefix`.
Tests that stop, restart or compact etcd start an `EmbeddedEtcd` of their own instead.
Fixtures of other areas (the API server, clients) live in modules of their own, such as
`tests/fixtures_api.py`, which are listed in a `pytest_plugins` line here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """A real etcd on free 127.0.0.1 ports, stopped (by PID) at the end of the session."""
    server = EmbeddedEtcd(tmp_path_factory.mktemp("etcd"), unsafe_no_fsync=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses, e.g. `/t-1a2b3c4d5e6f/`."""
    return f"/t-{uuid.uuid4().hex[:12]}/"


@pytest_asyncio.fixture(loop_scope="session")
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[EtcdStore]:
    """A connected `EtcdStore` on the session etcd."""
    async with EtcdStore(etcd.endpoints) as connected:
        yield connected


pytest_plugins = ["tests.fixtures_api"]
