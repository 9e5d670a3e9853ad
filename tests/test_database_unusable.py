"""PostgreSQL databases the gateway cannot work with are refused at start, in one line naming the database and the fix:
one not in UTF8 (LATIN1 refused the Chinese text of a migration with a 620-line traceback, SQL_ASCII counts bytes as
characters), and one whose transactions are read-only by default (609 lines). A standby is refused by the same check
(`pg_is_in_recovery()`); no test here makes one."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

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
    result = _upgrade(tmp_path, url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: MSJX_DATABASE_URL: the database {name} at {where} is encoded {encoding}; the gateway keeps"
        " Chinese text: make it anew with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0"
    ]


async def test_a_read_only_database_is_refused_in_one_line(tmp_path: Path) -> None:
    name = f"msjx_ro_{secrets.token_hex(4)}"
    admin = await admin_connection()
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        url = with_database(DATABASE_URL, name)
        where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5432}"
        result = _upgrade(tmp_path, url)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: MSJX_DATABASE_URL: transactions in the database {name} at {where} are read-only by default"
        f" (default_transaction_read_only = on); the gateway writes: ALTER DATABASE {name} RESET"
        " default_transaction_read_only, or give the gateway's role its own setting"
    ]


def _upgrade(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    env.update(MSJX_DATA_DIR=str(tmp_path), MSJX_DATABASE_URL=url)
    return subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
