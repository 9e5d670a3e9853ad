"""The scan behind `audit verify` on PostgreSQL: it reads every column the hash covers, cuts the table into slices that
cover every block once, stitches runs only where heights and hashes link, and agrees with the walk in height order
when its slices are read by several processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import scan
from gateway.audit import verify as verify_module
from gateway.audit.scan import MAIN_COLUMNS, Run, split, stitch
from gateway.audit.verify import verify_chain_db
from gateway.storage.models import AUDIT_COLUMNS
from security.audit_chain import GENESIS_HASH, HASH_FIELD, OPTIONAL_FIELDS, ChainReport, record_hash
from tests.helpers.audit import (
    Store,
    audit_store,
    event,
    open_writer,
    rewrite_in_height_order,
    rows,
    tamper,
    verify,
)

CHAINS = ("node-1", "node-2")


def test_the_scan_reads_every_column_of_a_record() -> None:
    read = [*MAIN_COLUMNS, HASH_FIELD, *OPTIONAL_FIELDS]
    assert sorted(read) == sorted(AUDIT_COLUMNS)
    assert list(MAIN_COLUMNS) == sorted(MAIN_COLUMNS), "the canonical bytes are built from the columns in this order"


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8])
def test_slices_cover_every_block_once_in_order(parts: int) -> None:
    sizes = [("audit_records_2024_01", 7), ("audit_records_2024_02", 0), ("audit_records_2024_03", 13), ("x", 1)]
    slices = split([size for size in sizes if size[1]], parts)
    assert 1 <= len(slices) <= parts
    covered = [
        (unit.relation, block)
        for units in slices
        for unit in units
        for block in range(unit.first_block, unit.end_block)
    ]
    assert covered == [(name, block) for name, blocks in sizes for block in range(blocks)]
    assert all(unit.first_block < unit.end_block for units in slices for unit in units)
    if parts <= 21:
        assert max(sum(u.end_block - u.first_block for u in units) for units in slices) <= -(-21 // parts)


def _runs(*spans: tuple[int, int]) -> list[Run]:
    """Runs over the heights of each span, with hashes named after their heights ("h5"), linked as a chain would."""

    def name(height: int) -> str:
        return GENESIS_HASH if height == 0 else f"h{height}"

    return [Run(low, name(low - 1), high, name(high), {high: name(high)}) for low, high in spans]


def test_runs_stitch_only_into_one_unbroken_linked_chain() -> None:
    proof = stitch(_runs((4, 9), (1, 3), (10, 10)), 1, GENESIS_HASH)
    assert proof is not None
    assert (proof.count, proof.head_height, proof.head_hash) == (10, 10, "h10")
    assert dict(proof.heads) == {3: "h3", 9: "h9", 10: "h10"}
    assert stitch([], 1, GENESIS_HASH) == scan.Proof(0, 0, GENESIS_HASH, {})
    assert stitch(_runs((1, 3), (5, 9)), 1, GENESIS_HASH) is None, "a gap: height 4 is missing"
    assert stitch(_runs((1, 5), (5, 9)), 1, GENESIS_HASH) is None, "two rows at height 5"
    assert stitch(_runs((1, 5), (3, 9)), 1, GENESIS_HASH) is None, "overlapping runs"
    assert stitch(_runs((2, 9)), 1, GENESIS_HASH) is None, "the first height is missing"
    unlinked = _runs((1, 3), (4, 9))
    unlinked[1].first_prev = "h3-forged"
    assert stitch(unlinked, 1, GENESIS_HASH) is None, "a run that does not name the hash the one before ended on"
    assert stitch(_runs((6, 9)), 6, "h5") is not None, "after an archive: from its head"
    assert stitch(_runs((6, 9)), 6, "h5-other") is None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with audit_store("postgres", tmp_path) as opened:
        yield opened


async def _write_two_chains(store: Store, records: int) -> None:
    """Two chains written side by side, concurrent appends in group commits, a checkpoint every 50 records."""
    writers = [await open_writer(store, every=50, chain_id=chain, witness=None) for chain in CHAINS]
    try:
        await asyncio.gather(*(writer.append(event(index)) for index in range(records) for writer in writers))
    finally:
        for writer in writers:
            await writer.close()


async def _in_order(store: Store) -> dict[str, ChainReport]:
    return {chain: await verify_chain_db(store.engine, chain, trusted=None) for chain in CHAINS}


class _Counted:
    """Counts the worker processes started and the chains walked in height order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.workers, self.walked = 0, []
        start, walk = scan._start_worker, verify_module.walk_in_order

        async def counted_start(*args: Any) -> Any:
            self.workers += 1
            return await start(*args)

        async def counted_walk(engine: Any, plan: Any, **kwargs: Any) -> ChainReport:
            self.walked.append(plan.chain_id)
            return await walk(engine, plan, **kwargs)

        monkeypatch.setattr(scan, "_start_worker", counted_start)
        monkeypatch.setattr(verify_module, "walk_in_order", counted_walk)


