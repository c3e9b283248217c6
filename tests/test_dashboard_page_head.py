"""dashboard/page_head.py on a small Starlette site (Streamlit's own server is tested through
`infermesh up` in tests/test_up.py): the head every HTML page gets, what it leaves alone, a
request path that tries to end its script, a base URL path, and the bundle's route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from streamlit import config

from infermesh.dashboard import page_head, plot

INDEX = "<html><head><title>InferMesh</title></head><body></body></html>"
HTML = {"Accept": "text/html,application/xhtml+xml"}
PRELOAD = f'<link rel="preload" as="script" href="{plot.BUNDLE_URL}">'


async def index(request: Request) -> Response:
    return HTMLResponse(INDEX)  # what Streamlit answers for every page path


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture
def site() -> Iterator[TestClient]:
    routes = [
        Route("/_stcore/health", health),
        Route(page_head.BUNDLE_ROUTE_PATH, page_head.plotly_bundle),
        Route("/{page:path}", index),
    ]
    with TestClient(Starlette(routes=routes, middleware=[Middleware(page_head.PageHead)])) as c:
        yield c


def test_every_page_gets_the_head_and_the_rest_is_left_alone(site: TestClient) -> None:
    page = site.get("/canary", headers=HTML)
    assert page.text.index(PRELOAD) < page.text.index("</head>")
    assert '"served": "/canary"' in page.text and "window.infermeshPlotly" in page.text
    assert int(page.headers["content-length"]) == len(page.content)
    assert site.get("/canary", headers={"Accept": "*/*"}).text == INDEX  # not a navigation
    assert site.get("/_stcore/health", headers=HTML).json() == {"ok": True}  # not HTML


def test_a_request_path_cannot_end_the_heads_script(site: TestClient) -> None:
    page = site.get("/x</script><script>alert(1)</script>", headers=HTML)
    assert "<script>alert(1)" not in page.text
    assert page.text.count("</script>") == 1  # the head's own
    assert "\\u003c/script\\u003e" in page.text


def test_under_a_base_url_path_the_page_path_is_what_follows_it(site: TestClient) -> None:
    config.set_option("server.baseUrlPath", "/dash/")
    try:
        assert '"served": "/slo"' in site.get("/dash/slo", headers=HTML).text
        assert '"served": "/"' in site.get("/dash", headers=HTML).text
    finally:
        config.set_option("server.baseUrlPath", "")


def test_the_bundle_is_served_as_built_and_cached_for_good(site: TestClient) -> None:
    plain = site.get(page_head.BUNDLE_ROUTE_PATH, headers={"Accept-Encoding": "identity"})
    assert plain.content == plot.BUNDLE.read_bytes() and "content-encoding" not in plain.headers
    assert plain.headers["content-type"].startswith("text/javascript")
    assert "immutable" in plain.headers["cache-control"]
    packed = site.get(page_head.BUNDLE_ROUTE_PATH, headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip" and packed.content == plain.content
