"""The router end to end: real etcd, the real API, a real simulated fleet, a real router."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from infermesh.store.auth import token_hash
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.router_mesh import RouterMesh, metric, router_mesh


@pytest_asyncio.fixture(scope="module")
async def shared(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RouterMesh]:
    project = f"r-{uuid.uuid4().hex[:8]}"
    async with router_mesh(api, project, tmp_path_factory.mktemp("router")) as mesh:
        yield mesh


@pytest_asyncio.fixture
async def mesh(shared: RouterMesh) -> AsyncIterator[RouterMesh]:
    yield shared
    await shared.reset()


def targets(responses: list) -> Counter[str]:
    return Counter(r.headers["X-InferMesh-Target"] for r in responses)


# the API surface -------------------------------------------------------------------------


async def test_openai_client_streams_and_completes_through_the_router(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    client = AsyncOpenAI(
        base_url=f"{mesh.url}/v1",
        api_key=mesh.api.token,
        default_headers={"X-InferMesh-Project": mesh.project},
    )
    try:
        reply = await client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert reply.choices[0].message.content and reply.usage.completion_tokens == 5
        stream = await client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-2].choices[0].finish_reason == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        text = await client.completions.create(model=name, prompt="once upon", max_tokens=3)
        assert text.choices[0].text and text.usage.completion_tokens == 3
        models = await client.models.list()
        assert name in [m.id for m in models.data]
    finally:
        await client.close()


async def test_invoke_streams_sse_and_names_target_and_strategy(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    response = await mesh.chat(name, stream=True, max_tokens=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["X-InferMesh-Target"].startswith("eu-")
    assert response.headers["X-InferMesh-Strategy"] == "baseline_rr@1.0"
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len(events) == 1 + 5 + 1  # role chunk, five tokens, [DONE]


async def test_bad_input_gets_a_clear_error_and_reaches_no_runtime(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    before = [await mesh.finished(n.name) for n in mesh.fleet.nodes]
    url = f"/v1/endpoint/{name}:invoke"
    bad_json = await mesh.http.post(url, content=b"{not json", headers=mesh.headers())
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    missing = await mesh.http.post(url, json={"max_tokens": 1}, headers=mesh.headers())
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    unknown = await mesh.chat("no-such-endpoint")
    assert unknown.status_code == 404 and "no-such-endpoint" in unknown.json()["error"]["message"]
    huge = {"messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    too_big = await mesh.http.post(url, json=huge, headers=mesh.headers())
    assert too_big.status_code == 413
    no_token = await mesh.http.post(
        url,
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"X-InferMesh-Project": mesh.project},
    )
    assert no_token.status_code == 401
    bad_token = await mesh.chat(name, headers={"Authorization": "Bearer imt_nope"})
    assert bad_token.status_code == 401 and "invalid" in bad_token.json()["error"]["message"]
    assert [await mesh.finished(n.name) for n in mesh.fleet.nodes] == before


async def test_a_revoked_token_is_refused_at_once(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    minted = await mesh.client.create_token("revokee", ["viewer"], [mesh.project])
    headers = {"Authorization": f"Bearer {minted['token']}"}
    assert (await mesh.chat(name, headers=headers)).status_code == 200
    async with EtcdStore(mesh.api.etcd.endpoints) as store:  # revoked: its record is gone
        await store.delete(KeyLayout(mesh.api.prefix).token(token_hash(minted["token"])))
    for _ in range(100):  # the router's view hears of it through its watch
        answer = await mesh.chat(name, headers=headers)
        if answer.status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]


# candidates ------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["quarantine", "drain"])
async def test_a_quarantined_or_drained_node_gets_no_new_request_within_a_second(
    mesh: RouterMesh, action: str
) -> None:
    name = await mesh.endpoint()
    before = targets([await mesh.chat(name, max_tokens=1) for _ in range(6)])
    assert set(before) == {"eu-1", "eu-2", "eu-3"}
    body = {"reason": "test", "timeoutSeconds": 5} if action == "drain" else {"reason": "test"}
    await mesh.client.action("nodes", "eu-2", action, body)
    try:
        await asyncio.sleep(1.0)
        after = targets([await mesh.chat(name, max_tokens=1) for _ in range(12)])
        assert "eu-2" not in after and set(after) == {"eu-1", "eu-3"}
    finally:
        await mesh.client.action(
            "nodes", "eu-2", "unquarantine" if action == "quarantine" else "uncordon", {}
        )


async def test_residency_is_never_violated(mesh: RouterMesh) -> None:
    name = await mesh.endpoint(
        domains=[{"name": "eu-a", "weight": 50}, {"name": "us-a", "weight": 50}],
        strategy={"ref": "hybrid_mesh@1.0"},
    )
    await mesh.policy(f"{name}-eu", name, residency={"allowedRegions": ["EU"]})
    await mesh.faults("eu-1", slow_factor=20)  # even a slow EU node beats leaving the EU
    await mesh.faults("eu-2", slow_factor=20)
    await mesh.faults("eu-3", slow_factor=20)
    hints = [{}, {"X-Domain-Hint": "us-a"}]
    got = targets([await mesh.chat(name, max_tokens=1, headers=hints[i % 2]) for i in range(20)])
    assert "us-1" not in got and sum(got.values()) == 20


# strategies ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["least_queue@1.0", "hybrid_mesh@1.0"])
async def test_a_slow_node_is_avoided(mesh: RouterMesh, strategy: str) -> None:
    name = await mesh.endpoint(strategy={"ref": strategy})
    await mesh.faults("eu-3", slow_factor=25)
    got: Counter[str] = Counter()

    async def worker() -> None:  # a closed loop: the slow node's requests pile up
        for _ in range(6):
            response = await mesh.chat(name, max_tokens=8)
            assert response.status_code == 200
            got[response.headers["X-InferMesh-Target"]] += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert got["eu-3"] < sum(got.values()) / 3 / 2, got  # under half its fair share


async def test_canary_at_ten_percent_gets_ten_percent(mesh: RouterMesh) -> None:
    name = await mesh.endpoint(
        trafficSplit=[{"modelRef": "m@1", "weight": 90}, {"modelRef": "m@2", "weight": 10}]
    )
    responses = await asyncio.gather(*(mesh.chat(name, max_tokens=1) for _ in range(300)))
    revisions = Counter(r.headers["X-InferMesh-Revision"] for r in responses)
    assert revisions["m@2"] / 300 == pytest.approx(0.10, abs=0.02)
    assert {
        r.headers["X-InferMesh-Target"]
        for r in responses
        if r.headers["X-InferMesh-Revision"] == "m@2"
    } == {"canary-1"}
    metrics = (await mesh.http.get("/metrics")).text
    assert (
        metric(metrics, "infermesh_inference_requests_total", endpoint=name, revision="m@2") >= 30
    )


# resilience ------------------------------------------------------------------------------


async def test_past_the_limits_the_router_answers_429_with_retry_after(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    await mesh.policy(f"{name}-adm", name, admission={"maxConcurrency": 1, "queueSize": 0})
    for node in ("eu-1", "eu-2", "eu-3"):  # so the first request is still running
        await mesh.faults(node, slow_factor=50)
    first = asyncio.create_task(mesh.chat(name, max_tokens=20))
    await asyncio.sleep(0.3)
    second = await mesh.chat(name, max_tokens=1)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    assert second.json()["error"]["details"]["limit"] == "endpoint-queue-full"
    assert (await first).status_code == 200

    rated = await mesh.endpoint()
    await mesh.policy(f"{rated}-rate", rated, admission={"tenantRatePerSecond": 0.5})
    assert (await mesh.chat(rated, max_tokens=1)).status_code == 200
    limited = await mesh.chat(rated, max_tokens=1)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["details"]["limit"] == "tenant-rate"


async def test_a_duplicated_idempotency_key_never_runs_twice(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    before = sum([await mesh.finished(n.name) for n in mesh.fleet.nodes])
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await mesh.chat(name, max_tokens=50, headers=key)
    assert first.status_code == 200
    again = await mesh.chat(name, max_tokens=50, headers=key)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["X-InferMesh-Idempotent-Replay"] == "true"
    running = asyncio.create_task(
        mesh.chat(name, max_tokens=300, headers={"Idempotency-Key": "k2"})
    )
    await asyncio.sleep(0.3)
    clash = await mesh.chat(name, max_tokens=300, headers={"Idempotency-Key": "k2"})
    assert clash.status_code == 409
    assert (await running).status_code == 200
    other_body = await mesh.chat(name, max_tokens=7, headers=key)
    assert other_body.status_code == 422
    await asyncio.sleep(0.5)
    assert sum([await mesh.finished(n.name) for n in mesh.fleet.nodes]) == before + 2


async def test_killing_a_runtime_loses_no_request_that_had_not_started_streaming(
    mesh: RouterMesh,
) -> None:
    name = await mesh.endpoint()
    await mesh.faults("eu-2", slow_factor=200)  # its requests sit before their first token

    async def one() -> tuple[int, str, str]:
        response = await mesh.chat(name, max_tokens=4, stream=True)
        return response.status_code, response.headers.get("X-InferMesh-Target", ""), response.text

    calls = [asyncio.create_task(one()) for _ in range(12)]
    await asyncio.sleep(0.5)
    await mesh.faults("eu-2", crash=True)
    results = await asyncio.gather(*calls)
    for status, target, text in results:
        assert status == 200 and text.rstrip().endswith("data: [DONE]")
        if '"error"' in text:  # only a request that was already streaming from the victim
            assert target == "eu-2"
    # Baseline round robin sent a third to eu-2; those without a first byte went elsewhere.
    assert sum(target != "eu-2" for _, target, _ in results) > 8
    await mesh.node("eu-2").sim.stop()
    mesh.fleet.nodes.remove(mesh.node("eu-2"))


async def test_hedging_cuts_the_tail_and_cancels_the_loser(mesh: RouterMesh) -> None:
    async def p99_ms(name: str) -> float:
        latencies = []
        for _ in range(30):
            started = asyncio.get_running_loop().time()
            response = await mesh.chat(name, max_tokens=4, stream=True)
            assert response.status_code == 200
            latencies.append(asyncio.get_running_loop().time() - started)
        return sorted(latencies)[int(0.99 * len(latencies))] * 1000

    await mesh.faults("eu-1", slow_factor=100)  # the erratic node
    plain = await mesh.endpoint()
    hedged = await mesh.endpoint()
    await mesh.policy(
        f"{hedged}-hedge",
        hedged,
        degrade={"hedging": {"enabled": True, "delayMs": 20, "budgetPercent": 100}},
    )
    aborted = await mesh.finished("eu-1", "abort")
    without, with_hedges = await p99_ms(plain), await p99_ms(hedged)
    assert with_hedges < without / 2, (with_hedges, without)
    await asyncio.sleep(0.3)
    assert await mesh.finished("eu-1", "abort") > aborted  # the runtime saw the loser cancelled
    metrics = (await mesh.http.get("/metrics")).text
    assert metric(metrics, "infermesh_router_hedges_total", endpoint=hedged, outcome="won") > 0


async def test_explain_shows_every_candidates_score(mesh: RouterMesh) -> None:
    name = await mesh.endpoint(strategy={"ref": "hybrid_mesh@1.0"})
    response = await mesh.chat(name, headers={"X-InferMesh-Explain": "1"})
    assert response.status_code == 200
    explained = response.json()
    assert explained["strategy"] == "hybrid_mesh@1.0"
    nodes = {c["node"] for c in explained["candidates"]}
    assert nodes == {"eu-1", "eu-2", "eu-3"} or nodes == {"eu-1", "eu-3"}
    assert all("total" in c["score"] for c in explained["candidates"])
    assert "us-1" in explained["excluded"]
    assert json.dumps(explained)


async def test_with_etcd_stopped_the_router_keeps_serving(
    private_etcd,
    start_api,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    api = start_api(private_etcd)
    project = f"r-{uuid.uuid4().hex[:8]}"
    async with router_mesh(api, project, tmp_path) as mesh:
        name = await mesh.endpoint()
        private_etcd.stop()
        try:
            async with asyncio.timeout(10):  # the router notices etcd is gone...
                while not (await mesh.http.get("/healthz")).json()["stale"]:
                    await asyncio.sleep(0.2)
            for _ in range(5):  # ...and serves from its last-known view
                response = await mesh.chat(name, max_tokens=2)
                assert response.status_code == 200, response.text
        finally:
            private_etcd.start()
        async with asyncio.timeout(20):
            while (await mesh.http.get("/healthz")).json()["stale"]:
                await asyncio.sleep(0.2)


async def test_a_degradation_rule_hedges_requests_that_cross_regions(mesh: RouterMesh) -> None:
    name = await mesh.endpoint()
    await mesh.policy(
        f"{name}-wan",
        name,
        degrade={"rules": [{"linkClass": "inter-region", "actions": ["hedge"]}]},
    )
    await mesh.faults("eu-1", slow_factor=100)
    for _ in range(6):  # from the US: every target is another region away
        assert (await mesh.chat(name, max_tokens=2, headers={"X-Domain-Hint": "us-a"})).is_success
    assert (await mesh.chat(name, max_tokens=2)).is_success  # local: no rule fires
    metrics = (await mesh.http.get("/metrics")).text
    assert metric(metrics, "infermesh_router_degraded_total", endpoint=name, action="hedge") == 6
    assert metric(metrics, "infermesh_router_hedges_total", endpoint=name, outcome="fired") >= 1


async def test_in_flight_counts_return_to_zero_after_errors_and_cancellations(
    mesh: RouterMesh,
) -> None:
    name = await mesh.endpoint(strategy={"ref": "least_queue@1.0"})
    await mesh.faults("eu-1", error_rate=1.0)
    await mesh.faults("eu-3", slow_factor=100)
    calls = [asyncio.create_task(mesh.chat(name, max_tokens=50)) for _ in range(9)]
    await asyncio.sleep(0.3)
    for call in calls[:3]:  # callers that hang up
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.5)
    explained = (await mesh.chat(name, headers={"X-InferMesh-Explain": "1"})).json()
    assert explained["candidates"] and all(c["inflight"] == 0 for c in explained["candidates"])


async def test_a_shadow_strategy_decides_on_every_request_without_acting(
    mesh: RouterMesh,
) -> None:
    name = await mesh.endpoint()  # live: baseline_rr
    shadow = {
        "kind": "inference",
        "plugin": "builtin",
        "entryPoint": "least_queue@1.0",
        "shadow": True,
    }
    await mesh.client.apply([mesh.obj("Strategy", "lq-shadow", shadow)])
    mesh.created.append(("strategies", "lq-shadow"))
    await asyncio.sleep(0.3)
    responses = [await mesh.chat(name, max_tokens=1) for _ in range(9)]
    assert {r.headers["X-InferMesh-Strategy"] for r in responses} == {"baseline_rr@1.0"}
    metrics = (await mesh.http.get("/metrics")).text
    decided = metric(
        metrics, "infermesh_router_shadow_decisions_total", endpoint=name, shadow="lq-shadow"
    )
    assert decided == 9
