"""`MetricsServer`: an agent's own `/metrics` and `/healthz`, on its own port.

Plain asyncio with h11 (uvicorn's HTTP/1.1 parser) rather than a `uvicorn.Server` per agent:
a fleet runs 2,000 agents in one event loop, and each uvicorn server wakes every 0.1 s for its
housekeeping (20,000 wake-ups a second for 2,000 servers) and takes over the process' SIGINT and
SIGTERM handlers. Two GET routes need neither an ASGI stack nor a lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

_IDLE_TIMEOUT_S = 30.0  # close keep-alive connections nobody uses
_MAX_REQUEST_BYTES = 16 * 1024


class MetricsServer:
    """Serves `registry` at `/metrics` and `health()` (JSON) at `/healthz`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._registry, self._health = registry, health
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; with port 0, `port` is the one the system chose."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_REQUEST_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await server.wait_closed()

    def _route(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", f"{method} is not allowed; use GET")
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return 200, "application/json", json.dumps(self._health()).encode()
        return _error(404, "NotFound", f"no route {path}; routes: /metrics, /healthz")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        try:
            while await self._one_exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            pass  # a broken or idle client: just hang up
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_exchange(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection may carry another."""
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(_MAX_REQUEST_BYTES), _IDLE_TIMEOUT_S)
                conn.receive_data(data)  # b"" is the client closing
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return False
        assert request is not None  # h11 yields a Request before its EndOfMessage
        method = request.method.decode()
        status, content_type, body = self._route(method, request.target.decode())
        headers = [("content-type", content_type), ("content-length", str(len(body)))]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        if method != "HEAD":
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _error(status: int, code: str, message: str) -> tuple[int, str, bytes]:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return status, "application/json", json.dumps(body).encode()
