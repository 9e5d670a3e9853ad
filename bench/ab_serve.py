"""One server of the A/B rows: the same application under another HTTP server, or the hop on another client.

`python -m bench.ab_serve --server S --app A --port P`, with S one of uvicorn (httptools, as `bench.hop` runs),
uvicorn-guarded (httptools bounded by gateway/server/protocol.py, as `serve` runs), granian-asgi, granian-rsgi,
and A one of floor (a fixed 500-byte answer: the server's own cost), hop (bench/hop.py; BENCH_UPSTREAM, BENCH_CLIENT) or
gateway (the whole gateway as `serve` builds it, from the MSJX_* environment, no data-dir lock; BENCH_CLIENT).
granian runs one worker process (the event loop) under a supervisor process, with its Rust runtime on one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

HOST = "127.0.0.1"
SERVERS = ("uvicorn", "uvicorn-guarded", "granian-asgi", "granian-rsgi")
APPS = ("floor", "hop", "gateway")
_BODY = b'{"data":"' + b"x" * 480 + b'"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def floor_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI application can do: read the body, answer 500 bytes."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":  # bounded: the server's lifespan
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):  # bounded by the request body
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


class FloorRsgi:
    """The same under granian's own interface (RSGI): no ASGI messages."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.method == "POST":
            await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], _BODY)


floor_rsgi = FloorRsgi()


def granian_installed() -> bool:
    return importlib.util.find_spec("granian") is not None


def hop_app() -> Any:
    from bench.hop import create_app

    return create_app(os.environ["BENCH_UPSTREAM"], os.environ.get("BENCH_CLIENT", "wire"))


def gateway_app() -> Any:
    from bench.hop import install_client

    install_client(os.environ.get("BENCH_CLIENT", "wire"))
    from gateway.app import create_app
    from gateway.server import heap
    from gateway.settings import load_settings

    return create_app(load_settings(), on_ready=heap.settle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_serve", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, required=True)
    parser.add_argument("--app", choices=APPS, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.app == "gateway":
        from gateway.settings import load_settings
        from gateway.storage import db

        db.upgrade(load_settings())
    if args.server.startswith("granian"):
        from granian import Granian

        interface = args.server.removeprefix("granian-")
        target = {"floor": f"bench.ab_serve:floor_{interface}", "hop": "bench.ab_serve:hop_app"}.get(
            args.app, "bench.ab_serve:gateway_app"
        )
        Granian(
            target,
            address=HOST,
            port=args.port,
            interface=interface,
            workers=1,
            loop="uvloop",
            websockets=False,
            log_level="warning",
            factory=args.app != "floor",
        ).serve()
        return
    import uvicorn

    from gateway.cli import SERVER_OPTIONS

    options: dict[str, Any] = dict(SERVER_OPTIONS)
    if args.server == "uvicorn-guarded":
        from gateway.server.protocol import guarded_protocol
        from gateway.settings import load_settings

        options["http"] = guarded_protocol(load_settings())
    app = {"floor": lambda: floor_asgi, "hop": hop_app, "gateway": gateway_app}[args.app]()
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", **options)


if __name__ == "__main__":
    main()
