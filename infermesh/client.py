"""The HTTP SDK of the control plane: `MeshClient` (sync) and `AsyncMeshClient` (async).

Each operation is written once, as a builder that returns a `_Call` (the request and how to read
its answer); the two clients differ only in how they send it. Errors come back as the server's
`MeshError` subclass; a server that cannot be reached is `Unavailable`, naming the URL.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from infermesh.answers import (
    ApplyResult,
    ItemList,
    MeshObject,
    ObjectList,
    WatchEvent,
    body_of,
    plural_of,
    read_apply_results,
    read_items,
    read_json,
    read_nothing,
    read_object,
    read_object_list,
    read_server_version,
)
from infermesh.context import Context
from infermesh.errors import Unavailable
from infermesh.joblogs import JobLogs, LogLine, logs_query, read_job_logs, streamed_lines

__all__ = [
    "ApplyResult",
    "AsyncMeshClient",
    "ItemList",
    "JobLogs",
    "LogLine",
    "MeshClient",
    "MeshObject",
    "ObjectList",
    "WatchEvent",
    "plural_of",
]

# Streams idle longer than this are presumed dead and resumed; the server pings more often.
STREAM_READ_TIMEOUT = 60.0
RECONNECT_TIMEOUT = 30.0  # give up a stream after this long without a successful reconnect
_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)

R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One request and the function that turns its answer into a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], R]
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client (httpx's default, CA bundle and SSL_CERT_* included):
    building one reads the CA bundle, 20 ms a client, which each dashboard session paid."""
    return httpx.create_ssl_context()


