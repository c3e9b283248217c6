"""The SDK against the real API: CRUD, apply, actions, errors, watches that survive a dropped
connection, stale reads while etcd is down, and the async client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infermesh.client import AsyncMeshClient, MeshClient, WatchEvent
from infermesh.context import Context
from infermesh.errors import (
    Conflict,
    EtcdUnavailable,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from tests.fixtures_api import ApiServer


def domain(name: str, project: str, rtt: int = 25) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Domain",
        "metadata": {"name": name, "project": project, "labels": {"tier": "edge"}},
        "spec": {"netPolicy": {"rttBudgetMs": rtt}},
    }


ENDPOINT = {
    "apiVersion": "v1",
    "kind": "Endpoint",
    "metadata": {"name": "chat-pro"},
    "spec": {
        "modelRef": "chat-70b@q4_k_m",
        "domains": [{"name": "edge-eu", "weight": 60}, {"name": "cloud-eu", "weight": 40}],
    },
}


@pytest.fixture
def client(api: ApiServer, project: str) -> Iterator[MeshClient]:
    with MeshClient(api.url, api.token, project=project) as c:
        yield c


def names(items: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in items]


def test_crud_round_trip_with_kind_aliases(client: MeshClient, project: str) -> None:
    created = client.create(domain("edge-eu", project))
    assert created["metadata"]["generation"] == 1 and not created.stale

    assert client.get("dom", "edge-eu")["spec"]["netPolicy"]["rttBudgetMs"] == 25
    listed = client.list("domains")
    assert names(listed.items) == ["edge-eu"]
    assert int(listed.resource_version) > 0 and listed.stale is False
    assert client.list("Domain", label_selector="tier=cloud").items == []

    patched = client.patch("domains", "edge-eu", {"spec": {"netPolicy": {"rttBudgetMs": 9}}})
    assert patched["spec"]["netPolicy"]["rttBudgetMs"] == 9

    replaced = client.replace(
        {
            **domain("edge-eu", project, rtt=11),
            "metadata": {
                **domain("edge-eu", project)["metadata"],
                "resourceVersion": patched["metadata"]["resourceVersion"],
            },
        }
    )
    assert replaced["metadata"]["generation"] == 3

    with pytest.raises(Conflict):  # an old resourceVersion no longer matches
        client.delete("domains", "edge-eu", resource_version=created["metadata"]["resourceVersion"])
    client.delete("domains", "edge-eu")
    with pytest.raises(NotFound, match="edge-eu"):
        client.get("domains", "edge-eu")


def test_server_errors_come_back_as_their_classes(
    client: MeshClient, api: ApiServer, project: str
) -> None:
    client.create(domain("d1", project))
    with pytest.raises(Conflict, match="already exists"):
        client.create(domain("d1", project))
    bad = domain("d2", project)
    bad["spec"] = {"netPolicy": {"rttBudgetMs": -1}}
    with pytest.raises(Invalid) as invalid:
        client.create(bad)
    assert invalid.value.status == 422
    assert [e["field"] for e in invalid.value.details["errors"]] == ["spec.netPolicy.rttBudgetMs"]
    with pytest.raises(NotFound, match="unknown kind 'gizmos'"):
        client.list("gizmos")
    with (
        MeshClient(api.url, "not-a-token", project=project) as stranger,
        pytest.raises(Unauthorized),
    ):
        stranger.list("domains")


def test_unreachable_api_names_the_url_and_infermesh_up() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with MeshClient(url, "t") as c, pytest.raises(Unavailable) as exc:
        c.list("domains")
    assert url in exc.value.message and "infermesh up" in exc.value.message


def test_from_context_uses_its_url_token_and_project(api: ApiServer, project: str) -> None:
    ctx = Context(api_url=api.url, token=api.token, project=project)
    with MeshClient.from_context(ctx) as c:
        c.create(domain("ctx", project))
        assert names(c.list("domains").items) == ["ctx"]


def test_apply_reports_actions_and_warnings(client: MeshClient, project: str) -> None:
    objects = [domain("edge-eu", project), ENDPOINT]
    first = client.apply(objects)
    assert [(r.kind, r.name, r.project, r.action) for r in first] == [
        ("Domain", "edge-eu", project, "created"),
        ("Endpoint", "chat-pro", project, "created"),
    ]
    assert first[1].warnings == ["Model chat-70b@q4_k_m not found", "Domain cloud-eu not found"]
    assert [r.action for r in client.apply(objects)] == ["unchanged", "unchanged"]
    with pytest.raises(Invalid, match="unresolved references"):
        client.apply(objects, strict=True)
    dry = client.apply([domain("other", project)], dry_run=True)
    assert "dry run" in dry[0].action
    assert names(client.list("domains").items) == ["edge-eu"]


def test_actions_tokens_events_and_audit(client: MeshClient, api: ApiServer, project: str) -> None:
    client.apply(
        [
            domain("edge-eu", project),
            {
                "apiVersion": "v1",
                "kind": "NodeClass",
                "metadata": {"name": "h100"},
                "spec": {"hardware": {"gpu": "H100-80G"}, "environment": {"kind": "cloud"}},
            },
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "gpu-1"},
                "spec": {"nodeClassRef": "h100", "domain": "edge-eu"},
            },
        ]
    )
    cordoned = client.action("no", "gpu-1", "cordon", {"reason": "maintenance"})
    assert cordoned["spec"]["cordoned"] is True

    events = client.events(kind="Node", name="gpu-1")
    assert [e["reason"] for e in events] == ["Cordon", "Created"]  # newest first
    assert "maintenance" in events[0]["message"]
    assert client.audit(limit=3)[0]["action"] == "cordon"
    verified = client.audit_verify()
    assert verified["ok"] is True and verified["records"] >= 4

    assert client.whoami()["roles"] == ["orgAdmin"]
    minted = client.create_token("ci-viewer", ["viewer"], [project])
    with MeshClient(api.url, minted["token"], project=project) as viewer:
        assert viewer.whoami()["subject"] == "ci-viewer"
        assert names(viewer.list("nodes").items) == ["gpu-1"]
        with pytest.raises(Forbidden, match="required"):
            viewer.action("nodes", "gpu-1", "uncordon")
    assert client.healthz()["status"] == "ok"
    assert client.readyz()["etcd"] is True
    assert client.server_version()


def test_events_stream_resumes_from_the_listing(client: MeshClient, project: str) -> None:
    client.create(domain("e1", project))
    recent = client.events()
    client.delete("domains", "e1")
    stream = client.events_stream(last_event_id=recent.resource_version)
    deleted = next(stream)
    assert (deleted["reason"], deleted["name"]) == ("Deleted", "e1")
    stream.close()


class Proxy:
    """A TCP relay in front of the API whose connections a test can cut, as a flaky network
    would, while new connections still get through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            self.accepted += 1
            self.open += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open.clear()

    def close(self) -> None:
        self.server.close()
        self.cut()


