"""The crypto underneath the audit log: both suites, the key ring, signed checkpoints, the canonical record format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from security.audit_chain import GENESIS_HASH, canonical_bytes, record_hash, verify_chain
from security.checkpoints import TrustedKeys, sign_checkpoint, signer_key_id
from security.crypto import (
    SM3_ABC,
    DataKey,
    DecryptionError,
    NonceSequence,
    SmSuite,
    SuiteUnavailable,
    get_suite,
    open_sealed,
    seal,
    sm_self_test,
)
from security.keyring import KeyRing, KeyRingError, PayloadShredded, StoredKey, load_master_key, parse_master_key
from security.keys import generate_ed25519
from tests.helpers.audit import audit_store


def test_sm_suite_passes_its_known_answer_tests_here() -> None:
    sm_self_test()  # RFC 8998 SM4-GCM vector and GB/T 32905 SM3 vector, on this machine's OpenSSL
    assert get_suite("sm").digest(b"abc") == SM3_ABC


def test_sm3_without_hashlib_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with_hashlib = SmSuite()
    without = SmSuite()
    without._hashlib_sm3 = False  # a Python whose own OpenSSL has no SM3
    data = os.urandom(1000)
    assert without.digest(data) == with_hashlib.digest(data)
    assert without.keyed_hash(b"k" * 32, "91110000600037341L") == with_hashlib.keyed_hash(
        b"k" * 32, "91110000600037341L"
    )
    mac = crypto_hmac.HMAC(b"k" * 32, hashes.SM3())
    mac.update(b"91110000600037341L")
    assert with_hashlib.keyed_hash(b"k" * 32, "91110000600037341L") == mac.finalize().hex()


@pytest.mark.parametrize("key_size", [16, 32, 64, 65, 200])  # shorter than, as long as and longer than a block
def test_keyed_hash_is_hmac_of_the_suites_hash(key_size: int) -> None:
    key = os.urandom(key_size)
    for value in (b"", "91110000600037341L", os.urandom(1000)):
        message = value.encode() if isinstance(value, str) else value
        assert get_suite("standard").keyed_hash(key, value) == hmac.new(key, message, "sha256").hexdigest()
        mac = crypto_hmac.HMAC(key, hashes.SM3())
        mac.update(message)
        assert get_suite("sm").keyed_hash(key, value) == mac.finalize().hex()


def test_unknown_suite_is_refused_by_name() -> None:
    with pytest.raises(SuiteUnavailable, match="unknown crypto suite 'aes'"):
        get_suite("aes")


@pytest.mark.parametrize("suite", ["standard", "sm"])
def test_sealing_binds_key_and_record(suite: str) -> None:
    chosen = get_suite(suite)
    key = DataKey("dk-test", os.urandom(chosen.key_size), suite)
    sealed = seal(key, b'{"uscc":"91110000600037341L"}', b"node-1/r1/request")
    assert b"91110000600037341L" not in sealed
    assert open_sealed(key, sealed, b"node-1/r1/request") == b'{"uscc":"91110000600037341L"}'
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    other = DataKey("dk-other", os.urandom(chosen.key_size), suite)
    for attempt in (
        lambda: open_sealed(key, sealed, b"node-1/r2/request"),  # moved to another record
        lambda: open_sealed(key, flipped, b"node-1/r1/request"),
        lambda: open_sealed(other, sealed, b"node-1/r1/request"),
    ):
        with pytest.raises(DecryptionError):
            attempt()
    assert "secret" not in repr(key) and key.secret.hex() not in repr(key)


def test_data_key_size_follows_the_suite() -> None:
    with pytest.raises(ValueError, match="sm data key is 16 bytes"):
        DataKey("dk", os.urandom(32), "sm")


def test_nonce_sequence_never_repeats_and_redraws_before_wrapping() -> None:
    sequence = NonceSequence()
    nonces = {sequence.next() for _ in range(10_000)}
    assert len(nonces) == 10_000 and all(len(nonce) == 12 for nonce in nonces)
    sequence._counter = (1 << 32) - 1
    fixed = sequence._fixed
    assert sequence.next()[:8] != fixed


def test_record_format_is_stable() -> None:
    """A fixed record hashes to a fixed value under each suite; a change here breaks every stored chain."""
    record = {
        "chain_id": "node-1",
        "height": 1,
        "record_id": "a" * 32,
        "ts_ms": 1700000000000,
        "event": "service.invoke",
        "caller_id": "platform",
        "department": "市数据管理局",
        "decision": "allowed",
        "status_code": 200,
        "request_payload": b"\x00\x01\x02",
        "response_payload": None,
        "suite": "standard",
        "data_key_id": "dk-1",
        "prev_hash": GENESIS_HASH,
        "target_id": None,
        "reason": None,
        "record_hash": "ignored",
    }
    expected = (
        '{"caller_id":"platform","chain_id":"node-1","data_key_id":"dk-1","decision":"allowed",'
        '"department":"市数据管理局","event":"service.invoke","height":1,"prev_hash":"' + GENESIS_HASH + '",'
        '"record_id":"' + "a" * 32 + '","request_payload":"sha256:' + hashlib.sha256(b"\x00\x01\x02").hexdigest() + '",'
        '"response_payload":null,"status_code":200,"suite":"standard","ts_ms":1700000000000}'
    ).encode()
    assert canonical_bytes(record) == expected
    assert record_hash(GENESIS_HASH, record) == hashlib.sha256(bytes(32) + expected).hexdigest()
    assert record_hash(GENESIS_HASH, record) == "8ccdfcd880acf06a69a7c20cc9d62b4713dde4d6c3036e25b8de4ca56b6c40f8"
    sm = {**record, "suite": "sm"}
    sm_expected = expected.replace(b'"standard"', b'"sm"').replace(
        b"sha256:" + hashlib.sha256(b"\x00\x01\x02").hexdigest().encode(),
        b"sm3:" + hashlib.new("sm3", b"\x00\x01\x02").hexdigest().encode(),
    )
    assert record_hash(GENESIS_HASH, sm) == hashlib.new("sm3", bytes(32) + sm_expected).hexdigest()
    with_reason = {**record, "reason": "x"}
    assert record_hash(GENESIS_HASH, with_reason) != record_hash(GENESIS_HASH, record)


def test_a_reading_written_before_reason_categories_still_verifies() -> None:
    """Rows read back carry every column, the newer empty ones too; those stay out of the hash, a filled one not."""
    base = {
        "chain_id": "node-1",
        "record_id": "b" * 32,
        "ts_ms": 1700000000000,
        "event": "audit.payload.read",
        "suite": "standard",
    }
    old = {**base, "height": 1, "prev_hash": GENESIS_HASH, "target_id": "c" * 32, "reason": "复核名单的信用核查依据"}
    old["record_hash"] = record_hash(GENESIS_HASH, old)  # as a gateway without the category columns wrote it
    new = {**base, "record_id": "d" * 32, "height": 2, "prev_hash": old["record_hash"], "target_id": "c" * 32}
    new |= {"reason": "复核名单的信用核查依据", "reason_category": "complaint", "reason_ref": "投诉-1"}
    new["record_hash"] = record_hash(old["record_hash"], new)
    read_back = [{**old, "reason_category": None, "reason_ref": None}, dict(new)]
    assert verify_chain("node-1", read_back).ok
    changed = [{**old, "reason_category": None, "reason_ref": None}, {**new, "reason_category": "other"}]
    report = verify_chain("node-1", changed)
    assert not report.ok and report.fault is not None and (report.fault.height, report.fault.kind) == (2, "changed")


def test_checkpoints_verify_only_under_a_trusted_key() -> None:
    node, stranger = generate_ed25519(), generate_ed25519()
    checkpoint = sign_checkpoint(node, "node-1", 10, "ab" * 32, 1700000000000)
    assert checkpoint.key_id == signer_key_id(node.public_key())
    trusted = TrustedKeys([node.public_key()])
    assert trusted.check(checkpoint) is None
    from dataclasses import replace

    assert "does not verify" in (trusted.check(replace(checkpoint, height=11)) or "")
    assert "does not verify" in (trusted.check(replace(checkpoint, head_hash="cd" * 32)) or "")
    assert "not a trusted key" in (TrustedKeys([stranger.public_key()]).check(checkpoint) or "")
    forged = replace(sign_checkpoint(stranger, "node-1", 10, "ab" * 32, 0), key_id=checkpoint.key_id)
    assert "does not verify" in (trusted.check(forged) or ""), "claiming the node's key id does not help"


# --- master key and key ring -----------------------------------------------------------------------------------


def test_master_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generated = load_master_key(env_value=None, secret_file=None, default_path=tmp_path / "keys" / "master.key")
    assert (tmp_path / "keys" / "master.key").stat().st_mode & 0o777 == 0o600
    again = load_master_key(env_value=None, secret_file=None, default_path=tmp_path / "keys" / "master.key")
    assert again.secret == generated.secret
    raw = os.urandom(32)
    from_env = load_master_key(env_value=base64.b64encode(raw).decode(), secret_file=None, default_path=tmp_path / "x")
    assert from_env.secret == raw and from_env.source == "env MSJX_MASTER_KEY"
    mounted = tmp_path / "secret"
    mounted.write_bytes(raw)
    assert load_master_key(env_value=None, secret_file=mounted, default_path=tmp_path / "x").secret == raw
    with pytest.raises(KeyRingError) as error:
        parse_master_key("c2hvcnQ=", "MSJX_MASTER_KEY")
    assert "c2hvcnQ" not in str(error.value), "the message never repeats key material"
    with pytest.raises(KeyRingError, match="cannot read"):
        load_master_key(env_value=None, secret_file=tmp_path / "absent", default_path=tmp_path / "x")


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[str, StoredKey] = {}

    async def load(self) -> list[StoredKey]:
        return list(self.rows.values())

    async def insert(self, key: StoredKey) -> bool:
        if key.key_id in self.rows:
            return False
        self.rows[key.key_id] = key
        return True

    async def destroy(self, key_ids: list[str], when_ms: int) -> None:
        from dataclasses import replace

        for key_id in key_ids:
            self.rows[key_id] = replace(self.rows[key_id], wrapped=None, destroyed_ms=when_ms)


async def test_key_ring_rotates_and_shreds_without_losing_the_current_key(tmp_path: Path) -> None:
    master = load_master_key(env_value=None, secret_file=None, default_path=tmp_path / "master.key")
    clock = [1_700_000_000_000]
    store = MemoryStore()
    ring = await KeyRing(master, store, period_days=30, clock=lambda: clock[0]).open()
    first = ring.current()
    assert first.key_id.startswith("dk-standard-") and len(ring.index_key) == 32
    assert all(row.wrapped is not None and first.secret not in row.wrapped for row in store.rows.values())

    clock[0] += 1000
    second = (await ring.rotate())[0]
    assert ring.current().key_id == second.key_id
    assert (await ring.get(first.key_id)).secret == first.secret, "old payloads stay readable"

    other_node = await KeyRing(master, store, clock=lambda: clock[0]).open()
    assert other_node.current().key_id == second.key_id and other_node.index_key == ring.index_key

    clock[0] += 1000
    destroyed = await ring.destroy_before(clock[0])
    assert [row.key_id for row in destroyed] == [first.key_id], "the current key is never destroyed"
    with pytest.raises(PayloadShredded):
        await other_node.get(first.key_id, fresh=True)
    assert ring.current().key_id == second.key_id

    clock[0] += 31 * 86_400_000
    assert await ring.rotate_if_due() is not None, "a new period starts a new key"
    assert await other_node.rotate_if_due() is None, "the period's key is written once, whoever notices first"
    await other_node.refresh()
    assert other_node.current().key_id == ring.current().key_id

    stranger = load_master_key(env_value=None, secret_file=None, default_path=tmp_path / "other.key")
    with pytest.raises(KeyRingError, match="same MSJX_MASTER_KEY"):
        await KeyRing(stranger, store).open()


async def test_a_changed_wrapped_key_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    master = load_master_key(env_value=None, secret_file=None, default_path=tmp_path / "master.key")
    store = MemoryStore()
    ring = await KeyRing(master, store, suite="sm").open()
    key_id = ring.current().key_id
    wrapped = store.rows[key_id].wrapped
    assert wrapped is not None
    store.rows[key_id] = replace(store.rows[key_id], wrapped=wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    with pytest.raises(KeyRingError, match="does not unwrap"):
        await KeyRing(master, store, suite="sm").open()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_key_ring_in_the_database_and_legacy_key_files(backend: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    legacy_data, legacy_index = os.urandom(32), os.urandom(32)
    (keys / "audit-data-dk-1.key").write_bytes(legacy_data)
    (keys / "subject-hmac.key").write_bytes(legacy_index)
    async with audit_store(backend, tmp_path) as store:
        from gateway.audit.keys import open_keyring

        ring = await open_keyring(store.settings, store.engine)
        assert (await ring.get("dk-1")).secret == legacy_data, "records of the first release stay readable"
        assert ring.index_key == legacy_index, "subject hashes of the first release stay searchable"
        assert not (keys / "audit-data-dk-1.key").exists() and not (keys / "subject-hmac.key").exists()
        second = await open_keyring(store.settings, store.engine)
        rotated = (await second.rotate(["sm"]))[0]
        await ring.refresh()
        assert ring.current("sm").key_id == rotated.key_id
        assert {row.kind for row in ring.rows()} == {"data", "index"}


def test_settings_refuse_short_retention_and_never_echo_a_bad_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import SettingsError, load_settings

    monkeypatch.setenv("MSJX_AUDIT_RETENTION_DAYS", "90")
    with pytest.raises(SettingsError, match="MSJX_AUDIT_RETENTION_DAYS"):
        load_settings()
    monkeypatch.delenv("MSJX_AUDIT_RETENTION_DAYS")
    monkeypatch.setenv("MSJX_MASTER_KEY", "c2VjcmV0LWJ1dC1zaG9ydA==")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith("MSJX_MASTER_KEY:") and "c2VjcmV0" not in str(error.value)
    monkeypatch.setenv("MSJX_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("MSJX_CRYPTO_SUITE", "sm")
    settings = load_settings()
    assert settings.crypto_suite == "sm" and settings.master_key is not None
    assert settings.master_key.get_secret_value() not in repr(settings)
