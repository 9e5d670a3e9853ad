"""PostgreSQL databases the gateway cannot work with are refused at start, in one line naming the database and the fix:
one not in UTF8 (LATIN1 refused the Chinese text of a migration with a 620-line traceback, SQL_ASCII counts bytes as
characters), one whose transactions are read-only by default (609 lines), and roles that may not make the gateway's
tables (608 lines) or that do not own the audit log (which then failed once the partitions made ahead ran out), and
a hot standby (a replica's address given for the primary's)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.faults import OwnPostgres
from tests.helpers.processes import CLI
from tests.helpers.services import DATABASE_URL, admin_connection, with_database

pytestmark = pytest.mark.slow


@pytest.fixture(params=["LATIN1", "SQL_ASCII"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    name = f"msjx_enc_{secrets.token_hex(4)}"
    admin = await admin_connection()
    try:
        await admin.execute(
            f"CREATE DATABASE {name} ENCODING '{request.param}' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
        )
        yield name, request.param
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def test_a_database_not_in_utf8_is_refused_in_one_line(tmp_path: Path, database: tuple[str, str]) -> None:
    name, encoding = database
    url = with_database(DATABASE_URL, name)
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5432}"
    assert _refused(tmp_path, url) == (
        f"error: MSJX_DATABASE_URL: the database {name} at {where} is encoded {encoding}; the gateway keeps"
        " Chinese text: make it anew with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0"
    )


async def test_a_read_only_database_is_refused_in_one_line(tmp_path: Path) -> None:
    name = f"msjx_ro_{secrets.token_hex(4)}"
    admin = await admin_connection()
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        url = with_database(DATABASE_URL, name)
        where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5432}"
        refused = _refused(tmp_path, url)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    assert refused == (
        f"error: MSJX_DATABASE_URL: transactions in the database {name} at {where} are read-only by default"
        f" (default_transaction_read_only = on); the gateway writes: ALTER DATABASE {name} RESET"
        " default_transaction_read_only, or give the gateway's role its own setting"
    )


async def test_a_standby_is_refused_in_one_line(tmp_path: Path) -> None:
    primary = OwnPostgres()
    standby: OwnPostgres | None = None
    try:
        await asyncio.to_thread(primary.init)
        await asyncio.to_thread(primary.start)
        standby = await asyncio.to_thread(primary.standby)
        await asyncio.to_thread(standby.start)
        expected = (
            f"error: MSJX_DATABASE_URL: PostgreSQL at 127.0.0.1:{standby.port} is a standby (in recovery) and takes"
            " no writes; give the primary"
        )
        assert await asyncio.to_thread(_refused, tmp_path, standby.url) == expected
        served = await asyncio.to_thread(_serve, tmp_path, standby.url)
        assert served.returncode == 2, served.stderr
        assert served.stderr.strip().splitlines() == [expected]
    finally:
        if standby is not None:
            await asyncio.to_thread(standby.close)
        await asyncio.to_thread(primary.close)


def _refused(tmp_path: Path, url: str) -> str:
    """`db upgrade`'s one line, having checked that it is one line and exit 2."""
    result = _upgrade(tmp_path, url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _upgrade(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return _cli(tmp_path, url, "db", "upgrade")


def _serve(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return _cli(tmp_path, url, "serve", "--port", "0")


def _cli(tmp_path: Path, url: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    env.update(MSJX_DATA_DIR=str(tmp_path), MSJX_DATABASE_URL=url)
    return subprocess.run([CLI, *command], env=env, capture_output=True, text=True, timeout=120)


async def test_roles_that_cannot_make_or_own_the_tables_are_refused(tmp_path: Path) -> None:
    suffix = secrets.token_hex(4)
    database, role, other = f"msjx_perm_{suffix}", f"msjx_app_{suffix}", f"msjx_other_{suffix}"
    admin = await admin_connection()
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"CREATE ROLE {other} LOGIN")
        await admin.execute(f"CREATE DATABASE {database}")
        as_role = _as(with_database(DATABASE_URL, database), role)
        where = f"{urlsplit(as_role).hostname}:{urlsplit(as_role).port or 5432}"
        assert _refused(tmp_path, as_role) == (
            f"error: MSJX_DATABASE_URL: the role {role} may not create tables in the schema public of the database"
            f" {database} at {where} (from PostgreSQL 15 on, by default only its owner may); the gateway's migrations"
            f" make its tables: ALTER DATABASE {database} OWNER TO {role}"
        )
        await admin.execute(f"ALTER DATABASE {database} OWNER TO {role}")
        assert _upgrade(tmp_path, as_role).returncode == 0
        assert _refused(tmp_path, _as(with_database(DATABASE_URL, database), other)) == (
            f"error: MSJX_DATABASE_URL: the role {other} does not own audit_records in the database {database} at"
            f" {where} ({role} does); the gateway makes the audit log's monthly partitions and detaches archived ones,"
            f" which only the owner may: run it as {role}, or make {other} a member of {role}"
        )
        await admin.execute(f"GRANT {role} TO {other}")
        assert _upgrade(tmp_path, _as(with_database(DATABASE_URL, database), other)).returncode == 0
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {other}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def _as(url: str, role: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}").geturl()
