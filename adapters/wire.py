"""The adapters' HTTP/1.1 wire: keep-alive connections to one upstream, on asyncio protocols and httptools' parser.

aiohttp's client spent ~130 µs of the event loop a request on this host against ~30 for this (docs/performance.md):
the upstream call was the largest share of a gateway call. httptools (llhttp, as in uvicorn) parses; this module only
pools connections, frames requests and enforces the bounds. Errors are `WireError`s; `HttpClient` maps them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import httptools
from yarl import URL

from schemas.errors import MsjxError

__all__ = [
    "ConnectTimeout",
    "Dropped",
    "Pool",
    "RawResponse",
    "ReadTimeout",
    "TooBig",
    "Unreachable",
    "WireError",
    "WireMalformed",
]

USER_AGENT = "msjx-gateway"


class WireError(MsjxError):
    """A request that got no usable answer; the message is safe to show (no secrets, no upstream body)."""


class ConnectTimeout(WireError):
    """The TCP (or TLS) connect took longer than the connect timeout."""


class ReadTimeout(WireError):
    """The upstream went silent for longer than the read timeout."""


class Unreachable(WireError):
    """No connection could be made (refused, reset, DNS)."""


class Dropped(WireError):
    """The connection closed before the answer was complete."""


class WireMalformed(WireError):
    """The answer is not HTTP this client can read."""


class TooBig(WireError):
    """The answer's body is over the bound; `status` is the answer's HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An answer as it came: status, content type and the body (bounded by `max_body`)."""

    status: int
    content_type: str
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight; the parser is fed as bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self._loop = loop
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._status = 0
        self._content_type = ""
        self._encoding = ""
        self._length: int | None = None
        self._chunked = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._started = False
        self._headers_done = False
        self._complete = False
        self._head_only = False
        self._read_timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted for the next request
            self.close()
            return
        self._started = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._loop.call_later(self._read_timeout, self._silent)  # type: ignore[arg-type]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a bound crossed in a callback below: its own error
            cause = exc.__context__
            self._fail(cause if isinstance(cause, WireError) else WireMalformed(f"invalid HTTP response: {exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(WireMalformed("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(WireMalformed(f"invalid HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self.closed = True  # at once, not at connection_lost: an idle connection must not be taken in between
        # A body without Content-Length or chunking ends when the server closes: that end completes it.
        if self._waiter is not None and self._headers_done and not self._complete and self._length is None:
            if not self._chunked:
                self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            where = "in the middle of the answer" if self._started else "before an answer"
            self._waiter.set_exception(Dropped(f"the connection closed {where}"))

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"content-type":
            self._content_type = value.decode("latin-1")
        elif key == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif key == b"content-encoding":
            self._encoding = value.decode("latin-1").strip().lower()
        elif key == b"content-length":
            try:
                self._length = int(value)
            except ValueError:
                raise WireMalformed("invalid HTTP response: bad Content-Length") from None
            if self._length > self._max_body:
                raise TooBig(f"answer of {self._length} bytes exceeds {self._max_body}", self._parser.get_status_code())

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        if self._head_only and self._status >= 200:
            # An answer to HEAD has no body whatever its headers say; httptools cannot be told, so the answer ends
            # here and the connection, whose parser would wait for that body, is not used again.
            self._length = None
            self.on_message_complete()
            self.close()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise TooBig(f"answer exceeds {self._max_body} bytes", self._status)
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # 1xx: an interim answer; the real one follows on the same connection
            self._reset_message()
            return
        self._complete = True
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is None or waiter.done():
            return
        try:
            body = _decoded(body, self._encoding, self._max_body, self._status)
        except WireError as exc:
            waiter.set_exception(exc)
            self.close()
            return
        waiter.set_result(RawResponse(self._status, self._content_type, body))

    # --- the pool's side ---

    def send(
        self, head: bytes, body: bytes | None, read_timeout: float | None, head_only: bool = False
    ) -> asyncio.Future[RawResponse]:
        """Write one request; the future completes with its answer (or a WireError)."""
        self._reset_message()
        self._head_only = head_only
        self._complete = False
        self._started = False
        waiter = self._waiter = self._loop.create_future()
        self._read_timeout = read_timeout
        if read_timeout is not None:
            self._timer = self._loop.call_later(read_timeout, self._silent)
        assert self.transport is not None
        self.transport.write(head + body if body else head)
        return waiter

    def reusable(self) -> bool:
        return not self.closed and self._complete and self._waiter is None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _reset_message(self) -> None:
        self._status = 0
        self._content_type = ""
        self._encoding = ""
        self._length = None
        self._chunked = False
        self._chunks = []
        self._size = 0
        self._headers_done = False

    def _silent(self) -> None:
        self._timer = None
        self._fail(ReadTimeout("the upstream went silent"))

    def _fail(self, exc: WireError) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _decoded(body: bytes, encoding: str, bound: int, status: int) -> bytes:
    """The body with its content coding undone (gzip, deflate), never past `bound` bytes: no decompression bombs."""
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise WireMalformed(f"unsupported Content-Encoding {encoding!r}")
    try:
        out = inflater.decompress(body, bound + 1)
    except zlib.error as exc:
        raise WireMalformed(f"body is not valid {encoding}: {exc}") from exc
    if len(out) > bound:
        raise TooBig(f"answer exceeds {bound} bytes once decoded", status)
    return out


class Pool:
    """Keep-alive connections to the origins of one upstream, at most `limit` at once; waiters are served in turn.

    One `request` is exactly one request on the wire: a connection that fails is closed, never silently retried.
    """

    def __init__(
        self,
        *,
        limit: int,
        keepalive_seconds: float,
        connect_timeout: float,
        read_timeout: float | None,
        max_body: int,
        headers: Mapping[str, str],
    ) -> None:
        self._limit = limit
        self._keepalive = keepalive_seconds
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_body = max_body
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        self._default_headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if value is not None)
        self._has = {name.lower() for name in headers}
        self._head_cache: dict[tuple[str, str, int], str] = {}

    async def request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> RawResponse:
        """Send one request and read its answer; raises a WireError subclass on every failure."""
        if url.scheme not in ("http", "https") or not url.host:
            raise Unreachable(f"not an http(s) URL: {url.scheme}://{url.host or ''}")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connection = await self._acquire(origin)
        done = False
        try:
            head = self._head(origin, method, url, headers, body)
            answer = await connection.send(head, body, self._read_timeout, method == "HEAD")
            done = True
            return answer
        finally:
            # Cancelled or failed mid-exchange: the connection may still carry part of an answer, so it goes.
            if not done or not connection.reusable():
                connection.close()
            self._release(origin, connection)

    def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unreachable("the client was closed"))

    def _head(
        self,
        origin: tuple[str, str, int],
        method: str,
        url: URL,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> bytes:
        fixed = self._head_cache.get(origin)
        if fixed is None:
            scheme, host, port = origin
            authority = url.raw_host or host
            if ":" in authority:  # an IPv6 literal
                authority = f"[{authority}]"
            if port != (443 if scheme == "https" else 80):
                authority = f"{authority}:{port}"
            fixed = f"Host: {authority}\r\n{self._default_headers}"
            if "user-agent" not in self._has:
                fixed += f"User-Agent: {USER_AGENT}\r\n"
            if "accept-encoding" not in self._has:
                fixed += "Accept-Encoding: gzip, deflate\r\n"
            self._head_cache[origin] = fixed
        lines = [method, " ", url.raw_path_qs or "/", " HTTP/1.1\r\n", fixed]
        if headers:
            for name, value in headers.items():
                if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                    raise WireMalformed(f"header {name!r} holds a line break")
                lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            return "".join(lines).encode()  # UTF-8, as aiohttp sent header values
        except UnicodeEncodeError:  # a lone surrogate
            raise WireMalformed("a header value cannot be encoded") from None

    async def _acquire(self, origin: tuple[str, str, int]) -> _Connection:
        while True:
            if self._closed:
                raise Unreachable("the client was closed")
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._open < self._limit or self._evict_other(origin):
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # it was handed a turn it will not take: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        self._open += 1
        try:
            return await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recent: the least likely to have been closed by the server
            if not connection.closed and now - connection.idle_since < self._keepalive:
                return connection
            connection.close()
            self._open -= 1
        return None

    def _evict_other(self, origin: tuple[str, str, int]) -> bool:
        """Close an idle connection to another origin, so that this one may open: a slot held idle is free."""
        for other, idle in self._idle.items():
            if other != origin and idle:
                idle.popleft().close()
                self._open -= 1
                return True
        return False

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._max_body), host, port, ssl=tls
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} took over {self._connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS with {host}:{port} failed ({exc.reason or exc})") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {host}:{port} ({exc.strerror or exc})") from None
        return connection

    def _release(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        if connection.closed or self._closed:
            self._open -= 1
        else:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, deque()).append(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
