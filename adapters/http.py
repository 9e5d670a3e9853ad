"""The HTTP client of every adapter: keep-alive connections per upstream, bounded bodies, failures as UpstreamErrors.

The wire is adapters/wire.py (httptools), chosen by measurement against aiohttp and pyreqwest (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from yarl import URL

from . import wire
from .base import Adapter
from .errors import UpstreamMalformed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from .policy import ResiliencePolicy
from .wire import RawResponse

__all__ = ["DEFAULT_MAX_BODY", "HttpClient", "JsonClient", "JsonResponse", "RawResponse", "phrase"]

DEFAULT_MAX_BODY = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """A decoded answer: HTTP status below 500 and a JSON object body. The adapter reads the business code."""

    status: int
    body: dict[str, Any]


class HttpClient:
    """Keep-alive connections to one upstream (adapters/wire.py): `start()` once per process, `close()` at shutdown.

    Every request is exactly one request to the upstream (nothing below resends), so the retry policy wrapped around
    it counts and audits every attempt it makes. Redirects are not followed: an upstream answers at its own address,
    or the answer is an error. Timeouts: `timeout` bounds one whole exchange (waiting for a pooled connection
    included), `connect_timeout` the TCP connect, `read_timeout` the longest silence between two reads.
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
        self._pool: wire.Pool | None = None
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
        if self._pool is not None:
            return
        self._pool = wire.Pool(
            limit=self._max_connections,
            keepalive_seconds=self._keepalive_seconds,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_body=self.max_body,
            headers=self._headers,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

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
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"{self.service}: the HTTP client was not started")
        target = url if isinstance(url, URL) else URL(url)
        if params:
            target = target.extend_query(params)
        try:
            async with asyncio.timeout(self.timeout):
                return await pool.request(method, target, headers, data)
        except wire.ConnectTimeout as exc:
            raise UpstreamTimeout(self.service, self.connect_timeout) from exc
        except (TimeoutError, wire.ReadTimeout) as exc:
            raise UpstreamTimeout(self.service, self.timeout) from exc
        except wire.TooBig as exc:
            raise UpstreamMalformed(self.service, str(exc), str(exc.status)) from exc
        except wire.WireMalformed as exc:
            raise UpstreamMalformed(self.service, str(exc)) from exc
        except wire.WireError as exc:  # refused, reset, closed before or while answering, DNS
            raise UpstreamUnavailable(self.service, str(exc)) from exc


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
