"""Control-plane API: CRUD, optimistic concurrency, apply, references, bad input."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.fixtures_api import ApiServer

DOMAIN = {
    "apiVersion": "v1",
    "kind": "Domain",
    "metadata": {"name": "edge-eu", "labels": {"tier": "edge"}},
    "spec": {
        "scope": {"cells": ["eu-west/*"]},
        "netPolicy": {"allowLinkClasses": ["intra-zone", "inter-zone"], "rttBudgetMs": 25},
        "residency": {"region": "EU", "privacy": "edge-preferred"},
    },
}
ENDPOINT = {
    "apiVersion": "v1",
    "kind": "Endpoint",
    "metadata": {"name": "chat-pro"},
    "spec": {
        "modelRef": "chat-70b@q4_k_m",
        "domains": [{"name": "edge-eu", "weight": 60}, {"name": "cloud-eu", "weight": 40}],
        "slo": {"p95_ms": 300, "ttft_ms": 120},
        "strategy": {"ref": "hybrid_mesh@1.0"},
        "capacityPoolRef": "prod-gold",
    },
}


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_create_get_list_delete(api: ApiServer, project: str) -> None:
    with api.client() as c:
        created = c.post("/v1/domains", params={"project": project}, json=DOMAIN)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["metadata"]["project"] == project
        assert body["metadata"]["generation"] == 1
        assert int(body["metadata"]["resourceVersion"]) > 0

        got = c.get("/v1/domains/edge-eu", params={"project": project}).json()
        assert got["spec"]["netPolicy"]["rttBudgetMs"] == 25
        assert got["metadata"]["uid"] == body["metadata"]["uid"]

        listed = c.get("/v1/domains", params={"project": project}).json()
        assert [o["metadata"]["name"] for o in listed["items"]] == ["edge-eu"]
        assert listed["metadata"]["stale"] is False
        assert (
            c.get("/v1/domains", params={"project": project, "labelSelector": "tier=cloud"}).json()[
                "items"
            ]
            == []
        )

        again = c.post("/v1/domains", params={"project": project}, json=DOMAIN)
        assert again.status_code == 409
        assert "already exists" in again.json()["error"]["message"]

        assert c.delete("/v1/domains/edge-eu", params={"project": project}).status_code == 200
        gone = c.get("/v1/domains/edge-eu", params={"project": project})
        assert gone.status_code == 404
        assert "edge-eu" in gone.json()["error"]["message"]


def test_stale_resource_version_is_refused(api: ApiServer, project: str) -> None:
    with api.client() as c:
        first = c.post("/v1/domains", params={"project": project}, json=DOMAIN).json()
        rv = first["metadata"]["resourceVersion"]
        update = {**first, "spec": {**first["spec"], "netPolicy": {"rttBudgetMs": 30}}}
        ok = c.put("/v1/domains/edge-eu", params={"project": project}, json=update)
        assert ok.status_code == 200, ok.text
        assert ok.json()["metadata"]["generation"] == 2

        stale = {**first, "spec": {**first["spec"], "netPolicy": {"rttBudgetMs": 99}}}
        stale["metadata"] = {**first["metadata"], "resourceVersion": rv}
        refused = c.put("/v1/domains/edge-eu", params={"project": project}, json=stale)
        assert refused.status_code == 409
        assert "modified" in refused.json()["error"]["message"]
        now = c.get("/v1/domains/edge-eu", params={"project": project}).json()
        assert now["spec"]["netPolicy"]["rttBudgetMs"] == 30  # the stale write changed nothing

        stale_delete = c.delete(
            "/v1/domains/edge-eu", params={"project": project, "resourceVersion": rv}
        )
        assert stale_delete.status_code == 409


def test_patch_merges_spec_and_labels(api: ApiServer, project: str) -> None:
    with api.client() as c:
        c.post("/v1/domains", params={"project": project}, json=DOMAIN)
        patched = c.patch(
            "/v1/domains/edge-eu",
            params={"project": project},
            json={
                "metadata": {"labels": {"team": "sre"}},
                "spec": {"netPolicy": {"rttBudgetMs": 40}},
            },
        )
        assert patched.status_code == 200, patched.text
        obj = patched.json()
        assert obj["metadata"]["labels"] == {"tier": "edge", "team": "sre"}
        assert obj["spec"]["netPolicy"] == {
            "allowLinkClasses": ["intra-zone", "inter-zone"],
            "rttBudgetMs": 40,
        }
        bad = c.patch(
            "/v1/domains/edge-eu",
            params={"project": project},
            json={"spec": {"netPolicy": {"rttBudgetMs": "fast"}}},
        )
        assert bad.status_code == 422
        assert "spec.netPolicy.rttBudgetMs" in bad.text


def test_apply_reports_created_configured_unchanged(api: ApiServer, project: str) -> None:
    with api.client() as c:
        first = c.post("/v1/apply", params={"project": project}, json={"items": [DOMAIN]}).json()
        assert [r["action"] for r in first["results"]] == ["created"]
        second = c.post("/v1/apply", params={"project": project}, json={"items": [DOMAIN]}).json()
        assert [r["action"] for r in second["results"]] == ["unchanged"]
        changed = {**DOMAIN, "spec": {**DOMAIN["spec"], "netPolicy": {"rttBudgetMs": 10}}}
        third = c.post("/v1/apply", params={"project": project}, json={"items": [changed]}).json()
        assert [r["action"] for r in third["results"]] == ["configured"]


def test_dangling_reference_warns_and_sets_condition_then_resolves(
    api: ApiServer, project: str
) -> None:
    with api.client() as c:
        result = c.post(
            "/v1/apply", params={"project": project}, json={"items": [ENDPOINT]}
        ).json()["results"][0]
        assert result["action"] == "created"
        warnings = " ".join(result["warnings"])
        assert "Model chat-70b@q4_k_m" in warnings and "CapacityPool prod-gold" in warnings
        assert "Strategy" not in warnings  # hybrid_mesh@1.0 is built in

        ep = c.get("/v1/endpoints/chat-pro", params={"project": project}).json()
        refs = condition(ep, "ResolvedRefs")
        assert refs["status"] == "False"
        assert "prod-gold" in refs["message"]

        # The missing objects arrive: the controller marks the endpoint resolved on its own.
        pool = {
            "apiVersion": "v1",
            "kind": "CapacityPool",
            "metadata": {"name": "prod-gold"},
            "spec": {"sloClass": "gold", "quotaGpuHours": 20000, "budgetUSD": 50000},
        }
        model = {
            "apiVersion": "v1",
            "kind": "Model",
            "metadata": {"name": "chat-70b@q4_k_m"},
            "spec": {},
        }
        domains = [{**DOMAIN, "metadata": {"name": n}} for n in ("edge-eu", "cloud-eu")]
        applied = c.post(
            "/v1/apply", params={"project": project}, json={"items": [pool, model, *domains]}
        )
        assert applied.status_code == 200, applied.text

        def resolved() -> bool:
            ep = c.get("/v1/endpoints/chat-pro", params={"project": project}).json()
            return condition(ep, "ResolvedRefs")["status"] == "True"

        wait_until(resolved)


def test_strict_apply_refuses_dangling_references_and_writes_nothing(
    api: ApiServer, project: str
) -> None:
    with api.client() as c:
        refused = c.post(
            "/v1/apply",
            params={"project": project, "strict": "true"},
            json={"items": [DOMAIN, ENDPOINT]},
        )
        assert refused.status_code == 422
        message = refused.json()["error"]["message"]
        assert "Endpoint chat-pro -> Model chat-70b@q4_k_m" in message
        assert c.get("/v1/domains", params={"project": project}).json()["items"] == []


def test_bad_input_is_a_clear_error_and_writes_nothing(api: ApiServer, project: str) -> None:
    with api.client() as c:
        unknown = {**DOMAIN, "spec": {**DOMAIN["spec"], "colour": "blue"}}
        r = c.post("/v1/domains", params={"project": project}, json=unknown)
        assert r.status_code == 422
        assert "spec.colour" in r.json()["error"]["message"]

        wrong_type = {
            **ENDPOINT,
            "spec": {**ENDPOINT["spec"], "domains": [{"name": "edge-eu", "weight": "lots"}]},
        }
        r = c.post("/v1/endpoints", params={"project": project}, json=wrong_type)
        assert r.status_code == 422
        assert (
            "spec.domains[0].weight" in r.json()["error"]["message"]
            or "spec.domains.0.weight" in r.json()["error"]["message"]
        )

        r = c.post(
            "/v1/domains",
            params={"project": project},
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400
        assert "not valid JSON" in r.json()["error"]["message"]

        r = c.get("/v1/widgets")
        assert r.status_code == 404 and "widgets" in r.json()["error"]["message"]

        apply_mixed = c.post(
            "/v1/apply",
            params={"project": project},
            json={"items": [DOMAIN, unknown | {"metadata": {"name": "x"}}]},
        )
        assert apply_mixed.status_code == 422  # all or nothing: the good one is not written
        assert c.get("/v1/domains", params={"project": project}).json()["items"] == []


def test_oversize_body_is_refused(api: ApiServer, project: str) -> None:
    huge = {**DOMAIN, "metadata": {"name": "big", "annotations": {"blob": "x" * (2 << 20)}}}
    with api.client() as c:
        r = c.post("/v1/domains", params={"project": project}, json=huge)
        assert r.status_code == 413
        assert "exceeds the limit" in r.json()["error"]["message"]
        assert c.get("/v1/domains/big", params={"project": project}).status_code == 404


def test_projects_are_isolated(api: ApiServer, project: str) -> None:
    other = project + "-other"
    with api.client() as c:
        c.post("/v1/domains", params={"project": project}, json=DOMAIN)
        assert c.get("/v1/domains/edge-eu", params={"project": other}).status_code == 404
        assert c.get("/v1/domains", params={"project": other}).json()["items"] == []
        # same name in another project is another object
        assert c.post("/v1/domains", params={"project": other}, json=DOMAIN).status_code == 201
        token = c.post(
            "/v1/tokens",
            json={"subject": "alice", "roles": ["platformAdmin"], "projects": [project]},
        ).json()["token"]
    with api.client(token) as alice:
        assert alice.get("/v1/domains/edge-eu", params={"project": project}).status_code == 200
        denied = alice.get("/v1/domains/edge-eu", params={"project": other})
        assert denied.status_code == 403
        assert other in denied.json()["error"]["message"]
        every = alice.get("/v1/domains", params={"project": "*"}).json()["items"]
        assert {o["metadata"]["project"] for o in every} == {project}


def test_node_actions_record_desired_state(api: ApiServer, project: str) -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "gpu-1"},
        "spec": {"nodeClassRef": "cloud-h100"},
    }
    with api.client() as c:
        assert c.post("/v1/nodes", params={"project": project}, json=node).status_code == 201
        r = c.post("/v1/nodes/gpu-1:cordon", params={"project": project}, json={"reason": "maint"})
        assert r.status_code == 200, r.text
        assert r.json()["spec"]["cordoned"] is True
        no_reason = c.post("/v1/nodes/gpu-1:quarantine", params={"project": project}, json={})
        assert no_reason.status_code == 422 and "reason" in no_reason.json()["error"]["message"]
        q = c.post(
            "/v1/nodes/gpu-1:quarantine",
            params={"project": project},
            json={"reason": "ECC double-bit errors"},
        ).json()
        assert q["spec"]["quarantine"]["reason"] == "ECC double-bit errors"
        assert q["spec"]["quarantine"]["actor"] == "admin"
        lifted = c.post("/v1/nodes/gpu-1:unquarantine", params={"project": project}).json()
        assert "quarantine" not in lifted["spec"] or lifted["spec"]["quarantine"] is None
        assert c.post("/v1/nodes/gpu-9:cordon", params={"project": project}).status_code == 404
        unknown = c.post("/v1/nodes/gpu-1:explode", params={"project": project})
        assert unknown.status_code == 404 and "cordon" in unknown.json()["error"]["message"]
        events = c.get("/v1/events", params={"project": project, "name": "gpu-1"}).json()["items"]
        reasons = [e["reason"] for e in events]
        assert reasons[:4] == ["Unquarantine", "Quarantine", "Cordon", "Created"]
        assert events[1]["message"].endswith("quarantined by admin: ECC double-bit errors")


def test_job_and_endpoint_actions(api: ApiServer, project: str) -> None:
    job = {
        "apiVersion": "v1",
        "kind": "Job",
        "metadata": {"name": "ft"},
        "spec": {
            "parallelism": {"dp": 2, "tp": 1, "pp": 1},
            "elastic": {"min_gpus": 1, "max_gpus": 4},
        },
    }
    with api.client() as c:
        assert c.post("/v1/jobs", params={"project": project}, json=job).status_code == 201
        assert c.post("/v1/jobs/ft:pause", params={"project": project}).json()["spec"]["paused"]
        scaled = c.post("/v1/jobs/ft:scale", params={"project": project}, json={"gpus": 4})
        assert scaled.json()["spec"]["targetGpus"] == 4
        too_big = c.post("/v1/jobs/ft:scale", params={"project": project}, json={"gpus": 64})
        assert too_big.status_code == 422
        ck = c.post("/v1/jobs/ft:checkpoint", params={"project": project}).json()
        assert ck["spec"]["checkpointRequests"] == 1

        c.post("/v1/endpoints", params={"project": project}, json=ENDPOINT)
        split = [
            {"modelRef": "chat-70b@q4_k_m", "weight": 90},
            {"modelRef": "chat-70b@q5", "weight": 10},
        ]
        r = c.post(
            "/v1/endpoints/chat-pro:trafficSplit",
            params={"project": project},
            json={"split": split},
        )
        assert r.status_code == 200, r.text
        assert r.json()["spec"]["trafficSplit"] == split
        bad = c.post(
            "/v1/endpoints/chat-pro:trafficSplit",
            params={"project": project},
            json={"split": [{"modelRef": "chat-70b@q5", "weight": 50}]},
        )
        assert bad.status_code == 422  # weights must sum to 100
        kept = c.get("/v1/endpoints/chat-pro", params={"project": project}).json()
        assert kept["spec"]["trafficSplit"] == split


def test_probes_and_openapi(api: ApiServer) -> None:
    assert httpx.get(f"{api.url}/healthz").status_code == 200
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready["etcd"] is True
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert "/v1/{plural}" in spec["paths"]
    metrics = httpx.get(f"{api.url}/metrics").text
    assert "infermesh_api_requests_total" in metrics


def test_builtin_strategies_exist_without_being_applied(api: ApiServer, project: str) -> None:
    with api.client() as c:
        listed = c.get("/v1/strategies", params={"project": project}).json()["items"]
        names = [o["metadata"]["name"] for o in listed]
        assert {"hybrid_mesh@1.0", "baseline_rr@1.0", "ring@1.0"} <= set(names)
        one = c.get("/v1/strategies/least_queue@1.0", params={"project": project}).json()
        assert one["spec"]["kind"] == "inference"
        tuned = {
            "apiVersion": "v1",
            "kind": "Strategy",
            "metadata": {"name": "hybrid_mesh@1.0"},
            "spec": {"kind": "inference", "plugin": "builtin", "params": {"net_penalty": 0.7}},
        }
        c.post("/v1/apply", params={"project": project}, json={"items": [tuned]})
        listed = c.get("/v1/strategies", params={"project": project}).json()["items"]
        mine = [o for o in listed if o["metadata"]["name"] == "hybrid_mesh@1.0"]
        assert len(mine) == 1 and mine[0]["spec"]["params"] == {"net_penalty": 0.7}
