"""The adapters' HTTP client on aiohttp, as it was until adapters/wire.py replaced it, kept to measure against it.

`install()` puts it in place of the wire in every HttpClient of the process (before any adapter starts): the same
timeouts, bounds, one request per call (aiohttp's silent resend turned off) and error mapping.
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
    """JsonClient carried by one aiohttp session."""

    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_seconds, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
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
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamUnavailable(self.service, "the connection closed in the middle of the answer") from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamMalformed(self.service, f"invalid HTTP response: {exc.message}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.service, str(exc) or type(exc).__name__) from exc
        return RawResponse(status, content_type, raw)

    async def _read_aiohttp(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self.max_body:
            reason = f"answer of {length} bytes exceeds {self.max_body}"
            raise UpstreamMalformed(self.service, reason, str(response.status))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body:
                raise UpstreamMalformed(self.service, f"answer exceeds {self.max_body} bytes", str(response.status))
            chunks.append(chunk)
        return b"".join(chunks)


def install() -> None:
    """Every HttpClient (so every REST and SOAP adapter) of this process carries its calls over aiohttp."""
    HttpClient._session = None  # type: ignore[attr-defined]
    for name in ("start", "close", "request", "_read_aiohttp"):
        setattr(HttpClient, name, getattr(AiohttpJsonClient, name))
