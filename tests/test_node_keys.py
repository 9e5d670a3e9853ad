"""Node keys: nodes sharing one database verify each other's chains with no key file copied; pins, revocations,
forged checkpoints and pins; exports that carry their keys. On SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit.node_keys import list_node_keys, pin_node_key, revoke_node_key
from gateway.audit.signer import load_signer, node_trust, trusted_keys
from gateway.settings import load_settings
from gateway.storage import db
from security.audit_chain import record_hash
from security.checkpoints import sign_checkpoint, signer_key_id
from security.keys import generate_ed25519
from tests.helpers.audit import Store, audit_store, event, open_writer, tamper, verify
from tests.helpers.audit import rows as chain_rows
from tests.helpers.gateways import RunningGateway
from tests.helpers.processes import CLI

pytestmark = pytest.mark.slow


@asynccontextmanager
async def two_nodes(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two nodes (their own data dirs, so their own signing keys; node ids node-1 and node-2) on one database."""
    master = base64.b64encode(os.urandom(32)).decode()
    async with audit_store(backend, tmp_path / "node-1", master_key=master, node_id="node-1") as first:
        url = first.settings.database_url or f"sqlite:///{first.settings.data_dir / 'msjx.db'}"
        settings = load_settings(data_dir=tmp_path / "node-2", database_url=url, master_key=master, node_id="node-2")
        second = Store(settings, db.create_engine(settings), backend)
        try:
            yield first, second
        finally:
            await second.engine.dispose()


async def write(store: Store, chain: str, records: int, every: int = 3) -> None:
    writer = await open_writer(store, chain_id=chain, every=every)
    try:
        for index in range(records):
            await writer.append(event(index))
    finally:
        await writer.close()


def cli(*args: str, store: Store, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MSJX_DATA_DIR": str(store.settings.data_dir), "MSJX_NODE_ID": store.settings.node_id}
    env["MSJX_DATABASE_URL"] = store.settings.database_url or f"sqlite:///{store.settings.data_dir / 'msjx.db'}"
    env["MSJX_MASTER_KEY"] = store.settings.master_key.get_secret_value() if store.settings.master_key else ""
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}{result.stdout}")
    return result


