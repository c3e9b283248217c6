"""Jobs through the API: the Job object merged with the scheduler's status, and the ranks' logs.

The status and log keys are written here the way the scheduler writes them (straight into etcd,
under the status prefix), so these tests pin the API's half of the contract in
docs/architecture.md ("Jobs")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from infermesh.client import AsyncMeshClient, LogLine, MeshClient
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.test_api_objects import wait_until
from tests.test_api_security import mint
from tests.test_api_watch import events, take


def job(name: str = "ft") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"parallelism": {"dp": 2, "tp": 2}},
    }


def now() -> str:
    return datetime.now(UTC).isoformat()


def running(project: str, step: int = 120, **changes: Any) -> dict[str, Any]:
    """A job status as the scheduler writes it: running on 4 GPUs of one node."""
    return {
        "phase": "Running",
        "reason": None,
        "message": None,
        "attempt": 1,
        "gpus": 4,
        "dp": 2,
        "nodes": {f"{project}/gpu-1": 4},
        "topology": {
            "algorithm": "hierarchical",
            "compression": True,
            "fusionWindowMs": 5,
            "interFanout": 4,
        },
        "step": step,
        "totalSteps": 1000,
        "stepTimeP95Ms": 412.5,
        "throughputTps": 2000.0,
        "lastCheckpoint": {"step": 100, "time": now()},
        "gpuHours": 1.25,
        "costUSD": 3.5,
        "pool": "train-gold",
        "quotaGpuHours": 100.0,
        "restarts": 1,
        "preemptions": 0,
        "recoveries": 1,
        "stepsLost": 20,
        "queuedSince": None,
        "startedAt": now(),
        "finishedAt": None,
        "updated": now(),
        "conditions": [{"type": "Scheduled", "status": "True", "reason": "Placed"}],
    } | changes


def lines(*texts: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"time": now(), "rank": rank, "line": text} for rank, text in texts]


class Scheduler:
    """Writes a job's status and logs as the scheduler does: straight into etcd."""

    def __init__(self, api: ApiServer, project: str, name: str = "ft") -> None:
        keys = KeyLayout(api.prefix)
        self.status_key = keys.status("jobs", project, name)
        self.logs_key = keys.logs("jobs", project, name)
        self.endpoints = api.etcd.endpoints

    def _run(self, work: Any) -> Any:
        async def go() -> Any:
            async with EtcdStore(self.endpoints) as store:
                return await work(store)

        return asyncio.run(go())

    def status(self, body: dict[str, Any]) -> None:
        self._run(lambda store: store.put(self.status_key, json.dumps(body)))

    def logs(self, attempt: int, written: list[dict[str, Any]]) -> None:
        doc = json.dumps({"attempt": attempt, "lines": written})
        self._run(lambda store: store.put(self.logs_key, doc))

    def stored(self) -> list[str]:
        """Which of the two keys exist in etcd."""

        async def read(store: EtcdStore) -> list[str]:
            keys = (self.status_key, self.logs_key)
            return [k for k in keys if await store.get(k) is not None]

        return self._run(read)


def phase(c: httpx.Client, project: str, name: str = "ft") -> str:
    return c.get(f"/v1/jobs/{name}", params={"project": project}).json()["status"]["phase"]


def test_a_job_the_scheduler_has_not_seen_is_pending_not_scheduled(
    api: ApiServer, project: str
) -> None:
    with api.client() as c:
        assert c.post("/v1/jobs", params={"project": project}, json=job()).status_code == 201
        got = c.get("/v1/jobs/ft", params={"project": project}).json()
        assert got["status"]["phase"] == "Pending"
        assert got["status"]["reason"] == "NotScheduled"
        assert "scheduler" in got["status"]["message"]
        assert [x["type"] for x in got["status"]["conditions"]] == ["ResolvedRefs"]
        listed = c.get("/v1/jobs", params={"project": project}).json()["items"]
        assert [(j["metadata"]["name"], j["status"]["phase"]) for j in listed] == [
            ("ft", "Pending")
        ]


