"""The HTTP/1.1 protocol `serve` runs: uvicorn's httptools protocol, bounded against hostile clients.

Plain uvicorn buffers a request head of any size (httptools holds a header until its end), keeps a silent or
dripping connection open for ever, and after answering a request whose body is still arriving reads and
discards that body for as long as the client sends it. Here, before any application code runs:
- a request target over `max_url_bytes` gets 414, headers over `max_header_bytes` or `max_header_count` 431,
  and no more than those bounds is ever fed to the parser;
- a request's line and headers must arrive within `header_timeout`, and a body may not fall silent for
  `body_timeout`: then 408;
- one client address holds at most `max_connections_per_client` connections: the next one gets 429 (a proxy in
  MSJX_TRUSTED_PROXIES is exempt: it carries many clients);
- after an answer that left the request body unread (a 413), the connection is closed.
Each of these answers is problem+json and closes the connection after a short lingering drain, so that the
client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway import metrics
from gateway.http.forwarded import TrustedProxies
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem
from gateway.server.tls import tls_extension
from gateway.settings import Settings
from schemas.errors import MsjxError
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.http")
# A request line is the target plus method, version, spaces and CRLFs: this much beyond the two limits.
REQUEST_LINE_SLACK = 64
# After a refusal the server stops writing and drains what the client still sends for this long, or this much,
# before it closes: closing with unread bytes would reset the connection and could destroy the answer in flight.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20


@dataclass(frozen=True)
class EdgeLimits:
    max_url_bytes: int = 8192
    max_header_bytes: int = 32768
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_client: int = 256
    # A trusted reverse proxy carries many clients' connections: it is not held to one client's bound (the proxy
    # bounds its clients itself; docs/deploy.md sets nginx's limit_conn), and per-address limits past the TCP
    # connection use the client address it forwards (gateway/http/forwarded.py).
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections_per_client=settings.max_connections_per_client,
            trusted_proxies=settings.trusted_proxy_networks,
        )

    @property
    def head_bytes(self) -> int:
        """The most bytes of one request head (line and headers) fed to the parser."""
        return self.max_url_bytes + self.max_header_bytes + REQUEST_LINE_SLACK


class HeadRefused(MsjxError):
    """Raised from a parser callback to stop parsing a request head that breaks a limit."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.code)
        self.problem = problem


def url_too_long(limits: EdgeLimits) -> Problem:
    return Problem(ProblemCode.URI_TOO_LONG, f"the limit is {limits.max_url_bytes} bytes")


