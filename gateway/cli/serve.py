"""`msjx-gateway serve`, `simulators` and `demo`: the serving process (one or several workers) and the demo."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, cli_settings, fail
from gateway.server.logs import configure_logging
from gateway.settings import Settings

# How `serve` runs uvicorn; `make bench` measures these (docs/performance.md), and its Python floor uses them too.
# proxy_headers off: uvicorn would believe X-Forwarded-For/-Proto from 127.0.0.1 whatever MSJX_TRUSTED_PROXIES says;
# the gateway applies that one rule itself (gateway/http/forwarded.py), to the client address and the signed URI alike.
SERVER_OPTIONS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "access_log": False, "proxy_headers": False}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_drained(signum: int, frame: object) -> None:
    # uvicorn raises the signal it drained on again once it has stopped. A drained stop is a clean one: exit 0, as
    # `serve --workers N` does, and not 143, which systemd counts as a failed stop.
    raise SystemExit(0)


def _ignore_sighup(workers: int) -> Callable[[int, object], None]:
    """SIGHUP's default action ends a process without draining, and `systemctl reload` sends it: one worker (which
    has no supervisor to restart it) and a supervisor still starting keep serving and say so instead."""
    if workers > 1:
        reason = "the workers are not up yet; once they are, SIGHUP restarts them one at a time"
    else:
        reason = (
            "one worker has no supervisor to restart it in place; `systemctl restart` (SIGTERM) drains and stops it,"
            " and `serve --workers 2` or more restarts its workers one at a time on SIGHUP"
        )

    def ignore(signum: int, frame: object) -> None:
        logging.getLogger("msjx.serve").warning("SIGHUP ignored: %s", reason)

    return ignore


def serve(
    demo: Annotated[bool, typer.Option("--demo", help="start the simulators and seed demo callers and grants")] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", min=0, max=65535)] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="worker processes on the one port, each a node with its own audit chain <node-id>-<i>;"
            " more than 1 needs PostgreSQL and Redis (SIGHUP restarts them one at a time)"
        ),
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Serve the gateway (migrating the database first)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.server import heap
    from gateway.server.protocol import guarded_protocol
    from gateway.server.tls import tls_options
    from gateway.server.workers import WorkersRefused, bind, check_workers
    from gateway.storage.reachability import check_redis

    settings = cli_settings(data_dir)
    try:
        check_workers(settings, workers)
        tls = tls_options(settings)  # the gateway's own TLS listener, client certificates for mutual TLS
    except (WorkersRefused, ValueError) as exc:
        raise fail(str(exc)) from None
    configure_logging(settings.log_level)
    lock = _lock_data_dir(settings, host, port)
    # Until uvicorn takes over the signals, make SIGTERM unwind like Ctrl-C so the simulators child is stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGHUP, _ignore_sighup(workers))
    simulators = None
    announcement: list[str] = []
    sock: socket.socket | None = None
    try:
        # A port that another process holds is one line now, not uvicorn's error after the migrations and start-up.
        # Bound, not listening: connections are refused until the server is up.
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise _port_refused(host, port, exc) from None
        # Redis down would otherwise surface inside uvicorn's start-up as a traceback; the database is checked by
        # db.upgrade. Both failures are one line naming the setting (gateway/storage/reachability.py), exit 2.
        asyncio.run(check_redis(settings, workers))
        if demo:
            from gateway.demo import setup as demo_module
            from gateway.runtime import build_adapters
            from simulators.enterprises import DEMO_USCC

            simulators, urls = demo_module.start_simulators(data_dir=settings.data_dir / "simulators")
            # The demo serves plain HTTP: a Secure cookie would never come back, so the console could not sign in.
            settings = settings.model_copy(
                update={"upstream_urls": {**urls, **settings.upstream_urls}, "console_secure_cookies": False}
            )
            _migrate(settings, workers)
            listing = asyncio.run(demo_module.seed(settings, build_adapters(settings)))
            announcement = [
                f"msjx-gateway demo on http://{host}:{port}  (API docs: http://{host}:{port}/docs)",
                f"simulators: {', '.join(f'{name} {url}' for name, url in urls.items())}",
                f"demo callers and keys: {settings.data_dir / 'demo' / 'callers.json'}",
                f"web console: http://{host}:{port}/console/  (accounts, passwords and TOTP secrets, one per role:"
                f" {settings.data_dir / 'demo' / 'console-accounts.json'})",
                "try, in another shell:",
                "  " + demo_module.call_line(port, listing, DEMO_USCC, host),
            ]
        else:
            _migrate(settings, workers)

        def on_ready() -> None:
            heap.settle()
            if announcement:
                typer.echo("\n".join(announcement))

        if workers > 1:
            _supervise(settings, workers, sock, lambda: on_ready() if announcement else None, tls)
            return
        # One worker: uvicorn binds the port itself, so its log line gives the port that --port 0 was given.
        sock.close()
        signal.signal(signal.SIGTERM, _exit_drained)
        uvicorn.run(
            create_app(settings, on_ready=on_ready),
            host=host,
            port=port,
            log_level=settings.log_level,
            # The same server, with bounds on request heads, slow clients and connections (gateway/server/protocol.py).
            **{**SERVER_OPTIONS, **tls, "http": guarded_protocol(settings)},
        )
    finally:
        if sock is not None:
            sock.close()
        if simulators is not None:
            simulators.terminate()
            simulators.wait(timeout=10)
        lock.release()


def _supervise(
    settings: Settings, workers: int, sock: socket.socket, announce: Callable[[], None], tls: dict[str, Any]
) -> None:
    """`serve --workers N`: run the workers on one socket until a signal (gateway/server/workers.py); `_migrate` has
    made the keys they share and each one's own."""
    from gateway.server.workers import Supervisor, listen

    try:
        listen(sock)  # only now: the port stayed closed through the migrations, as a port of a server not yet up
    except OSError as exc:  # another server that started beside this one listened first
        raise _port_refused(*sock.getsockname()[:2], exc) from None
    # uvicorn takes SIGTERM from the workers; here the supervisor's own handlers replace the unwinding one.
    Supervisor(settings, workers, sock, {**SERVER_OPTIONS, **tls}, announce).run()