async def test_slices_read_by_several_processes_prove_what_the_walk_in_height_order_proves(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write_two_chains(store, 300)
    counted = _Counted(monkeypatch)
    reports = await verify(store, workers=3, blocks_per_worker=1, trusted=None)
    assert counted.workers == 2, "the slices after the first go to worker processes"
    assert counted.walked == []
    expected = await _in_order(store)
    for chain in CHAINS:
        assert reports[chain].ok, str(reports[chain].fault)
        assert reports[chain] == expected[chain]
        assert (reports[chain].records, reports[chain].sealed_height) == (300, 300)


async def test_a_forged_record_in_a_worker_slice_leaves_the_chain_to_the_walk(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write_two_chains(store, 300)
    forged = next(row for row in await rows(store, "node-2") if row["height"] == 280)
    forged["purpose"] = "FORGED"
    await tamper(
        store,
        (
            "UPDATE audit_records SET purpose = :u, record_hash = :r WHERE chain_id = 'node-2' AND height = 280",
            {"u": "FORGED", "r": record_hash(forged["prev_hash"], forged)},
        ),
    )
    await rewrite_in_height_order(store)  # node-2's rows last: height 280 is in the last worker's slice
    counted = _Counted(monkeypatch)
    reports = await verify(store, workers=3, blocks_per_worker=1, trusted=None)
    assert counted.workers == 2
    assert counted.walked == ["node-2"], "node-1 is proven by the scan; node-2 only by the walk"
    assert reports["node-1"].ok
    fault = reports["node-2"].fault
    assert fault is not None
    assert (fault.height, fault.kind) == (280, "changed")
    assert reports["node-2"] == (await _in_order(store))["node-2"]


async def test_a_second_row_at_a_height_filed_in_a_later_month_is_not_missed(store: Store) -> None:
    # Rows are read from every partition, the months made ahead included: a copy of a record filed two months on
    # is read, and a second row at a height makes the chain fail.
    await _write_two_chains(store, 20)
    copy = next(row for row in await rows(store, "node-1") if row["height"] == 7)
    copy.update(record_id="e" * 32, ts_ms=copy["ts_ms"] + 60 * 86_400_000)  # two months on: a partition made ahead
    columns = ", ".join(copy)
    await tamper(store, (f"INSERT INTO audit_records ({columns}) VALUES ({', '.join(':' + c for c in copy)})", copy))
    reports = await verify(store, trusted=None)
    assert reports["node-2"].ok
    fault = reports["node-1"].fault
    assert fault is not None and fault.kind == "inserted", str(fault)


async def test_a_worker_that_fails_leaves_its_slice_to_the_main_process(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await _write_two_chains(store, 100)
    # Workers given a port nobody listens on: they exit with an error, and the main process reads their slices.
    monkeypatch.setattr(scan, "_connect_args", lambda engine: {"host": "127.0.0.1", "port": 9, "timeout": 5})
    counted = _Counted(monkeypatch)
    reports = await verify(store, workers=2, blocks_per_worker=1, trusted=None)
    assert counted.workers == 1 and counted.walked == []
    assert all(reports[chain].ok and reports[chain].records == 100 for chain in CHAINS)
    assert "read in the main process" in caplog.text


async def test_a_table_the_scan_did_not_read_cannot_cut_a_chain_unseen(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were a table of rows ever left out of the scan (the newest month here), the chains would still stitch, only
    # shorter: the highest height the database holds for each chain refuses that. Without checkpoints (deleted
    # here), nothing else would.
    await _write_two_chains(store, 20)
    await tamper(store, ("DELETE FROM audit_checkpoints", {}))
    tables = scan._tables

    async def all_but_the_newest(connection: Any) -> list[tuple[str, int]]:
        found = await tables(connection)
        newest = await connection.fetchval(
            "SELECT tableoid::regclass::text FROM audit_records ORDER BY ts_ms DESC LIMIT 1"
        )
        assert any(name == newest for name, _ in found)
        return [(name, blocks) for name, blocks in found if name != newest]

    monkeypatch.setattr(scan, "_tables", all_but_the_newest)
    counted = _Counted(monkeypatch)
    reports = await verify(store, trusted=None)
    assert sorted(counted.walked) == list(CHAINS), "both chains' tails were in the table left out"
    assert all(reports[chain].ok and reports[chain].records == 20 for chain in CHAINS)


async def test_the_scan_serializes_escaped_text_and_officer_fields_as_the_writer_did(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan builds each row's canonical bytes with msgspec, the writer with orjson: text that JSON must escape
    # (quotes, backslashes, control characters, non-ASCII) and the optional officer columns, filled in or left out,
    # must give the same bytes, or an intact chain would be walked again in height order.
    awkward = 'say "hi" \\ back\tslash\n\x01\x1f\x7f 信用 \u2028 😀'
    writer = await open_writer(store, every=5, chain_id="node-1", witness=None)
    try:
        for index in range(12):
            officer = index % 3 == 0
            await writer.append(
                event(
                    index,
                    path=f"/v1/{awkward}/{index}",
                    purpose=awkward,
                    upstream_status=None,
                    target_id=f"rec-{index}" if officer else None,
                    reason=awkward if officer else None,
                    reason_category="inspection" if index % 6 == 0 else None,
                )
            )
    finally:
        await writer.close()
    counted = _Counted(monkeypatch)
    reports = await verify(store, trusted=None)
    assert counted.walked == [], "the scan proves the chain itself"
    assert reports["node-1"].ok and reports["node-1"].records == 12
    # Changing one escaped character of an officer's reason is still found, at its height.
    await tamper(
        store,
        ("UPDATE audit_records SET reason = replace(reason, '\"hi\"', '\"ho\"') WHERE height = 7", {}),
    )
    counted = _Counted(monkeypatch)
    reports = await verify(store, trusted=None)
    assert counted.walked == ["node-1"]
    fault = reports["node-1"].fault
    assert fault is not None and (fault.height, fault.kind) == (7, "changed"), str(fault)


async def test_processes_take_slices_as_they_finish_and_prove_what_the_walk_proves(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of one block each: the main process and its worker take many each, one after another, in turns that
    # depend on their speed; every block must still be read exactly once.
    await _write_two_chains(store, 300)
    monkeypatch.setattr(scan, "SLICE_BLOCKS", 1)
    handed: list[int] = []
    drive = scan._Helper.drive

    async def counted_drive(self: Any, slices: Any) -> None:
        try:
            await drive(self, slices)
        finally:
            handed.append(len(self.taken))

    monkeypatch.setattr(scan._Helper, "drive", counted_drive)
    counted = _Counted(monkeypatch)
    reports = await verify(store, workers=2, blocks_per_worker=1, trusted=None)
    assert counted.workers == 1 and counted.walked == []
    assert handed and handed[0] > 1, "the worker was handed more than one slice"
    expected = await _in_order(store)
    for chain in CHAINS:
        assert reports[chain] == expected[chain] and reports[chain].records == 300
