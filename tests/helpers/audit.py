"""Helpers of the audit tests: a store on SQLite or a throwaway PostgreSQL database, a written chain, tampering."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import verify as verify_module
from gateway.audit.keys import open_keyring
from gateway.audit.rows import iter_chain
from gateway.audit.signer import load_signer, trusted_keys
from gateway.audit.verify import verify_all
from gateway.audit.witness import witness_path
from gateway.audit.writer import AuditEvent, AuditWriter
from gateway.settings import Settings, load_settings
from gateway.storage import db
from security.audit_chain import ChainReport
from tests.helpers.services import create_test_database, drop_database

CHAIN = "node-1"
USCC = "91110000600037341L"


@dataclass
class Store:
    settings: Settings
    engine: AsyncEngine
    backend: str
    # PostgreSQL only: before each verification the rows are rewritten in height order, as an attacker who tidies up
    # would, so the scan in storage order (gateway/audit/scan.py) meets no row out of place and must itself refuse
    # every tampered chain; `verify` then checks that every intact chain was proven by that scan alone.
    in_storage_order: bool = False

    @property
    def postgres(self) -> bool:
        return self.backend == "postgres"

    def with_suite(self, suite: str) -> Settings:
        return self.settings.model_copy(update={"crypto_suite": suite})


@asynccontextmanager
async def audit_store(backend: str, data_dir: Path, **overrides: Any) -> AsyncIterator[Store]:
    """A migrated database on `backend` ("sqlite" or "postgres", a throwaway database) and its engine."""
    settings_overrides: dict[str, Any] = {"data_dir": data_dir, **overrides}
    if backend == "postgres":
        settings_overrides["database_url"] = await create_test_database()
    settings = load_settings(**settings_overrides)
    await db.upgrade_async(settings)
    engine = db.create_engine(settings)
    try:
        yield Store(settings, engine, backend)
    finally:
        await engine.dispose()
        if settings.database_url:
            await drop_database(settings.database_url)


def event(index: int = 0, **changes: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "event": "service.invoke",
        "request_id": secrets.token_hex(16),
        "decision": "allowed",
        "status_code": 200,
        "request_body": b'{"purpose":"XM-2025-001","params":{"uscc":"' + USCC.encode() + b'"}}',
        "response_body": b'{"data":{"listed":false,"n":' + str(index).encode() + b"}}",
        "caller_id": "platform",
        "department": "市数据管理局",
        "roles": ("platform",),
        "key_id": "platform.0123456789ab",
        "client_addr": "127.0.0.1",
        "method": "POST",
        "path": "/v1/services/credit/dishonest-debtor",
        "service": "credit",
        "operation": "dishonest-debtor",
        "purpose": "XM-2025-001",
        "grant_id": "grant-1",
        "subject": USCC,
        "fields": ("uscc", "listed"),
        "upstream_status": "200",
        "duration_us": 1000 + index,
        "upstream_us": 700,
    }
    values.update(changes)
    return AuditEvent(**values)


async def open_writer(
    store: Store, suite: str = "standard", *, every: int = 3, seconds: float = 3600.0, **options: Any
) -> AuditWriter:
    settings = store.with_suite(suite)
    keyring = await open_keyring(settings, store.engine)
    writer = AuditWriter(
        store.engine,
        chain_id=options.pop("chain_id", CHAIN),
        keyring=keyring,
        suite=suite,
        signer=load_signer(settings),
        checkpoint_every=every,
        checkpoint_seconds=seconds,
        witness_path=options.pop("witness", witness_path(settings, CHAIN)),
        **options,
    )
    await writer.start()
    return writer


async def write_chain(store: Store, suite: str = "standard", records: int = 12, every: int = 3) -> None:
    """`records` records appended one at a time, so checkpoints fall exactly every `every` heights."""
    writer = await open_writer(store, suite, every=every)
    try:
        for index in range(records):
            await writer.append(event(index))
    finally:
        await writer.close()


async def verify(store: Store, **options: Any) -> dict[str, ChainReport]:
    options.setdefault("trusted", trusted_keys(store.settings))
    options.setdefault("archive_dir", store.settings.archive_dir)
    options.setdefault("witness_dir", store.settings.witness_dir)
    if not store.in_storage_order:
        return {report.chain_id: report for report in await verify_all(store.engine, **options)}
    await rewrite_in_height_order(store)
    walked: list[str] = []
    in_order = verify_module.walk_in_order

    async def counted(engine: AsyncEngine, plan: Any, **kwargs: Any) -> ChainReport:
        walked.append(plan.chain_id)
        return await in_order(engine, plan, **kwargs)

    verify_module.walk_in_order = counted  # type: ignore[assignment]
    try:
        reports = {report.chain_id: report for report in await verify_all(store.engine, **options)}
    finally:
        verify_module.walk_in_order = in_order  # type: ignore[assignment]
    for chain_id, report in reports.items():
        if report.ok:
            assert chain_id not in walked, f"the scan did not prove intact chain {chain_id} by itself"
    return reports


async def rewrite_in_height_order(store: Store) -> None:
    """Every audit row deleted and inserted again, each chain in height order (PostgreSQL)."""
    async with store.engine.begin() as connection:
        await connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        await connection.execute(text("CREATE TEMP TABLE reordered ON COMMIT DROP AS SELECT * FROM audit_records"))
        await connection.execute(text("DELETE FROM audit_records"))
        await connection.execute(text("INSERT INTO audit_records SELECT * FROM reordered ORDER BY chain_id, height"))
        await connection.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))


async def fault_of(store: Store, chain: str = CHAIN, **options: Any) -> tuple[int, str] | None:
    report = (await verify(store, **options))[chain]
    return (report.fault.height, report.fault.kind) if report.fault else None


async def tamper(store: Store, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run SQL as an attacker would: on PostgreSQL the append-only triggers are switched off first, as a table
    owner or superuser can, and switched on again afterwards."""
    async with store.engine.begin() as connection:
        if store.postgres:
            for table in ("audit_records", "audit_checkpoints"):
                await connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for sql, params in statements:
            await connection.execute(text(sql), params)
        if store.postgres:
            for table in ("audit_records", "audit_checkpoints"):
                await connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


async def rows(store: Store, chain: str = CHAIN) -> list[dict[str, Any]]:
    return [row async for page in iter_chain(store.engine, chain) for row in page]
