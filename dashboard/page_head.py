"""What server.py adds to Streamlit's server for the charts (plot.py): the route of their
plotly.js bundle, and `PageHead`, which has every page's <head> fetch that bundle while
Streamlit's own scripts load and run it while the page's script runs on the server.

Why a bundle of our own: Streamlit's `st.plotly_chart` loads all of plotly.js (4.7 MB, every
trace type) when a page first shows a chart, and evaluating it was the largest single cost of
opening a page; the dashboard draws scatter, bar and heatmap traces only, and plotly.js built
with just those (assets/build/) is a quarter of that and evaluates in a fifth of the time
(docs/dashboard.md, "How it is built")."""

from __future__ import annotations

import functools
import gzip
import json

import streamlit as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infermesh.dashboard import plot

_IMMUTABLE = "public, max-age=31536000, immutable"  # the file name carries the version


@functools.cache
def _bundle() -> tuple[bytes, bytes]:
    """The bundle as it is and gzipped once (the server would gzip it again per request)."""
    raw = plot.BUNDLE.read_bytes()
    return raw, gzip.compress(raw, 6)


async def plotly_bundle(request: Request) -> Response:
    raw, packed = _bundle()
    headers = {"Cache-Control": _IMMUTABLE, "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type="text/javascript", headers=headers)
    return Response(raw, media_type="text/javascript", headers=headers)


BUNDLE_ROUTE_PATH = f"/{plot.BUNDLE_URL}"
_HEAD_JS = (plot.ASSETS / "page_head.js").read_text()


def page_head(served: str) -> bytes:
    """What the <head> of the page at path `served` gets (assets/page_head.js): the bundle
    preloaded, so the browser fetches it while Streamlit's own scripts load, and run once the
    page's script starts on the server; and where the server is, which spares Streamlit's
    client a probe of `<page>/_stcore/health` before every page but the root."""
    head = {"bundle": plot.BUNDLE_URL, "served": served}
    return (
        f'<link rel="preload" as="script" href="{plot.BUNDLE_URL}">'
        f"<script>{{\nconst HEAD = {_script_json(head)};\n{_HEAD_JS}}}</script>"
    ).encode()


def _script_json(value: object) -> str:
    """JSON that cannot end the <script> it sits in, whatever path a request asked for."""
    text = json.dumps(value)  # ASCII: U+2028 and U+2029 escaped too
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class PageHead:
    """Adds `page_head()` to the HTML pages Streamlit serves (its index.html, for every page
    path). The request goes on without Accept-Encoding, so the page is not gzipped on the way
    out (it is ~10 KB) and can be edited."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not _wants_html(scope):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
        start: Message | None = None
        body: list[bytes] = []

        async def edit(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # sent with the whole body, once its length is known
                return
            body.append(message.get("body", b""))
            if message.get("more_body") or start is None:
                return
            page = b"".join(body)
            if _is_html(start) and b"</head>" in page:
                page = page.replace(b"</head>", page_head(_served(scope)) + b"</head>", 1)
            kept = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            await send({**start, "headers": [*kept, (b"content-length", b"%d" % len(page))]})
            await send({"type": "http.response.body", "body": page})

        await self.app({**scope, "headers": headers}, receive, edit)


def _served(scope: Scope) -> str:
    """The request's path less server.baseUrlPath: the page's own path."""
    base = "/" + str(st.get_option("server.baseUrlPath") or "").strip("/")
    path = scope["path"]
    if base != "/" and (path == base or path.startswith(base + "/")):
        path = path[len(base) :] or "/"
    return path


def _wants_html(scope: Scope) -> bool:
    accept = dict(scope["headers"]).get(b"accept", b"")
    return b"text/html" in accept


def _is_html(start: Message) -> bool:
    return dict(start["headers"]).get(b"content-type", b"").startswith(b"text/html")
