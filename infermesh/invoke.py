"""The data-plane SDK: call an endpoint through a router (`POST /v1/endpoint/{name}:invoke`).

`RouterClient.invoke` returns the whole answer; `RouterClient.stream` yields the text as the
runtime writes it. Both read the router's headers (the node that answered, the strategy that
chose it, the model revision it runs). Errors are the router's `MeshError`, including one that
arrives in the middle of a stream; a router that cannot be reached is `Unavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from infermesh.answers import body_of
from infermesh.context import Context
from infermesh.errors import BadRequest, MeshError, Unavailable

__all__ = ["Answer", "AnswerStream", "RouterClient"]

# An answer may take minutes (long generations, cold starts); only connecting must be quick.
TIMEOUT = httpx.Timeout(10.0, read=300.0)


@dataclass
class Answer:
    """What the router said about who answered, and (non-streaming) the answer itself."""

    target: str | None = None  # the node
    strategy: str | None = None
    revision: str | None = None  # the model revision that answered (a canary shows here)
    body: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Answer:
        return cls(
            target=headers.get("X-InferMesh-Target"),
            strategy=headers.get("X-InferMesh-Strategy"),
            revision=headers.get("X-InferMesh-Revision"),
        )

    @property
    def text(self) -> str:
        """The generated text: a chat message's content, or a completion's text."""
        return "".join(_choice_text(c, "message") for c in self.body.get("choices") or [])


class AnswerStream(Answer):
    """A streamed answer: iterate for the text deltas; `usage` is set once the runtime sent it."""

    def __init__(self, headers: Mapping[str, str], source: EventSource) -> None:
        base = Answer.from_headers(headers)
        super().__init__(base.target, base.strategy, base.revision)
        self._source = source

    def __iter__(self) -> Iterator[str]:
        try:
            for sse in self._source.iter_sse():
                if sse.data.strip() == "[DONE]":
                    return
                if not sse.data:
                    continue  # a keep-alive
                if sse.event == "error":
                    raise _stream_error(sse.data)
                chunk = _decode(sse.data)
                if "error" in chunk:
                    raise MeshError.from_json(502, chunk)
                self.usage = chunk.get("usage") or self.usage
                for choice in chunk.get("choices") or []:
                    if text := _choice_text(choice, "delta"):
                        yield text
        except SSEError as exc:  # the router answered, but not with a stream
            raise MeshError(f"the router did not stream its answer: {exc}") from None


def _choice_text(choice: dict[str, Any], part: str) -> str:
    # Chat answers carry message.content (delta.content when streamed); completions carry text.
    content = (choice.get(part) or {}).get("content")
    return str(content if content is not None else choice.get("text") or "")


def _stream_error(data: str) -> MeshError:
    """An `event: error` as a MeshError: the JSON error shape, or plain text."""
    try:
        body = json.loads(data)
    except json.JSONDecodeError:
        return MeshError(data.strip() or "the router ended the stream with an error")
    return MeshError.from_json(
        502, body if isinstance(body, dict) and "error" in body else {"error": body}
    )


def _decode(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise MeshError(f"the router sent a chunk that is not JSON: {data[:200]!r}") from None
    return chunk if isinstance(chunk, dict) else {"value": chunk}


class RouterClient:
    """Blocking client of one router. Use as a context manager, or call `close()`."""

    def __init__(self, router_url: str, token: str | None = None, *, project: str | None = None):
        self.router_url = router_url.rstrip("/")
        headers = {"User-Agent": "infermesh-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if project:
            headers["X-InferMesh-Project"] = project
        self._http = httpx.Client(base_url=self.router_url, headers=headers, timeout=TIMEOUT)

    @classmethod
    def from_context(cls, ctx: Context) -> RouterClient:
        if not ctx.router_url:
            raise BadRequest(
                "no router URL: start a mesh with `infermesh up`, pass --router, "
                "or set INFERMESH_ROUTER"
            )
        return cls(ctx.router_url, ctx.token, project=ctx.project)

    def invoke(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        domain_hint: str | None = None,
        idempotency_key: str | None = None,
    ) -> Answer:
        """The whole answer of endpoint ENDPOINT to `body` (an OpenAI chat or completion body)."""
        try:
            resp = self._http.post(
                _path(endpoint),
                json={**body, "stream": False},
                headers=_headers(domain_hint, idempotency_key),
            )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        answer = Answer.from_headers(resp.headers)
        answer.body = _json_body(resp)
        answer.usage = answer.body.get("usage")
        return answer

    @contextmanager
    def stream(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        domain_hint: str | None = None,
        idempotency_key: str | None = None,
    ) -> Iterator[AnswerStream]:
        """`with client.stream(...) as answer: for text in answer: ...`"""
        request = self._http.build_request(
            "POST",
            _path(endpoint),
            json={**body, "stream": True},
            headers={"Accept": "text/event-stream", **_headers(domain_hint, idempotency_key)},
        )
        try:
            resp = self._http.send(request, stream=True)
            try:
                if not resp.is_success:
                    resp.read()
                    _json_body(resp)  # raises the router's error
                yield AnswerStream(resp.headers, EventSource(resp))
            finally:
                resp.close()
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: httpx.TransportError) -> Unavailable:
        if isinstance(exc, httpx.TimeoutException):
            what = f"the InferMesh router at {self.router_url} did not answer in time"
        else:
            what = f"cannot reach the InferMesh router at {self.router_url}"
        return Unavailable(
            f"{what} ({type(exc).__name__}); is it running? "
            "Start a local mesh with `infermesh up`, or pass --router / set INFERMESH_ROUTER",
            {"url": self.router_url},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path(endpoint: str) -> str:
    return f"/v1/endpoint/{endpoint}:invoke"


def _headers(domain_hint: str | None, idempotency_key: str | None) -> dict[str, str]:
    headers = {}
    if domain_hint:
        headers["X-Domain-Hint"] = domain_hint
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def _json_body(resp: httpx.Response) -> dict[str, Any]:
    """A 2xx answer's JSON object, or the router's error raised as its MeshError."""
    body = body_of(resp) or {}
    if not isinstance(body, dict):
        raise MeshError(f"the router answered with something other than a JSON object: {body!r}")
    return body
