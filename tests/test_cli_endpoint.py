"""Canary verbs, traffic stats and `mesh invoke` through the CLI, against the real API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from infermesh.cli import main
from infermesh.sli import Histogram, SeriesBucket, bucket_start
from infermesh.store.etcd_server import free_port
from tests.fixtures_api import ApiServer
from tests.test_cli import CHEATSHEET, failed, ok, table


@pytest.fixture(autouse=True)
def no_user_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's ~/.infermesh or INFERMESH_* settings."""
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path / "home"))
    for var in ("INFERMESH_API", "INFERMESH_ROUTER", "INFERMESH_TOKEN", "INFERMESH_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def mesh(api: ApiServer, project: str) -> Callable[..., Result]:
    """`mesh --api ... --token ... -p PROJECT ARGS...` on a project holding the seed cheatsheet
    (endpoint chat-pro on chat-70b@q4_k_m)."""

    def run(*args: str, input: str | None = None) -> Result:
        argv = ["--api", api.url, "--token", api.token, "-p", project, *args]
        return CliRunner().invoke(main, argv, input=input)

    ok(run("apply", "-f", str(CHEATSHEET)))
    return run


def spec(mesh: Callable[..., Result]) -> dict:
    return json.loads(ok(mesh("get", "ep", "chat-pro", "-o", "json")).stdout)["spec"]


def test_promote_makes_the_leading_canary_the_model(
    mesh: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "no canary to promote" in failed(mesh("endpoint", "promote", "chat-pro", "--yes"))
    ok(mesh("endpoint", "traffic-split", "chat-pro", "q4_k_m=80", "fp8=15", "awq=5"))
    assert "pass --yes" in failed(mesh("endpoint", "promote", "chat-pro"))
    monkeypatch.setattr("infermesh.cli.common.stdin_is_terminal", lambda: True)
    assert "nothing was changed" in failed(mesh("endpoint", "promote", "chat-pro", input="n\n"))
    assert len(spec(mesh)["trafficSplit"]) == 3

    out = ok(mesh("endpoint", "promote", "chat-pro", "--reason", "canary healthy", input="y\n"))
    assert out.stdout.endswith("endpoint/chat-pro promoted to chat-70b@fp8\n")
    assert (spec(mesh)["modelRef"], spec(mesh)["trafficSplit"]) == ("chat-70b@fp8", [])
    events = ok(mesh("events", "tail", "--kind", "ep", "--name", "chat-pro")).stdout
    assert "promoted to chat-70b@fp8 (was chat-70b@q4_k_m" in events
    assert "canary healthy" in events


def test_promote_a_named_revision_and_its_errors(mesh: Callable[..., Result]) -> None:
    ok(mesh("endpoint", "traffic-split", "chat-pro", "q4_k_m=50", "fp8=25", "awq=25"))
    tie = failed(mesh("endpoint", "promote", "chat-pro", "--yes"))
    assert "several canaries of weight 25" in tie and "chat-70b@awq" in tie
    missing = failed(mesh("endpoint", "promote", "chat-pro", "--revision", "int4", "--yes"))
    assert "chat-70b@int4 is not in the traffic split of endpoint 'chat-pro'" in missing
    current = failed(mesh("endpoint", "promote", "chat-pro", "--revision", "q4_k_m", "--yes"))
    assert "already the model of endpoint 'chat-pro'" in current
    assert spec(mesh)["modelRef"] == "chat-70b@q4_k_m"  # nothing changed

    out = ok(mesh("endpoint", "promote", "chat-pro", "--revision", "chat-70b@awq", "--yes"))
    assert out.stdout == "endpoint/chat-pro promoted to chat-70b@awq\n"
    assert "not found" in failed(mesh("endpoint", "promote", "nope", "--yes"))


def test_rollback_sends_all_traffic_back_to_the_model(mesh: Callable[..., Result]) -> None:
    nothing = failed(mesh("endpoint", "rollback", "chat-pro", "--yes"))
    assert "no traffic split to roll back" in nothing and "chat-70b@q4_k_m" in nothing
    ok(mesh("endpoint", "traffic-split", "chat-pro", "q4_k_m=90", "fp8=10"))
    assert "pass --yes" in failed(mesh("endpoint", "rollback", "chat-pro"))
    assert spec(mesh)["trafficSplit"]
    out = ok(mesh("endpoint", "rollback", "chat-pro", "--yes"))
    assert out.stdout == "endpoint/chat-pro rolled back to chat-70b@q4_k_m\n"
    assert (spec(mesh)["modelRef"], spec(mesh)["trafficSplit"]) == ("chat-70b@q4_k_m", [])
    assert "rolled back to chat-70b@q4_k_m" in ok(mesh("events", "tail")).stdout


def _buckets(project: str, revision: str, tenant: str, n: int, ms: float) -> dict:
    latency = Histogram()
    for _ in range(n):
        latency.observe(ms)
    return SeriesBucket(
        start=bucket_start(time.time() - 30),
        project=project,
        endpoint="chat-pro",
        revision=revision,
        domain="edge-eu",
        tenant=tenant,
        requests=n,
        errors=1,
        hedges=2,
        hedge_wins=1,
        latency=latency,
        ttft=latency,
    ).model_dump()


def test_stats_shows_traffic_per_endpoint_and_by_revision(
    api: ApiServer, project: str, mesh: Callable[..., Result]
) -> None:
    assert "No traffic for endpoint chat-pro" in ok(mesh("stats", "chat-pro")).stderr
    with api.client() as c:
        batch = {
            "source": "router-1",
            "buckets": [
                _buckets(project, "chat-70b@q4_k_m", "acme", 90, 40),
                _buckets(project, "chat-70b@fp8", "globex", 10, 400),
            ],
        }
        assert c.post("/v1/metrics/series", json=batch).status_code == 200

    rows = table(ok(mesh("stats", "chat-pro", "--since", "10m")).stdout)
    assert rows[0] == ["Traffic", "of", "endpoint", "chat-pro,", "last", "10m:"]
    header, [row] = rows[1], rows[2:]
    cell = dict(zip(header, row, strict=True))
    assert (cell["ENDPOINT"], cell["REQUESTS"], cell["ERR%"]) == ("chat-pro", "100", "2.0%")
    assert (cell["HEDGES"], cell["WON"], cell["REJECTED"]) == ("4", "2", "0")
    assert cell["P50"].endswith("ms") and cell["TTFT-P99"].endswith("ms")

    by_rev = table(ok(mesh("stats", "chat-pro", "--by", "revision")).stdout)
    assert [(r[1], r[2]) for r in by_rev[2:]] == [("chat-70b@fp8", "10"), ("chat-70b@q4_k_m", "90")]
    by_tenant = table(ok(mesh("stats", "chat-pro", "--by", "tenant")).stdout)
    assert [r[1] for r in by_tenant[2:]] == ["acme", "globex"]

    everything = ok(mesh("stats")).stdout
    assert "Traffic of project" in everything and "chat-pro" in everything
    counts = dict(r for r in table(everything) if len(r) == 2)
    assert counts["endpoints"] == "1"  # the inventory follows the traffic
    assert "not a duration" in failed_usage(mesh("stats", "--since", "soon"))
    assert "not found" in failed(mesh("stats", "nope"))


def failed_usage(result: Result) -> str:
    assert result.exit_code == 2, result.output
    return result.stderr


def test_invoke_reports_a_missing_or_unreachable_router_cleanly(
    mesh: Callable[..., Result], tmp_path: Path
) -> None:
    assert "Call ENDPOINT through the router" in ok(mesh("invoke", "--help")).stdout
    assert "--prompt" in failed(mesh("invoke", "chat-pro"))
    assert "no router URL" in failed(mesh("invoke", "chat-pro", "--prompt", "hi"))
    down = f"http://127.0.0.1:{free_port()}"
    err = failed(mesh("invoke", "chat-pro", "--prompt", "hi", "--router", down))
    assert err.startswith(f"error: cannot reach the InferMesh router at {down}")
    assert "not valid JSON" in failed(mesh("invoke", "chat-pro", "-d", "{oops", "--router", down))
    body = tmp_path / "body.json"
    body.write_text('{"messages": [{"role": "user", "content": "hi"}]}')
    twice = failed(mesh("invoke", "chat-pro", "-d", f"@{body}", "--prompt", "hi", "--router", down))
    assert "give the prompt once" in twice
