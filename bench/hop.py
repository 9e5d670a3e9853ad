"""The Python floor: a minimal FastAPI forwarder with no security, carrying the invoke call through the same adapter.

`python -m bench.hop --upstream http://127.0.0.1:PORT --port PORT` serves POST /v1/services/credit/{operation}
with the gateway's body shape ({"purpose", "params"}), calls the credit adapter (HTTP client, translation, output
validation, exactly as the gateway does) and answers {"data", "meta"}. What the gateway costs beyond this hop
is signature, nonce, grant, quota, minimization and audit: the "security and audit" share of the targets.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from adapters.credit import CreditAdapter
from gateway.cli import SERVER_OPTIONS
from gateway.server import heap

HOST = "127.0.0.1"
# The adapters' HTTP clients the A/B rows compare: the gateway's own (adapters/wire.py) and the stand-ins.
CLIENTS = ("wire", "aiohttp", "pyreqwest")


def install_client(client: str) -> None:
    """Carry every adapter of this process over `client` (call before any adapter starts)."""
    if client == "aiohttp":
        from bench import aiohttp_client

        aiohttp_client.install()
    elif client == "pyreqwest":
        from bench import pyreqwest_client

        pyreqwest_client.install()
    elif client != "wire":
        raise ValueError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")


def create_app(upstream: str, client: str = "wire") -> FastAPI:
    """The hop; `client` "aiohttp" or "pyreqwest" carries the adapter over that client instead of adapters/wire.py."""
    install_client(client)
    adapter = CreditAdapter(upstream)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await adapter.start()
        heap.settle()  # the gateway's process settings: the floor must not pay for collections the gateway skips
        try:
            yield
        finally:
            await adapter.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/services/credit/{operation}")
    async def invoke(request: Request, operation: str) -> Response:
        body = orjson.loads(await request.body())
        params = adapter.operations[operation].input_model.model_validate(body["params"])
        result = await adapter.invoke(operation, params)
        meta = {"service": "credit", "operation": operation, "fetched_at": datetime.now(UTC).isoformat()}
        return Response(orjson.dumps({"data": result.data, "meta": meta}), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client", choices=CLIENTS, default="wire")
    args = parser.parse_args(argv)
    app = create_app(args.upstream, args.client)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
