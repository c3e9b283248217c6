"""The mesh CLI against the real API, as an operator uses it: apply, get, describe, delete, the
verbs on nodes, endpoints and jobs, events, audit, tokens, and its errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from infermesh.cli import main
from infermesh.client import MeshClient
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from tests.fixtures_api import ApiServer

ROOT = Path(__file__).resolve().parent.parent
CHEATSHEET = ROOT / "examples" / "seed-cheatsheet.yaml"
SEED_OBJECTS = [
    "domain/edge-eu",
    "capacitypool/prod-gold",
    "strategy/hybrid_mesh@1.0",
    "endpoint/chat-pro",
    "job/ft-news-xxl",
]
NODES = """
apiVersion: v1
kind: NodeClass
metadata: { name: h100 }
spec:
  hardware: { gpu: H100-80G, vramGB: 80 }
  environment: { kind: cloud, region: eu-west }
---
apiVersion: v1
kind: Node
metadata: { name: gpu-1 }
spec: { nodeClassRef: h100, domain: edge-eu }
"""


@pytest.fixture(autouse=True)
def no_user_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's ~/.infermesh or INFERMESH_* settings."""
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path / "home"))
    for var in ("INFERMESH_API", "INFERMESH_TOKEN", "INFERMESH_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def mesh(api: ApiServer, project: str) -> Callable[..., Result]:
    """Run `mesh --api ... --token ... -p PROJECT ARGS...`."""

    def run(*args: str, input: str | None = None, token: str | None = None) -> Result:
        argv = ["--api", api.url, "--token", token or api.token, "-p", project, *args]
        return CliRunner().invoke(main, argv, input=input)

    return run


@pytest.fixture
def seeded(mesh: Callable[..., Result]) -> Callable[..., Result]:
    assert mesh("apply", "-f", str(CHEATSHEET)).exit_code == 0
    return mesh


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.strip()]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def failed(result: Result) -> str:
    """The stderr of a command that must have failed cleanly."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.stderr


def test_apply_seed_cheatsheet_then_again_unchanged(mesh: Callable[..., Result]) -> None:
    first = ok(mesh("apply", "-f", str(CHEATSHEET)))
    assert first.stdout.splitlines() == [f"{o} created" for o in SEED_OBJECTS]
    assert "Warning: endpoint/chat-pro: Model chat-70b@q4_k_m not found" in first.stderr
    second = ok(mesh("apply", "-f", str(CHEATSHEET)))
    assert second.stdout.splitlines() == [f"{o} unchanged" for o in SEED_OBJECTS]
    dry = ok(mesh("apply", "-f", str(CHEATSHEET), "--dry-run"))
    assert all("dry run" in line for line in dry.stdout.splitlines())


def test_the_long_seed_examples_apply_and_strict_refuses_dangling_refs(
    mesh: Callable[..., Result], tmp_path: Path
) -> None:
    examples = ROOT / "examples"
    strict = failed(mesh("apply", "--strict", "-f", str(examples / "seed-endpoint.yaml")))
    assert "Endpoint chat-pro -> Model chat-70b@q4_k_m" in strict
    for name in ("seed-nodeclass", "seed-endpoint", "seed-job"):
        out = ok(mesh("apply", "-f", str(examples / f"{name}.yaml"))).stdout
        assert out.strip().endswith("created"), out
    ok(mesh("apply", "-f", str(examples / "demo-mesh.yaml")))
    again = ok(mesh("apply", "--strict", "-f", str(examples / "seed-endpoint.yaml")))
    assert again.stdout.strip() == "endpoint/chat-pro unchanged"

    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(CHEATSHEET.read_text().replace("---\n", ""))
    err = failed(mesh("apply", "-f", str(pasted)))
    assert "a second document starts at line" in err and "---" in err
    assert ok(mesh("get", "domains")).stdout.count("edge-eu") == 1  # nothing else was applied


def test_a_bad_manifest_names_file_line_and_field_and_sends_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Domain\nmetadata: {name: x}\nspec:\n  scope: {cellz: []}\n"
    )
    # Nothing listens at this URL: reaching it would give a connection error instead.
    api = f"http://127.0.0.1:{free_port()}"
    err = failed(CliRunner().invoke(main, ["--api", api, "apply", "-f", str(bad)]))
    assert err.startswith(
        f"error: {bad}:5: spec.scope.cellz: unknown field 'cellz' (did you mean 'cells'?)"
    )
    assert "cannot reach" not in err


def test_manifest_from_stdin_and_project_from_the_flag(
    mesh: Callable[..., Result], project: str
) -> None:
    ok(mesh("apply", "-f", "-", input=NODES))
    got = json.loads(ok(mesh("get", "nodes", "-o", "json")).stdout)
    assert got["kind"] == "List"
    assert [(o["metadata"]["name"], o["metadata"]["project"]) for o in got["items"]] == [
        ("gpu-1", project)
    ]


def test_get_prints_parseable_kind_specific_tables(
    seeded: Callable[..., Result], project: str
) -> None:
    rows = table(ok(seeded("get", "ep")).stdout)
    assert rows[0] == ["NAME", "MODEL", "DOMAINS", "STRATEGY", "REFS", "ROLLOUT", "DEGRADED", "AGE"]
    assert rows[1][:5] == [
        "chat-pro",
        "chat-70b@q4_k_m",
        "edge-eu=60,cloud-eu=40",
        "hybrid_mesh@1.0",
        "MissingReferences",
    ]
    wide = table(ok(seeded("get", "endpoints", "-o", "wide")).stdout)
    assert wide[1][wide[0].index("POOL")] == "prod-gold"

    jobs = table(ok(seeded("get", "jobs")).stdout)
    assert jobs[0][:4] == ["NAME", "PHASE", "GPUS", "STEP"]
    assert jobs[1][:4] == ["ft-news-xxl", "Pending", "0/256", "<none>"]

    every = table(ok(seeded("get", "domains", "-A")).stdout)
    assert every[0][:2] == ["NAME", "PROJECT"] and ["edge-eu", project] in [r[:2] for r in every]

    one = yaml.safe_load(ok(seeded("get", "ep", "chat-pro", "-o", "yaml")).stdout)
    assert (one["kind"], one["spec"]["capacityPoolRef"]) == ("Endpoint", "prod-gold")
    assert table(ok(seeded("get", "domains", "-l", "tier=nope")).stdout) == []
    empty = ok(seeded("get", "nodes"))
    assert empty.stdout == "" and f"No nodes found in project '{project}'" in empty.stderr


def test_describe_shows_spec_conditions_and_events(seeded: Callable[..., Result]) -> None:
    out = ok(seeded("describe", "endpoint", "chat-pro")).stdout
    assert "Name:             chat-pro" in out
    assert "  modelRef: chat-70b@q4_k_m" in out
    conditions = out[out.index("Conditions:") : out.index("Events:")]
    assert "ResolvedRefs" in conditions and "False" in conditions
    assert "Model chat-70b@q4_k_m not found" in out[out.index("Events:") :]


def test_delete_asks_first_and_refuses_without_a_terminal(
    seeded: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = failed(seeded("delete", "ep", "chat-pro"))
    assert "without confirmation" in err and "pass --yes" in err
    ok(seeded("get", "ep", "chat-pro"))

    monkeypatch.setattr("infermesh.cli.common.stdin_is_terminal", lambda: True)
    assert "nothing was changed" in failed(seeded("delete", "ep", "chat-pro", input="n\n"))
    assert ok(seeded("delete", "ep", "chat-pro", input="y\n")).stdout.endswith(
        "endpoint/chat-pro deleted\n"
    )
    assert ok(seeded("delete", "domain", "edge-eu", "--yes")).stdout == "domain/edge-eu deleted\n"
    assert "not found" in failed(seeded("get", "ep", "chat-pro"))


def test_node_verbs(mesh: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    ok(mesh("apply", "-f", "-", input=NODES))

    def status() -> str:
        rows = table(ok(mesh("get", "nodes")).stdout)
        return rows[1][rows[0].index("STATUS")]

    assert ok(mesh("node", "cordon", "gpu-1", "--reason", "bios")).stdout == "node/gpu-1 cordoned\n"
    assert status() == "Unknown,Cordoned"
    assert "pass --yes" in failed(mesh("node", "drain", "gpu-1"))

    monkeypatch.setattr("infermesh.cli.common.stdin_is_terminal", lambda: True)
    assert "did not match" in failed(mesh("node", "drain", "gpu-1", input="gpu-2\n"))
    ok(mesh("node", "drain", "gpu-1", "--timeout", "60", "--force", input="gpu-1\n"))
    drain = json.loads(ok(mesh("get", "node", "gpu-1", "-o", "json")).stdout)["spec"]["drain"]
    assert (drain["timeoutSeconds"], drain["force"]) == (60, True)

    assert "--reason" in failed_usage(mesh("node", "quarantine", "gpu-1", "--yes"))
    ok(mesh("node", "quarantine", "gpu-1", "--reason", "ECC errors", "--yes"))
    assert status() == "Unknown,Quarantined,Draining,Cordoned"
    ok(mesh("node", "unquarantine", "gpu-1"))
    ok(mesh("node", "uncordon", "gpu-1"))
    assert status() == "Unknown"


def failed_usage(result: Result) -> str:
    assert result.exit_code == 2, result.output
    return result.stderr


def test_endpoint_and_job_verbs(seeded: Callable[..., Result]) -> None:
    out = ok(seeded("endpoint", "traffic-split", "chat-pro", "q4_k_m=90", "chat-70b@fp8=10"))
    assert out.stdout == "endpoint/chat-pro traffic split chat-70b@q4_k_m=90, chat-70b@fp8=10\n"
    ep = json.loads(ok(seeded("get", "ep", "chat-pro", "-o", "json")).stdout)
    assert ep["spec"]["trafficSplit"] == [
        {"modelRef": "chat-70b@q4_k_m", "weight": 90},
        {"modelRef": "chat-70b@fp8", "weight": 10},
    ]
    assert "add up to 100" in failed(seeded("endpoint", "traffic-split", "chat-pro", "q4=50"))
    ok(seeded("endpoint", "pin", "chat-pro", "--domain", "edge-eu"))
    ok(seeded("endpoint", "quarantine", "chat-pro", "--node", "gpu-9", "--reason", "slow", "--yes"))
    ok(seeded("endpoint", "drain", "chat-pro", "--yes"))

    ok(seeded("job", "pause", "ft-news-xxl"))
    ok(seeded("job", "scale", "ft-news-xxl", "--gpus", "192"))
    ok(seeded("job", "checkpoint", "ft-news-xxl"))
    rows = table(ok(seeded("get", "jobs")).stdout)
    assert rows[1][rows[0].index("GPUS")] == "0/192"
    job = json.loads(ok(seeded("get", "job", "ft-news-xxl", "-o", "json")).stdout)["spec"]
    assert (job["paused"], job["targetGpus"], job["checkpointRequests"]) == (True, 192, 1)
    ok(seeded("job", "resume", "ft-news-xxl"))


def test_seed_sugar_commands(mesh: Callable[..., Result], tmp_path: Path) -> None:
    assert (
        ok(mesh("domain", "create", "cloud-eu", "--region", "EU", "--rtt-budget-ms", "40")).stdout
        == "domain/cloud-eu created\n"
    )
    assert "already exists" in failed(mesh("domain", "create", "cloud-eu"))
    assert (
        ok(
            mesh(
                "strategy",
                "register",
                "fast_rr@1.0",
                "--type",
                "inference",
                "--entry-point",
                "baseline_rr@1.0",
                "--param",
                "alpha=0.5",
            )
        ).stdout
        == "strategy/fast_rr@1.0 created\n"
    )
    strat = json.loads(ok(mesh("get", "strategies", "fast_rr@1.0", "-o", "json")).stdout)
    assert strat["spec"]["params"] == {"alpha": 0.5}
    assert "expected only Endpoint objects" in failed(
        mesh("endpoint", "deploy", "-f", str(CHEATSHEET))
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: v1\nkind: Job\nmetadata: {name: ft}\nspec: {parallelism: {dp: 2}}\n"
    )
    assert ok(mesh("job", "submit", "-f", str(job))).stdout == "job/ft created\n"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: v1\nkind: Policy\nmetadata: {name: eu-only}\n"
        "spec: {residency: {allowedRegions: [EU]}}\n"
    )
    assert ok(mesh("policy", "set", "-f", str(policy))).stdout == "policy/eu-only created\n"
    counts = dict(r for r in table(ok(mesh("stats")).stdout) if len(r) == 2)
    assert (counts["domains"], counts["jobs"], counts["policies"]) == ("1", "1", "1")


def test_errors_are_one_clean_line(mesh: Callable[..., Result]) -> None:
    assert failed(mesh("get", "gizmos")).startswith("error: unknown kind 'gizmos'; valid kinds:")
    err = failed(mesh("domain", "create", "Bad_Name"))
    assert err.startswith("error: invalid Domain Bad_Name: metadata.name:")
    unreachable = CliRunner().invoke(
        main, ["--api", f"http://127.0.0.1:{free_port()}", "get", "ep"]
    )
    err = failed(unreachable)
    assert "error: cannot reach the InferMesh API at http://127.0.0.1:" in err
    assert "infermesh up" in err
    assert "invalid or revoked token" in failed(mesh("get", "ep", token="nope"))


def test_events_audit_tokens_and_whoami(seeded: Callable[..., Result], project: str) -> None:
    rows = table(ok(seeded("events", "tail", "--kind", "ep", "--name", "chat-pro")).stdout)
    assert rows[0] == ["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows[1][1:4] == ["Warning", "Created", "endpoint/chat-pro"]
    warnings = table(ok(seeded("events", "tail", "--warnings")).stdout)[1:]
    assert {r[3] for r in warnings} == {"endpoint/chat-pro", "job/ft-news-xxl"}

    verify = ok(seeded("audit", "verify")).stdout
    assert verify.startswith("OK: ") and "chain intact" in verify
    log = table(ok(seeded("audit", "log", "--limit", "5")).stdout)
    assert log[0][:5] == ["SEQ", "TIME", "ACTOR", "ACTION", "OBJECT"]
    assert log[-1][4] == "job/ft-news-xxl"

    minted = ok(
        seeded(
            "token", "create", "--role", "viewer", "--project", project, "--subject", "ops-viewer"
        )
    )
    token = minted.stdout.strip()
    assert len(minted.stdout.splitlines()) == 1 and "shown only this once" in minted.stderr
    me = ok(seeded("whoami", token=token)).stdout
    assert "subject:  ops-viewer" in me and "roles:    viewer" in me
    assert "required" in failed(seeded("delete", "ep", "chat-pro", "--yes", token=token))
    assert ok(seeded("version")).stdout.startswith("Client Version: ")


def test_stale_reads_warn_and_still_succeed(
    private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]
) -> None:
    api = start_api(private_etcd)
    argv = ["--api", api.url, "--token", api.token]
    ok(CliRunner().invoke(main, [*argv, "domain", "create", "kept"]))
    private_etcd.stop()
    with MeshClient(api.url, api.token) as c:
        deadline = time.monotonic() + 30
        while not c.list("domains").stale:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    result = ok(CliRunner().invoke(main, [*argv, "get", "domains"]))
    assert result.stderr == (
        "Warning: etcd is unavailable; showing the API's last-known state (stale)\n"
    )
    assert table(result.stdout)[1][0] == "kept"
    refused = failed(CliRunner().invoke(main, [*argv, "apply", "-f", str(CHEATSHEET)]))
    assert refused.startswith("error: etcd at ") and "unavailable" in refused

    private_etcd.start()  # both recover on their own; the accepted write is still there
    with MeshClient(api.url, api.token) as c:
        deadline = time.monotonic() + 30
        while c.list("domains").stale:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    applied = ok(CliRunner().invoke(main, [*argv, "apply", "-f", str(CHEATSHEET)]))
    assert applied.stdout.splitlines()[0] == "domain/edge-eu created"
    result = ok(CliRunner().invoke(main, [*argv, "get", "domains"]))
    assert result.stderr == ""
    assert [row[0] for row in table(result.stdout)[1:]] == ["edge-eu", "kept"]


class Streaming:
    """A CLI command that runs until Ctrl-C, in its own process, read line by line."""

    def __init__(self, api: ApiServer, project: str, *args: str) -> None:
        argv = [sys.executable, "-m", "infermesh", "--api", api.url, "--token", api.token]
        self.proc = subprocess.Popen(
            [*argv, "-p", project, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "INFERMESH_HOME": "/nonexistent"},
            # Ctrl-C as in a terminal, even when the suite runs as a background job (which
            # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_words(self, n: int = 2) -> list[str]:
        return self.lines.get(timeout=15).split()[:n]

    def interrupt(self) -> None:
        """Ctrl-C ends it quietly with status 0."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(15) == 0
        assert self.proc.stderr is not None and "Traceback" not in self.proc.stderr.read()


def test_get_watch_and_events_follow_stream_until_ctrl_c(api: ApiServer, project: str) -> None:
    watch = Streaming(api, project, "get", "domains", "-w")
    follow = Streaming(api, project, "events", "tail", "-f")
    try:
        assert watch.next_words() == ["EVENT", "NAME"]
        assert follow.next_words() == ["TIME", "TYPE"]
        with MeshClient(api.url, api.token, project=project) as c:
            c.create({"apiVersion": "v1", "kind": "Domain", "metadata": {"name": "w1"}})
            assert watch.next_words() == ["ADDED", "w1"]
            assert follow.next_words(4)[1:] == ["Normal", "Created", "domain/w1"]
            c.delete("domains", "w1")
            assert watch.next_words() == ["DELETED", "w1"]
            assert follow.next_words(4)[1:] == ["Normal", "Deleted", "domain/w1"]
        watch.interrupt()
        follow.interrupt()
    finally:
        watch.proc.kill()
        follow.proc.kill()