def test_scheduler_status_is_merged_into_get_list_and_watch(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    with api.client() as c:
        stream = events(c, "/v1/watch/jobs", {"project": project})
        assert [e.event for e in take(stream, 1)] == ["BOOKMARK"]
        c.post("/v1/jobs", params={"project": project}, json=job())
        added = next(stream)
        assert added.event == "ADDED"
        assert json.loads(added.data)["status"]["phase"] == "Pending"

        scheduler.status(running(project))
        wait_until(lambda: phase(c, project) == "Running")
        modified = next(stream)
        assert modified.event == "MODIFIED"
        seen = json.loads(modified.data)
        assert (seen["status"]["phase"], seen["status"]["step"]) == ("Running", 120)
        assert seen["spec"]["parallelism"] == {"dp": 2, "tp": 2, "pp": 1}

        got = c.get("/v1/jobs/ft", params={"project": project}).json()
        assert got["status"]["gpus"] == 4 and got["status"]["lastCheckpoint"]["step"] == 100
        # the scheduler's conditions first, then the object's own
        assert [x["type"] for x in got["status"]["conditions"]] == ["Scheduled", "ResolvedRefs"]
        listed = c.get("/v1/jobs", params={"project": "*"}).json()["items"]
        mine = [j for j in listed if j["metadata"]["project"] == project]
        assert [j["status"]["phase"] for j in mine] == ["Running"]

        c.delete("/v1/jobs/ft", params={"project": project})
        deleted = next(stream)
        assert deleted.event == "DELETED"
        assert json.loads(deleted.data)["metadata"]["name"] == "ft"
        stream.close()


def test_a_status_without_its_job_is_not_shown(api: ApiServer, project: str) -> None:
    Scheduler(api, project, "gone").status(running(project))
    with api.client() as c:
        c.post("/v1/jobs", params={"project": project}, json=job("kept"))
        assert [
            j["metadata"]["name"]
            for j in c.get("/v1/jobs", params={"project": project}).json()["items"]
        ] == ["kept"]
        missing = c.get("/v1/jobs/gone", params={"project": project})
        assert missing.status_code == 404 and "'gone'" in missing.json()["error"]["message"]


def test_logs_filter_by_rank_and_tail(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    with api.client() as c:
        c.post("/v1/jobs", params={"project": project}, json=job())

        def logs(**params: Any) -> dict[str, Any]:
            r = c.get("/v1/jobs/ft/logs", params={"project": project, **params})
            assert r.status_code == 200, r.text
            return r.json()

        assert logs() == {"attempt": 0, "lines": []}  # nothing written yet
        scheduler.logs(2, lines((0, "step 1"), (1, "step 1"), (0, "step 2"), (1, "step 2")))
        everything = logs()
        assert everything["attempt"] == 2
        assert [(x["rank"], x["line"]) for x in everything["lines"]] == [
            (0, "step 1"),
            (1, "step 1"),
            (0, "step 2"),
            (1, "step 2"),
        ]
        assert [x["line"] for x in logs(rank=1)["lines"]] == ["step 1", "step 2"]
        assert [(x["rank"], x["line"]) for x in logs(tail=1)["lines"]] == [(1, "step 2")]
        assert [(x["rank"], x["line"]) for x in logs(rank=0, tail=1)["lines"]] == [(0, "step 2")]
        assert logs(tail=0)["lines"] == []

        bad = c.get("/v1/jobs/ft/logs", params={"project": project, "tail": "-1"})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("tail:")


def test_logs_of_a_missing_job_are_404_naming_it(api: ApiServer, project: str) -> None:
    with api.client() as c:
        for params in ({}, {"follow": "true"}):
            r = c.get("/v1/jobs/nope/logs", params={"project": project, **params})
            assert r.status_code == 404
            assert r.json()["error"]["message"] == f"Job 'nope' not found in project '{project}'"


def test_logs_need_read_on_the_project_like_every_read(api: ApiServer, project: str) -> None:
    with api.client() as c:
        c.post("/v1/jobs", params={"project": project}, json=job())
    outsider = mint(api, ["viewer"], ["elsewhere"], "eve")
    with api.client(outsider) as c:
        got = c.get("/v1/jobs/ft", params={"project": project})
        logs = c.get("/v1/jobs/ft/logs", params={"project": project})
        followed = c.get("/v1/jobs/ft/logs", params={"project": project, "follow": "true"})
        assert got.status_code == logs.status_code == followed.status_code == 403
        assert logs.json() == got.json() == followed.json()
        assert "eve has no access to project" in logs.json()["error"]["message"]


def test_follow_sends_the_tail_then_each_new_line(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    first = lines((0, "a"), (1, "b"), (0, "c"))
    scheduler.logs(1, first)
    with api.client() as c:
        c.post("/v1/jobs", params={"project": project}, json=job())
        stream = events(c, "/v1/jobs/ft/logs", {"project": project, "follow": "true", "tail": 1})
        opened = next(stream)
        assert opened.event == "lines"
        assert [x["line"] for x in json.loads(opened.data)["lines"]] == ["c"]

        # The scheduler keeps the last lines only: the oldest one drops out as two arrive.
        scheduler.logs(1, [*first[1:], *lines((1, "d"), (0, "e"))])
        grown = next(stream)
        assert [x["line"] for x in json.loads(grown.data)["lines"]] == ["d", "e"]

        stream.close()

        # A fresh list (nothing in common with the last one) is all new, and a client that
        # reconnects after the last event it saw gets just that, no tail again.
        scheduler.logs(2, lines((0, "restarted")))
        resumed = events(
            c,
            "/v1/jobs/ft/logs",
            {"project": project, "follow": "true"},
            {"Last-Event-ID": grown.id},
        )
        again = json.loads(next(resumed).data)
        assert (again["attempt"], [x["line"] for x in again["lines"]]) == (2, ["restarted"])
        resumed.close()


def test_sdk_reads_and_follows_one_ranks_lines(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    with MeshClient(api.url, api.token, project=project) as client:
        client.create(job())
        follow = client.follow_job_logs("ft", rank=1)
        written = lines((0, "r0 one"), (1, "r1 one"))
        scheduler.logs(1, written)
        first = next(follow)
        assert isinstance(first, LogLine)
        assert (first.attempt, first.rank, first.line) == (1, 1, "r1 one")
        written += lines((0, "r0 two"), (1, "r1 two"))
        scheduler.logs(1, written)
        assert next(follow).line == "r1 two"
        follow.close()

        assert [x.line for x in client.job_logs("ft", rank=0).lines] == ["r0 one", "r0 two"]
        assert client.job_logs("ft", tail=1).lines[0].line == "r1 two"


async def test_the_async_sdk_reads_and_follows_logs_too(
    api: ApiServer, project: str, store: EtcdStore
) -> None:
    key = KeyLayout(api.prefix).logs("jobs", project, "ft")
    async with AsyncMeshClient(api.url, api.token, project=project) as client:
        await client.create(job())
        hello = lines((0, "hello"))
        await store.put(key, json.dumps({"attempt": 3, "lines": hello}))
        assert [x.line for x in (await client.job_logs("ft")).lines] == ["hello"]
        follow = client.follow_job_logs("ft")
        assert (await anext(follow)).line == "hello"  # the stream is open from here on
        await store.put(key, json.dumps({"attempt": 3, "lines": [*hello, *lines((1, "bye"))]}))
        got = await anext(follow)
        assert (got.attempt, got.rank, got.line) == (3, 1, "bye")
        await follow.aclose()


def test_deleting_a_job_deletes_its_status_and_logs(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    with api.client() as c:
        c.post("/v1/jobs", params={"project": project}, json=job())
        scheduler.status(running(project, phase="Succeeded"))
        scheduler.logs(1, lines((0, "done")))
        wait_until(lambda: phase(c, project) == "Succeeded")
        assert scheduler.stored() == [scheduler.status_key, scheduler.logs_key]

        assert c.delete("/v1/jobs/ft", params={"project": project}).status_code == 200
        assert scheduler.stored() == []
        # Submitted again, it starts clean.
        c.post("/v1/jobs", params={"project": project}, json=job())
        assert phase(c, project) == "Pending"
        logs = c.get("/v1/jobs/ft/logs", params={"project": project}).json()
        assert logs == {"attempt": 0, "lines": []}
