"""Window totals read from Prometheus (`--prometheus-url`) instead of the series store.

The Prometheus here is a tiny HTTP server speaking its query API (`/api/v1/query`) for the
queries the adapter sends: `sum by (...) (increase(metric{matchers}[Ns]))` over a table of
per-window increases of the routers' series.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.series import SliceKey
from infermesh.store.series_prometheus import PrometheusError, PrometheusSeries
from tests.inprocess_api import InProcessApi

_QUERY = re.compile(r"sum by \(([^)]*)\) \(increase\((\w+)\{([^}]*)\}\[(\d+)s\]\)\)")
_MATCHER = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

CHAT = {"endpoint": "chat", "revision": "chat@v2", "domain": "eu"}
EMBED = {"endpoint": "embed", "revision": "e@1", "domain": "us"}
REQUESTS = "infermesh_inference_requests_total"
# (metric, labels, {window: increase}): one slice with two tenants, and another endpoint.
SERIES: list[tuple[str, dict[str, str], dict[int, float]]] = [
    (REQUESTS, {**CHAT, "tenant": "acme", "code": "200"}, {300: 90.4, 3600: 1000}),
    (REQUESTS, {**CHAT, "tenant": "globex", "code": "200"}, {300: 10, 3600: 100}),
    (REQUESTS, {**CHAT, "tenant": "acme", "code": "503"}, {300: 3, 3600: 7}),
    (REQUESTS, {**CHAT, "tenant": "acme", "code": "429"}, {300: 2, 3600: 2}),
    (REQUESTS, {**EMBED, "tenant": "acme", "code": "200"}, {3600: 5}),
]
for tenant, share in (("acme", 0.9), ("globex", 0.1)):
    # Cumulative latency buckets (seconds): 40 % under 50 ms, all but 2 % under 100 ms.
    for le, part in (("0.05", 0.4), ("0.1", 0.98), ("0.2", 1.0), ("+Inf", 1.0)):
        SERIES.append(
            (
                "infermesh_inference_request_latency_seconds_bucket",
                {**CHAT, "tenant": tenant, "le": le},
                {300: 100 * share * part, 3600: 1000 * share * part},
            )
        )


class FakePrometheus(BaseHTTPRequestHandler):
    status = "success"

    def do_GET(self) -> None:
        url = urlparse(self.path)
        params = parse_qs(url.query)
        if url.path != "/api/v1/query" or "time" not in params:
            self._send(404, {"status": "error", "errorType": "not_found", "error": url.path})
            return
        match = _QUERY.fullmatch(params["query"][0])
        if match is None or self.status != "success":
            self._send(400, {"status": "error", "errorType": "bad_data", "error": "parse error"})
            return
        by = [b.strip() for b in match[1].split(",")]
        matchers = dict(_MATCHER.findall(match[3]))
        sums: dict[tuple[str, ...], float] = {}
        for metric, labels, increases in SERIES:
            if metric != match[2] or any(labels.get(k) != v for k, v in matchers.items()):
                continue
            if int(match[4]) in increases:
                key = tuple(labels.get(b, "") for b in by)
                sums[key] = sums.get(key, 0.0) + increases[int(match[4])]
        result = [
            {"metric": dict(zip(by, key, strict=True)), "value": [1.0, str(v)]}
            for key, v in sums.items()
        ]
        self._send(200, {"status": "success", "data": {"resultType": "vector", "result": result}})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    FakePrometheus.status = "success"


def test_window_totals_come_from_the_routers_metrics(prometheus: str) -> None:
    source = PrometheusSeries(prometheus, project="shop")
    got = source.window_totals([300, 3600], now=1_800_000_000.0)
    chat, embed = SliceKey("shop", "chat", "chat@v2", "eu"), SliceKey("shop", "embed", "e@1", "us")
    assert set(got) == {chat, embed}
    five = got[chat][300]
    # Tenants summed; 5xx are errors, 429s rejections; increase() rounded to whole requests.
    assert (five.requests, five.errors, five.rejected) == (105, 3, 2)
    assert (got[chat][3600].requests, got[chat][3600].errors) == (1109, 7)
    assert got[embed][300].requests == 0 and got[embed][3600].requests == 5
    assert five.since == 1_800_000_000 - 300
    # Histograms in LATENCY_BUCKETS_MS: 40 under 50 ms, 58 in (50, 100], 2 in (100, 200].
    latency = got[chat][300].latency
    assert latency.count == 100
    assert latency.count_at_most(50) == 40 and latency.count_at_most(100) == 98
    # Prometheus has no 75 ms bound: what lies in (50, 100] counts as over 75 ms.
    assert latency.count_at_most(75) == 40
    assert latency.quantile(0.5) == pytest.approx(75 + 25 * 10 / 58)
    source.close()


def test_filters_become_label_matchers_and_other_projects_are_empty(prometheus: str) -> None:
    source = PrometheusSeries(prometheus, project="shop")
    got = source.window_totals([3600], now=1_800_000_000.0, endpoint="embed", tenant="acme")
    assert list(got) == [SliceKey("shop", "embed", "e@1", "us")]
    assert source.window_totals([3600], now=1_800_000_000.0, project="other") == {}
    source.close()


def test_a_prometheus_error_is_raised_with_its_message(prometheus: str) -> None:
    FakePrometheus.status = "error"
    source = PrometheusSeries(prometheus)
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        source.window_totals([300], now=1_800_000_000.0)
    source.close()
    with pytest.raises(PrometheusError, match=r"127\.0\.0\.1:9"):
        PrometheusSeries("http://127.0.0.1:9", timeout_s=2).window_totals([300], now=0.0)


def test_an_api_given_a_prometheus_judges_slos_from_it(
    prometheus: str, etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    api = InProcessApi(
        etcd, tmp_path / "series.sqlite", prometheus_url=prometheus, prometheus_project="shop"
    )
    try:
        slo = {
            "apiVersion": "v1",
            "kind": "SLO",
            "metadata": {"name": "chat-avail", "project": "shop"},
            "spec": {"target": {"kind": "Endpoint", "name": "chat"}, "sli": "availability"},
        }
        with api.client() as http:
            assert http.post("/v1/slos?project=shop", json=slo).status_code == 201
            api.evaluate(1_800_000_000.0)
            status = http.get("/v1/slos/chat-avail?project=shop").json()["status"]
        five = next(w for w in status["windows"] if w["window"] == "5m")
        # Prometheus's 5-minute increases: 105 requests, 2 of them 429s (left out), 3 5xx.
        assert (five["good"], five["total"]) == (100, 103)
    finally:
        api.stop()
