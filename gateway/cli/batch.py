"""`msjx-gateway batch submit|status|results|cancel` (the platform's side of a batch comparison), and
`msjx-gateway batch-worker` (a node that only runs batch chunks, no HTTP)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, GatewayUrl, cli_settings, fail, gateway_target

batch_app = typer.Typer(help="Batch comparison (数据比对): many enterprises, several operations, one job.")

KeyOption = Annotated[Path, typer.Option("--key", help="the platform's Ed25519 or SM2 private key (PKCS#8 PEM)")]
CallerOption = Annotated[str, typer.Option("--caller", help="caller id")]


def _client(url: str | None, caller: str, key: Path) -> Any:
    from gateway.client import GatewayClient
    from security.keys import KeyFormatError

    try:
        return GatewayClient.from_key_file(gateway_target(url), caller, key)
    except KeyFormatError as exc:
        raise fail(f"--key: {exc}") from None
    except OSError as exc:
        raise fail(f"--key: cannot read {key}: {exc.strerror}") from None


def _problem(exc: Any) -> typer.Exit:
    typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
    return typer.Exit(1)


def _params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--param {item!r}: expected NAME=VALUE")
        params[name] = int(value) if value.isdigit() else value
    return params


def follow(handle: Any, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """A progress bar (done/total, rate, ETA) until the batch ends; its last status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} subjects/s  ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(handle.batch_id, total=handle.total, rate="-", eta="-")

        def show(current: dict[str, Any]) -> None:
            rate = current.get("subjects_per_s")
            eta = current.get("eta_seconds")
            state = current["state"]
            label = f"{handle.batch_id} {state}"
            if current.get("pause"):
                label += f" ({current['pause']['code']} until {current['pause']['resume_at']})"
            progress.update(
                task,
                completed=current["done"],
                description=label,
                rate=f"{rate:,.0f}" if rate else "-",
                eta=f"{eta:,.0f} s" if eta is not None else "-",
            )

        return handle.wait(poll=0.5, on_progress=show)


@batch_app.command("submit")
def submit(
    purpose: Annotated[str, typer.Option(help="purpose code the grants name")],
    op: Annotated[list[str], typer.Option("--op", help="service/operation, repeat for each")],
    subjects: Annotated[Path, typer.Option(help="CSV (a header naming uscc, and e.g. year) or NDJSON file")],
    key: KeyOption,
    caller: CallerOption,
    param: Annotated[list[str], typer.Option("--param", help="NAME=VALUE for every operation taking it")] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option(help="follow it with a progress bar until it ends")] = True,
    url: GatewayUrl = None,
) -> None:
    """Submit a batch; every line of the file is checked before anything runs."""
    import httpx

    from gateway.client import GatewayError

    if not subjects.is_file():
        raise fail(f"--subjects: {subjects} is a directory" if subjects.is_dir() else f"--subjects: no file {subjects}")
    for entry in op:
        service, _, operation = entry.partition("/")
        if not service or not operation:
            raise fail(f"--op {entry!r}: expected service/operation, e.g. credit/dishonest-debtor")
    with _client(url, caller, key) as client:
        try:
            handle = client.batch(purpose, op, subjects_file=subjects, params=_params(param))
            typer.echo(f"batch {handle.batch_id}: {handle.total} subjects × {len(op)} operations")
            if not wait:
                return
            status = follow(handle)
        except GatewayError as exc:
            raise _problem(exc) from None
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {client.base_url}: {exc}") from None
    _summary(status)
    if status["state"] != "done":
        raise typer.Exit(1)


def _summary(status: dict[str, Any]) -> None:
    typer.echo(f"{status['batch_id']}: {status['state']}, {status['done']}/{status['total']} subjects")
    for op in status["operations"]:
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(op["outcomes"].items()))
        typer.echo(f"  {op['service']}/{op['operation']}: {op['done']} done ({outcomes or 'none yet'})")
    if status.get("pause"):
        typer.echo(f"  paused: {status['pause']['code']}, resumes by itself at {status['pause']['resume_at']}")
    if status.get("stopped"):
        typer.echo(f"  stopped: {status['stopped']['code']}: {status['stopped']['detail']}")


