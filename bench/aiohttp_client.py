"""The adapters' HTTP client as it was on aiohttp, kept only to measure it against pyreqwest (bench A/B rows).

`install()` puts it in place of pyreqwest in every HttpClient of the process (before any adapter starts): the same
timeouts, bounds and error mapping as the aiohttp version of adapters/http.py had, before pyreqwest replaced it.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import orjson
from yarl import URL

from adapters.errors import UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable
from adapters.http import HttpClient, JsonClient, RawResponse

_CHUNK = 64 * 1024


class AiohttpJsonClient(JsonClient):
    """JsonClient carried by one aiohttp session (no silent resend, no redirects, bounded bodies)."""

    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_seconds, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout, sock_read=None),
            headers=self._headers,
            raise_for_status=False,
            json_serialize=lambda value: orjson.dumps(value).decode(),
        )
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        if self._session is None:
            raise RuntimeError(f"{self.service}: the HTTP client was not started")
        try:
            async with self._session.request(
                method, url, params=params, data=data, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                content_type = response.headers.get("Content-Type", "")
                raw = await self._read_aiohttp(response)
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(self.service, self.connect_timeout) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(self.service, self.timeout) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.service, str(exc) or type(exc).__name__) from exc
        return RawResponse(status, content_type, raw)

    async def _read_aiohttp(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None:
            if length > self.max_body:
                raise UpstreamMalformed(self.service, f"answer of {length} bytes exceeds {self.max_body}")
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body:
                raise UpstreamMalformed(self.service, f"answer exceeds {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def install() -> None:
    """Every HttpClient (so every REST and SOAP adapter) of this process carries its calls over aiohttp."""
    HttpClient._session = None  # type: ignore[attr-defined]
    for name in ("start", "close", "request", "_read_aiohttp"):
        setattr(HttpClient, name, getattr(AiohttpJsonClient, name))
