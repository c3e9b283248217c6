"""The series store through the real API: routers post SLI buckets, operators read series."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermesh.sli import Histogram, SeriesBatch, SeriesBucket, bucket_start
from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.series import SeriesStore
from tests.fixtures_api import ApiServer
from tests.test_api_security import mint


def hist(*values: float) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def bucket(
    project: str,
    start: int,
    *,
    endpoint: str = "chat",
    revision: str = "chat-70b@q4",
    tenant: str = "acme",
    latencies: tuple[float, ...] = (),
    ttfts: tuple[float, ...] = (),
    **counters: int,
) -> dict[str, Any]:
    return SeriesBucket(
        start=start,
        project=project,
        endpoint=endpoint,
        revision=revision,
        domain="edge-eu",
        tenant=tenant,
        requests=counters.pop("requests", len(latencies)),
        latency=hist(*latencies),
        ttft=hist(*ttfts),
        **counters,
    ).model_dump()


def post(c: httpx.Client, source: str, *buckets: dict[str, Any]) -> httpx.Response:
    return c.post("/v1/metrics/series", json={"source": source, "buckets": list(buckets)})


def read(c: httpx.Client, project: str, **params: Any) -> dict[str, Any]:
    r = c.get("/v1/metrics/series", params={"project": project, **params})
    assert r.status_code == 200, r.text
    return r.json()


def now_bucket(ago_s: float = 0) -> int:
    return bucket_start(time.time() - ago_s)


def test_ingest_then_query_gives_counts_rates_and_percentiles(api: ApiServer, project: str) -> None:
    first, second = now_bucket(60), now_bucket(60) + 10
    a = bucket(project, first, latencies=(8,) * 50, ttfts=(8,) * 50, errors=5, hedges=4)
    b = bucket(
        project, second, latencies=(90,) * 50, ttfts=(40,) * 50, hedges=2, hedge_wins=1, rejected=3
    )
    with api.client() as c:
        r = post(c, "router-a", a, b)
        assert r.status_code == 200 and r.json() == {"stored": 2, "expired": 0}
        body = read(c, project, since="-5m")
    assert body["step"] == 10 and body["by"] == ["endpoint", "revision", "domain"]
    [series] = body["series"]
    assert (series["endpoint"], series["revision"], series["domain"]) == (
        "chat",
        "chat-70b@q4",
        "edge-eu",
    )
    total = series["total"]
    assert (total["requests"], total["errors"], total["rejected"]) == (100, 5, 3)
    assert (total["hedges"], total["hedge_wins"], total["error_rate"]) == (6, 1, 0.05)
    assert total["rps"] == pytest.approx(100 / (body["until"] - body["since"]), abs=1e-3)
    # Percentiles come from the merged histograms: 50 at 8 ms and 50 at 90 ms.
    assert total["latency_p50_ms"] == 10.0
    assert total["latency_p95_ms"] == 97.5
    assert total["latency_p99_ms"] == 99.5
    assert total["ttft_p99_ms"] == pytest.approx(hist(*(8,) * 50, *(40,) * 50).quantile(0.99))
    points = series["points"]
    assert [p["t"] for p in points] == [first, second]
    assert [p["requests"] for p in points] == [50, 50]
    assert points[0]["rps"] == 5.0 and points[0]["latency_p50_ms"] == 7.5


def test_a_resent_bucket_replaces_its_copy_and_sources_add_up(api: ApiServer, project: str) -> None:
    start = now_bucket(30)
    with api.client() as c:
        # Router A posts its open bucket twice (at-least-once, growing); B posts once.
        assert post(c, "router-a", bucket(project, start, latencies=(8,) * 5)).status_code == 200
        assert post(c, "router-a", bucket(project, start, latencies=(8,) * 8)).status_code == 200
        assert read(c, project)["series"][0]["total"]["requests"] == 8
        assert post(c, "router-b", bucket(project, start, latencies=(90,) * 8)).status_code == 200
        total = read(c, project)["series"][0]["total"]
    assert total["requests"] == 16
    assert total["latency_p50_ms"] == 10.0  # 8 x 8 ms from A, 8 x 90 ms from B


def test_tenants_add_up_unless_filtered_and_by_splits_series(api: ApiServer, project: str) -> None:
    start = now_bucket(30)
    with api.client() as c:
        post(
            c,
            "router-a",
            bucket(project, start, tenant="acme", requests=4),
            bucket(project, start, tenant="globex", requests=6),
            bucket(project, start, revision="chat-70b@fp8", requests=1),
            bucket(project, start, endpoint="embed", requests=2),
        )
        by_endpoint = read(c, project, by="endpoint")["series"]
        assert [(s["endpoint"], s["total"]["requests"]) for s in by_endpoint] == [
            ("chat", 11),
            ("embed", 2),
        ]
        assert set(by_endpoint[0]) == {"endpoint", "total", "points"}
        by_tenant = read(c, project, endpoint="chat", by="tenant")["series"]
        assert [(s["tenant"], s["total"]["requests"]) for s in by_tenant] == [
            ("acme", 5),
            ("globex", 6),
        ]
        canary = read(c, project, endpoint="chat", revision="chat-70b@fp8", by="revision")
        assert [s["total"]["requests"] for s in canary["series"]] == [1]
        acme = read(c, project, endpoint="chat", tenant="acme", by="endpoint")["series"]
        assert acme[0]["total"]["requests"] == 5
        # Epoch-second windows work as well as durations; an empty window is empty.
        old = read(c, project, since=str(start - 7200), until=str(start - 3600))
        assert old["series"] == []


def test_viewers_read_but_cannot_post_and_projects_stay_apart(api: ApiServer, project: str) -> None:
    other = project + "-other"
    viewer = mint(api, ["viewer"], [project], "vera")
    platform = mint(api, ["platformAdmin"], [project], "router-sa")
    start = now_bucket(30)
    with api.client(viewer) as v:
        denied = post(v, "router-v", bucket(project, start, requests=1))
        assert denied.status_code == 403
        assert "orgAdmin or platformAdmin" in denied.json()["error"]["message"]
        assert read(v, project)["series"] == []
        assert v.get("/v1/metrics/series", params={"project": other}).status_code == 403
    with api.client(platform) as p:
        r = post(
            p, "router-p", bucket(project, start, requests=2), bucket(other, start, requests=9)
        )
        assert r.status_code == 403 and repr(other) in r.json()["error"]["message"]
        assert post(p, "router-p", bucket(project, start, requests=2)).status_code == 200
    with api.client() as c:
        assert read(c, other)["series"] == []  # the refused batch stored nothing
        assert read(c, project)["series"][0]["total"]["requests"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"buckets": []}, "source"),
        (
            {"source": "r", "buckets": [{"start": 1005, "project": "p", "endpoint": "e"}]},
            "buckets.0",
        ),
        (
            {
                "source": "r",
                "buckets": [
                    {"start": 1000, "project": "p", "endpoint": "e", "latency": {"counts": [1]}}
                ],
            },
            "buckets.0.latency.counts",
        ),
        (
            {
                "source": "r",
                "buckets": [{"start": 1000, "project": "p", "endpoint": "e", "requests": -1}],
            },
            "buckets.0.requests",
        ),
        ({"source": "r", "buckets": [{"start": 1000, "project": "p"}]}, "buckets.0.endpoint"),
    ],
)
def test_a_bad_batch_is_a_400_naming_the_field(
    api: ApiServer, body: dict[str, Any], field: str
) -> None:
    with api.client() as c:
        r = c.post("/v1/metrics/series", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["details"]["field"] == field and error["message"].startswith(field)


def test_bad_queries_and_oversize_posts_are_refused(api: ApiServer, project: str) -> None:
    with api.client() as c:
        for params, field in (
            ({"since": "yesterday"}, "since"),
            ({"until": "9" * 400}, "until"),
            ({"step": "0"}, "step"),
            ({"step": "1", "since": "-7d"}, "step"),
            ({"by": "node"}, "by"),
            ({"since": "-1m", "until": "-5m"}, "since"),
            ({"project": "*"}, "project"),
        ):
            r = c.get("/v1/metrics/series", params={"project": project, **params})
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["details"]["field"] == field
        assert c.post("/v1/metrics/series", content=b"{not json").status_code == 400
        huge = [bucket(project, now_bucket(), requests=1)] * 6000  # ~2 MiB over the 1 MiB limit
        r = post(c, "router-a", *huge)
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]
        assert read(c, project)["series"] == []


def test_retention_drops_old_rows_on_ingest_and_at_startup(
    etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer], tmp_path: Path, project: str
) -> None:
    db = tmp_path / "series.sqlite"
    api = start_api(etcd, series_db=db)  # the default retention: 31 days
    with api.client() as c:
        r = post(
            c,
            "router-a",
            bucket(project, now_bucket(3600), requests=1),
            bucket(project, now_bucket(60), requests=2),
            bucket(project, now_bucket(40 * 86400), requests=4),  # past the retention already
        )
        assert r.json() == {"stored": 2, "expired": 1}
        assert read(c, project, since="-9d", step="3600")["series"][0]["total"]["requests"] == 3
    api.stop()
    # The same file under a 30-minute retention: the hour-old row goes when the API starts.
    api = start_api(etcd, series_db=db, series_retention=1800)
    with api.client() as c:
        total = read(c, project, since="-2h")["series"][0]["total"]
    assert total["requests"] == 2


def test_the_store_prunes_periodically_by_bucket_end(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path / "s.sqlite", retention_s=100)
    store.open()
    try:
        batch = SeriesBatch(
            source="r",
            buckets=[
                SeriesBucket(start=1000, project="p", endpoint="e", requests=1),
                SeriesBucket(start=1050, project="p", endpoint="e", requests=2),
            ],
        )
        assert store.ingest(batch, now=1100) == (2, 0)
        assert store.prune(now=1109) == 0  # the first bucket ends at 1010: kept until 1110
        assert store.prune(now=1110) == 1
        [series] = store.query("p", since=0, until=2000, step_s=10, by=("endpoint",))
        assert series["total"]["requests"] == 2
    finally:
        store.close()
