"""The HTTP client of every adapter: one pyreqwest client per upstream, bounded bodies, every failure an UpstreamError.

pyreqwest (Rust: reqwest and hyper on their own threads) was chosen by measurement over aiohttp: the same GET costs
the event loop ~15 µs instead of ~75 (bench/upstream_client.py, figures in bench/results/upstream_client.md and
docs/performance.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from pyreqwest import exceptions as http_errors
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.response import Response
from yarl import URL

from .base import Adapter
from .errors import UpstreamMalformed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from .policy import ResiliencePolicy

__all__ = ["DEFAULT_MAX_BODY", "HttpClient", "JsonClient", "JsonResponse", "RawResponse", "phrase"]

DEFAULT_MAX_BODY = 2 * 1024 * 1024
_OS_ERROR = re.compile(r" \(os error \d+\)$")


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """A decoded answer: HTTP status below 500 and a JSON object body. The adapter reads the business code."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An answer as it came: status, content type and the body (bounded by `max_body`)."""

    status: int
    content_type: str
    body: bytes


class HttpClient:
    """One pyreqwest client per upstream: `start()` once per process, `close()` at shutdown.

    Every request is exactly one request to the upstream: reqwest resends nothing that was written (hyper only
    retries a request that met a pooled connection found dead before a byte of it was sent), so the retry policy
    wrapped around it counts and audits every attempt it makes. Timeouts: `timeout` bounds one whole exchange
    (waiting for a pooled connection and reading the body included), `connect_timeout` the TCP connect,
    `read_timeout` the longest silence between two reads. Redirects are not followed.
    """

    def __init__(
        self,
        service: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_connections: int = 100,
        keepalive_seconds: float = 15.0,
        max_body: int = DEFAULT_MAX_BODY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        self.max_body = max_body
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._headers = dict(headers or {})
        self._client: Client | None = None
        self.set_timeouts(timeout, connect_timeout, read_timeout)

    def set_timeouts(
        self, total: float, connect: float | None = None, read: float | None = None, max_connections: int | None = None
    ) -> None:
        """Change the timeouts (and pool size); takes effect at `start()`."""
        self.timeout = total
        # A TCP connect that takes longer than this will not succeed usefully later, so it fails early.
        self.connect_timeout = min(connect, total) if connect is not None else min(total, 2.0)
        self.read_timeout = read
        if max_connections is not None:
            self._max_connections = max_connections

    async def start(self) -> None:
        if self._client is not None:
            return
        builder = (
            ClientBuilder()
            .timeout(timedelta(seconds=self.timeout))
            .connect_timeout(timedelta(seconds=self.connect_timeout))
            .pool_timeout(timedelta(seconds=self.timeout))
            .pool_idle_timeout(timedelta(seconds=self._keepalive_seconds))
            .max_connections(self._max_connections)
            .follow_redirects(False)
            .error_for_status(False)
            .default_cookie_store(False)
            .no_proxy()  # as aiohttp did: MSJX_UPSTREAM_URLS says where each upstream is, not the environment
        )
        if self.read_timeout is not None:
            builder = builder.read_timeout(timedelta(seconds=self.read_timeout))
        if self._headers:
            builder = builder.default_headers(self._headers)
        self._client = builder.build()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        """One request; the answer whatever its status. Raises UpstreamTimeout, UpstreamUnavailable (no connection,
        or it dropped) or UpstreamMalformed (not HTTP, or a body over `max_body`)."""
        if self._client is None:
            raise RuntimeError(f"{self.service}: the HTTP client was not started")
        # yarl encodes the URL and the query exactly as aiohttp did before (an URL built encoded stays as built).
        if params:
            url = (url if isinstance(url, URL) else URL(url)).extend_query(params)
        elif not isinstance(url, URL):
            url = URL(url)
        builder = self._client.request(method, str(url))
        if headers:
            builder = builder.headers(dict(headers))
        if data is not None:
            builder = builder.body_bytes(data)
        try:
            async with builder.build_streamed() as response:
                status = response.status
                content_type = response.headers.get("content-type") or ""
                raw = await self._read(response)
        except http_errors.RequestTimeoutError as exc:
            connecting = isinstance(exc, http_errors.ConnectTimeoutError) and _caused_by(exc, "(Connect)")
            raise UpstreamTimeout(self.service, self.connect_timeout if connecting else self.timeout) from exc
        except http_errors.BodyDecodeError as exc:
            raise UpstreamUnavailable(self.service, "the connection closed in the middle of the answer") from exc
        except http_errors.DecodeError as exc:  # the answer was not HTTP hyper could parse
            raise UpstreamMalformed(self.service, f"invalid HTTP response: {_last_cause(exc)}") from exc
        except http_errors.RequestError as exc:  # refused, reset, closed before answering, DNS
            raise UpstreamUnavailable(self.service, _reason(exc, str(url))) from exc
        return RawResponse(status, content_type, raw)

    async def _read(self, response: Response) -> bytes:
        length = response.headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_body:
                raise UpstreamMalformed(
                    self.service, f"answer of {length} bytes exceeds {self.max_body}", str(response.status)
                )
            # hyper reads no more than the Content-Length it announced.
            return (await response.body_reader.bytes()).to_bytes()
        # No Content-Length (chunked, or decompressed): read in pieces and stop as soon as the bound is crossed.
        chunks: list[bytes] = []
        size = 0
        reader = response.body_reader
        while (chunk := await reader.read_chunk()) is not None:  # bounded: max_body, then the total timeout
            size += len(chunk)
            if size > self.max_body:
                raise UpstreamMalformed(self.service, f"answer exceeds {self.max_body} bytes", str(response.status))
            chunks.append(chunk.to_bytes())
        return b"".join(chunks)


class JsonClient(HttpClient):
    """GETs (or sends) JSON to one upstream under a base URL; every failure an UpstreamError."""

    def __init__(self, service: str, base_url: str, **options: Any) -> None:
        headers = {"Accept": "application/json", **(options.pop("headers", None) or {})}
        super().__init__(service, headers=headers, **options)
        self.base_url = base_url.rstrip("/")

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> JsonResponse:
        """GET `path` (relative to the base URL) and decode a JSON object.

        Raises UpstreamTimeout, UpstreamUnavailable (no connection, or it dropped), UpstreamRejected (HTTP 5xx,
        or a 4xx without a JSON body) or UpstreamMalformed (not JSON, not an object, or too big).
        """
        response = await self.request("GET", self.base_url + path, params=params)
        return self._decode(response.status, response.body)

    async def post_json(self, path: str, body: object) -> JsonResponse:
        """POST a JSON body to `path` and decode a JSON object; failures as for `get_json`."""
        response = await self.request(
            "POST", self.base_url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        return self._decode(response.status, response.body)

    def _decode(self, status: int, raw: bytes) -> JsonResponse:
        if status >= 500 or 300 <= status < 400:
            raise UpstreamRejected(self.service, str(status), phrase(status))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if status >= 400:  # an error page rather than the API's own error body
                raise UpstreamRejected(self.service, str(status), phrase(status)) from exc
            raise UpstreamMalformed(self.service, f"body is not JSON ({exc})", str(status)) from exc
        if not isinstance(body, dict):
            raise UpstreamMalformed(self.service, f"body is a JSON {type(body).__name__}, not an object", str(status))
        return JsonResponse(status, body)


def _causes(exc: http_errors.RequestError) -> list[str]:
    details = getattr(exc, "details", None) or {}
    return [str(cause.get("message", "")) for cause in details.get("causes") or ()]


def _caused_by(exc: http_errors.RequestError, text: str) -> bool:
    return any(text in cause for cause in _causes(exc))


def _last_cause(exc: http_errors.RequestError) -> str:
    causes = _causes(exc)
    return _OS_ERROR.sub("", causes[-1]) if causes else str(exc) or type(exc).__name__


def _reason(exc: http_errors.RequestError, url: str) -> str:
    if _caused_by(exc, "connection closed before message completed"):
        return "the connection closed before an answer"
    if isinstance(exc, http_errors.ConnectError) and _caused_by(exc, "(Connect)"):
        target = URL(url)
        return f"cannot connect to {target.host}:{target.port} ({_last_cause(exc)})"
    return _last_cause(exc)


def phrase(status: int) -> str:
    # The status alone, never the upstream's error page: its text would reach the caller in problem+json.
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


class RestAdapter(Adapter):
    """An adapter whose upstream speaks JSON over HTTP: one `JsonClient`, sized and timed by its resilience policy.

    Subclasses set `service`, `title`, `operations` and `call`; `default_max_connections` bounds the pool.
    """

    default_max_connections: ClassVar[int] = 64

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        max_connections: int | None = None,
        policy: ResiliencePolicy | None = None,
    ) -> None:
        connections = max_connections or self.default_max_connections
        self.http = JsonClient(self.service, base_url, timeout=timeout, max_connections=connections)
        self.policy = policy or ResiliencePolicy(total_timeout=timeout, max_concurrency=connections)

    async def start(self) -> None:
        policy = self.policy
        self.http.set_timeouts(policy.total_timeout, policy.connect, policy.read_timeout, policy.max_concurrency)
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()
