"""A statement the database gives up on (a DBA's statement_timeout or lock_timeout on the database or the role, or an
operator's pg_cancel_backend) is answered 503 `database_timeout` with Retry-After, counted, and logged once without
a traceback; it was a 500 `internal_error` with a traceback for every such request. Here the statement waits for a
lock the test holds, so it runs into the timeout every time."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.settings import load_settings
from tests.helpers.calls import assert_problem
from tests.helpers.console import console_world, signed_in
from tests.helpers.gateways import running_gateway
from tests.helpers.services import REDIS_URL, admin_connection, create_test_database, drop_database, plain_url

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
async def test_a_statement_the_database_gives_up_on_is_a_503(
    tmp_path: Path, credit_url: str, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_test_database()
    name = urlsplit(url).path.lstrip("/")
    admin = await admin_connection()
    try:
        await admin.execute(f"ALTER DATABASE {name} SET {setting} = '200ms'")
        settings = load_settings(
            data_dir=tmp_path, upstream_urls={"credit": credit_url}, redis_url=REDIS_URL, database_url=url
        )
        async with running_gateway(settings) as gw:
            # Another session holds the grants table (a DBA's migration, say): reading it waits, then gives up.
            holder = await asyncpg.connect(plain_url(url))
            try:
                transaction = holder.transaction()
                await transaction.start()
                await holder.execute("LOCK TABLE grants IN ACCESS EXCLUSIVE MODE")
                caplog.clear()
                with caplog.at_level(logging.WARNING):
                    async with gw.client(gw.admin) as client:
                        answers = [await client.get("/v1/grants") for _ in range(3)]
                await transaction.rollback()
            finally:
                await holder.close()
            for answer in answers:
                problem = assert_problem(answer, 503, "database_timeout")
                assert answer.headers["Retry-After"] == "1"
                assert "statement_timeout" in str(problem["detail"])
            async with gw.client(gw.admin) as client:  # the lock gone, the same request is answered
                assert (await client.get("/v1/grants")).status_code == 200
    finally:
        await admin.close()
        await drop_database(url)
    said = [r for r in caplog.records if r.name == "msjx.dependencies"]
    assert len(said) == 1, caplog.messages  # three cancelled, said once
    assert said[0].getMessage().startswith("the database cancelled 1 statement(s) (last in grant.list: canceling")
    assert not [r for r in caplog.records if r.exc_info], caplog.messages


async def test_console_pages_and_public_routes_say_so_too(tmp_path: Path, credit_url: str) -> None:
    url = await create_test_database()
    name = urlsplit(url).path.lstrip("/")
    admin = await admin_connection()
    try:
        await admin.execute(f"ALTER DATABASE {name} SET lock_timeout = '200ms'")
        async with console_world(tmp_path, credit_url, database_url=url) as world:
            async with signed_in(world, "dept-officer") as officer:
                holder = await asyncpg.connect(plain_url(url))
                try:
                    transaction = holder.transaction()
                    await transaction.start()
                    await holder.execute("LOCK TABLE catalog_items IN ACCESS EXCLUSIVE MODE")
                    page = await officer.get("/console/catalog")
                    public = await officer.get("/v1/catalog")  # public: no exchange, no signature
                    await holder.execute("LOCK TABLE console_sessions IN ACCESS EXCLUSIVE MODE")
                    own_query = await officer.get("/console/catalog")  # the page's own session lookup
                    await transaction.rollback()
                finally:
                    await holder.close()
                # The catalog page listed no items, as if there were none, while its query had failed.
                assert page.status_code == 200
                assert '<p class="flash error" role="alert">the database gave up on a query' in page.text
                assert_problem(public, 503, "database_timeout")
                assert own_query.status_code == 503
                assert "数据库暂不可用，请稍后重试 (Database gave up on the query)" in own_query.text
                assert "flash error" not in (await officer.get("/console/catalog")).text
    finally:
        await admin.close()
        await drop_database(url)