def _port_refused(host: str, port: int, exc: OSError) -> typer.Exit:
    return fail(f"--port: cannot listen on {host}:{port}: {exc.strerror}")


def _migrate(settings: Settings, workers: int) -> None:
    """Bring the schema up to date, open the key ring once (making its keys on a first start) and load the checkpoint
    signing key of every worker (made here on a first start, so that N first starts do not race), before any worker
    starts: a master key that does not unwrap the ring, or a signing key that cannot be read, is then one line,
    exit 2, not a traceback from every worker's start-up. So is a chain the database holds shorter than its node
    signed it (gateway/audit/witness.py)."""
    from gateway.audit.keys import open_keyring
    from gateway.audit.signer import load_signer
    from gateway.audit.witness import check_against_witness, witness_path
    from gateway.server.workers import worker_settings
    from gateway.storage import db
    from gateway.storage.connection_room import Need
    from security.keyring import KeyRingError
    from security.keys import KeyFormatError

    db.upgrade(settings, need=Need(workers, settings.batch_workers))

    nodes = [settings] if workers == 1 else [worker_settings(settings, index) for index in range(workers)]

    async def open_once() -> None:
        engine = db.create_engine(settings)
        try:
            await open_keyring(settings, engine)
            for node in nodes:
                await check_against_witness(engine, node.node_id, witness_path(node, node.node_id))
        finally:
            await engine.dispose()

    try:
        asyncio.run(open_once())
        for node in nodes:
            load_signer(node)
    except (KeyRingError, KeyFormatError) as exc:
        raise fail(str(exc)) from None


def _lock_data_dir(settings: Settings, host: str, port: int) -> Any:
    """One gateway per data dir: a second `serve` on it stops here with one line naming the running one."""
    from gateway.server.datadir_lock import DataDirBusy, DataDirLock
    from gateway.storage.reachability import prepare_data_dir

    prepare_data_dir(settings)
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire(host, port)
    except DataDirBusy as exc:
        raise fail(str(exc), 1) from None
    return lock


def simulators(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    credit_port: Annotated[int, typer.Option(help="credit platform port (0: any free port)", min=0, max=65535)] = 0,
    golden_tax_port: Annotated[
        int, typer.Option(help="Golden Tax III (SOAP) port (0: any free port)", min=0, max=65535)
    ] = 0,
    market_port: Annotated[int, typer.Option(help="market registration port (0: any free port)", min=0, max=65535)] = 0,
    stop_on_stdin_close: Annotated[
        bool, typer.Option("--stop-on-stdin-close", help="exit when standard input closes (a parent died)")
    ] = False,
    treasury_port: Annotated[int, typer.Option(help="treasury port (0: any free port)", min=0, max=65535)] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="state of durable simulators (default: <MSJX_DATA_DIR>/simulators)"),
    ] = None,
) -> None:
    """Run the simulated upstream systems; prints their URLs as one JSON line."""
    from simulators.runner import serve as serve_simulators
    from simulators.treasury import default_data_dir

    ports = {"credit": credit_port, "golden-tax": golden_tax_port, "market": market_port, "treasury": treasury_port}
    asyncio.run(serve_simulators(host, ports, data_dir or default_data_dir(), stop_on_stdin_close=stop_on_stdin_close))


def demo(
    url: Annotated[
        str | None,
        typer.Option(help="a running `serve --demo` (default: the one serving --data-dir, else start one)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the 免申即享 demo: a 名单类 and a 条件类 policy through the gateway, then verify the audit chain."""
    from gateway.demo.platform import DemoError, run_demo

    settings = cli_settings(data_dir)
    try:
        status = run_demo(settings, url, typer.echo)
    except DemoError as exc:
        raise fail(str(exc), 1) from None
    raise typer.Exit(status)
