"""Hostile HTTP clients: huge or countless headers, endless bodies, slow clients, connection floods, unsigned
floods, and the answers around routing (405, trailing slash). The server-layer ones run `msjx-gateway serve` in a
subprocess and speak raw sockets to it; the application-level ones use the app in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select as sql_select

from gateway.app import create_app
from gateway.audit.rows import AUDIT_TABLE
from gateway.audit.search import open_payload
from gateway.http.problems import PROBLEM_CONTENT_TYPE
from gateway.pipeline.unauthenticated import COUNTED_EVENT, PREAUTH_BODY_BYTES
from gateway.settings import load_settings
from scripts.hostile_http import push_on, receive_all
from simulators.enterprises import DEMO_USCC
from tests.helpers.gateways import PURPOSE, RunningGateway, make_gateway, running_gateway
from tests.helpers.processes import CLI
from tests.helpers.services import free_port

INVOKE = "/v1/services/credit/dishonest-debtor"
MAX_CONNECTIONS = 20


# --- a real server in a subprocess ---------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("served")
    port = free_port()
    log = data_dir / "serve.log"
    env = {
        **os.environ,
        "MSJX_DATA_DIR": str(data_dir),
        "MSJX_HEADER_TIMEOUT": "1",
        "MSJX_BODY_TIMEOUT": "1",
        "MSJX_MAX_CONNECTIONS_PER_CLIENT": str(MAX_CONNECTIONS),
        "MSJX_SIGNATURE_VERIFIER": "inline",
    }
    env.pop("MSJX_DATABASE_URL", None)
    env.pop("MSJX_REDIS_URL", None)
    process = subprocess.Popen(
        [CLI, "serve", "--port", str(port)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Served(port, process, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-4000:]


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def _problem(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert f"content-type: {PROBLEM_CONTENT_TYPE}".encode() in head.lower(), head
    assert b"connection: close" in head.lower(), head
    return orjson.loads(body)


@pytest.mark.slow
def test_a_100_mb_header_gets_431_and_a_closed_connection_without_the_memory(served: Served) -> None:
    before = served.rss_kib()
    with served.connect() as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nX-Flood: "
        sent, answer = push_on(sock, head, b"a" * (1 << 20), 100 << 20)
    assert _status(answer) == 431
    assert _problem(answer)["code"] == "headers_too_large"
    assert sent < 16 << 20, f"the server kept reading: {sent} bytes"
    assert served.rss_kib() - before < 20 * 1024, (before, served.rss_kib())


@pytest.mark.slow
def test_ten_parallel_32_mb_headers_leave_memory_where_it_was(served: Served) -> None:
    before = served.rss_kib()
    sockets = [served.connect() for _ in range(10)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nX-Flood: ")
        for sock in sockets:
            _, answer = push_on(sock, b"", b"b" * (1 << 20), 32 << 20)
            assert _status(answer) == 431
    finally:
        for sock in sockets:
            sock.close()
    assert served.rss_kib() - before < 20 * 1024, (before, served.rss_kib())


@pytest.mark.slow
def test_ten_thousand_headers_get_431(served: Served) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % index for index in range(10_000))
    with served.connect() as sock:
        _, answer = push_on(sock, b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n" + headers + b"\r\n", b"", 0)
    assert _status(answer) == 431
    assert _problem(answer)["code"] == "headers_too_large"


@pytest.mark.slow
def test_a_101st_header_is_refused_and_the_100th_accepted(served: Served) -> None:
    def ask(count: int) -> int:
        headers = b"".join(b"X-H%d: 1\r\n" % index for index in range(count - 2))
        request = b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nConnection: close\r\n" + headers + b"\r\n"
        with served.connect() as sock:
            sock.sendall(request)
            return _status(receive_all(sock))

    assert ask(100) == 200
    assert ask(101) == 431


@pytest.mark.slow
def test_a_64_kb_url_gets_414_problem_json(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /v1/catalog?q=" + b"x" * 65536 + b" HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
        answer = receive_all(sock)
    assert _status(answer) == 414
    assert _problem(answer)["code"] == "uri_too_long"


@pytest.mark.slow
def test_an_endless_chunked_body_gets_413_and_the_connection_closes(served: Served) -> None:
    head = (
        f"POST {INVOKE} HTTP/1.1\r\nHost: gateway.example\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"x" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    with served.connect() as sock:
        sent, answer = push_on(sock, head, chunk, 1 << 30)
    assert _status(answer) == 413
    assert _problem(answer)["code"] == "body_too_large"
    assert sent < 32 << 20, f"the server drained {sent} bytes after its answer"


@pytest.mark.slow
def test_a_declared_huge_body_is_not_read_after_its_413(served: Served) -> None:
    head = f"POST {INVOKE} HTTP/1.1\r\nHost: gateway.example\r\nContent-Length: 53000000000\r\n\r\n".encode()
    with served.connect() as sock:
        sent, answer = push_on(sock, head, b"y" * 65536, 1 << 30)
    assert _status(answer) == 413
    assert sent < 32 << 20


@pytest.mark.slow
def test_slowloris_heads_and_bodies_are_answered_408_and_closed(served: Served) -> None:
    slow_heads = [served.connect() for _ in range(10)]
    slow_bodies = [served.connect() for _ in range(5)]
    idle = served.connect()
    try:
        for sock in slow_heads:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n")
        for sock in slow_bodies:
            sock.sendall(f"POST {INVOKE} HTTP/1.1\r\nHost: gateway.example\r\nContent-Length: 100\r\n\r\n{{".encode())
        # Keep dripping header bytes, as slowloris does; the timeout counts the whole head, not the silence.
        for _ in range(3):
            time.sleep(0.4)
            for sock in slow_heads:
                sock.sendall(b"X-A: b\r\n")
        heads = [receive_all(sock) for sock in slow_heads]
        bodies = [receive_all(sock) for sock in slow_bodies]
        assert {_status(answer) for answer in heads} == {408}
        assert {_problem(answer)["code"] for answer in heads} == {"header_timeout"}
        assert {_problem(answer)["code"] for answer in bodies} == {"body_timeout"}
        assert receive_all(idle) == b"", "an idle connection is closed without an answer"
    finally:
        for sock in (*slow_heads, *slow_bodies, idle):
            sock.close()


@pytest.mark.slow
def test_a_slow_second_request_on_a_kept_alive_connection_gets_408(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n\r\n")
        first = b""
        while b'"ok"' not in first:
            first += sock.recv(65536)
        assert _status(first) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n")
        try:
            for _ in range(5):
                time.sleep(0.4)
                sock.sendall(b"X-A: b\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = receive_all(sock)
    assert _status(answer) == 408
    assert _problem(answer)["code"] == "header_timeout"


def test_a_head_begun_in_the_read_of_the_request_before_it_still_gets_408(served: Served) -> None:
    # The head timer is armed when a read ends with a head unfinished: here that read also held a whole request.
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        answers = receive_all(sock)
    first, _, second = answers.partition(b'"ok"}')
    assert _status(first) == 200
    assert _status(second) == 408
    assert _problem(second)["code"] == "header_timeout"


def test_a_body_that_stops_in_the_read_of_its_head_gets_408(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /v1/services/credit/dishonest-debtor HTTP/1.1\r\nHost: gateway.example\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"purpose"'
        )
        answer = receive_all(sock)
    assert _status(answer) == 408
    assert _problem(answer)["code"] == "body_timeout"


def test_the_bounded_header_callback_builds_the_scope_as_uvicorns_does() -> None:
    # GuardedHttpToolsProtocol.on_header inlines uvicorn's: the same headers and 100-continue flag for odd input.
    from types import SimpleNamespace

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.server.protocol import EdgeLimits, GuardedHttpToolsProtocol

    lines = [
        (b"Host", b"gateway.example"),
        (b"EXPECT", b"100-Continue \t"),
        (b"Content-Length", b"5\t "),
        (b"X-Empty", b""),
        (b"x-Mixed-Case", b" inner  space "),
        (b"Transfer-Encoding", b"chunked"),
    ]
    built = []
    for protocol in (HttpToolsProtocol, GuardedHttpToolsProtocol):
        state = SimpleNamespace(headers=[], expect_100_continue=False, _header_bytes=0, limits=EdgeLimits())
        for name, value in lines:
            protocol.on_header(state, name, value)  # type: ignore[arg-type]
        built.append((state.headers, state.expect_100_continue))
    assert built[0] == built[1]
    assert built[1][1] is True


@pytest.mark.slow
def test_one_address_holds_a_bounded_number_of_connections(served: Served) -> None:
    held = [served.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server count them
        with served.connect() as extra:
            answer = receive_all(extra)
        assert _status(answer) == 429
        assert _problem(answer)["code"] == "too_many_connections"
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nConnection: close\r\n\r\n")
        assert _status(receive_all(held[0])) == 200, "the connections within the bound are served"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with served.connect() as again:
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nConnection: close\r\n\r\n")
        assert _status(receive_all(again)) == 200, "closed connections are no longer counted"


@pytest.mark.slow
def test_a_refused_pipelined_request_is_answered_after_the_one_before_it(served: Served) -> None:
    fine = b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n\r\n"
    flooded = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % index for index in range(200)) + b"\r\n"
    with served.connect() as sock:
        sock.sendall(fine + flooded)
        answer = receive_all(sock)
    first, _, second = answer.partition(b'{"status":"ok"}')
    assert _status(first) == 200, answer[:300]
    assert _status(second) == 431 and _problem(second)["code"] == "headers_too_large"


@pytest.mark.slow
def test_a_request_that_is_not_http_gets_400_problem_json(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"\x16\x03\x01 hello, this is not HTTP\r\n\r\n")
        answer = receive_all(sock)
    assert _status(answer) == 400
    assert _problem(answer)["code"] == "malformed_request"


@pytest.mark.slow
def test_keep_alive_requests_and_bodies_within_the_limits_still_work(served: Served) -> None:
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}, "pad": "z" * 200_000})
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=10) as client:
        for _ in range(3):
            assert client.get("/healthz", headers={"X-Big": "v" * 30_000}).status_code == 200
            refused = client.post(INVOKE, content=body, headers={"Content-Type": "application/json"})
            assert refused.status_code == 401, refused.text


# --- the application: unsigned floods, refusal records, routing answers -------------------------------------


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def small_gate(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> Any:
    """The gateway with small bounds on unauthenticated refusals; counted in process, or in Redis."""
    async with make_gateway(
        request.param,
        data_dir=tmp_path,
        upstream_urls={"credit": credit_url},
        unauthenticated_rate="5/minute",
        unauthenticated_total_rate="8/minute",
    ) as running:
        yield running


async def _records(gateway: RunningGateway, **where: Any) -> list[dict[str, Any]]:
    query = sql_select(AUDIT_TABLE)
    for name, value in where.items():
        query = query.where(AUDIT_TABLE.c[name] == value)
    async with gateway.runtime.engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


async def test_a_refused_unsigned_body_is_recorded_by_size_and_digest_with_only_its_start(
    small_gate: RunningGateway,
) -> None:
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}, "pad": "p" * 1_000_000})
    async with httpx.AsyncClient(base_url=small_gate.url, timeout=30) as client:
        refused = await client.post(INVOKE, content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 401
    (row,) = await _records(small_gate, request_id=refused.headers["X-Request-Id"])
    assert row["reason_code"] == "signature_missing"
    assert row["request_size"] == len(body)
    kept = await open_payload(small_gate.runtime.keyring, row, "request")
    assert kept == body[:PREAUTH_BODY_BYTES]
    # The digest is of the whole body: another body with the same start has another digest.
    async with httpx.AsyncClient(base_url=small_gate.url, timeout=30) as client:
        other = await client.post(INVOKE, content=body[:-2] + b"q}", headers={"Content-Type": "application/json"})
    (other_row,) = await _records(small_gate, request_id=other.headers["X-Request-Id"])
    assert other_row["request_digest"] != row["request_digest"]


async def test_a_signed_request_keeps_its_whole_body(small_gate: RunningGateway) -> None:
    body = {"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}, "note": "n" * 3000}
    async with small_gate.client() as client:
        answer = await client.post(INVOKE, json=body)
    (row,) = await _records(small_gate, request_id=answer.headers["X-Request-Id"])
    kept = await open_payload(small_gate.runtime.keyring, row, "request")
    assert kept is not None and len(kept) == row["request_size"] > PREAUTH_BODY_BYTES


async def test_an_unsigned_flood_gets_429_and_is_counted_not_copied(small_gate: RunningGateway) -> None:
    body = b'{"purpose": "' + b"f" * 500_000 + b'"}'
    answers = []
    async with httpx.AsyncClient(base_url=small_gate.url, timeout=30) as client:
        for _ in range(40):
            answers.append(await client.post(INVOKE, content=body, headers={"Content-Type": "application/json"}))
        statuses = [answer.status_code for answer in answers]
        assert statuses == [401] * 5 + [429] * 35
        limited = answers[-1]
        assert limited.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert limited.json()["code"] == "unauthenticated_rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # A correctly signed caller at the same address is not locked out.
        async with small_gate.client() as signed:
            allowed = await signed.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
        assert allowed.status_code == 200, allowed.text
    individual = [row for row in await _records(small_gate, client_addr="127.0.0.1") if row["caller_id"] is None]
    assert len(individual) == 5, "only the refusals within the rate have records of their own"
    assert sum(row["request_size"] for row in individual) == 5 * len(body)
    gate = small_gate.runtime.unauthenticated
    assert gate.pending() == {"127.0.0.1": 35}
    assert await gate.flush(small_gate.runtime.audit.append) == 1
    (counted,) = await _records(small_gate, event=COUNTED_EVENT)
    assert counted["reason_code"] == "unauthenticated_rate_limited" and counted["status_code"] == 429
    assert counted["reason"].startswith("35 refusals") and counted["request_payload"] is None
    assert gate.pending() == {}


async def test_the_counts_are_written_each_window_without_being_asked(tmp_path: Path, credit_url: str) -> None:
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url}, unauthenticated_rate="2/second")
    async with running_gateway(settings) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            statuses = [(await client.post(INVOKE, content=b"{}")).status_code for _ in range(12)]
        limited = statuses.count(429)
        assert limited > 0 and set(statuses) == {401, 429}, statuses
        counted: list[dict[str, Any]] = []
        for _ in range(100):  # the window task writes within a window (1 s) or two
            counted = await _records(running, event=COUNTED_EVENT)
            if sum(int(row["reason"].split()[0]) for row in counted) == limited:
                break
            await asyncio.sleep(0.05)
        assert sum(int(row["reason"].split()[0]) for row in counted) == limited, (statuses, counted)


async def test_a_flood_from_many_addresses_writes_a_bounded_number_of_records(small_gate: RunningGateway) -> None:
    gate = small_gate.runtime.unauthenticated
    verdicts = [await gate.judge(f"2001:db8::{index:x}") for index in range(3000)]
    assert sum(verdict.audit for verdict in verdicts) == 8, "the bound over all addresses holds"
    written = await gate.flush(small_gate.runtime.audit.append)
    assert written <= 1025, "one count per address, at most 1024 addresses, the rest in one"
    total = sum(int(row["reason"].split()[0]) for row in await _records(small_gate, event=COUNTED_EVENT))
    assert total == 3000 - 8, "every refusal not audited on its own is counted"


async def test_a_client_that_leaves_mid_body_is_audited_as_client_closed_without_a_traceback(
    small_gate: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(small_gate.url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {INVOKE} HTTP/1.1\r\nHost: gateway.example\r\nContent-Length: 5000\r\n\r\n{{".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        rows = await _records(small_gate, reason_code="client_closed")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == 1 and rows[0]["decision"] == "refused"
    assert not [record for record in caplog.records if record.levelno >= 40], caplog.text
    assert "Traceback" not in caplog.text


# --- routing answers, on every route ----------------------------------------------------------------------


@pytest.fixture
def routes_app(tmp_path: Path) -> Any:
    return create_app(load_settings(data_dir=tmp_path))


def _concrete(path: str) -> str:
    return (
        path.replace("{service}", "credit").replace("{operation}", "dishonest-debtor").replace("{", "").replace("}", "")
    )


async def test_every_405_is_problem_json_with_an_allow_header_naming_every_method(routes_app: Any) -> None:
    paths: dict[str, set[str]] = {}
    for route in iter_route_contexts(routes_app.routes):
        if route.path is not None:
            paths.setdefault(route.path, set()).update(route.methods or ())
    assert len(paths) > 20
    transport = httpx.ASGITransport(app=routes_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.example") as client:
        for path, methods in paths.items():
            wrong = next(method for method in ("PATCH", "PUT", "DELETE", "POST") if method not in methods)
            answer = await client.request(wrong, _concrete(path))
            assert answer.status_code == 405, (path, answer.status_code)
            assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE, path
            assert answer.json()["code"] == "method_not_allowed"
            allowed = {method.strip() for method in answer.headers["Allow"].split(",")}
            assert methods <= allowed, (path, methods, allowed)


async def test_a_trailing_slash_gets_a_404_problem_naming_the_route_not_a_redirect(routes_app: Any) -> None:
    transport = httpx.ASGITransport(app=routes_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.example") as client:
        for method, path in (("GET", "/v1/catalog/"), ("POST", INVOKE + "/"), ("GET", "/healthz/")):
            answer = await client.request(method, path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert "location" not in answer.headers
            assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
            assert answer.json()["code"] == "not_found"
            assert path.rstrip("/") in answer.json()["detail"]
