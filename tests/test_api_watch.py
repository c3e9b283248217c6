"""Watch streams over SSE, and the API riding out an etcd outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd
from tests.fixtures_api import ApiServer
from tests.test_api_objects import DOMAIN, wait_until


def domain(name: str, rtt: int = 25) -> dict:
    return {**DOMAIN, "metadata": {"name": name}, "spec": {"netPolicy": {"rttBudgetMs": rtt}}}


def events(
    client: httpx.Client,
    path: str,
    params: dict,
    headers: dict | None = None,
) -> Iterator[ServerSentEvent]:
    with connect_sse(
        client,
        "GET",
        path,
        params=params,
        headers=headers or {},
        timeout=httpx.Timeout(10, read=20),
    ) as source:
        for sse in source.iter_sse():
            if sse.event:  # skip pings
                yield sse


def take(stream: Iterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    return [next(stream) for _ in range(n)]


def test_watch_lists_then_streams_and_resumes_from_last_event_id(
    api: ApiServer, project: str
) -> None:
    with api.client() as c:
        c.post("/v1/domains", params={"project": project}, json=domain("a"))
        stream = events(c, "/v1/watch/domains", {"project": project})
        added, bookmark = take(stream, 2)
        assert added.event == "ADDED" and json.loads(added.data)["metadata"]["name"] == "a"
        assert bookmark.event == "BOOKMARK"

        c.post("/v1/domains", params={"project": project}, json=domain("b"))
        c.patch(
            "/v1/domains/a",
            params={"project": project},
            json={"spec": {"netPolicy": {"rttBudgetMs": 7}}},
        )
        c.delete("/v1/domains/b", params={"project": project})
        seen = take(stream, 3)
        assert [(e.event, json.loads(e.data)["metadata"]["name"]) for e in seen] == [
            ("ADDED", "b"),
            ("MODIFIED", "a"),
            ("DELETED", "b"),
        ]
        stream.close()

        # Reconnect after the first of those three: exactly the two later ones come again.
        resumed = events(
            c, "/v1/watch/domains", {"project": project}, {"Last-Event-ID": seen[0].id}
        )
        again = take(resumed, 2)
        assert [e.id for e in again] == [seen[1].id, seen[2].id]
        resumed.close()


def test_events_stream_follows_changes(api: ApiServer, project: str) -> None:
    with api.client() as c:
        first = c.post("/v1/domains", params={"project": project}, json=domain("e1")).json()
        stream = events(
            c,
            "/v1/events/stream",
            {"project": project},
            {"Last-Event-ID": str(int(first["metadata"]["resourceVersion"]) - 1)},
        )
        created = json.loads(next(stream).data)
        assert (created["reason"], created["name"], created["actor"]) == ("Created", "e1", "admin")
        c.delete("/v1/domains/e1", params={"project": project})
        deleted = json.loads(next(stream).data)
        assert deleted["reason"] == "Deleted"
        stream.close()


def test_reads_stay_up_and_writes_fail_cleanly_while_etcd_is_down(
    private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(private_etcd)
    with api.client() as c:
        assert c.post("/v1/domains", json=domain("before")).status_code == 201
        private_etcd.stop()
        wait_until(lambda: c.get("/v1/domains").json()["metadata"]["stale"])

        listed = c.get("/v1/domains")
        assert listed.status_code == 200
        assert listed.headers["X-InferMesh-Stale"] == "true"
        assert [o["metadata"]["name"] for o in listed.json()["items"]] == ["before"]

        refused = c.post("/v1/domains", json=domain("during"))
        assert refused.status_code == 503
        assert "etcd" in refused.json()["error"]["message"]
        assert httpx.get(f"{api.url}/readyz").status_code == 503

        private_etcd.start()
        wait_until(lambda: not c.get("/v1/domains").json()["metadata"]["stale"])
        assert c.post("/v1/domains", json=domain("after")).status_code == 201
        names = [o["metadata"]["name"] for o in c.get("/v1/domains").json()["items"]]
        assert names == ["after", "before"]  # the refused write was not half-done


def test_watch_rides_out_an_etcd_restart_without_gap_or_duplicate(
    private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(private_etcd)
    with api.client() as c:
        c.post("/v1/domains", json=domain("d0"))
        stream = events(c, "/v1/watch/domains", {})
        assert [e.event for e in take(stream, 2)] == ["ADDED", "BOOKMARK"]
        for i in (1, 2):
            c.post("/v1/domains", json=domain(f"d{i}"))
        private_etcd.restart()
        wait_until(lambda: c.post("/v1/domains", json=domain("d3")).status_code == 201)
        c.post("/v1/domains", json=domain("d4"))
        got = take(stream, 4)
        assert [json.loads(e.data)["metadata"]["name"] for e in got] == ["d1", "d2", "d3", "d4"]
        ids = [int(e.id) for e in got]
        assert ids == sorted(set(ids))
        stream.close()


def test_watch_from_a_compacted_revision_says_resync(
    private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(private_etcd)
    with api.client() as c:
        old = c.post("/v1/domains", json=domain("c1")).json()["metadata"]["resourceVersion"]
        latest = c.post("/v1/domains", json=domain("c2")).json()["metadata"]["resourceVersion"]

        async def compact() -> None:
            async with EtcdStore(private_etcd.endpoints) as store:
                await store.compact(int(latest))

        asyncio.run(compact())
        stream = events(c, "/v1/watch/domains", {"resourceVersion": str(int(old) - 1)})
        resync = next(stream)
        assert resync.event == "RESYNC"
        assert "list again" in json.loads(resync.data)["message"]
        stream.close()
        # a re-list gives the whole state and a revision to watch from
        listed = c.get("/v1/domains").json()
        assert [o["metadata"]["name"] for o in listed["items"]] == ["c1", "c2"]
