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

from simulators import credit, treasury

Starter = Callable[..., Awaitable[tuple[web.AppRunner, int]]]
SIMULATORS: dict[str, Starter] = {"credit": credit.start_with_port, "treasury": treasury.start_with_port}
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


async def serve(host: str, ports: dict[str, int], data_dir: Path | None = None) -> None:
    """Start all, print {"credit": url, ...} on one stdout line (a parent process reads it), run until signalled."""
    runners, urls = await start_all(host, ports, data_dir)
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
