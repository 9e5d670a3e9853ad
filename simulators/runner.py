"""Run every simulator in one process, each on its own port, and announce their URLs as one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from simulators import credit, golden_tax, market

Starter = Callable[[str, int], Awaitable[tuple[web.AppRunner, int]]]
SIMULATORS: dict[str, Starter] = {
    "credit": credit.start_with_port,
    "golden-tax": golden_tax.start_with_port,
    "market": market.start_with_port,
}


async def start_all(host: str, ports: dict[str, int]) -> tuple[list[web.AppRunner], dict[str, str]]:
    runners, urls = [], {}
    for name, starter in SIMULATORS.items():
        runner, port = await starter(host, ports.get(name, 0))
        runners.append(runner)
        urls[name] = f"http://{host}:{port}"
    return runners, urls


async def serve(host: str, ports: dict[str, int]) -> None:
    """Start all, print {"credit": url, ...} on one stdout line (a parent process reads it), run until signalled."""
    runners, urls = await start_all(host, ports)
    sys.stdout.write(orjson.dumps(urls).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
