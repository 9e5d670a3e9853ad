"""PostgreSQL behind Debian's PgBouncer, a pooler of the test's own: in transaction pooling the gateway refuses to
start, in one line and exit 2 (`serve` failed at random with a traceback: two processes' prepared statements met on one
server connection); in session pooling it starts, serves signed calls and runs a batch (LISTEN works)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.batches import usccs
from tests.helpers.faults import _unavailable, _wait_port
from tests.helpers.processes import CLI, stop, wait_ready
from tests.helpers.services import free_port

pytestmark = pytest.mark.slow
PGBOUNCER = "/usr/sbin/pgbouncer"


@contextmanager
def pgbouncer(pool_mode: str) -> Iterator[int]:
    """A PgBouncer on a free port in front of the shared PostgreSQL (127.0.0.1:5432, trust), run as `postgres`:
    it refuses to run as root."""
    if not os.path.exists(PGBOUNCER):
        _unavailable("pgbouncer")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="msjx-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {directory}/users.txt\npool_mode = {pool_mode}\ndefault_pool_size = 40\n"
        f"logfile = {directory}/pgbouncer.log\n"
        "ignore_startup_parameters = extra_float_digits,application_name\n"
    )
    shutil.chown(directory, "postgres")
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, up=True)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _env(tmp_path: Path, port: int, database: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MSJX_")}
    env["MSJX_DATA_DIR"] = str(tmp_path / "var")
    env["MSJX_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{port}/{database}"
    return env


@pytest.fixture
def database() -> Iterator[str]:
    name = f"msjx_pooler_{os.getpid()}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run([*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False, capture_output=True)


def test_transaction_pooling_is_refused_in_one_line(tmp_path: Path, database: str) -> None:
    with pgbouncer("transaction") as port:
        for command in (["db", "upgrade"], ["serve", "--port", "0"]):
            result = subprocess.run(
                [CLI, *command], env=_env(tmp_path, port, database), capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"error: MSJX_DATABASE_URL: 127.0.0.1:{port} shares server connections between transactions (a pooler"
                " such as PgBouncer with pool_mode = transaction or statement): the gateway keeps prepared statements,"
                " LISTEN and session settings on its connections; connect to PostgreSQL directly or through"
                " pool_mode = session"
            ]


def test_session_pooling_serves_calls_and_batches(tmp_path: Path, database: str) -> None:
    with pgbouncer("session") as port:
        env = _env(tmp_path, port, database)
        upgraded = subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
        assert upgraded.returncode == 0, upgraded.stderr
        http_port = free_port()
        url = f"http://127.0.0.1:{http_port}"
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [CLI, "serve", "--demo", "--port", str(http_port)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_ready(url, server, log)
            caller = ["--key", str(tmp_path / "var/demo/keys/platform.pem"), "--caller", "platform", "--url", url]
            call = ["call", "credit", "dishonest-debtor", "--purpose", "XM-2025-001", f"--param=uscc={usccs(1)[0]}"]
            called = subprocess.run([CLI, *call, *caller], env=env, capture_output=True, text=True, timeout=60)
            assert called.returncode == 0 and '"listed"' in called.stdout, called.stdout + called.stderr
            subjects = tmp_path / "subjects.csv"
            subjects.write_text("uscc\n" + "\n".join(usccs(30)) + "\n")
            submit = ["batch", "submit", "--purpose", "XM-2025-001", "--op", "credit/dishonest-debtor", "--subjects"]
            batch = subprocess.run(
                [CLI, *submit, str(subjects), *caller], env=env, capture_output=True, text=True, timeout=120
            )
            assert "done, 30/30 subjects" in batch.stdout, batch.stdout + batch.stderr
        finally:
            stop(server)
        assert "Traceback" not in log.read_text()
