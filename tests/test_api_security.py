"""Authentication, role checks and the audit log's hash chain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx

from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.test_api_objects import DOMAIN


def mint(api: ApiServer, roles: list[str], projects: list[str], subject: str = "bob") -> str:
    with api.client() as c:
        r = c.post("/v1/tokens", json={"subject": subject, "roles": roles, "projects": projects})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def test_missing_and_bad_tokens_get_401_and_write_nothing(api: ApiServer, project: str) -> None:
    r = httpx.post(f"{api.url}/v1/domains", params={"project": project}, json=DOMAIN)
    assert r.status_code == 401
    assert "missing bearer token" in r.json()["error"]["message"]
    r = httpx.post(
        f"{api.url}/v1/domains",
        params={"project": project},
        json=DOMAIN,
        headers={"Authorization": "Bearer imt_nope"},
    )
    assert r.status_code == 401 and "invalid" in r.json()["error"]["message"]
    with api.client() as c:
        assert c.get("/v1/domains", params={"project": project}).json()["items"] == []


def test_roles_are_checked_on_every_mutation(api: ApiServer, project: str) -> None:
    viewer = mint(api, ["viewer"], [project], "val")
    with api.client(viewer) as v:
        assert v.get("/v1/domains", params={"project": project}).status_code == 200
        denied = v.post("/v1/domains", params={"project": project}, json=DOMAIN)
        assert denied.status_code == 403
        message = denied.json()["error"]["message"]
        assert "platformAdmin" in message and "val has: viewer" in message
        assert (
            v.post("/v1/apply", params={"project": project}, json={"items": [DOMAIN]}).status_code
            == 403
        )
        assert (
            v.post(
                "/v1/tokens", json={"subject": "x", "roles": ["orgAdmin"], "projects": ["*"]}
            ).status_code
            == 403
        )
    owner = mint(api, ["jobOwner"], [project], "jo")
    with api.client(owner) as j:
        r = j.post("/v1/domains", params={"project": project}, json=DOMAIN)
        assert r.status_code == 403
    with api.client() as c:
        assert c.get("/v1/domains", params={"project": project}).json()["items"] == []
        assert c.get("/v1/whoami").json()["roles"] == ["orgAdmin"]


def test_token_requests_are_validated(api: ApiServer) -> None:
    with api.client() as c:
        r = c.post("/v1/tokens", json={"subject": "x", "roles": ["superuser"], "projects": ["*"]})
        assert r.status_code == 422 and "superuser" in r.json()["error"]["message"]


def test_audit_chain_verifies_and_detects_tampering(
    etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer], project: str
) -> None:
    api = start_api(etcd)  # its own prefix: tampering here breaks no other test's chain
    with api.client() as c:
        c.post("/v1/domains", params={"project": project}, json=DOMAIN)
        c.patch(
            "/v1/domains/edge-eu",
            params={"project": project},
            json={"spec": {"netPolicy": {"rttBudgetMs": 5}}},
        )
        records = c.get("/v1/audit", params={"limit": 5}).json()["items"]
        mine = [r for r in records if r.get("project") == project]
        assert [r["action"] for r in mine][:2] == ["update", "create"]
        change = {d["path"]: d for d in mine[0]["diff"]}
        assert change["spec.netPolicy.rttBudgetMs"]["before"] == 25
        assert change["spec.netPolicy.rttBudgetMs"]["after"] == 5
        ok = c.get("/v1/audit:verify").json()
        assert ok["ok"] is True and ok["records"] >= 2

        # Rewrite one record in etcd behind the API's back: verify must name it.
        victim = mine[1]

        async def tamper() -> None:
            keys = KeyLayout(api.prefix)
            async with EtcdStore(api.etcd.endpoints) as store:
                key = keys.audit_record(victim["seq"])
                record = json.loads((await store.get(key)).value)
                record["actor"] = "mallory"
                await store.put(key, json.dumps(record).encode())

        asyncio.run(tamper())
        broken = c.get("/v1/audit:verify").json()
        assert broken["ok"] is False
        assert broken["brokenSeq"] == victim["seq"]
        assert "altered" in broken["problem"]


def test_a_tenant_token_sees_exactly_its_tenants_projects(api: ApiServer, project: str) -> None:
    other = project + "-x"
    tenant = "t-" + project
    with api.client() as c:
        record = {
            "apiVersion": "v1",
            "kind": "Project",
            "metadata": {"name": project},
            "spec": {"tenant": tenant, "organization": "acme"},
        }
        assert c.post("/v1/projects", json=record).status_code == 201
        for p in (project, other):
            c.post("/v1/domains", params={"project": p}, json=DOMAIN)
        token = c.post(
            "/v1/tokens",
            json={"subject": "tenant-ops", "roles": ["platformAdmin"], "tenants": [tenant]},
        ).json()["token"]
    with api.client(token) as t:
        assert t.get("/v1/domains/edge-eu", params={"project": project}).status_code == 200
        assert t.get("/v1/domains/edge-eu", params={"project": other}).status_code == 403
        every = t.get("/v1/domains", params={"project": "*"}).json()["items"]
        assert {o["metadata"]["project"] for o in every} == {project}
        # a tenant's operator may not move a project to another tenant
        moved = {**record, "spec": {"tenant": "mine-now"}}
        assert t.put(f"/v1/projects/{project}", json=moved).status_code == 403
