"""Starting and running a simulator's aiohttp application, the same way for every simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` in the running event loop; return the runner (stop it with `cleanup()`) and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, bound_port(runner)


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on (useful after asking for port 0)."""
    return int(runner.addresses[0][1])


async def run_until_signalled(runner: web.AppRunner) -> None:
    """Keep serving until SIGINT or SIGTERM, then stop the runner."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a simulator's main coroutine, on uvloop when it is installed (it comes with uvicorn[standard])."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


Starter = Callable[[str, int], Awaitable[tuple[web.AppRunner, int]]]


def main(
    argv: list[str] | None,
    *,
    module: str,
    description: str,
    default_port: int,
    start_with_port: Starter,
    banner: Callable[[str, int], str],
) -> None:
    """`python -m simulators.<module> [--host] [--port]`: serve one simulator until signalled."""
    parser = argparse.ArgumentParser(prog=f"python -m simulators.{module}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args(argv)

    async def serve() -> None:
        runner, bound = await start_with_port(args.host, args.port)
        print(banner(args.host, bound), flush=True)
        await run_until_signalled(runner)

    run(serve())