class _Op(Generic[P, R]):
    """An operation written once: on a `MeshClient` it returns R, on an `AsyncMeshClient` an
    awaitable of R."""

    def __init__(self, build: Callable[Concatenate[Any, P], _Call[R]]) -> None:
        self._build = build
        functools.update_wrapper(self, build)

    @overload
    def __get__(self, client: None, owner: type) -> _Op[P, R]: ...
    @overload
    def __get__(self, client: MeshClient, owner: type) -> Callable[P, R]: ...
    @overload
    def __get__(self, client: AsyncMeshClient, owner: type) -> Callable[P, Awaitable[R]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        build = self._build

        @functools.wraps(build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return client._execute(build(client, *args, **kwargs))

        return bound


# --- streams -------------------------------------------------------------------------------


class _Resume:
    """Where an SSE stream is, so a dropped connection resumes with `Last-Event-ID` and a
    stream that stays down fails with `Unavailable` instead of hanging forever."""

    def __init__(
        self,
        url: str,
        params: dict[str, str],
        last_event_id: str | None,
        id_param: str | None,
        connect_timeout: float,
    ) -> None:
        self.url = url
        self.params = params
        self.last_event_id = last_event_id
        self.timeout = httpx.Timeout(connect_timeout, read=STREAM_READ_TIMEOUT)
        self.reconnect_timeout = RECONNECT_TIMEOUT
        self.id_param = id_param  # the query parameter that also carries the position, if any
        self.failures = 0
        self.failing_since: float | None = None

    def request(self) -> dict[str, Any]:
        params = dict(self.params)
        headers = {}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
            if self.id_param:
                params[self.id_param] = self.last_event_id
        return {"params": params, "headers": headers, "timeout": self.timeout}

    def seen(self, sse: ServerSentEvent) -> None:
        if sse.event == "RESYNC":
            # Our position was compacted away; the next connection starts from the current
            # state (ADDED for every object, then BOOKMARK), so a consumer that resets its view
            # on RESYNC ends up right.
            self.last_event_id = None
            if self.id_param:
                self.params.pop(self.id_param, None)
        elif sse.id:
            self.last_event_id = sse.id
        self.failures = 0
        self.failing_since = None

    def backoff(self, cause: Exception | None) -> float:
        """Seconds to wait before reconnecting; raises once reconnecting has failed too long."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.reconnect_timeout:
            why = f" ({cause})" if cause else ""
            raise Unavailable(
                f"lost the stream from {self.url} and could not resume it for "
                f"{self.reconnect_timeout:.0f}s{why}",
                {"url": self.url, "lastEventId": self.last_event_id},
            ) from cause
        delay = _BACKOFF[min(self.failures, len(_BACKOFF) - 1)]
        self.failures += 1
        return delay


def _watch_event(sse: ServerSentEvent) -> WatchEvent:
    return WatchEvent(type=sse.event, object=sse.json(), resource_version=sse.id)


# --- clients -------------------------------------------------------------------------------


class _ClientBase:
    """Request building shared by both clients."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        project: str = "default",
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.project = project
        self.timeout = timeout
        self._http = self._connect()

    def _connect(self) -> Any:
        """The subclass's httpx client: the one thing the two clients do not share."""
        raise NotImplementedError

    def _client_options(self) -> dict[str, Any]:
        headers = {"User-Agent": "infermesh-sdk"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": self.timeout,
            "verify": _tls_context(),
        }

    def _unavailable(self, exc: httpx.TransportError) -> Unavailable:
        if isinstance(exc, httpx.TimeoutException):
            what = f"the InferMesh API at {self.base_url} did not answer in time"
        else:
            what = f"cannot reach the InferMesh API at {self.base_url}"
        return Unavailable(
            f"{what} ({type(exc).__name__}); is it running? "
            "Start a local mesh with `infermesh up`, or pass --api / set INFERMESH_API",
            {"url": self.base_url},
        )

    def _project(self, project: str | None) -> str:
        return project or self.project

    def _object_path(self, obj: dict[str, Any]) -> tuple[str, str, str]:
        """(plural, name, project) of an object dict."""
        meta = obj.get("metadata") or {}
        return (
            plural_of(str(obj.get("kind", ""))),
            str(meta.get("name", "")),
            self._project(meta.get("project")),
        )

    def _resume(
        self, path: str, params: dict[str, str], last_event_id: str | None, id_param: str | None
    ) -> _Resume:
        return _Resume(f"{self.base_url}{path}", params, last_event_id, id_param, self.timeout)

    def _watch_stream(
        self, plural: str, project: str | None, resource_version: str | None
    ) -> _Resume:
        params = {"project": self._project(project)}
        if resource_version:
            params["resourceVersion"] = resource_version
        return self._resume(f"/v1/watch/{plural_of(plural)}", params, None, "resourceVersion")

    def _events_stream(self, filters: dict[str, Any], last_event_id: str | None) -> _Resume:
        return self._resume("/v1/events/stream", self._event_params(filters), last_event_id, None)

    def _logs_stream(
        self, name: str, project: str | None, rank: int | None, tail: int | None
    ) -> _Resume:
        params = logs_query(self._project(project), rank, tail) | {"follow": "true"}
        return self._resume(f"/v1/jobs/{name}/logs", params, None, None)

    def _event_params(self, filters: dict[str, Any]) -> dict[str, str]:
        params = {k: str(v) for k, v in filters.items() if v is not None}
        params.setdefault("project", self.project)
        return params

    # Operations: each returns the call; `_Op` sends it with the client's transport.

    @_Op
    def list(
        self, plural: str, *, project: str | None = None, label_selector: str | None = None
    ) -> _Call[ObjectList]:
        """Objects of one kind; `project="*"` lists every project the caller may read."""
        params = {"project": self._project(project)}
        if label_selector:
            params["labelSelector"] = label_selector
        return _Call("GET", f"/v1/{plural_of(plural)}", read_object_list, params)

    @_Op
    def get(self, plural: str, name: str, *, project: str | None = None) -> _Call[MeshObject]:
        return _Call(
            "GET",
            f"/v1/{plural_of(plural)}/{name}",
            read_object,
            {"project": self._project(project)},
        )

    @_Op
    def create(self, obj: dict[str, Any]) -> _Call[MeshObject]:
        plural, _, project = self._object_path(obj)
        return _Call("POST", f"/v1/{plural}", read_object, {"project": project}, obj)

    @_Op
    def replace(self, obj: dict[str, Any]) -> _Call[MeshObject]:
        """Replace an object; with `metadata.resourceVersion` set, a stale one is a Conflict."""
        plural, name, project = self._object_path(obj)
        return _Call("PUT", f"/v1/{plural}/{name}", read_object, {"project": project}, obj)

    @_Op
    def patch(
        self, plural: str, name: str, patch: dict[str, Any], *, project: str | None = None
    ) -> _Call[MeshObject]:
        """JSON merge patch of `metadata.labels` / `spec`."""
        return _Call(
            "PATCH",
            f"/v1/{plural_of(plural)}/{name}",
            read_object,
            {"project": self._project(project)},
            patch,
        )

    @_Op
    def delete(
        self,
        plural: str,
        name: str,
        *,
        project: str | None = None,
        resource_version: str | None = None,
    ) -> _Call[None]:
        params = {"project": self._project(project)}
        if resource_version:
            params["resourceVersion"] = resource_version
        return _Call("DELETE", f"/v1/{plural_of(plural)}/{name}", read_nothing, params)

    @_Op
    def apply(
        self,
        objects: list[dict[str, Any]],
        *,
        strict: bool = False,
        dry_run: bool = False,
        project: str | None = None,
    ) -> _Call[list[ApplyResult]]:
        """Server-side apply, all or nothing; objects without a project go to `project`."""
        params = {"project": self._project(project)}
        if strict:
            params["strict"] = "true"
        if dry_run:
            params["dryRun"] = "true"
        body = {"apiVersion": "v1", "kind": "List", "items": objects}
        return _Call("POST", "/v1/apply", read_apply_results, params, body)

    @_Op
    def action(
        self,
        plural: str,
        name: str,
        verb: str,
        body: dict[str, Any] | None = None,
        *,
        project: str | None = None,
    ) -> _Call[dict[str, Any]]:
        """A colon verb: `POST /v1/{plural}/{name}:{verb}` (cordon, drain, trafficSplit...)."""
        return _Call(
            "POST",
            f"/v1/{plural_of(plural)}/{name}:{verb}",
            read_json,
            {"project": self._project(project)},
            body or {},
        )

    @_Op
    def promote(
        self,
        name: str,
        revision: str | None = None,
        *,
        reason: str = "",
        project: str | None = None,
    ) -> _Call[dict[str, Any]]:
        """Make a canary endpoint NAME's model, with all its traffic (default: the canary of
        the highest weight in the traffic split); the updated Endpoint."""
        body = {"reason": reason, **({"revision": revision} if revision else {})}
        params = {"project": self._project(project)}
        return _Call("POST", f"/v1/endpoints/{name}:promote", read_json, params, body)

    @_Op
    def rollback(
        self, name: str, *, reason: str = "", project: str | None = None
    ) -> _Call[dict[str, Any]]:
        """Drop endpoint NAME's traffic split: all traffic back to its model."""
        params = {"project": self._project(project)}
        return _Call(
            "POST", f"/v1/endpoints/{name}:rollback", read_json, params, {"reason": reason}
        )

    @_Op
    def job_logs(
        self,
        name: str,
        *,
        project: str | None = None,
        rank: int | None = None,
        tail: int | None = None,
    ) -> _Call[JobLogs]:
        """The latest log lines of job NAME, oldest first: one rank's with `rank`, the last
        `tail` with `tail`."""
        params = logs_query(self._project(project), rank, tail)
        return _Call("GET", f"/v1/jobs/{name}/logs", read_job_logs, params)

    @_Op
    def series(self, **query: Any) -> _Call[dict[str, Any]]:
        """SLI series of a project (`GET /v1/metrics/series`): `{"series": [{<by dimensions>,
        "total", "points"}]}`. Query: project, endpoint, revision, domain, tenant, since and
        until (epoch seconds or "-5m"), step (seconds), by ("endpoint,revision")."""
        return _Call("GET", "/v1/metrics/series", read_json, self._event_params(query))

    @_Op
    def slo_series(self, name: str, **query: Any) -> _Call[dict[str, Any]]:
        """An SLO's good and valid events and burn rate over time (`GET
        /v1/slos/{name}/series`): `{"points": [{"t", "good", "total", "ratio", "burn"}], ...}`.
        Query: project, since and until (epoch seconds or "-1d"), step (seconds)."""
        return _Call("GET", f"/v1/slos/{name}/series", read_json, self._event_params(query))

    @_Op
    def events(self, **filters: Any) -> _Call[ItemList]:
        """Recent events, newest first; filters: project, kind, name, type, since, limit."""
        return _Call("GET", "/v1/events", read_items, self._event_params(filters))

    @_Op
    def audit(self, *, limit: int = 100) -> _Call[ItemList]:
        return _Call("GET", "/v1/audit", read_items, {"limit": str(limit)})

    @_Op
    def audit_verify(self) -> _Call[dict[str, Any]]:
        """`{ok, records, headHash, brokenSeq, problem}` of the audit hash chain."""
        return _Call("GET", "/v1/audit:verify", read_json)

    @_Op
    def create_token(
        self,
        subject: str,
        roles: list[str],
        projects: list[str],
        tenants: list[str] | None = None,
    ) -> _Call[dict[str, Any]]:
        """Mint a token (orgAdmin only); the answer holds the token, shown this once."""
        body = {"subject": subject, "roles": roles, "projects": projects, "tenants": tenants or []}
        return _Call("POST", "/v1/tokens", read_json, body=body)

    @_Op
    def whoami(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/v1/whoami", read_json)

    @_Op
    def healthz(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/healthz", read_json)

    @_Op
    def readyz(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/readyz", read_json)

    @_Op
    def server_version(self) -> _Call[str]:
        """The API's version, from its OpenAPI document."""
        return _Call("GET", "/openapi.json", read_server_version)


class MeshClient(_ClientBase):
    """Blocking client. Use as a context manager, or call `close()`."""

    _http: httpx.Client

    def _connect(self) -> httpx.Client:
        return httpx.Client(**self._client_options())

    @classmethod
    def from_context(cls, ctx: Context, **kwargs: Any) -> MeshClient:
        return cls(ctx.api_url, ctx.token, project=ctx.project, **kwargs)

    def _execute(self, call: _Call[R]) -> R:
        try:
            resp = self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        return call.parse(resp)

    def _sse(self, stream: _Resume) -> Iterator[ServerSentEvent]:
        while True:
            cause: Exception | None = None
            try:
                with connect_sse(self._http, "GET", stream.url, **stream.request()) as source:
                    if not source.response.is_success:
                        source.response.read()
                        body_of(source.response)  # raises the server's error
                    for sse in source.iter_sse():
                        stream.seen(sse)
                        if sse.data:  # a keep-alive ping decodes as an event without data
                            yield sse
            except httpx.TransportError as exc:
                cause = exc
            time.sleep(stream.backoff(cause))  # a clean close is resumed like a broken one

    def watch(
        self, plural: str, *, project: str | None = None, resource_version: str | None = None
    ) -> Iterator[WatchEvent]:
        """Changes to objects of one kind, from `resource_version` on; survives reconnects."""
        for sse in self._sse(self._watch_stream(plural, project, resource_version)):
            yield _watch_event(sse)

    def events_stream(
        self, *, last_event_id: str | None = None, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """New events as they happen (filters as for `events`); survives reconnects."""
        for sse in self._sse(self._events_stream(filters, last_event_id)):
            yield sse.json()

    def follow_job_logs(
        self,
        name: str,
        *,
        project: str | None = None,
        rank: int | None = None,
        tail: int | None = None,
    ) -> Iterator[LogLine]:
        """Job NAME's log lines (the latest `tail` first), then each as it is printed, until
        the caller stops; survives reconnects."""
        for sse in self._sse(self._logs_stream(name, project, rank, tail)):
            yield from streamed_lines(sse)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMeshClient(_ClientBase):
    """Asyncio client with the same operations; each returns an awaitable."""

    _http: httpx.AsyncClient

    def _connect(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._client_options())

    @classmethod
    def from_context(cls, ctx: Context, **kwargs: Any) -> AsyncMeshClient:
        return cls(ctx.api_url, ctx.token, project=ctx.project, **kwargs)

    async def _execute(self, call: _Call[R]) -> R:
        try:
            resp = await self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        return call.parse(resp)

    async def _sse(self, stream: _Resume) -> AsyncIterator[ServerSentEvent]:
        while True:
            cause: Exception | None = None
            try:
                async with aconnect_sse(
                    self._http, "GET", stream.url, **stream.request()
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        body_of(source.response)  # raises the server's error
                    async for sse in source.aiter_sse():
                        stream.seen(sse)
                        if sse.data:  # a keep-alive ping decodes as an event without data
                            yield sse
            except httpx.TransportError as exc:
                cause = exc
            await asyncio.sleep(stream.backoff(cause))

    async def watch(
        self, plural: str, *, project: str | None = None, resource_version: str | None = None
    ) -> AsyncIterator[WatchEvent]:
        async for sse in self._sse(self._watch_stream(plural, project, resource_version)):
            yield _watch_event(sse)

    async def events_stream(
        self, *, last_event_id: str | None = None, **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async for sse in self._sse(self._events_stream(filters, last_event_id)):
            yield sse.json()

    async def follow_job_logs(
        self,
        name: str,
        *,
        project: str | None = None,
        rank: int | None = None,
        tail: int | None = None,
    ) -> AsyncIterator[LogLine]:
        async for sse in self._sse(self._logs_stream(name, project, rank, tail)):
            for line in streamed_lines(sse):
                yield line

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
