"""A Redis the gateway can reach but not use as it does is refused at start in one line, exit 2: an ACL user that
may not touch the gateway's keys or run its scripts (a node started, then answered every call 503
`state_store_unavailable`, "could not be reached", while Redis answered NOPERM), and a read-only replica. The ACL
the refusal suggests is enough for the gateway to serve, which the last test shows."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.settings import load_settings
from gateway.storage.reachability import REDIS_ACL, StorageUnusable, check_redis
from tests.helpers.faults import OwnRedis
from tests.helpers.gateways import PURPOSE, running_gateway
from tests.helpers.processes import CLI
from tests.helpers.quotas import call_for_purpose
from tests.helpers.services import create_test_database, drop_database

pytestmark = pytest.mark.slow
SUGGESTED = f"allow it, e.g. ACL SETUSER <user> ~msjx:* {REDIS_ACL}"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


async def user_url(redis: OwnRedis, *rules: str) -> str:
    admin = Redis.from_url(redis.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "gw", "on", ">gw-secret", *rules)
    finally:
        await admin.aclose()
    return f"redis://gw:gw-secret@127.0.0.1:{redis.port}/0"


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        ("~app:* &* +@all", "this user has no permissions to access one of the keys used as arguments"),
        ("~* &* +@all -eval", "this user has no permissions to run the 'eval' command"),
        ("~* &* +@all -evalsha", "this user has no permissions to run the 'evalsha' command"),
        ("~* &* +@all -time", "The user executing the script can't run this command or subcommand script"),
    ],
)
async def test_a_user_that_may_not_do_what_the_gateway_does_is_refused(
    tmp_path: Path, own_redis: OwnRedis, rules: str, reason: str
) -> None:
    url = await user_url(own_redis, *rules.split())
    with pytest.raises(StorageUnusable) as refused:
        await check_redis(load_settings(data_dir=tmp_path, redis_url=url))
    message = str(refused.value)
    assert message.startswith(
        f"MSJX_REDIS_URL: the Redis user at 127.0.0.1:{own_redis.port} may not use the gateway's keys (msjx:*) as it"
        f" does ({reason}"
    )
    assert message.endswith(SUGGESTED)
    assert "gw-secret" not in message


async def test_serve_says_it_in_one_line(tmp_path: Path, own_redis: OwnRedis) -> None:
    url = await user_url(own_redis, "~app:*", "&*", "+@all")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    env.update(MSJX_DATA_DIR=str(tmp_path / "var"), MSJX_REDIS_URL=url)
    served = subprocess.run([CLI, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert served.returncode == 2, served.stderr
    [line] = served.stderr.strip().splitlines()
    assert line.startswith("error: MSJX_REDIS_URL: the Redis user at 127.0.0.1:") and line.endswith(SUGGESTED)


async def test_a_read_only_replica_is_refused(tmp_path: Path, own_redis: OwnRedis) -> None:
    (tmp_path / "replica").mkdir()
    replica = OwnRedis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(own_redis.port))
    replica.start()
    try:
        with pytest.raises(StorageUnusable) as refused:
            await check_redis(load_settings(data_dir=tmp_path, redis_url=replica.url))
    finally:
        replica.stop()
    assert str(refused.value) == (
        f"MSJX_REDIS_URL: Redis at 127.0.0.1:{replica.port} is a read-only replica, and the gateway writes: give the"
        " primary"
    )


async def test_the_suggested_acl_is_enough_to_serve(tmp_path: Path, own_redis: OwnRedis, credit_url: str) -> None:
    url = await user_url(own_redis, "~msjx:*", *REDIS_ACL.split())
    database_url = await create_test_database()
    settings = load_settings(
        data_dir=tmp_path, upstream_urls={"credit": credit_url}, redis_url=url, database_url=database_url
    )
    try:
        await check_redis(settings)
        async with running_gateway(settings) as gw:
            assert [(await call_for_purpose(gw, PURPOSE)).status_code for _ in range(3)] == [200] * 3
    finally:
        await drop_database(database_url)
