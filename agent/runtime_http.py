"""`RuntimeHttp`: GETs to one runtime over one keep-alive HTTP/1.1 connection.

An agent asks its runtime for two small pages, once a second, for as long as it lives; a fleet
process runs hundreds of agents. httpx costs ~500 µs of CPU per GET (its pool, anyio, header
models) and ~850 KiB per client, and a shared client with fewer idle connections than runtimes
reconnects on most scrapes; one plain asyncio stream per runtime costs ~60 µs a GET. It speaks
just what a runtime's `/metrics` and `/v1/models` need: GET, a Content-Length, chunked or
read-to-close body, keep-alive, plain TCP or TLS (with the system's CAs), and no redirects,
proxies or compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from urllib.parse import urlsplit

import infermesh

MAX_BODY_BYTES = 32 * 1024 * 1024  # a /metrics page is ~15 KB; anything near this is not one


class RuntimeHttpError(Exception):
    """The runtime answered with an error status, or with something that is not HTTP/1.x."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every TLS runtime of the process: each costs ~1 MiB and milliseconds."""
    return ssl.create_default_context()


class RuntimeHttp:
    """GETs to the server at `url` (scheme, host, port and an optional base path), one at a time,
    on one connection that is opened on first use and again after the server closed it."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"runtime URL {url!r}: expected http(s)://host[:port][/path]")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._base = parts.path.rstrip("/")
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._timeout = timeout
        self._agent = f"infermesh-agent/{infermesh.__version__}"
        self._requests: dict[str, bytes] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of `GET {base}{path}`, within the timeout. Any status is returned as
        is; a failed connection raises OSError (TimeoutError after the timeout), an answer that
        is not HTTP/1.x or ends early RuntimeHttpError."""
        request = self._requests.get(path)
        if request is None:
            request = self._requests[path] = (
                f"GET {self._base}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
                f"User-Agent: {self._agent}\r\nAccept: */*\r\n\r\n"
            ).encode()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(request)
        except TimeoutError:
            self.close()
            raise TimeoutError(f"no answer within {self._timeout:g}s") from None
        except asyncio.IncompleteReadError as exc:
            self.close()
            raise RuntimeHttpError(f"the connection closed mid-answer ({exc})") from None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise RuntimeHttpError(f"malformed answer ({exc})") from None
        except BaseException:
            self.close()  # the stream may hold half an answer: never read the next one after it
            raise

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        reused = self._writer is not None
        try:
            reader, writer = await self._connection()
            writer.write(request)
            return await self._response(reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            # The server closed the idle connection as we sent (keep-alive timeouts race
            # with a 1 s scrape): a GET is safe to ask again, once, on a new connection.
            self.close()
            reader, writer = await self._connection()
            writer.write(request)
            return await self._response(reader)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=_tls_context() if self._tls else None,
            )
        return self._reader, self._writer

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head[:-4].split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise RuntimeHttpError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY_BYTES:
                raise RuntimeHttpError(f"content-length {length} is out of bounds")
            body = await reader.readexactly(length)
        elif status in (204, 304) or status < 200:
            body = b""
        else:  # no length: the body runs to the end of the connection
            body, keep = await _to_end(reader), False
        if not keep:
            self.close()
        return status, body

    def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing already
                writer.close()


async def _to_end(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while data := await reader.read(64 * 1024):
        size += len(data)
        if size > MAX_BODY_BYTES:
            raise RuntimeHttpError(f"body over {MAX_BODY_BYTES} bytes")
        parts.append(data)
    return b"".join(parts)


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            chunk = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise RuntimeHttpError(f"bad chunk size {line[:40]!r}") from None
        if chunk == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                pass
            return b"".join(parts)
        size += chunk
        if size > MAX_BODY_BYTES:
            raise RuntimeHttpError(f"body over {MAX_BODY_BYTES} bytes")
        parts.append(await reader.readexactly(chunk))
        await reader.readexactly(2)  # the chunk's CRLF
