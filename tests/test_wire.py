"""The adapters' HTTP/1.1 wire (adapters/wire.py) against a real socket server that answers as told, byte for byte."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from adapters.errors import UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable
from adapters.http import HttpClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class Server:
    """A TCP server on 127.0.0.1 reading one request head at a time and answering through `handler`.

    The handler returns False to stop serving the connection (it closes). `heads` keeps every request head seen,
    `connections` counts the connections accepted and `open_now`/`most_open` how many were open at once.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.closed = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = _content_length(head)
                if length:
                    head += await reader.readexactly(length)
                self.heads.append(head)
                if not await self.handler(reader, writer, head):
                    break
        finally:
            self.open_now -= 1
            writer.close()
            self.closed.set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    headers = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n" + headers + b"\r\n" + body


def fixed(body: bytes) -> bytes:
    return answer(body, b"Content-Length: %d" % len(body))


async def empty_object(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    writer.write(fixed(b"{}"))
    return True


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, str]]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> tuple[Server, str]:
        server = Server(handler)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        await server.stop()


async def client(**options: object) -> HttpClient:
    http = HttpClient("credit", **options)  # type: ignore[arg-type]
    await http.start()
    return http


async def test_keep_alive_carries_many_requests_on_one_connection(serve) -> None:
    server, url = await serve(empty_object)
    http = await client()
    for _ in range(5):
        response = await http.request("GET", url + "/a", params={"q": "统一 代码&x"})
        assert (response.status, response.content_type, response.body) == (200, "application/json", b"{}")
    await http.close()
    assert server.connections == 1
    head = server.heads[0].decode("latin-1")
    # The query is percent-encoded as yarl encodes it; Host carries the port.
    assert head.startswith("GET /a?q=%E7%BB%9F%E4%B8%80+%E4%BB%A3%E7%A0%81%26x HTTP/1.1\r\n")
    assert f"Host: {url.removeprefix('http://')}\r\n" in head


async def test_post_body_has_its_length_and_headers(serve) -> None:
    server, url = await serve(empty_object)
    http = await client(headers={"Accept": "application/json"})
    await http.request("POST", url + "/p", data=b'{"a":1}', headers={"Content-Type": "application/json"})
    head = server.heads[0]
    assert b"Content-Length: 7\r\n" in head and head.endswith(b'\r\n\r\n{"a":1}')
    assert b"Accept: application/json\r\n" in head and b"Content-Type: application/json\r\n" in head
    await http.close()


async def test_chunked_and_close_delimited_bodies(serve) -> None:
    async def chunked(reader, writer, head) -> bool:
        if b"/chunked" in head:
            writer.write(answer(b'4\r\n{"a"\r\n4\r\n: 1}\r\n0\r\n\r\n', b"Transfer-Encoding: chunked"))
            return True
        writer.write(answer(b'{"until": "close"}', b"Connection: close"))  # no length: the close ends it
        return False

    server, url = await serve(chunked)
    http = await client()
    assert (await http.request("GET", url + "/chunked")).body == b'{"a": 1}'
    assert (await http.request("GET", url + "/eof")).body == b'{"until": "close"}'
    # The connection the server closed is not reused.
    assert (await http.request("GET", url + "/chunked")).body == b'{"a": 1}'
    assert server.connections == 2
    await http.close()


async def test_interim_answer_is_skipped(serve) -> None:
    async def interim(reader, writer, head) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + fixed(b"{}"))
        return True

    _, url = await serve(interim)
    http = await client()
    assert (await http.request("GET", url)).status == 200
    await http.close()


async def test_gzip_is_decoded_and_bounded(serve) -> None:
    packed = gzip.compress(b'{"k": "' + b"x" * 5000 + b'"}')

    async def gz(reader, writer, head) -> bool:
        writer.write(answer(packed, b"Content-Encoding: gzip", b"Content-Length: %d" % len(packed)))
        return True

    _, url = await serve(gz)
    http = await client()
    assert len((await http.request("GET", url)).body) == 5009
    await http.close()
    small = await client(max_body=1000)  # the packed body fits; unpacked it would not
    with pytest.raises(UpstreamMalformed, match="exceeds 1000 bytes once decoded") as caught:
        await small.request("GET", url)
    assert caught.value.upstream_status == "200"
    await small.close()