def key_of(store: Store) -> str:
    return signer_key_id(load_signer(store.settings).public_key())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_each_node_verifies_both_chains_without_copied_keys(backend: str, tmp_path: Path) -> None:
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(one, "node-1", 7)
        await write(two, "node-2", 8)
        registered = {key.key_id: key for key in await list_node_keys(one.engine)}
        assert set(registered) == {key_of(one), key_of(two)}, "each node registered its key when it started"
        assert {key.chain_id for key in registered.values()} == {"node-1", "node-2"}
        assert all(key.status == "self-registered" and key.algorithm == "ed25519" for key in registered.values())

        # Before: only local key files were trusted, and the other node's chain looked rewritten.
        assert (await verify(one, trusted=trusted_keys(one.settings)))["node-2"].fault.kind == "rehashed"
        for me, other, other_chain in ((one, two, "node-2"), (two, one, "node-1")):
            trust = await node_trust(me.engine, me.settings)
            reports = await verify(me, trusted=trust)
            assert all(report.ok for report in reports.values()), [str(r.fault) for r in reports.values()]
            assert reports[other_chain].sealed_height == reports[other_chain].head_height > 0
            assert [(k.key_id, k.standing) for k in trust.used_by(other_chain)] == [(key_of(other), "self-registered")]
            assert [(k.key_id, k.standing) for k in trust.used_by(me.settings.node_id)] == [(key_of(me), "local")]

        # The same from the command line of either node, saying which keys were pinned and which were not.
        for me, other in ((one, two), (two, one)):
            out = cli("audit", "verify", store=me).stdout
            assert "chain node-1: 7 records intact" in out and "chain node-2: 8 records intact" in out
            assert f"keys: {key_of(other)} (self-registered, not pinned)" in out
            assert f"keys: {key_of(me)} (trusted key file)" in out
            strict = cli("audit", "verify", "--require-pinned", store=me, check=False)
            assert strict.returncode == 1 and f"FAILED chain {other.settings.node_id}" in strict.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_pin_and_revoke_from_the_command_line(backend: str, tmp_path: Path) -> None:
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(one, "node-1", 3)
        await write(two, "node-2", 6)
        listed = cli("keys", "nodes", "list", store=one).stdout
        assert f"node-2           {key_of(two)}" in listed and "self-registered" in listed

        pinned = cli("keys", "nodes", "pin", key_of(two), "--by", "ops-wang", store=one).stdout
        assert f"pinned {key_of(two)} (chain node-2, ed25519) by ops-wang; pin signed by {key_of(one)}" in pinned
        listed = cli("keys", "nodes", "list", store=one).stdout
        assert "pinned" in listed and "pinned by ops-wang" in listed
        out = cli("audit", "verify", "--require-pinned", store=one).stdout
        assert f"keys: {key_of(two)} (pinned)" in out
        # node-2 trusts no pin signed by node-1's key (only self-registered there), so node-1's own chain is still
        # "not pinned" from node-2's side until someone node-2 trusts pins it.
        out = cli("audit", "verify", store=two).stdout
        assert f"keys: {key_of(one)} (self-registered, not pinned)" in out
        cli("keys", "nodes", "pin", key_of(one), store=two)
        assert f"keys: {key_of(one)} (pinned)" in cli("audit", "verify", "--require-pinned", store=two).stdout

        unknown = cli("keys", "nodes", "pin", "ed25519:0000000000000000", store=one, check=False)
        assert unknown.returncode == 2 and "no node key 'ed25519:0000000000000000'" in unknown.stderr

        revoked = cli("keys", "nodes", "revoke", key_of(two), "--by", "sec-li", store=one).stdout
        assert "accepted through height 6" in revoked
        assert "revoked by sec-li" in cli("keys", "nodes", "list", store=one).stdout
        again = cli("keys", "nodes", "pin", key_of(two), store=one, check=False)
        assert again.returncode == 2 and "never pinned again" in again.stderr
        # Each pin, refusal and revocation is on the record of the CLI's own chain, which verifies like any other.
        on_record = [(row["event"], row["decision"], row["target_id"]) for row in await chain_rows(one, "cli-node-1")]
        assert on_record == [
            ("node_key.pin", "allowed", key_of(two)),
            ("node_key.pin", "refused", "ed25519:0000000000000000"),
            ("node_key.revoke", "allowed", key_of(two)),
            ("node_key.pin", "refused", key_of(two)),
        ]
        # What it signed before its revocation still verifies...
        out = cli("audit", "verify", store=one).stdout
        assert "chain node-2: 6 records intact" in out and "revoked by sec-li" in out
        # ...but a checkpoint it signs afterwards does not, whatever time it claims.
        await write(two, "node-2", 3)
        failed = cli("audit", "verify", store=one, check=False)
        assert failed.returncode == 1
        assert "chain node-2: height 7 is rehashed" in failed.stderr and "revoked by sec-li" in failed.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_forged_checkpoints_and_pins_fail(backend: str, tmp_path: Path) -> None:
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(one, "node-1", 6)
        await write(two, "node-2", 6)
        trust = await node_trust(one.engine, one.settings)
        assert all(report.ok for report in (await verify(one, trusted=trust)).values())

        # Someone who can write the database rewrites node-2's record 5 and re-signs the head with a key of their own.
        forger = generate_ed25519()
        await tamper(two, ("UPDATE audit_records SET purpose = 'FORGED' WHERE chain_id = 'node-2' AND height = 5", {}))
        rows = {r["height"]: r for r in await chain_rows(two, "node-2")}

        head = rows[4]["record_hash"]
        for height in (5, 6):
            rows[height]["prev_hash"] = head
            head = record_hash(head, rows[height])
            await tamper(
                two,
                (
                    "UPDATE audit_records SET prev_hash = :p, record_hash = :h"
                    " WHERE chain_id = 'node-2' AND height = :n",
                    {"p": rows[height]["prev_hash"], "h": head, "n": height},
                ),
            )
        forged = sign_checkpoint(forger, "node-2", 6, head, 1)
        await tamper(
            two,
            ("DELETE FROM audit_checkpoints WHERE chain_id = 'node-2' AND height = 6", {}),
            (
                "INSERT INTO audit_checkpoints (chain_id, height, head_hash, ts_ms, key_id, signature)"
                " VALUES (:c, :h, :x, :t, :k, :s)",
                {"c": "node-2", "h": 6, "x": head, "t": 1, "k": forged.key_id, "s": forged.signature},
            ),
        )
        trust = await node_trust(one.engine, one.settings)
        fault = (await verify(one, trusted=trust))["node-2"].fault
        assert fault is not None and fault.kind == "rehashed" and "not a trusted key" in fault.detail

        # A key registered for node-1 does not vouch for node-2's chain.
        own = sign_checkpoint(load_signer(one.settings), "node-2", 6, head, 1)
        await tamper(
            two,
            ("DELETE FROM audit_checkpoints WHERE chain_id = 'node-2' AND height = 6", {}),
            (
                "INSERT INTO audit_checkpoints (chain_id, height, head_hash, ts_ms, key_id, signature)"
                " VALUES (:c, :h, :x, :t, :k, :s)",
                {"c": "node-2", "h": 6, "x": head, "t": 1, "k": own.key_id, "s": own.signature},
            ),
        )
        fault = (await verify(two, trusted=await node_trust(two.engine, two.settings)))["node-2"].fault
        assert fault is not None and "registered for chain node-1, not for node-2" in fault.detail

        # A pin written straight into the database, without a signature by a trusted key, counts for nothing.
        await tamper(one, ("UPDATE audit_signers SET status = 'pinned', pinned_by = 'mallory'", {}))
        trust = await node_trust(one.engine, one.settings)
        assert trust.standing(key_of(two)).standing == "self-registered"
        # A real pin, signed by node-1, counts for a verifier that trusts node-1's key only by its file (--pubkey).
        await pin_node_key(one.engine, key_of(two), "ops-wang", load_signer(one.settings))
        officer = tmp_path / "node-1.pub.pem"
        officer.write_text((one.settings.keys_dir / "audit-signing.pub.pem").read_text())
        trust = await node_trust(one.engine, None, [officer])
        assert trust.standing(key_of(two)).standing == "pinned"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_revocation_keeps_its_anchor(backend: str, tmp_path: Path) -> None:
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(two, "node-2", 9)
        key = await revoke_node_key(one.engine, key_of(two), "sec-li")
        assert (key.revoked_height, key.status) == (9, "revoked")
        assert (await verify(one, trusted=await node_trust(one.engine, one.settings)))["node-2"].ok
        # Removing the checkpoint recorded at the revocation would let the key's thief rewrite what lies below it.
        await tamper(two, ("DELETE FROM audit_checkpoints WHERE chain_id = 'node-2' AND height = 9", {}))
        fault = (await verify(one, trusted=await node_trust(one.engine, one.settings)))["node-2"].fault
        assert fault is not None and fault.kind == "rehashed" and "recorded when that key was revoked" in fault.detail


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_export_of_two_chains_carries_its_keys(backend: str, tmp_path: Path) -> None:
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(one, "node-1", 4, every=2)
        await write(two, "node-2", 4, every=2)
        export = tmp_path / "export.jsonl"
        tomorrow = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d")  # a Beijing date after now
        exported = cli("audit", "export", "--from", "2000-01-01", "--to", tomorrow, str(export), store=one).stdout
        assert "chain node-2: 4 records" in exported, exported
        carried = json.loads(export.read_bytes().splitlines()[0])["node_keys"]
        assert {(k["chain_id"], k["key_id"], k["algorithm"]) for k in carried} == {
            ("node-1", key_of(one), "ed25519"),
            ("node-2", key_of(two), "ed25519"),
        }
        pub_one, pub_two = tmp_path / "one.pem", tmp_path / "two.pem"
        pub_one.write_text((one.settings.keys_dir / "audit-signing.pub.pem").read_text())
        pub_two.write_text((two.settings.keys_dir / "audit-signing.pub.pem").read_text())
        offline = Store(load_settings(data_dir=tmp_path / "officer"), one.engine, backend)

        def offline_verify(*keys: Path) -> subprocess.CompletedProcess[str]:
            args = [CLI, "audit", "verify", "--file", str(export)]
            for key in keys:
                args += ["--pubkey", str(key)]
            env = {**os.environ, "MSJX_DATA_DIR": str(offline.settings.data_dir)}
            env.pop("MSJX_DATABASE_URL", None)
            return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)

        both = offline_verify(pub_one, pub_two)
        assert both.returncode == 0, both.stderr
        assert f"keys: {key_of(one)} (pinned with --pubkey)" in both.stdout
        assert f"keys: {key_of(two)} (pinned with --pubkey)" in both.stdout
        half = offline_verify(pub_one)
        assert half.returncode == 1
        assert f"keys: {key_of(two)} (carried, not pinned)" in half.stdout and "FAILED chain node-2" in half.stderr
        assert "FAILED chain node-1" not in half.stderr
        none = offline_verify()
        assert none.returncode == 1 and none.stdout.count("(carried, not pinned)") == 2


