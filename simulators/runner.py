"""Run every simulator in one process, each on its own port, and announce their URLs as one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from simulators import credit, golden_tax, market, treasury

Starter = Callable[..., Awaitable[tuple[web.AppRunner, int]]]
SIMULATORS: dict[str, Starter] = {
    "credit": credit.start_with_port,
    "golden-tax": golden_tax.start_with_port,
    "market": market.start_with_port,
    "treasury": treasury.start_with_port,
}
# Simulators that keep state on disk (the treasury's vouchers) are given the data directory.
DURABLE = frozenset({"treasury"})


async def start_all(
    host: str, ports: dict[str, int], data_dir: Path | None = None
) -> tuple[list[web.AppRunner], dict[str, str]]:
    runners, urls = [], {}
    for name, starter in SIMULATORS.items():
        options = {"data_dir": data_dir} if name in DURABLE else {}
        runner, port = await starter(host, ports.get(name, 0), **options)
        runners.append(runner)
        urls[name] = f"http://{host}:{port}"
    return runners, urls


async def _wait_for_stdin_close() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve(
    host: str, ports: dict[str, int], data_dir: Path | None = None, *, stop_on_stdin_close: bool = False
) -> None:
    """Start all, print {"credit": url, ...} on one stdout line (a parent process reads it), run until signalled.

    With `stop_on_stdin_close`, also stop when standard input reaches its end: the parent that holds
    the other end has exited, however it died.
    """
    runners, urls = await start_all(host, ports, data_dir)
    sys.stdout.write(orjson.dumps(urls).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait())]
    if stop_on_stdin_close:
        waiters.append(asyncio.ensure_future(_wait_for_stdin_close()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for runner in runners:
            await runner.cleanup()
