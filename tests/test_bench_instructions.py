"""bench.instructions end to end: the gateway under callgrind answers every call, and the count is read back."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_counts_the_instructions_of_real_calls(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail("valgrind is missing (scripts/run-tests.sh installs it)")
        pytest.skip("valgrind is not installed")
    command = [sys.executable, "-m", "bench.instructions", "--calls", "40", "--warmup", "10", "--connections", "2"]
    done = subprocess.run(
        [*command, "--keep", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if "instructions a call" in line)
    count = int(line.split()[0].replace(",", ""))
    # A signed, audited call is hundreds of thousands of instructions; far less means callgrind counted nothing.
    assert 200_000 < count < 20_000_000, line
    assert "40 calls over 2 connections" in line
    # Every call reached the gateway's audit log: 10 warm-up calls and the 40 counted.
    with closing(sqlite3.connect(tmp_path / "gateway" / "msjx.db")) as db:
        (allowed,) = db.execute("select count(*) from audit_records where decision = 'allowed'").fetchone()
    assert allowed == 50
