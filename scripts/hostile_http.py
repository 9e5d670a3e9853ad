"""Measure what hostile HTTP clients cost a running `msjx-gateway serve` (figures for docs/http-limits.md).

Usage: .venv/bin/python scripts/hostile_http.py  (starts its own server on a free port, in a temporary data dir)
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "msjx-gateway")
INVOKE = "/v1/services/credit/dishonest-debtor"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def receive_all(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything until the server closes (or `limit` seconds pass, which fails the caller's checks)."""
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def push_on(sock: socket.socket, first: bytes, chunk: bytes, total: int) -> tuple[int, bytes]:
    """Send `first`, then `chunk` again and again up to `total` bytes, collecting what the server answers meanwhile;
    stop when the server closes. Returns the bytes sent and the answer."""
    sock.sendall(first)
    sent, answer = len(first), b""
    sock.setblocking(False)
    try:
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
            if writable:
                try:
                    sent += sock.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
            if not readable and not writable:
                break
    finally:
        sock.setblocking(True)
    return sent, answer + receive_all(sock)


def push(port: int, first: bytes, chunk: bytes, total: int) -> tuple[int, bytes]:
    """`push_on` over a new connection to the gateway on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return push_on(sock, first, chunk, total)


def status(answer: bytes) -> str:
    return answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "none"


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="msjx-hostile-"))
    port = free_port()
    env = {**os.environ, "MSJX_DATA_DIR": str(data_dir), "MSJX_SIGNATURE_VERIFIER": "inline"}
    env.pop("MSJX_DATABASE_URL", None)
    env.pop("MSJX_REDIS_URL", None)
    log = (data_dir / "serve.log").open("wb")
    command = [CLI, "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"idle RSS: {rss_mib(server.pid):.0f} MiB")

        head = b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\nX-Flood: "
        before = rss_mib(server.pid)
        sent, answer = push(port, head, b"a" * (1 << 20), 100 << 20)
        after = rss_mib(server.pid)
        sent_mib = sent / 2**20
        print(f"one 100 MB header: {status(answer)} after {sent_mib:.1f} MiB sent; RSS {before:.0f}->{after:.0f} MiB")

        headers = b"".join(b"X-H%d: 1\r\n" % index for index in range(10_000))
        _, answer = push(port, b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n" + headers + b"\r\n", b"", 0)
        print(f"10,000 headers: {status(answer)}")

        long_url = b"GET /v1/catalog?q=" + b"x" * 65536 + b" HTTP/1.1\r\nHost: gateway.example\r\n\r\n"
        _, answer = push(port, long_url, b"", 0)
        print(f"a 64 KiB URL: {status(answer)}")

        chunked = f"POST {INVOKE} HTTP/1.1\r\nHost: gateway.example\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        piece = b"x" * 65536
        sent, answer = push(port, chunked, b"%x\r\n%s\r\n" % (len(piece), piece), 4 << 30)
        print(f"endless chunked body: {status(answer)}, connection closed after {sent / 2**20:.1f} MiB sent")

        statuses: dict[int, int] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(100):
                code = client.post(INVOKE, content=b"u" * 1_000_000).status_code
                statuses[code] = statuses.get(code, 0) + 1
        time.sleep(0.5)
        with sqlite3.connect(data_dir / "msjx.db") as connection:
            records, sealed, declared = connection.execute(
                "SELECT count(*), sum(length(request_payload)), sum(request_size) FROM audit_records"
                " WHERE caller_id IS NULL AND request_size >= 1000000"
            ).fetchone()
        print(
            f"100 unsigned 1 MB POSTs: {statuses}; {records} records sealing {sealed / 1024:.0f} KiB of their"
            f" {declared / 2**20:.0f} MiB of bodies"
        )

        started = time.monotonic()
        slow = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway.example\r\n")
            slow.append(sock)
        time.sleep(3)
        closed = timed_out = 0
        for sock in slow:
            sock.settimeout(max(1.0, 60 - (time.monotonic() - started)))
            try:
                timed_out += sock.recv(65536).startswith(b"HTTP/1.1 408")
                closed += 1
            except TimeoutError:
                pass
            sock.close()
        print(
            f"200 slowloris connections: {closed} closed ({timed_out} with 408) within"
            f" {time.monotonic() - started:.0f} s"
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
