"""What the command groups share: settings from options, failing with one line, running work on the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gateway.http.problems import Problem
from gateway.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


WHEN_HELP = "YYYY-MM-DD or a time such as 2026-12-05T09:30, Beijing time unless it has an offset (Z, +08:00)"


DataDir = Annotated[Path | None, typer.Option("--data-dir", help="overrides MSJX_DATA_DIR (default: var)")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def request_body(model: Callable[..., T], **values: Any) -> T:
    """A request model built from a command's arguments; a value it refuses is one line naming the field, exit 2."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}") from None


def cli_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def run_registry(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run one registry action in a session after migrating; a refusal prints its detail and exits 1."""
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> T:
        engine = db.create_engine(settings)
        try:
            async with db.sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except Problem as problem:
        raise fail(f"{problem.code}: {problem.detail}", 1) from None


def parse_when(text: str, option: str) -> datetime:
    """A date (from 00:00 Beijing time), a time without an offset (Beijing time) or a time with an offset."""
    from schemas.times import parse_beijing

    try:
        return parse_beijing(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from None


def beijing(moment: datetime | None) -> str:
    """A stored time for people: Beijing time with its offset (the database keeps UTC; naive values are UTC)."""
    from schemas.times import beijing_text

    if moment is None:
        return "-"
    return beijing_text(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def run_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(engine)` on a fresh engine (after migrating), disposing of it afterwards."""
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> T:
        engine = db.create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def operator_name() -> str:
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


OfficerKey = Annotated[Path, typer.Option("--key", help="the officer's Ed25519 private key (PKCS#8 PEM)")]


OfficerCaller = Annotated[str, typer.Option("--caller", help="the officer's caller id")]


GatewayUrl = Annotated[
    str | None, typer.Option(help="gateway URL", envvar="MSJX_GATEWAY_URL", show_default="http://127.0.0.1:8000")
]


ReasonCategoryOption = Annotated[
    str | None, typer.Option("--category", help="complaint, inspection, incident, court_order or other")
]


def gateway_target(url: str | None) -> str:
    """--url (or MSJX_GATEWAY_URL, or the local default), checked: an absolute http(s) URL with a host. Anything
    else would fail deep in the request signing, as a traceback."""
    import httpx

    from gateway.client import gateway_url

    target = gateway_url(url)
    try:
        parsed = httpx.URL(target)
    except httpx.InvalidURL as exc:
        raise fail(f"--url {target!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise fail(f"--url {target!r}: expected http(s)://host[:port] (MSJX_GATEWAY_URL gives the default)")
    return target


def officer_request(key: Path, caller: str, url: str | None, method: str, path: str, **options: Any) -> Any:
    """One signed request to the officer API; a problem prints as JSON and exits 1."""
    import httpx

    from gateway.client import GatewayClient, GatewayError
    from security.keys import KeyFormatError

    try:
        with GatewayClient.from_key_file(gateway_target(url), caller, key) as client:
            try:
                return client.request(method, path, **options)
            except httpx.HTTPError as exc:
                raise fail(f"cannot reach {client.base_url}: {exc}") from None
    except GatewayError as exc:
        typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        raise typer.Exit(1) from None
    except KeyFormatError as exc:
        raise fail(f"--key: {exc}") from None
