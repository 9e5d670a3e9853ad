"""An operator's change made on the command line goes on the record, as the API's would: on the chain
`cli-<node id>` (never a running node's own chain: two writers on one chain would fork it), refusals included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cli.common import fail
from gateway.settings import Settings
from schemas.errors import MsjxError
from security.key_trust import cli_chain_of

T = TypeVar("T")


def cli_chain(node_id: str) -> str:
    return cli_chain_of(node_id)


@asynccontextmanager
async def cli_audit_writer(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Any]:
    """The started AuditWriter of the chain `cli-<node id>`; closed (its last checkpoint signed) on the way out."""
    from gateway.audit.keys import open_keyring
    from gateway.audit.signer import load_signer
    from gateway.audit.witness import witness_path
    from gateway.audit.writer import AuditWriter

    chain = cli_chain(settings.node_id)
    writer = AuditWriter(
        engine,
        chain_id=chain,
        keyring=await open_keyring(settings, engine),
        suite=settings.crypto_suite,
        signer=load_signer(settings),
        witness_path=witness_path(settings, chain),
    )
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


@dataclass(frozen=True)
class CliAction:
    """What one command puts on the record besides its outcome: the event, who ran it, the command line, what it
    was asked (never a secret), and the object it acts on."""

    event: str
    operator: str
    command: str
    request: Mapping[str, Any] = field(default_factory=dict)
    target_id: str | None = None
    grant_id: str | None = None
    service: str | None = None
    roles: tuple[str, ...] = ("operator",)
    refused_code: str = "cli_refused"  # for a refusal that carries no problem code of its own

    def record(self, answer: Mapping[str, Any] | None, refused: MsjxError | None = None) -> Any:
        from gateway.audit.writer import AuditEvent, new_request_id

        code = getattr(refused, "code", None)
        return AuditEvent(
            event=self.event,
            request_id=new_request_id(),
            decision="refused" if refused is not None else "allowed",
            status_code=422 if refused is not None else 200,
            request_body=orjson.dumps(dict(self.request)),
            response_body=orjson.dumps({"refused": str(refused)} if refused is not None else dict(answer or {})),
            caller_id=f"cli:{self.operator}"[:64],
            key_id=f"cli:{self.operator}"[:64],
            roles=self.roles,
            path=self.command[:512],
            target_id=self.target_id,
            grant_id=self.grant_id,
            service=self.service,
            reason_code=(str(getattr(code, "value", code)) if code else self.refused_code) if refused else None,
        )


def run_audited(
    settings: Settings,
    action: CliAction,
    work: Callable[[AsyncEngine], Awaitable[T]],
    answer: Callable[[T], Mapping[str, Any]],
    refusals: tuple[type[MsjxError], ...] = (MsjxError,),
    refusal_exit: int = 1,
) -> T:
    """Run `work(engine)` with its audit record: the writer starts before anything changes (no change without its
    record), the outcome or the refusal is appended and committed, then the result returned. A refusal prints its
    message and exits `refusal_exit`."""
    from gateway.audit.writer import AuditUnavailable
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> T:
        engine = db.create_engine(settings)
        try:
            async with cli_audit_writer(settings, engine) as writer:
                try:
                    result = await work(engine)
                except refusals as exc:
                    await writer.append(action.record(None, exc))
                    raise fail(_refusal_line(exc), refusal_exit) from None
                await writer.append(action.record(answer(result)))
                return result
        except AuditUnavailable:
            raise fail(f"{action.event}: the audit record could not be written; see the log", 1) from None
        finally:
            await engine.dispose()

    return asyncio.run(main())


def in_session(work: Callable[[Any], Awaitable[T]]) -> Callable[[AsyncEngine], Awaitable[T]]:
    """`work(session)` as work on an engine, in one session of it."""
    from gateway.storage import db

    async def on_engine(engine: AsyncEngine) -> T:
        async with db.sessionmaker(engine)() as session:
            return await work(session)

    return on_engine


def _refusal_line(exc: MsjxError) -> str:
    code, detail = getattr(exc, "code", None), getattr(exc, "detail", None)
    if code is not None and detail is not None:
        return f"{getattr(code, 'value', code)}: {detail}"
    return str(exc)