async def test_body_over_the_bound_is_refused_early(serve) -> None:
    async def big(reader, writer, head) -> bool:
        if b"/chunked" in head:
            writer.write(answer(b"800\r\n" + b"x" * 0x800 + b"\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"))
        else:
            writer.write(answer(b"", b"Content-Length: 1000000"))  # refused on its header alone
        return True

    _, url = await serve(big)
    http = await client(max_body=1024)
    with pytest.raises(UpstreamMalformed, match="answer of 1000000 bytes exceeds 1024"):
        await http.request("GET", url + "/length")
    with pytest.raises(UpstreamMalformed, match="answer exceeds 1024 bytes"):
        await http.request("GET", url + "/chunked")
    await http.close()


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (b"SMTP ready\r\n\r\n", UpstreamMalformed, "invalid HTTP response"),
        (b"", UpstreamUnavailable, "closed before an answer"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"half', UpstreamUnavailable, "in the middle of the answer"),
    ],
)
async def test_broken_answers(serve, reply: bytes, error: type[Exception], match: str) -> None:
    async def broken(reader, writer, head) -> bool:
        writer.write(reply)
        await writer.drain()
        return False  # and close

    server, url = await serve(broken)
    http = await client()
    with pytest.raises(error, match=match):
        await http.request("GET", url)
    assert len(server.heads) == 1  # one call, one request: nothing resends
    await http.close()


async def test_refused_connection_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    http = await client()
    with pytest.raises(UpstreamUnavailable, match=f"cannot connect to 127.0.0.1:{port}"):
        await http.request("GET", f"http://127.0.0.1:{port}/")
    await http.close()


async def test_read_timeout_and_total_timeout(serve) -> None:
    async def stalls(reader, writer, head) -> bool:
        if b"/trickle" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")
        await asyncio.sleep(5)
        return False

    _, url = await serve(stalls)
    http = await client(timeout=3.0, read_timeout=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        await http.request("GET", url + "/trickle")
    assert asyncio.get_running_loop().time() - started < 2.5  # the silence bound, not the whole-exchange one
    await http.close()
    http = await client(timeout=0.3)
    with pytest.raises(UpstreamTimeout):
        await http.request("GET", url + "/silent")
    await http.close()


async def test_pool_bounds_connections_and_serves_every_waiter(serve) -> None:
    async def slow(reader, writer, head) -> bool:
        await asyncio.sleep(0.05)
        writer.write(fixed(b"{}"))
        return True

    server, url = await serve(slow)
    http = await client(max_connections=2)
    answers = await asyncio.gather(*(http.request("GET", url) for _ in range(9)))
    assert [a.status for a in answers] == [200] * 9
    assert server.most_open == 2 and server.connections == 2
    await http.close()


async def test_cancelled_request_closes_its_connection(serve) -> None:
    async def maybe_slow(reader, writer, head) -> bool:
        if b"/slow" in head:
            await asyncio.sleep(1)
        writer.write(fixed(b'{"n": 1}'))
        return True

    server, url = await serve(maybe_slow)
    http = await client(max_connections=1)
    task = asyncio.create_task(http.request("GET", url + "/slow"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.closed.wait(), 2)
    # The slot came back, and the late answer to the cancelled request cannot be read as this one's.
    assert (await http.request("GET", url + "/fast")).body == b'{"n": 1}'
    assert server.connections == 2
    await http.close()


async def test_idle_connections_expire(serve) -> None:
    server, url = await serve(empty_object)
    http = await client(keepalive_seconds=0.05)
    await http.request("GET", url)
    await asyncio.sleep(0.1)
    await http.request("GET", url)
    assert server.connections == 2
    await http.close()


async def test_header_with_a_line_break_is_refused(serve) -> None:
    server, url = await serve(empty_object)
    http = await client()
    with pytest.raises(UpstreamMalformed, match="line break"):
        await http.request("GET", url, headers={"X-A": "1\r\nX-Injected: 2"})
    assert server.heads == []
    assert (await http.request("GET", url)).status == 200  # the slot was given back
    await http.close()


async def test_head_answer_has_no_body_whatever_its_length(serve) -> None:
    async def head_ok(reader, writer, head) -> bool:
        writer.write(answer(b"", b"Content-Length: 42"))
        return True

    server, url = await serve(head_ok)
    http = await client()
    response = await http.request("HEAD", url)
    assert (response.status, response.body) == (200, b"")
    assert (await http.request("HEAD", url)).status == 200
    assert len(server.heads) == 2
    await http.close()


async def test_header_values_go_as_utf8(serve) -> None:
    server, url = await serve(empty_object)
    http = await client()
    await http.request("GET", url, headers={"X-Region": "厦门"})
    assert "X-Region: 厦门\r\n".encode() in server.heads[0]
    with pytest.raises(UpstreamMalformed, match="cannot be encoded"):
        await http.request("GET", url, headers={"X-Region": "\ud800"})
    await http.close()
