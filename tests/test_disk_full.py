"""The data directory's disk fills up under load (SQLite): every call is answered 200 with its audit record or 503
audit_unavailable, never acknowledged without one; the cause is logged once, not once a commit; /readyz says so; and
when space is freed the gateway serves again by itself and the chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.gateways import PURPOSE, make_gateway
from tests.helpers.processes import run_cli

pytestmark = pytest.mark.slow

CALL = "/v1/services/credit/dishonest-debtor"
BODY = {"purpose": PURPOSE, "params": {"uscc": "91411303MA1UKMT93R"}}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of its own: a full disk that fills nothing else."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:  # bounded by the tmpfs's size: ENOSPC ends it
            out.write(chunk)
            out.flush()
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC
    return filler


async def _calls(client: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    answers = []
    for _ in range(count // 8):
        answers += await asyncio.gather(*[client.post(CALL, json=BODY) for _ in range(8)])
    return answers


async def test_a_full_disk_refuses_calls_until_space_is_freed(
    small_disk: Path, credit_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = small_disk / "var"
    caplog.set_level(logging.WARNING, "msjx.audit")
    async with make_gateway("sqlite", data_dir=data_dir, upstream_urls={"credit": credit_url}) as gateway:
        async with gateway.client() as client:
            before = await _calls(client, 40)
            assert {answer.status_code for answer in before} == {200}
            filler = _fill(small_disk)
            during = await _calls(client, 200)
            codes = {(a.status_code, a.json().get("code") if a.status_code != 200 else None) for a in during}
            assert codes <= {(200, None), (503, "audit_unavailable")}, codes
            assert (503, "audit_unavailable") in codes, "the disk never refused a commit"
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "last commit failed" in ready.json()["checks"]["audit"]
            failures = [m for m in caplog.messages if "failed: " in m and "audit commit" in m]
            assert len(failures) == 1 and "database or disk is full" in failures[0], failures

            filler.unlink()
            after = await _calls(client, 40)
            assert {answer.status_code for answer in after} == {200}
            assert (await client.get("/readyz")).json()["checks"]["audit"] == "ok"
        assert any("audit commits succeed again, after" in m for m in caplog.messages)
        acknowledged = {a.headers["x-request-id"] for a in before + during + after if a.status_code == 200}
    with sqlite3.connect(data_dir / "msjx.db") as connection:
        recorded = {row[0] for row in connection.execute("SELECT request_id FROM audit_records")}
    assert acknowledged <= recorded, "an acknowledged call without its audit record"
    verified = run_cli("audit", "verify", data_dir=data_dir)
    assert "records intact" in verified.stdout, verified.stdout
