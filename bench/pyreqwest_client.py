"""The adapters' HTTP client on pyreqwest, kept only to measure it against aiohttp (bench A/B rows).

pyreqwest won the client-alone A/B (bench/upstream_client.py) but lost inside the gateway: its tokio thread takes
the GIL to wake the event loop for every answer, and on this 2-core host the gateway's CPU a call rose from ~470 to
~640 µs (SQLite) and ~500 to ~840 µs (PostgreSQL + Redis). `install()` puts it in place of aiohttp in every
HttpClient of the process (before any adapter starts): the same timeouts, bounds and error mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta

from pyreqwest import exceptions as http_errors
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.response import Response
from yarl import URL

from adapters.errors import UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable
from adapters.http import HttpClient, JsonClient, RawResponse

_OS_ERROR = re.compile(r" \(os error \d+\)$")


class PyreqwestJsonClient(JsonClient):
    """JsonClient carried by one pyreqwest client (no resend, no redirects, bounded bodies)."""

    _client: Client | None = None

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
                raw = await self._read_pyreqwest(response)
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

    async def _read_pyreqwest(self, response: Response) -> bytes:
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


def install() -> None:
    """Every HttpClient (so every REST and SOAP adapter) of this process carries its calls over pyreqwest."""
    HttpClient._client = None  # type: ignore[attr-defined]
    for name in ("start", "close", "request", "_read_pyreqwest"):
        setattr(HttpClient, name, getattr(PyreqwestJsonClient, name))
