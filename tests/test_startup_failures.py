"""A start-up that cannot go on (PostgreSQL or Redis away, a path, port or key unusable): one line, exit 2."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
from pathlib import Path

import pytest

from gateway.storage.reachability import endpoint
from tests.helpers.processes import CLI
from tests.helpers.services import check_redis, free_port

PASSWORD = "Pa55-w0rd-never-shown"


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    environment.update(MSJX_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=environment, timeout=60)


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a start-up that failed with exit 2; the migrations' log lines may come before it."""
    lines = [line for line in result.stderr.strip().splitlines() if " INFO alembic." not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert "Uvicorn running" not in result.stdout + result.stderr
    return lines[0]


def assert_one_line(
    result: subprocess.CompletedProcess[str], setting: str, where: str, says: str = "cannot connect to "
) -> None:
    line = the_one_line(result)
    assert line.startswith(f"error: {setting}: {says}"), line
    assert where in line, line


CLOSED_DATABASE_COMMANDS = [
    pytest.param(["db", "upgrade"], id="db-upgrade"),
    pytest.param(["serve", "--port", "0"], id="serve"),
    pytest.param(["callers", "list"], id="callers-list"),
    pytest.param(["grants", "list"], id="grants-list"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args", CLOSED_DATABASE_COMMANDS)
def test_unreachable_database_is_one_line_naming_the_setting(args: list[str], tmp_path: Path) -> None:
    port = free_port()  # bound and released: nobody listens there
    url = f"postgresql://msjx:{PASSWORD}@127.0.0.1:{port}/msjx"
    result = run_cli(args, tmp_path, MSJX_DATABASE_URL=url)
    assert_one_line(result, "MSJX_DATABASE_URL", f"PostgreSQL at 127.0.0.1:{port}: connection refused")


@pytest.mark.slow
def test_unreachable_redis_stops_serve_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(["serve", "--port", "0"], tmp_path, MSJX_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert_one_line(result, "MSJX_REDIS_URL", f"Redis at 127.0.0.1:{port}: connection refused")


def test_endpoint_never_shows_the_user_or_password() -> None:
    assert endpoint(f"postgresql://msjx:{PASSWORD}@db.example:6432/msjx", 5432) == "db.example:6432"
    assert endpoint("postgresql+asyncpg://db.example/msjx", 5432) == "db.example:5432"
    assert endpoint(f"redis://:{PASSWORD}@[2001:db8::1]/0", 6379) == "[2001:db8::1]:6379"
    assert endpoint("unix:///run/redis/redis.sock", 6379) == "/run/redis/redis.sock"


@pytest.mark.slow
@pytest.mark.parametrize("args", CLOSED_DATABASE_COMMANDS)
def test_sqlite_file_in_a_missing_directory_is_one_line(args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = run_cli(args, tmp_path / "data", MSJX_DATABASE_URL=f"sqlite:///{missing}/msjx.db")
    assert_one_line(
        result,
        "MSJX_DATABASE_URL",
        f"{missing}/msjx.db: the directory {missing} does not exist",
        says="cannot open the SQLite database ",
    )
    assert not missing.exists()  # a mistyped path is not made


@pytest.mark.slow
def test_sqlite_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "msjx.db").write_bytes(b"these are not the pages of a SQLite database\n" * 200)
    result = run_cli(["db", "upgrade"], data_dir)
    assert_one_line(
        result,
        "MSJX_DATA_DIR",
        f"{data_dir}/msjx.db: the file is not a SQLite database",
        says="cannot open the SQLite database ",
    )


@pytest.mark.slow
@pytest.mark.parametrize("args", [["db", "upgrade"], ["serve", "--port", "0"]], ids=["db-upgrade", "serve"])
def test_data_dir_that_is_a_file_is_one_line(args: list[str], tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a directory\n")
    result = run_cli(args, a_file)
    assert_one_line(result, "MSJX_DATA_DIR", f"{a_file} is not a directory", says="")
    result = run_cli(args, a_file / "below")
    assert_one_line(result, "MSJX_DATA_DIR", f"cannot create {a_file / 'below'}: Not a directory", says="")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line_before_any_migration(workers: str, tmp_path: Path) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        # Two workers also need PostgreSQL and Redis named; the port is refused before either is contacted.
        env = {"MSJX_DATABASE_URL": "postgresql://127.0.0.1:1/x", "MSJX_REDIS_URL": "redis://127.0.0.1:1/0"}
        result = run_cli(
            ["serve", "--port", str(port), "--workers", workers], tmp_path, **(env if workers == "2" else {})
        )
    finally:
        held.close()
    assert_one_line(result, "--port", f"127.0.0.1:{port}: Address already in use", says="cannot listen on ")
    assert not (tmp_path / "msjx.db").exists()  # refused before the migrations


def assert_wrong_master_key_line(result: subprocess.CompletedProcess[str]) -> None:
    line = the_one_line(result)
    assert line.startswith("error: key ix-1 is wrapped by master key mk-"), line
    assert line.endswith("every node must be given the same MSJX_MASTER_KEY"), line


@pytest.mark.slow
def test_a_master_key_that_does_not_unwrap_the_ring_is_one_line(tmp_path: Path) -> None:
    """Nodes given different master keys: the second one's `serve` says so in one line, not the application's
    start-up traceback."""
    first, second = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    made = run_cli(["keys", "list"], tmp_path, MSJX_MASTER_KEY=first)  # makes the ring under the first key
    assert made.returncode == 0, made.stderr
    assert_wrong_master_key_line(run_cli(["serve", "--port", "0"], tmp_path, MSJX_MASTER_KEY=second))


@pytest.mark.slow
async def test_a_master_key_that_does_not_unwrap_the_ring_stops_the_supervisor_in_one_line(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    shared = {"MSJX_DATABASE_URL": postgres_url, "MSJX_REDIS_URL": await check_redis()}
    made = run_cli(["keys", "list"], tmp_path / "node-a", MSJX_MASTER_KEY=first, **shared)
    assert made.returncode == 0, made.stderr
    result = await asyncio.to_thread(
        run_cli, ["serve", "--port", "0", "--workers", "2"], tmp_path / "node-b", MSJX_MASTER_KEY=second, **shared
    )
    assert_wrong_master_key_line(result)


@pytest.mark.slow
def test_a_signing_key_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    made = run_cli(["keys", "list"], tmp_path)  # makes this node's checkpoint signing key
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "keys" / "audit-signing.key"
    key_file.write_text("not a PEM\n")
    line = the_one_line(run_cli(["serve", "--port", "0"], tmp_path))
    assert line == f"error: cannot read an Ed25519 or SM2 private key (PKCS#8 PEM) from {key_file}"


def test_a_port_out_of_range_is_refused_by_the_option(tmp_path: Path) -> None:
    result = run_cli(["serve", "--port", "70000"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value for '--port'" in result.stderr
