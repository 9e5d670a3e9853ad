"""Crypto suites of the audit log: `standard` (AES-256-GCM, SHA-256, HMAC-SHA256), `sm` 国密 (SM4-GCM, SM3, HMAC-SM3).

A suite is everything a record needs from cryptography: a hash for the chain and digests, a keyed hash for
searchable identifiers, an AEAD for payloads, and a key derivation for key-encryption keys. Every record names
its suite, so records of both suites live in one chain. The `sm` suite runs a known-answer test (RFC 8998's
SM4-GCM vector and GB/T 32905's SM3 vector) before first use and refuses to run if the OpenSSL underneath
`cryptography` lacks either algorithm, instead of quietly falling back to something else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.errors import MsjxError

NONCE_SIZE = 12
TAG_SIZE = 16
SUITE_NAMES = ("standard", "sm")


class DecryptionError(MsjxError):
    """A payload could not be opened: wrong or destroyed key, or changed ciphertext."""


class SuiteUnavailable(MsjxError):
    """The suite cannot run here (its algorithms are missing from OpenSSL, or its name is unknown)."""


HashObject = Any  # hashlib-like: update(), digest(), hexdigest()


class NonceSequence:
    """GCM nonces by NIST SP 800-38D's deterministic construction: a random 8-byte field per sequence, then a counter.

    Cheaper than 12 random bytes per message (no system call), and unique as long as no two sequences draw the
    same random field under one key (2^-64 per pair) and no sequence wraps its 32-bit counter (it re-draws first).
    """

    def __init__(self) -> None:
        self._fixed = secrets.token_bytes(8)
        self._counter = 0

    def next(self) -> bytes:
        self._counter += 1
        if self._counter >= 1 << 32:
            self._fixed, self._counter = secrets.token_bytes(8), 1
        return self._fixed + self._counter.to_bytes(4, "big")


class Suite:
    """One set of algorithms. Subclasses differ only in primitives; record formats are the same for both."""

    name: str
    hash_name: str
    key_size: int

    def new_hash(self, data: bytes = b"") -> HashObject:
        raise NotImplementedError

    def digest(self, data: bytes) -> str:
        """Hex digest of `data` under the suite's hash."""
        return self.new_hash(data).hexdigest()

    def keyed_hash(self, key: bytes, value: str | bytes) -> str:
        """HMAC of an identifier or body, hex: searchable, but not reversible by guessing without the key."""
        raise NotImplementedError

    def seal(self, key: bytes, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt; the result is nonce ‖ ciphertext ‖ tag. `nonce` (12 bytes) must never repeat under one key."""
        raise NotImplementedError

    def open(self, key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        raise NotImplementedError

    def derive(self, secret: bytes, info: bytes, size: int) -> bytes:
        """HKDF (RFC 5869) over the suite's hash: separate keys for separate jobs from one master secret."""
        return HKDF(algorithm=self._hkdf_hash(), length=size, salt=None, info=info).derive(secret)

    def _hkdf_hash(self) -> hashes.HashAlgorithm:
        raise NotImplementedError

    def check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"a {self.name} data key is {self.key_size} bytes, not {len(key)}")

    def __repr__(self) -> str:
        return f"<Suite {self.name}>"


