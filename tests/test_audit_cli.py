"""`msjx-gateway keys …` and `audit verify|export|archive` as an operator or officer runs them."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from schemas.times import BEIJING
from tests.helpers.audit import CHAIN, audit_store, event, open_writer, rows
from tests.helpers.clock import ManualClock
from tests.helpers.processes import run_cli

pytestmark = pytest.mark.slow
YEAR_MS = 365 * 86_400_000


class TickingClock(ManualClock):
    """Each reading of the milliseconds is one after the last."""

    def ms(self) -> int:
        value = super().ms()
        self.advance(milliseconds=1)
        return value


async def _write(
    data_dir: Path, records: int, *, every: int = 3, clock_ms: int | None = None, suite: str = "standard"
) -> None:
    async with audit_store("sqlite", data_dir) as store:
        options = {}
        if clock_ms is not None:
            options["clock"] = TickingClock(datetime.fromtimestamp(clock_ms / 1000, UTC))
        writer = await open_writer(store, suite, every=every, **options)
        try:
            start = writer.height
            for index in range(records):
                await writer.append(event(start + index))
        finally:
            await writer.close()


def _today(days: int = 0) -> str:
    """A date as the CLI reads it: in Beijing time."""
    return (datetime.now(BEIJING) + timedelta(days=days)).strftime("%Y-%m-%d")


async def test_keys_list_rotate_destroy_public(tmp_path: Path) -> None:
    await _write(tmp_path, 2)
    listed = run_cli("keys", "list", data_dir=tmp_path).stdout
    assert "master key  mk-" in listed and "index  ix-1" in listed and "current" in listed
    assert f"checkpoint key of chain {CHAIN}" in listed
    first = next(line.split()[1] for line in listed.splitlines() if line.startswith("data") and "current" in line)

    rotated = run_cli("keys", "rotate", data_dir=tmp_path).stdout
    assert rotated.startswith("new data key dk-standard-")
    after = run_cli("keys", "list", data_dir=tmp_path).stdout
    assert any(first in line and "retired" in line for line in after.splitlines())

    refused = run_cli("keys", "destroy", "--before", _today(1), data_dir=tmp_path, check=False)
    assert refused.returncode == 2 and "future" in refused.stderr
    inside = run_cli("keys", "destroy", "--before", _today(), data_dir=tmp_path, check=False)
    assert inside.returncode == 2 and "retention period" in inside.stderr
    now = datetime.now(UTC).isoformat(timespec="seconds")
    destroyed = run_cli("keys", "destroy", "--before", now, "--force", data_dir=tmp_path).stdout
    assert f"destroyed data key {first}" in destroyed
    assert any(
        first in line and "destroyed" in line for line in run_cli("keys", "list", data_dir=tmp_path).stdout.splitlines()
    )
    assert "intact" in run_cli("audit", "verify", data_dir=tmp_path).stdout, "shredding leaves the chain verifiable"

    public = run_cli("keys", "public", data_dir=tmp_path).stdout
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert public == (tmp_path / "keys" / "audit-signing.pub.pem").read_text()


@pytest.mark.parametrize("suite", ["standard", "sm"])
async def test_export_verifies_offline_with_the_public_key_only(tmp_path: Path, suite: str) -> None:
    node = tmp_path / "node"
    await _write(node, 11, every=3, suite=suite)
    export = tmp_path / "export.jsonl"
    written = run_cli("audit", "export", "--from", "2000-01-01", "--to", _today(1), str(export), data_dir=node).stdout
    assert "11 records, heights 1–11" in written
    pubkey = tmp_path / "node.pub.pem"
    pubkey.write_text(run_cli("keys", "public", "--suite", suite, data_dir=node).stdout)
    checkpoints = [orjson.loads(line) for line in export.read_bytes().splitlines() if b'"type":"checkpoint"' in line]
    assert checkpoints and {cp["key_id"].split(":")[0] for cp in checkpoints} == {
        "ed25519" if suite == "standard" else "sm2"
    }
    offline = tmp_path / "officer"  # an empty data dir: nothing but the file and the key
    ok = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(pubkey), data_dir=offline)
    assert "11 records intact" in ok.stdout and "signed through height 11" in ok.stdout

    key_id = json.loads(export.read_bytes().splitlines()[0])["node_keys"][0]["key_id"]
    assert f"keys: {key_id} (pinned with --pubkey)" in ok.stdout
    # The file carries the key that signed it, but carrying proves nothing: only --pubkey pins.
    no_key = run_cli("audit", "verify", "--file", str(export), data_dir=offline, check=False)
    assert no_key.returncode == 1, no_key.stdout
    assert f"keys: {key_id} (carried, not pinned)" in no_key.stdout
    assert "nobody pinned; pin them with --pubkey" in no_key.stderr
    stranger = tmp_path / "stranger.pub.pem"
    await _write(tmp_path / "other", 1, suite=suite)
    stranger.write_text(run_cli("keys", "public", "--suite", suite, data_dir=tmp_path / "other").stdout)
    wrong = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(stranger), data_dir=offline, check=False)
    assert wrong.returncode == 1 and "(carried, not pinned)" in wrong.stdout and "nobody pinned" in wrong.stderr
    lines = export.read_bytes().splitlines()
    header = json.loads(lines[0])
    del header["node_keys"]  # a file that carries no key: the stranger's key is no help, nothing else is trusted
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(b"\n".join([orjson.dumps(header), *lines[1:]]) + b"\n")
    wrong = run_cli("audit", "verify", "--file", str(bare), "--pubkey", str(stranger), data_dir=offline, check=False)
    assert wrong.returncode == 1 and "height 1 is rehashed" in wrong.stderr
    no_key = run_cli("audit", "verify", "--file", str(bare), data_dir=offline, check=False)
    assert no_key.returncode == 2 and "--pubkey" in no_key.stderr

    lines = export.read_bytes().splitlines()
    records = [i for i, line in enumerate(lines) if b'"type":"record"' in line]
    changed = [*lines]
    item = orjson.loads(changed[records[4]])
    item["purpose"] = "CHANGED"
    changed[records[4]] = orjson.dumps(item)
    export.write_bytes(b"\n".join(changed) + b"\n")
    result = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(pubkey), data_dir=offline, check=False)
    assert result.returncode == 1 and "height 5 is changed" in result.stderr

    export.write_bytes(b"\n".join(line for i, line in enumerate(lines) if i != records[4]) + b"\n")
    result = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(pubkey), data_dir=offline, check=False)
    assert result.returncode == 1 and "height 5 is missing" in result.stderr

    export.write_bytes(b"\n".join(lines[: records[9]]) + b"\n")  # the tail after height 9 cut off
    result = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(pubkey), data_dir=offline, check=False)
    assert result.returncode == 1 and "height 10 is truncated" in result.stderr


async def test_an_export_of_a_later_range_is_sealed_by_the_next_checkpoint(tmp_path: Path) -> None:
    # A ticking clock: at the real one two fast appends can share a millisecond, and the range would take both.
    await _write(tmp_path, 10, every=4, clock_ms=int(time.time() * 1000))
    async with audit_store("sqlite", tmp_path) as store:
        stored = await rows(store)
    middle = datetime.fromtimestamp(stored[5]["ts_ms"] / 1000, UTC).isoformat(timespec="milliseconds")
    end = datetime.fromtimestamp((stored[6]["ts_ms"] + 1) / 1000, UTC).isoformat(timespec="milliseconds")
    export = tmp_path / "part.jsonl.gz"
    written = run_cli("audit", "export", "--from", middle, "--to", end, str(export), data_dir=tmp_path).stdout
    assert "heights 6–8" in written, "runs on to the checkpoint at 8"
    with gzip.open(export) as stream:
        header = json.loads(stream.readline())
    assert header["chains"][0]["from_height"] == 6
    pubkey = tmp_path / "keys" / "audit-signing.pub.pem"
    verified = run_cli("audit", "verify", "--file", str(export), "--pubkey", str(pubkey), data_dir=tmp_path)
    assert "3 records intact" in verified.stdout and "heights 6–8" in verified.stdout
    # The same start typed as a Beijing wall-clock time, without an offset, selects the same records.
    wall_clock = datetime.fromtimestamp(stored[5]["ts_ms"] / 1000, BEIJING).replace(tzinfo=None)
    naive = tmp_path / "naive.jsonl"
    same = run_cli(
        "audit",
        "export",
        "--from",
        wall_clock.isoformat(timespec="milliseconds"),
        "--to",
        end,
        str(naive),
        data_dir=tmp_path,
    )
    assert "heights 6–8" in same.stdout
    bad = run_cli("audit", "export", "--from", "2026-01-01 noon", "--to", end, "x", data_dir=tmp_path, check=False)
    assert bad.returncode == 2 and "Beijing time" in bad.stderr
    # A destination that cannot be written is one line, found before the export is written beside it.
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for target, says in [
        (tmp_path, f"cannot write {tmp_path}: it is a directory; give a file name"),
        (a_file / "x.jsonl", f"cannot write {a_file / 'x.jsonl'}: {a_file} is not a directory"),
    ]:
        refused = run_cli("audit", "export", "--from", middle, "--to", end, str(target), data_dir=tmp_path, check=False)
        assert refused.returncode == 2 and refused.stderr == f"error: {says}\n", refused.stderr
    assert not list(tmp_path.parent.glob("*.part")) and not list(tmp_path.glob("*.part"))


async def test_archives_are_hash_linked_verified_and_followed(tmp_path: Path) -> None:
    four_years_ago = int(time.time() * 1000) - 4 * YEAR_MS
    await _write(tmp_path, 6, every=3, clock_ms=four_years_ago)
    first = run_cli("audit", "archive", data_dir=tmp_path).stdout
    assert "archive 1 holds heights 1–6 (6 records)" in first
    await _write(tmp_path, 6, every=3, clock_ms=four_years_ago + 1_000_000)
    second = run_cli("audit", "archive", data_dir=tmp_path).stdout
    assert "archive 2 holds heights 7–12 (6 records)" in second
    await _write(tmp_path, 2, every=3)  # recent records stay in the database
    async with audit_store("sqlite", tmp_path) as store:
        assert [row["height"] for row in await rows(store)] == [13, 14]

    verified = run_cli("audit", "verify", data_dir=tmp_path).stdout
    assert "14 records intact, 2 archive(s)" in verified
    archives = sorted((tmp_path / "archive" / CHAIN).glob("*.jsonl.gz"))
    assert [path.name.split("-")[0] for path in archives] == ["000001", "000002"]
    with gzip.open(archives[1]) as stream:
        header = json.loads(stream.readline())
    from gateway.audit.files import file_digest

    assert header["prev_archive_digest"] == file_digest(archives[0]), "each archive names the one before it"
    pubkey = tmp_path / "keys" / "audit-signing.pub.pem"
    assert (
        "6 records intact"
        in run_cli("audit", "verify", "--file", str(archives[0]), "--pubkey", str(pubkey), data_dir=tmp_path).stdout
    )

    inside = run_cli("audit", "archive", "--before", _today(), data_dir=tmp_path, check=False)
    assert inside.returncode == 2 and "retention period" in inside.stderr

    skipped = run_cli("audit", "verify", "--skip-archives", data_dir=tmp_path).stdout
    assert "started from the signed checkpoint at height 12" in skipped

    original = archives[0].read_bytes()
    with gzip.open(archives[0]) as stream:
        lines = stream.read().splitlines()
    index = next(i for i, line in enumerate(lines) if b'"height":2,' in line and b'"type":"record"' in line)
    lines[index] = lines[index].replace(b'"XM-2025-001"', b'"XM-2025-002"')
    archives[0].write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    changed = run_cli("audit", "verify", data_dir=tmp_path, check=False)
    assert changed.returncode == 1 and "height 1 is changed" in changed.stderr and "differs" in changed.stderr
    archives[0].unlink()
    missing = run_cli("audit", "verify", data_dir=tmp_path, check=False)
    assert missing.returncode == 1 and "height 1 is missing" in missing.stderr
    archives[0].write_bytes(original)
    assert "intact" in run_cli("audit", "verify", data_dir=tmp_path).stdout
