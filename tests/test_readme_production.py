"""The README's production steps, run as written on a fresh PostgreSQL database.

The README stays the source: this test reads its console block (the one with `keys new-caller`), runs each `$`
line in order and changes only what names the reader's machines: the database, Redis and upstream URLs, and the
listening address (127.0.0.1 and a free port instead of 0.0.0.0:8000).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.processes import wait_ready
from tests.helpers.services import DATABASE_URL, admin_connection, check_redis, drop_database, free_port, with_database

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def console_commands(marker: str) -> list[str]:
    """The `$` lines of the README's console block that contains `marker`, continuation lines joined."""
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    (block,) = [block for block in blocks if marker in block]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if pending:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending = line[2:]
        else:
            continue  # output
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = ""
    return commands


async def _fresh_database() -> str:
    """An empty database (no template): the README's `db upgrade` is what migrates it."""
    name = f"msjx_readme_{secrets.token_hex(4)}"
    admin = await admin_connection()
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return with_database(DATABASE_URL, name)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    url = asyncio.run(_fresh_database())
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
def credit_simulator() -> Iterator[str]:
    """The credit platform in a process of its own (this test blocks on subprocesses, so not on its event loop)."""
    process = subprocess.Popen(
        [str(BIN / "msjx-gateway"), "simulators", "--stop-on-stdin-close"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    urls = json.loads(process.stdout.readline())
    yield urls["credit"]
    process.terminate()
    process.wait(timeout=10)


def test_the_block_is_what_the_reader_needs() -> None:
    commands = console_commands("keys new-caller")
    programs = [shlex.split(command, comments=True)[:2] for command in commands]
    assert ["msjx-gateway", "db"] in programs and ["msjx-gateway", "serve"] in programs
    exports = " ".join(command for command in commands if command.startswith("export "))
    assert "MSJX_UPSTREAM_URLS" in exports, "without it `grants add` answers unknown_service"
    assert programs.index(["msjx-gateway", "keys"]) < programs.index(["msjx-gateway", "callers"])


def test_the_production_steps_run_top_to_bottom(tmp_path: Path, fresh_database: str, credit_simulator: str) -> None:
    redis_url = asyncio.run(check_redis())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    server: subprocess.Popen[str] | None = None
    server_log = tmp_path / "serve.log"
    outputs: list[str] = []
    try:
        for command in console_commands("keys new-caller"):
            if command.startswith("export "):
                for assignment in shlex.split(command, comments=True)[1:]:
                    name, _, value = assignment.partition("=")
                    env[name] = _local(name, value, fresh_database, redis_url, credit_simulator, port)
                continue
            line = command.replace("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {port}")
            if line.rstrip().endswith("&"):
                assert server is None, "one background command: the gateway"
                server = subprocess.Popen(
                    ["bash", "-c", "exec " + line.rstrip().removesuffix("&")],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=server_log.open("w"),
                    text=True,
                )
                wait_ready(f"http://127.0.0.1:{port}", server, server_log)
                continue
            result = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, f"{command}\nexited {result.returncode}: {result.stderr}{result.stdout}"
            outputs.append(result.stdout)
        assert server is not None, "the block starts the gateway"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    private_key = tmp_path / "platform.pem"
    assert private_key.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "var" / "platform.pem").exists()
    answer = json.loads(outputs[-1])
    assert answer["data"] == {"uscc": "91350213MAG6BDRC7A", "listed": True}, "the grant's two fields, and only those"
    assert answer["meta"]["service"] == "credit"


def _local(name: str, value: str, database: str, redis: str, credit: str, port: int) -> str:
    """The README's value of a setting, pointed at this machine's servers."""
    if name == "MSJX_DATABASE_URL":
        return database
    if name == "MSJX_REDIS_URL":
        return redis
    if name == "MSJX_UPSTREAM_URLS":
        return json.dumps(dict.fromkeys(json.loads(value), credit))
    if name == "MSJX_GATEWAY_URL":
        return value.replace(f":{urlsplit(value).port}", f":{port}")
    return value
