"""An ASGI app served over a real socket in the test's event loop, for as long as a block runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn


@asynccontextmanager
async def served(config: uvicorn.Config) -> AsyncIterator[uvicorn.Server]:
    """The server of `config`, started (within 6 s, or its own start-up error raised) and stopped after the block."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(300):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