@batch_app.command("status")
def status(
    batch_id: Annotated[str, typer.Argument()],
    key: KeyOption,
    caller: CallerOption,
    as_json: Annotated[bool, typer.Option("--json", help="the whole status as JSON")] = False,
    url: GatewayUrl = None,
) -> None:
    """State, progress per operation, outcomes, ETA."""
    from gateway.batches.handle import BatchHandle
    from gateway.client import GatewayError

    with _client(url, caller, key) as client:
        try:
            current = BatchHandle(client, batch_id, 0).status()
        except GatewayError as exc:
            raise _problem(exc) from None
    if as_json:
        typer.echo(json.dumps(current, ensure_ascii=False, indent=2))
    else:
        _summary(current)


@batch_app.command("results")
def results(
    batch_id: Annotated[str, typer.Argument()],
    key: KeyOption,
    caller: CallerOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="FILE.csv (CSV) or FILE.ndjson")],
    url: GatewayUrl = None,
) -> None:
    """Write every result line to a file, following the batch while it runs."""
    from gateway.batches.handle import BatchHandle
    from gateway.client import GatewayError

    wants_csv = output.suffix.lower() == ".csv"
    accept = "text/csv" if wants_csv else "application/x-ndjson"
    count = 0
    with _client(url, caller, key) as client, output.open("wb") as sink:
        try:
            for line in BatchHandle(client, batch_id, 0).results(accept=accept):
                sink.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)).encode())
                sink.write(b"\n")
                count += 1
        except GatewayError as exc:
            raise _problem(exc) from None
    typer.echo(f"{count - (1 if wants_csv and count else 0)} result lines written to {output}")


@batch_app.command("cancel")
def cancel(
    batch_id: Annotated[str, typer.Argument()],
    key: KeyOption,
    caller: CallerOption,
    url: GatewayUrl = None,
) -> None:
    """Cancel a batch: no chunk starts after this."""
    from gateway.batches.handle import BatchHandle
    from gateway.client import GatewayError

    with _client(url, caller, key) as client:
        try:
            _summary(BatchHandle(client, batch_id, 0).cancel())
        except GatewayError as exc:
            raise _problem(exc) from None


def batch_worker(data_dir: DataDir = None) -> None:
    """Run batch chunks on this node without serving HTTP (serve runs them in process too); stops on SIGTERM."""
    from gateway.server.logs import configure_logging

    settings = cli_settings(data_dir)
    configure_logging(settings.log_level)
    if settings.batch_workers < 1:
        raise fail("MSJX_BATCH_WORKERS is 0: a batch worker with no slot would run nothing")
    asyncio.run(_worker(settings))


def _sighup_ignored() -> None:
    logging.getLogger("msjx.batch").warning("SIGHUP ignored: a batch worker has nothing to reload; SIGTERM stops it")


async def _worker(settings: Any) -> None:
    from gateway.batches.service import BatchService
    from gateway.runtime import Runtime
    from gateway.storage import db
    from gateway.storage.connection_room import Need
    from gateway.storage.reachability import check_redis

    await check_redis(settings)
    await db.upgrade_async(settings, need=Need(1, settings.batch_workers))
    runtime = await Runtime.start(settings)
    service = BatchService.from_runtime(runtime, worker=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # SIGHUP's default action would end the worker inside a chunk, which then waits out MSJX_BATCH_STALL_SECONDS
    # before another node runs it again; a worker has no configuration to reload, so it keeps running.
    loop.add_signal_handler(signal.SIGHUP, _sighup_ignored)
    await service.start()
    typer.echo(f"batch worker {settings.node_id}: {settings.batch_workers} chunk(s) at a time ({service.queue.kind})")
    try:
        await stopping.wait()
    finally:
        await service.close()
        await runtime.close()