class StandardSuite(Suite):
    name = "standard"
    hash_name = "sha256"
    key_size = 32
    # hashlib's constructor itself, not a method around it: the audit chain calls it three times a record.
    new_hash = staticmethod(hashlib.sha256)  # type: ignore[assignment]

    def keyed_hash(self, key: bytes, value: str | bytes) -> str:
        mac = _hmac_base("sha256", key).copy()
        mac.update(value.encode() if isinstance(value, str) else value)
        return mac.hexdigest()

    def seal(self, key: bytes, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> bytes:
        nonce = nonce or secrets.token_bytes(NONCE_SIZE)
        return nonce + _aesgcm(key).encrypt(nonce, plaintext, associated_data)

    def open(self, key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError("sealed payload is too short")
        try:
            return _aesgcm(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated_data)
        except InvalidTag as exc:
            raise DecryptionError("payload does not open: wrong key or changed ciphertext") from exc

    def _hkdf_hash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256()


class SmSuite(Suite):
    """SM4-GCM (RFC 8998 construction: 12-byte nonce, 16-byte tag), SM3 and HMAC-SM3, from `cryptography`'s OpenSSL."""

    name = "sm"
    hash_name = "sm3"
    key_size = 16

    def __init__(self) -> None:
        self._hashlib_sm3 = _hashlib_has_sm3()

    def new_hash(self, data: bytes = b"") -> HashObject:
        # hashlib's SM3 (when Python's OpenSSL has it) costs less per call than cryptography's; both are OpenSSL's.
        if self._hashlib_sm3:
            return hashlib.new("sm3", data)
        return _CryptographySM3(data)

    def keyed_hash(self, key: bytes, value: str | bytes) -> str:
        message = value.encode() if isinstance(value, str) else value
        if self._hashlib_sm3:
            keyed = _hmac_base("sm3", key).copy()
            keyed.update(message)
            return keyed.hexdigest()
        mac = crypto_hmac.HMAC(key, hashes.SM3())
        mac.update(message)
        return mac.finalize().hex()

    def seal(self, key: bytes, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> bytes:
        nonce = nonce or secrets.token_bytes(NONCE_SIZE)
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(associated_data)
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        return nonce + ciphertext + encryptor.tag

    def open(self, key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError("sealed payload is too short")
        nonce, ciphertext, tag = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:-TAG_SIZE], sealed[-TAG_SIZE:]
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(associated_data)
        try:
            return decryptor.update(ciphertext) + decryptor.finalize()
        except InvalidTag as exc:
            raise DecryptionError("payload does not open: wrong key or changed ciphertext") from exc

    def _hkdf_hash(self) -> hashes.HashAlgorithm:
        return hashes.SM3()


class _CryptographySM3:
    """SM3 through `cryptography` with hashlib's interface, for Pythons whose own OpenSSL lacks SM3."""

    digest_size = 32
    block_size = 64

    def __init__(self, data: bytes = b"") -> None:
        self._hash = hashes.Hash(hashes.SM3())
        if data:
            self._hash.update(data)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.copy().finalize()

    def hexdigest(self) -> str:
        return self.digest().hex()


def _hashlib_has_sm3() -> bool:
    try:
        return hashlib.new("sm3", b"abc").hexdigest() == SM3_ABC
    except ValueError:
        return False


@lru_cache(maxsize=8)
def _hmac_base(digest_name: str, key: bytes) -> hmac.HMAC:
    # HMAC's keyed inner and outer states, computed once per key; each use copies them.
    return hmac.new(key, digestmod=digest_name)


@lru_cache(maxsize=8)
def _aesgcm(key: bytes) -> AESGCM:
    # One AESGCM object per key: its construction costs as much as sealing a small payload.
    return AESGCM(key)


def forget_cached_keys() -> None:
    """Drop the per-key caches, so a destroyed data key is no longer referenced from here."""
    _aesgcm.cache_clear()
    _hmac_base.cache_clear()


# Known answers: GB/T 32905-2016 example 1 (SM3 of "abc") and RFC 8998 appendix A.1 (SM4-GCM).
SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
_SM4_GCM_VECTOR = {
    "key": "0123456789abcdeffedcba9876543210",
    "nonce": "00001234567800000000abcd",
    "aad": "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    "plaintext": "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd"
    "eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
    "ciphertext": "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735"
    "d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d",
    "tag": "83de3541e4c2b58177e065a9bf7b62ec",
}


def sm_self_test() -> None:
    """Raise SuiteUnavailable unless SM3 and SM4-GCM give the published answers on this machine."""
    try:
        sm3 = hashes.Hash(hashes.SM3())
        sm3.update(b"abc")
        if sm3.finalize().hex() != SM3_ABC:
            raise SuiteUnavailable("SM3 gives a wrong answer for the GB/T 32905 test vector")
        v = {name: bytes.fromhex(value) for name, value in _SM4_GCM_VECTOR.items()}
        encryptor = Cipher(algorithms.SM4(v["key"]), modes.GCM(v["nonce"])).encryptor()
        encryptor.authenticate_additional_data(v["aad"])
        ciphertext = encryptor.update(v["plaintext"]) + encryptor.finalize()
    except UnsupportedAlgorithm as exc:
        raise SuiteUnavailable(f"the OpenSSL under `cryptography` lacks SM3 or SM4-GCM: {exc}") from exc
    if ciphertext != v["ciphertext"] or encryptor.tag != v["tag"]:
        raise SuiteUnavailable("SM4-GCM gives a wrong answer for the RFC 8998 test vector")


_SUITES: dict[str, Suite] = {}


def get_suite(name: str) -> Suite:
    """The suite called `name`; the `sm` suite passes its known-answer test first."""
    suite = _SUITES.get(name)
    if suite is not None:
        return suite
    if name == "standard":
        suite = StandardSuite()
    elif name == "sm":
        sm_self_test()
        suite = SmSuite()
    else:
        raise SuiteUnavailable(f"unknown crypto suite {name!r}; known: {', '.join(SUITE_NAMES)}")
    _SUITES[name] = suite
    return suite


@dataclass(frozen=True)
class DataKey:
    """A symmetric key that seals payloads; `key_id` and `suite` are stored beside every ciphertext it made."""

    key_id: str
    secret: bytes
    suite: str = "standard"

    def __post_init__(self) -> None:
        get_suite(self.suite).check_key(self.secret)

    def __repr__(self) -> str:  # never print the secret, even in a traceback
        return f"DataKey(key_id={self.key_id!r}, suite={self.suite!r})"


def seal(key: DataKey, plaintext: bytes, associated_data: bytes) -> bytes:
    return get_suite(key.suite).seal(key.secret, plaintext, associated_data)


def open_sealed(key: DataKey, sealed: bytes, associated_data: bytes) -> bytes:
    try:
        return get_suite(key.suite).open(key.secret, sealed, associated_data)
    except DecryptionError as exc:
        raise DecryptionError(f"payload does not open with key {key.key_id}") from exc
