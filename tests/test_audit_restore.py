"""A node does not write on a chain the database holds shorter than the node signed it, or changed at the height it
signed (gateway/audit/witness.py). After a database was restored from an earlier backup, a node used to go on from
the restored head without a word, signing heights it had signed before with other records under the same key; `audit
verify` then reported the records written since as `rehashed`, a tamper alarm with no cause in sight. Now it stops
at start in one line, and says the ways out: restore the missing records, or go on under a new node id."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn

from gateway.app import create_app
from gateway.audit.witness import ChainBehindWitness, witness_path
from gateway.settings import Settings, load_settings
from tests.helpers.audit import CHAIN, Store, audit_store, open_writer, tamper, write_chain
from tests.helpers.gateways import PURPOSE, RunningGateway, running_gateway
from tests.helpers.processes import CLI
from tests.helpers.quotas import call_for_purpose
from tests.helpers.services import admin_connection, create_test_database, drop_database, free_port, plain_url
from tests.helpers.serving import served


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with audit_store(request.param, tmp_path) as opened:
        yield opened


async def test_a_chain_cut_below_what_its_node_signed_is_not_written_on(store: Store) -> None:
    await write_chain(store)  # 12 records, signed every 3 and at the close
    # What a restore to an earlier backup leaves: the records after it and their checkpoints are gone.
    await tamper(
        store,
        ("DELETE FROM audit_records WHERE chain_id = :c AND height >= 8", {"c": CHAIN}),
        ("DELETE FROM audit_checkpoints WHERE chain_id = :c AND height >= 8", {"c": CHAIN}),
    )
    with pytest.raises(ChainBehindWitness) as refused:
        await open_writer(store)
    path = witness_path(store.settings, CHAIN)
    assert str(refused.value).startswith(
        f"audit chain {CHAIN}: the database holds it through height 7, but this node signed it through height 12"
        f" ({path}): records 8–12 are gone (a database restored from an earlier backup, or records deleted), and"
        " writing on would sign those heights again; restore the missing records, or start this node under a new"
        " MSJX_NODE_ID"
    )


async def test_a_chain_changed_at_the_height_its_node_signed_is_not_written_on(store: Store) -> None:
    await write_chain(store)
    await tamper(
        store,
        ("UPDATE audit_records SET record_hash = :h WHERE chain_id = :c AND height = 12", {"c": CHAIN, "h": "0" * 64}),
    )
    with pytest.raises(ChainBehindWitness, match="the record at height 12 in the database is not the one this node"):
        await open_writer(store)


async def test_a_new_database_on_purpose_starts_once_the_witness_is_moved_aside(store: Store) -> None:
    await write_chain(store)
    await tamper(
        store,
        ("DELETE FROM audit_records WHERE chain_id = :c", {"c": CHAIN}),
        ("DELETE FROM audit_checkpoints WHERE chain_id = :c", {"c": CHAIN}),
    )
    with pytest.raises(ChainBehindWitness, match=r"if this is a new database on purpose, move .* aside$"):
        await open_writer(store)
    path = witness_path(store.settings, CHAIN)
    path.rename(path.with_suffix(".old"))
    writer = await open_writer(store)
    await writer.close()
    assert writer.height == 0


@pytest.mark.slow
async def test_a_postgresql_backup_restored_stops_the_node_until_the_operator_chooses(
    tmp_path: Path, credit_url: str
) -> None:
    database_url = await create_test_database()
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url}, database_url=database_url)
    backup = tmp_path / "backup.dump"
    try:
        async with running_gateway(settings) as gw:
            assert [(await call_for_purpose(gw, PURPOSE)).status_code for _ in range(3)] == [200] * 3
            first = gw
        dump = ["pg_dump", "--format=custom", f"--file={backup}", plain_url(database_url)]
        await asyncio.to_thread(subprocess.run, dump, check=True, timeout=120)
        async with serving(settings) as url:
            again = RunningGateway(url, *_identities(first))
            assert [(await call_for_purpose(again, PURPOSE)).status_code for _ in range(3)] == [200] * 3
        await _restore(database_url, backup)

        served = _cli(settings, "serve", "--port", "0")
        assert served.returncode == 2, served.stderr
        assert "Traceback" not in served.stderr
        line = served.stderr.strip().splitlines()[-1]  # after the migrations' INFO lines
        assert line.startswith("error: audit chain node-1: the database holds it through height ")
        assert "(a database restored from an earlier backup, or records deleted)" in line

        verified = _cli(settings, "audit", "verify")  # the truth: the chain lost its tail
        assert verified.returncode != 0
        assert "truncated" in verified.stdout + verified.stderr

        # The operator accepts the loss: this node goes on as a new chain, the old one stays as evidence.
        renamed = settings.model_copy(update={"node_id": "node-1b"})
        async with serving(renamed) as url:
            again = RunningGateway(url, *_identities(first, renamed))
            assert (await call_for_purpose(again, PURPOSE)).status_code == 200
    finally:
        await drop_database(database_url)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The gateway on `settings` once more, on the database a first `running_gateway` seeded."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    async with served(config) as server:
        yield f"http://127.0.0.1:{server.config.port}"


def _identities(first: RunningGateway, settings: Settings | None = None) -> tuple:
    return (
        settings or first.settings,
        None,
        first.platform,
        first.admin,
        first.officer,
        first.grant_id,
        first.narrow_grant_id,
    )


async def _restore(database_url: str, backup: Path) -> None:
    """As an operator restores: the database dropped, made anew empty, and the dump restored into it."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await admin_connection()
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    restore = ["pg_restore", "--exit-on-error", f"--dbname={plain_url(database_url)}", str(backup)]
    await asyncio.to_thread(subprocess.run, restore, check=True, timeout=300)


def _cli(settings: Settings, *command: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    env.update(MSJX_DATA_DIR=str(settings.data_dir), MSJX_DATABASE_URL=str(settings.database_url))
    return subprocess.run([CLI, *command], env=env, capture_output=True, text=True, timeout=120)