def summary(event: WatchEvent) -> tuple[str, str]:
    return event.type, event.object.get("metadata", {}).get("name", "")


def test_watch_lists_then_follows_and_resumes_after_a_dropped_connection(
    api: ApiServer, client: MeshClient, project: str
) -> None:
    client.create(domain("a", project))
    proxy = Proxy(int(api.url.rsplit(":", 1)[1]))
    try:
        with MeshClient(proxy.url, api.token, project=project) as flaky:
            stream = flaky.watch("domains")
            first = [next(stream), next(stream)]
            assert [e.type for e in first] == ["ADDED", "BOOKMARK"]
            assert summary(first[0]) == ("ADDED", "a")

            client.create(domain("b", project))
            assert summary(next(stream)) == ("ADDED", "b")
            proxy.cut()  # the stream breaks; changes keep happening meanwhile
            client.patch("domains", "a", {"spec": {"netPolicy": {"rttBudgetMs": 7}}})
            client.delete("domains", "b")
            # Resumed with Last-Event-ID: exactly the missed changes, none repeated.
            assert [summary(next(stream)), summary(next(stream))] == [
                ("MODIFIED", "a"),
                ("DELETED", "b"),
            ]
            assert proxy.accepted == 2  # it did reconnect
            stream.close()
    finally:
        proxy.close()


def test_watch_from_a_resource_version_sends_only_later_changes(
    client: MeshClient, project: str
) -> None:
    client.create(domain("old", project))
    since = client.list("domains").resource_version
    client.create(domain("new", project))
    stream = client.watch("dom", resource_version=since)
    event = next(stream)
    assert summary(event) == ("ADDED", "new") and int(event.resource_version) > int(since)
    stream.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_stale_reads_are_flagged_while_etcd_is_down(
    private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(private_etcd)
    with MeshClient(api.url, api.token) as c:
        c.create(domain("before", "default"))
        private_etcd.stop()
        wait_until(lambda: c.list("domains").stale)
        assert c.get("domains", "before").stale
        with pytest.raises(EtcdUnavailable):
            c.create(domain("during", "default"))
        private_etcd.start()
        wait_until(lambda: not c.list("domains").stale)


async def test_async_client_does_the_same_over_asyncio(api: ApiServer, project: str) -> None:
    async with AsyncMeshClient(api.url, api.token, project=project) as c:
        results = await c.apply([domain("edge-eu", project)])
        assert results[0].action == "created"
        assert (await c.get("dom", "edge-eu"))["metadata"]["project"] == project
        since = (await c.list("domains")).resource_version
        stream = c.watch("domains", resource_version=since)
        await c.patch("domains", "edge-eu", {"metadata": {"labels": {"tier": "gold"}}})
        event = await asyncio.wait_for(anext(stream), 10)
        assert summary(event) == ("MODIFIED", "edge-eu")
        await stream.aclose()
        with pytest.raises(NotFound):
            await c.get("domains", "missing")
    async with AsyncMeshClient(f"http://127.0.0.1:{free_port()}") as down:
        with pytest.raises(Unavailable, match="infermesh up"):
            await down.healthz()