async def test_api_verify_names_each_chains_keys(gateway: RunningGateway, tmp_path: Path) -> None:
    """A second node on the gateway's database: the API verifies its chain too, and says the key is self-registered."""
    settings = gateway.settings
    url = settings.database_url or f"sqlite:///{settings.data_dir / 'msjx.db'}"
    master: dict[str, object] = {"master_key_file": settings.keys_dir / "master.key"}
    if settings.master_key is not None:
        master = {"master_key": settings.master_key.get_secret_value()}
    second = load_settings(data_dir=tmp_path / "node-2", database_url=url, node_id="node-2", **master)
    store = Store(second, db.create_engine(second), "sqlite" if settings.is_sqlite else "postgres")
    try:
        await write(store, "node-2", 4)
    finally:
        await store.engine.dispose()
    async with gateway.client(gateway.officer) as client:
        assert (await client.get("/v1/audit/verify")).status_code == 200  # audited: the gateway's chain has a record
        await gateway.runtime.audit.checkpoint()
        answer = await client.get("/v1/audit/verify")
    assert answer.status_code == 200, answer.text
    chains = {chain["chain_id"]: chain for chain in answer.json()["chains"]}
    assert answer.json()["ok"] is True, chains
    node_two = chains["node-2"]
    assert node_two["records"] == 4 and node_two["sealed_height"] == 4
    assert node_two["keys"] == [
        {"key_id": key_of(store), "standing": "self-registered", "revoked": None, "accepted_through": None}
    ]
    assert chains[settings.node_id]["keys"][0]["standing"] == "local"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_sm2_node_key_is_registered_and_trusted(backend: str, tmp_path: Path) -> None:
    """Node 2 runs the 国密 suite and signs its checkpoints with SM2: its key is registered as sm2 and node 1 verifies
    its chain with it, then pins it (a pin signed with node 1's Ed25519 key)."""
    async with two_nodes(backend, tmp_path) as (one, two):
        await write(one, "node-1", 3)
        writer = await open_writer(two, "sm", chain_id="node-2", every=3)
        try:
            for index in range(6):
                await writer.append(event(index))
        finally:
            await writer.close()
        sm2_key = signer_key_id(load_signer(two.with_suite("sm")).public_key())
        registered = {key.key_id: key for key in await list_node_keys(one.engine)}
        assert sm2_key.startswith("sm2:") and registered[sm2_key].algorithm == "sm2"
        assert registered[sm2_key].chain_id == "node-2"
        out = cli("audit", "verify", store=one).stdout
        assert "chain node-2: 6 records intact" in out and f"keys: {sm2_key} (self-registered, not pinned)" in out
        cli("keys", "nodes", "pin", sm2_key, store=one)
        assert f"keys: {sm2_key} (pinned)" in cli("audit", "verify", "--require-pinned", store=one).stdout


def test_a_node_key_signs_its_own_chain_and_its_command_lines_chain_only() -> None:
    from security.key_trust import signs_for

    assert signs_for("node-1", "node-1") and signs_for("node-1", "cli-node-1")
    assert not signs_for("node-1", "node-2")
    assert not signs_for("node-1", "cli-node-2")
    assert not signs_for("cli-node-1", "node-1")
