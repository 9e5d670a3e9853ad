"""Tampering with the audit log in the database, each fault named with its height and kind: both suites, both databases.

The attacker here can write SQL as the table owner (on PostgreSQL it first disables the append-only trigger,
as an owner or superuser can) but does not hold the node's checkpoint signing key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError

from gateway.audit.rows import AUDIT_TABLE
from gateway.storage.models import AUDIT_COLUMNS
from security.audit_chain import OPTIONAL_FIELDS, record_hash
from security.checkpoints import sign_checkpoint
from security.keys import generate_ed25519
from tests.helpers.audit import CHAIN, Store, audit_store, fault_of, rows, tamper, verify, write_chain

SUITES = ["standard", "sm"]


@pytest.fixture(params=["sqlite", "postgres", "postgres-in-height-order"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    # The last: rows rewritten in height order before each verification, so the scan of `audit verify` on
    # PostgreSQL meets every tampered row where it belongs and must refuse the chain itself (tests/helpers/audit.py).
    async with audit_store(request.param.split("-")[0], tmp_path) as opened:
        opened.in_storage_order = request.param.endswith("in-height-order")
        yield opened


def _changed(value: Any, python_type: type) -> Any:
    """The same value with one byte (or one unit) changed; a value where there was none."""
    if value is None:
        return 1 if python_type is int else "x"
    if isinstance(value, bytes):
        return bytes([value[0] ^ 0x01]) + value[1:]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1000
    return chr(ord(value[0]) ^ 0x01) + value[1:]


@pytest.mark.parametrize("suite", SUITES)
async def test_intact_chain_verifies_with_signed_checkpoints(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    report = (await verify(store))[CHAIN]
    assert report.ok, str(report.fault)
    assert (report.records, report.head_height, report.sealed_height) == (12, 12, 12)
    assert report.signatures_checked
    assert {row["suite"] for row in await rows(store)} == {suite}


@pytest.mark.parametrize("suite", SUITES)
async def test_a_changed_byte_in_any_column_is_named(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    original = next(row for row in await rows(store) if row["height"] == 5)
    for name in OPTIONAL_FIELDS:  # read back without the empty ones; filling one in must be noticed too
        original.setdefault(name, None)
    for column in AUDIT_COLUMNS:
        python_type = AUDIT_TABLE.c[column].type.python_type
        value = _changed(original[column], python_type)
        await tamper(
            store,
            (f"UPDATE audit_records SET {column} = :v WHERE chain_id = :c AND height = 5", {"v": value, "c": CHAIN}),
        )
        assert await fault_of(store) == (5, "changed"), f"a change of {column} went unnoticed or misnamed"
        chain = value if column == "chain_id" else CHAIN
        height = value if column == "height" else 5
        await tamper(
            store,
            (
                f"UPDATE audit_records SET {column} = :v WHERE chain_id = :c AND height = :h",
                {"v": original[column], "c": chain, "h": height},
            ),
        )
        assert await fault_of(store) is None, f"restoring {column} did not restore the chain"


@pytest.mark.parametrize("suite", SUITES)
async def test_a_record_changed_with_its_hash_recomputed_is_named_by_the_next_link(store: Store, suite: str) -> None:
    # Anyone can compute a record's hash (there is no secret in it): the forged record verifies by itself and links
    # to the one before; only the next record, which still names the original hash, gives it away.
    await write_chain(store, suite)
    forged = next(row for row in await rows(store) if row["height"] == 5)
    forged["purpose"] = "FORGED"
    await tamper(
        store,
        (
            "UPDATE audit_records SET purpose = :u, record_hash = :r WHERE chain_id = :c AND height = 5",
            {"u": "FORGED", "r": record_hash(forged["prev_hash"], forged), "c": CHAIN},
        ),
    )
    assert await fault_of(store) == (5, "changed")


@pytest.mark.parametrize("suite", SUITES)
async def test_a_deleted_record_is_missing(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    await tamper(store, ("DELETE FROM audit_records WHERE chain_id = :c AND height = 5", {"c": CHAIN}))
    assert await fault_of(store) == (5, "missing")


@pytest.mark.parametrize("suite", SUITES)
async def test_two_swapped_records_are_reordered(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    swap = "UPDATE audit_records SET height = :to WHERE chain_id = :c AND height = :h"
    await tamper(
        store,
        (swap, {"to": -1, "h": 4, "c": CHAIN}),
        (swap, {"to": 4, "h": 7, "c": CHAIN}),
        (swap, {"to": 7, "h": -1, "c": CHAIN}),
    )
    assert await fault_of(store) == (4, "reordered")


@pytest.mark.parametrize("suite", SUITES)
async def test_two_swapped_neighbours_are_reordered(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    swap = "UPDATE audit_records SET height = :to WHERE chain_id = :c AND height = :h"
    await tamper(
        store,
        (swap, {"to": -1, "h": 8, "c": CHAIN}),
        (swap, {"to": 8, "h": 9, "c": CHAIN}),
        (swap, {"to": 9, "h": -1, "c": CHAIN}),
    )
    assert await fault_of(store) == (8, "reordered")


@pytest.mark.parametrize("suite", SUITES)
async def test_an_inserted_record_is_named_even_when_its_hash_is_right(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    before = next(row for row in await rows(store) if row["height"] == 4)
    forged = {**before, "record_id": "f" * 32, "height": 5, "purpose": "FORGED", "prev_hash": before["record_hash"]}
    forged["record_hash"] = record_hash(forged["prev_hash"], forged)
    shift = "UPDATE audit_records SET height = {} WHERE chain_id = :c AND height {}"
    await tamper(
        store,
        (shift.format("-height", ">= 5"), {"c": CHAIN}),
        (shift.format("1 - height", "< 0"), {"c": CHAIN}),
    )
    async with store.engine.begin() as connection:
        await connection.execute(insert(AUDIT_TABLE).values(**forged))
    assert await fault_of(store) == (5, "inserted")


@pytest.mark.parametrize("suite", SUITES)
async def test_a_tail_cut_behind_a_checkpoint_is_truncated(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    await tamper(store, ("DELETE FROM audit_records WHERE chain_id = :c AND height >= 8", {"c": CHAIN}))
    assert await fault_of(store) == (8, "truncated")


@pytest.mark.parametrize("suite", SUITES)
async def test_a_tail_cut_with_its_checkpoints_is_caught_by_the_witness_file(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    await tamper(
        store,
        ("DELETE FROM audit_records WHERE chain_id = :c AND height >= 8", {"c": CHAIN}),
        ("DELETE FROM audit_checkpoints WHERE chain_id = :c AND height >= 8", {"c": CHAIN}),
    )
    assert await fault_of(store) == (8, "truncated")
    assert await fault_of(store, witness_dir=None) is None, "without the witness file the cut is invisible"


async def _rehash(store: Store, from_height: int) -> None:
    chain = await rows(store)
    prev = chain[from_height - 2]["record_hash"] if from_height > 1 else "0" * 64
    statements = []
    for row in chain[from_height - 1 :]:
        row["prev_hash"] = prev
        row["record_hash"] = prev = record_hash(prev, row)
        statements.append(
            (
                "UPDATE audit_records SET prev_hash = :p, record_hash = :r, purpose = :u"
                " WHERE chain_id = :c AND height = :h",
                {"p": row["prev_hash"], "r": row["record_hash"], "u": row["purpose"], "c": CHAIN, "h": row["height"]},
            )
        )
    await tamper(store, *statements)


@pytest.mark.parametrize("suite", SUITES)
async def test_a_chain_rehashed_and_resigned_with_a_wrong_key_is_rehashed(store: Store, suite: str) -> None:
    await write_chain(store, suite)
    chain = await rows(store)
    chain[1]["purpose"] = "REWRITTEN"
    await tamper(
        store, ("UPDATE audit_records SET purpose = 'REWRITTEN' WHERE chain_id = :c AND height = 2", {"c": CHAIN})
    )
    await _rehash(store, 2)
    rewritten = await rows(store)
    wrong_key = generate_ed25519()
    forged = [sign_checkpoint(wrong_key, CHAIN, h, rewritten[h - 1]["record_hash"], 0) for h in (3, 6, 9, 12)]
    await tamper(
        store,
        ("DELETE FROM audit_checkpoints WHERE chain_id = :c", {"c": CHAIN}),
        *[
            (
                "INSERT INTO audit_checkpoints (chain_id, height, head_hash, ts_ms, key_id, signature)"
                " VALUES (:chain_id, :height, :head_hash, :ts_ms, :key_id, :signature)",
                cp.to_dict(),
            )
            for cp in forged
        ],
    )
    untrusting = await fault_of(store, trusted=None, witness_dir=None)
    assert untrusting is None, "without a trusted key a re-signed chain looks intact: that is why keys are pinned"
    assert await fault_of(store) == (1, "rehashed")
    assert await fault_of(store, witness_dir=None) == (1, "rehashed")


@pytest.mark.parametrize("suite", SUITES)
async def test_a_rehashed_tail_under_genuine_checkpoints_is_rehashed_after_the_last_good_one(
    store: Store, suite: str
) -> None:
    await write_chain(store, suite)
    await tamper(
        store, ("UPDATE audit_records SET purpose = 'REWRITTEN' WHERE chain_id = :c AND height = 8", {"c": CHAIN})
    )
    await _rehash(store, 8)
    report = (await verify(store))[CHAIN]
    assert report.fault is not None
    assert (report.fault.height, report.fault.kind) == (7, "rehashed")
    assert "between heights 7 and 9" in report.fault.detail


async def test_postgres_refuses_changes_to_audit_rows(tmp_path: Path) -> None:
    async with audit_store("postgres", tmp_path) as store:
        await write_chain(store, records=3)
        for sql in (
            "UPDATE audit_records SET purpose = 'x' WHERE height = 1",
            "DELETE FROM audit_records WHERE height = 1",
            "TRUNCATE audit_records",
            "UPDATE audit_checkpoints SET head_hash = 'x'",
            "DELETE FROM audit_checkpoints",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with store.engine.begin() as connection:
                    await connection.execute(text(sql))
        # Rows leave PostgreSQL only with their whole month (a partition dropped): not even the archiver deletes one,
        # nor TRUNCATEs a month's partition by its name.
        for sql in (
            "DELETE FROM audit_records WHERE height = 1",
            "UPDATE audit_records SET purpose = 'x' WHERE height = 2",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with store.engine.begin() as connection:
                    await connection.execute(text("SET LOCAL msjx.audit_archiver = 'on'"))
                    await connection.execute(text(sql))
        async with store.engine.connect() as connection:
            month = (
                await connection.execute(text("SELECT tableoid::regclass::text FROM audit_records LIMIT 1"))
            ).scalar()
        with pytest.raises(DBAPIError, match="append-only"):
            async with store.engine.begin() as connection:
                await connection.execute(text(f"TRUNCATE {month}"))