def headers_too_large(limits: EdgeLimits) -> Problem:
    return Problem(
        ProblemCode.HEADERS_TOO_LARGE,
        f"the limits are {limits.max_header_bytes} bytes and {limits.max_header_count} headers",
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of `limits`; `guarded_protocol` makes one for some settings."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()
    # Open connections by client address, in this process (one server per process).
    open_by_client: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_host: str | None = None
        self._reading_head = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # A request head or body still arriving when a read ends: only then is its timer armed, and a body's
        # transport wrapped (data_received). Most requests arrive whole in one read: a timer made and cancelled
        # for each, and a wrapper on every write, cost the loop a few µs a request.
        self._head_pending = False
        self._head_began = 0.0
        self._body_pending = False
        self._body_seen_at = 0.0
        self._lingering = False
        self._lingered = 0
        # A refusal of a pipelined request, written once the requests before it are answered.
        self._refusal_after: Problem | None = None
        self._tls: dict[str, Any] | None = None

    # --- connections ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = tls_extension(transport)
        if self.client is not None and not self.limits.trusted_proxies.trusts(self.client[0]):
            host = self.client[0]
            self._client_host = host
            self.open_by_client[host] += 1
            if self.open_by_client[host] > self.limits.max_connections_per_client:
                self._refuse(
                    Problem(
                        ProblemCode.TOO_MANY_CONNECTIONS,
                        f"one client address may hold {self.limits.max_connections_per_client} connections",
                        headers={"Retry-After": "1"},
                    )
                )
                return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        host, self._client_host = self._client_host, None
        if host is not None:
            self.open_by_client[host] -= 1
            if self.open_by_client[host] <= 0:
                del self.open_by_client[host]
        self._cancel_timers()
        super().connection_lost(exc)

    # --- reading --------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._refusal_after is not None:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.abort()
            return
        self._unset_keepalive_if_required()
        if self._body_pending:
            self._body_seen_at = self.loop.time()
        try:
            while data and not self._lingering:
                if self._reading_head:
                    room = self.limits.head_bytes - self._head_bytes
                    if room <= 0:
                        raise HeadRefused(self._head_problem())
                    piece, data = data[:room], data[room:]
                    self._head_bytes += len(piece)
                else:
                    piece, data = data, b""
                self.parser.feed_data(piece)
            if self._lingering or self.transport.is_closing():
                return
            # What is still arriving when this read ends gets its clock now.
            if self._head_pending and self._head_timer is None:
                # The head's clock runs from its first byte: what is left of header_timeout since then.
                elapsed = self.loop.time() - self._head_began
                self._arm_head_timer(self.limits.header_timeout - elapsed)
            if self._body_pending:
                cycle = self.cycle
                # Closing (a 413, `Connection: close`) while this body is still arriving must linger instead. No
                # application code has run since the head was parsed, so the wrapper is in place before any answer.
                if cycle is not None and isinstance(cycle.transport, AnswerTransport):
                    cycle.transport.linger_on_close = True
                if self._body_timer is None:
                    self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_silent)
        except HeadRefused as refused:
            self._refuse(refused.problem)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadRefused):
                self._refuse(exc.__context__.problem)
            else:
                self._refuse(Problem(ProblemCode.MALFORMED_REQUEST, "the request is not HTTP/1.1"))

    def _head_problem(self) -> Problem:
        # on_url refuses a long target as it arrives, so a head over its bytes with a short target is the headers'.
        url: bytes = getattr(self, "url", b"")
        return url_too_long(self.limits) if len(url) > self.limits.max_url_bytes else headers_too_large(self.limits)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:  # the verified client certificate, for mutual TLS (gateway/access/certificates.py)
            self.scope.setdefault("extensions", {})["tls"] = self._tls  # type: ignore[typeddict-item]
        # The first request's clock runs from the connection (its timer is armed already); a later one's from its
        # first byte (until then, the keep-alive timeout closes an idle connection).
        self._head_pending = True
        if self._head_timer is None:
            self._head_began = self.loop.time()
        self._reading_head = True
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url  # uvicorn's on_url, inline
        if len(self.url) > self.limits.max_url_bytes:
            raise HeadRefused(url_too_long(self.limits))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        headers = self.headers
        limits = self.limits
        if self._header_bytes > limits.max_header_bytes or len(headers) >= limits.max_header_count:
            raise HeadRefused(headers_too_large(limits))
        # uvicorn's HttpToolsProtocol.on_header, inline: one Python call a header instead of two
        # (tests/test_hostile_http.py holds the two to the same scope).
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_pending = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            cycle.transport = AnswerTransport(self)  # type: ignore[assignment]
        # Until on_message_complete, a body is on its way: for a request without one that comes at once, in this
        # same read, and nothing is armed (data_received).
        self._body_seen_at = self.loop.time()
        self._body_pending = True

    def on_message_complete(self) -> None:
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        # What follows belongs to the next request's head.
        self._reading_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.transport.is_closing():
            return
        refusal = self._refusal_after
        if refusal is not None and (self.cycle is None or self.cycle.response_complete):
            self._refusal_after = None
            self._answer(refusal)
        elif cycle is not None and cycle.response_complete and cycle.more_body:
            # Answered before the body ended (413, or a refusal that did not need it): stop reading it.
            self._unset_keepalive_if_required()
            self._linger()

    # --- timeouts -------------------------------------------------------------------------------------------

    def _arm_head_timer(self, seconds: float | None = None) -> None:
        delay = self.limits.header_timeout if seconds is None else max(seconds, 0.0)
        self._head_timer = self.loop.call_later(delay, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if not self._head_pending:
            # An idle connection: nothing to answer. (Not `_head_bytes == 0`: a head begun in the read that ended the
            # request before it has bytes that count towards that request.)
            self.transport.close()
            return
        self._refuse(
            Problem(
                ProblemCode.HEADER_TIMEOUT,
                f"the request line and headers must arrive within {self.limits.header_timeout:g} s",
            )
        )

    def _body_silent(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body or cycle.response_complete:
            return
        silent = self.loop.time() - self._body_seen_at
        # Reading paused means the application is behind, not the client.
        if silent < self.limits.body_timeout or self.flow.read_paused:
            delay = max(self.limits.body_timeout - silent, 0.1)
            self._body_timer = self.loop.call_later(delay, self._body_silent)
            return
        problem = Problem(ProblemCode.BODY_TIMEOUT, f"the body fell silent for {self.limits.body_timeout:g} s")
        # The application waiting for this body sees the client gone; only the server answers.
        started = cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
        if started:
            self.transport.close()
        else:
            self._answer(problem)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._head_pending = self._body_pending = False

    # --- answers of the server itself ----------------------------------------------------------------------

    def _refuse(self, problem: Problem) -> None:
        """Answer `problem` on the wire, then close; what arrives meanwhile is read and dropped. If an earlier
        request on this connection is still being answered, this answer waits for it (answers keep their order)."""
        if self.transport.is_closing() or self._lingering:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._cancel_timers()
            self._refusal_after = problem
            return
        self._answer(problem)

    def _answer(self, problem: Problem) -> None:
        # Counted, not logged at info: a flood of refusals must not become a flood of log lines.
        metrics.HTTP_REFUSED.labels(problem.code).inc()
        log.debug("refused %s from %s: %s", problem.status, self._client_host or "?", problem.code)
        body = problem.render()
        content = [STATUS_LINE[problem.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        headers = {
            "content-type": PROBLEM_CONTENT_TYPE,
            "content-length": str(len(body)),
            "connection": "close",
            **problem.headers,
        }
        for name, value in headers.items():
            content.extend([name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"])
        content.extend([b"\r\n", body])
        self.transport.write(b"".join(content))
        self._linger()

    def close_after_answer(self) -> None:
        """Close once the answer is written: at once if the request was read to its end, else after lingering."""
        if self.cycle is not None and self.cycle.more_body:
            self._linger()
        else:
            self._close()

    def _linger(self) -> None:
        if self._lingering:
            return
        self._lingering = True
        self._cancel_timers()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class AnswerTransport:
    """The transport one request's answer is written to.

    uvicorn writes an answer's head and its body separately: two system calls where one does. The head is held
    until the first body write and leaves with it; a head alone (a streamed answer whose body comes later, a
    `100 Continue`) leaves at the loop's next turn, so nothing waits on it. Once `linger_on_close` is set (the
    request's body is still arriving: data_received), closing lingers instead, so that the client reads the
    answer (a 413, `Connection: close`) and not a reset.
    """

    __slots__ = ("_held", "_passthrough", "_protocol", "_transport", "linger_on_close")

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._held: bytes | None = None
        self._passthrough = False
        self.linger_on_close = False

    def write(self, data: bytes) -> None:
        if self._passthrough:
            self._transport.write(data)
        elif self._held is None:
            self._held = data
            self._protocol.loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self._passthrough = True
            self._transport.write(held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        self._passthrough = True
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        if self.linger_on_close:
            self._protocol.close_after_answer()
        else:
            self._transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`) for these settings."""

    class ConfiguredProtocol(GuardedHttpToolsProtocol):
        limits = EdgeLimits.from_settings(settings)
        open_by_client: ClassVar[Counter[str]] = Counter()

    return ConfiguredProtocol
