"""SM2 signatures (GB/T 32918.2 with SM3 and the default user id) and SM2 keys in the PEM and hex forms tools write.

The curve arithmetic is snowland-smx's (`pysmx`, pure Python, imported on first use: it takes ~0.2 s to load). This
module adds what a signature scheme needs around it: the user hash Z_A, the ranges of r and s, public keys checked to
lie on the curve, and the key encodings of OpenSSL, GmSSL and Tongsuo (SubjectPublicKeyInfo and PKCS#8 with the curve
OID 1.2.156.10197.1.301). Before its first signature or check it reproduces the published example of GB/T 32918.5
(GM/T 0003.5) annex A.2, and refuses to work if it cannot.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from schemas.errors import MsjxError

# GB/T 32918.5-2017: the recommended 256-bit curve y² = x³ + ax + b over F_p, base point G of prime order n.
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0
DEFAULT_USER_ID = b"1234567812345678"  # GM/T 0009-2012 section 10: the id when the parties agreed on none
SIGNATURE_SIZE = 64  # r ‖ s, 32 bytes each, big-endian (as RFC 9421 encodes ECDSA signatures)
POINT_SIZE = 65  # 04 ‖ x ‖ y

_EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_SM2_CURVE_OID = bytes.fromhex("06082a811ccf5501822d")  # 1.2.156.10197.1.301, sm2p256v1
_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200")
_HEX_POINT = re.compile(r"(?:04)?[0-9a-fA-F]{128}")


class Sm2Error(MsjxError, ValueError):
    """An SM2 key or signature cannot be used; the message never contains key material."""


def sm3(data: bytes) -> bytes:
    try:
        return hashlib.new("sm3", data).digest()
    except ValueError:  # a Python whose own OpenSSL lacks SM3: cryptography's OpenSSL has it
        from cryptography.hazmat.primitives import hashes

        digest = hashes.Hash(hashes.SM3())
        digest.update(data)
        return digest.finalize()


def _int32(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class Sm2PublicKey:
    """A point of the SM2 curve, checked on construction: on the curve, not the point at infinity."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (0 <= self.x < P and 0 <= self.y < P) or (self.y * self.y - (self.x**3 + A * self.x + B)) % P:
            raise Sm2Error("the point is not on the SM2 curve")

    @classmethod
    def from_bytes(cls, data: bytes) -> Sm2PublicKey:
        """From the 65-byte uncompressed point 04 ‖ x ‖ y, or the 64 bytes x ‖ y that many SM2 libraries use."""
        if len(data) == POINT_SIZE and data[0] == 4:
            data = data[1:]
        if len(data) != POINT_SIZE - 1:
            raise Sm2Error("an SM2 public key is 04 ‖ x ‖ y (65 bytes) or x ‖ y (64 bytes)")
        return cls(int.from_bytes(data[:32], "big"), int.from_bytes(data[32:], "big"))

    def to_bytes(self) -> bytes:
        """The uncompressed point 04 ‖ x ‖ y."""
        return b"\x04" + _int32(self.x) + _int32(self.y)

    def pem(self) -> str:
        """SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` writes an SM2 key."""
        return _pem("PUBLIC KEY", _SPKI_PREFIX + self.to_bytes())

    def user_hash(self, user_id: bytes = DEFAULT_USER_ID) -> bytes:
        """Z_A = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA): binds a signature to the signer's id and key."""
        return _user_hash(self, user_id)

    def verify(self, signature: bytes, message: bytes, user_id: bytes = DEFAULT_USER_ID) -> bool:
        """True when `signature` (r ‖ s) is this key's SM2 signature of `message`; False for anything else."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (1 <= r < N and 1 <= s < N):  # GB/T 32918.2 B1, B2: the library does not check these
            return False
        library = _library()
        e = _digest(self, user_id, message)
        return bool(library.Verify(signature, e.hex(), self.to_bytes()[1:].hex(), 64, Hexstr=1))


class Sm2PrivateKey:
    """A private scalar d in [1, n-2]; its public key is computed once, on first use."""

    def __init__(self, d: int) -> None:
        if not 1 <= d <= N - 2:  # d = n-1 would make (1 + d) non-invertible
            raise Sm2Error("an SM2 private key is an integer in [1, n-2]")
        self.d = d
        self._public: Sm2PublicKey | None = None

    @classmethod
    def generate(cls) -> Sm2PrivateKey:
        return cls(1 + secrets.randbelow(N - 2))

    def public_key(self) -> Sm2PublicKey:
        if self._public is None:
            point = _library().kG(self.d, _G_HEX, 64)
            self._public = Sm2PublicKey(int(point[:64], 16), int(point[64:], 16))
        return self._public

    def sign(self, message: bytes, user_id: bytes = DEFAULT_USER_ID, *, k: int | None = None) -> bytes:
        """The SM2 signature r ‖ s of `message`. `k` fixes the per-signature secret, for known-answer tests only."""
        library = _library()
        e = _digest(self.public_key(), user_id, message).hex()
        while True:
            nonce = k if k is not None else 2 + secrets.randbelow(N - 2)
            signed = library.Sign(e, _int32(self.d).hex(), _fixed_length(nonce), 64, Hexstr=1)
            if signed is not None and (int.from_bytes(signed[:32], "big") + nonce) % N:
                return bytes(signed)
            if k is not None:  # GB/T 32918.2 A6: r = 0, r + k = n or s = 0 asks for another k
                raise Sm2Error("this k gives no signature; the standard asks for another")

    def pem(self) -> bytes:
        """PKCS#8 PEM with the curve OID and the public key, as `openssl genpkey -algorithm SM2` writes it."""
        ec_private_key = _der(
            0x30,
            _der(0x02, b"\x01")
            + _der(0x04, _int32(self.d))
            + _der(0xA1, _der(0x03, b"\x00" + self.public_key().to_bytes())),
        )
        algorithm = _der(0x30, _EC_PUBLIC_KEY_OID + _SM2_CURVE_OID)
        return _pem("PRIVATE KEY", _der(0x30, _der(0x02, b"\x00") + algorithm + _der(0x04, ec_private_key))).encode()

    def __repr__(self) -> str:  # never print the scalar, even in a traceback
        return "Sm2PrivateKey(…)"


_G_HEX = f"{GX:064x}{GY:064x}"


def _fixed_length(k: int) -> str:
    # k, k + n and k + 2n give the same signature (G has order n); the library's double-and-add loop runs once per bit
    # of the scalar, so the variant with exactly 257 bits keeps the nonce's length out of the signing time.
    scalar = k + N if (k + N).bit_length() == 257 else k + 2 * N
    return f"{scalar:x}"


@functools.lru_cache(maxsize=1024)
def _user_hash(public_key: Sm2PublicKey, user_id: bytes) -> bytes:
    if len(user_id) >= 1 << 13:
        raise Sm2Error("an SM2 user id is shorter than 8192 bytes")
    fields = (A, B, GX, GY, public_key.x, public_key.y)
    return sm3((len(user_id) * 8).to_bytes(2, "big") + user_id + b"".join(_int32(value) for value in fields))


def _digest(public_key: Sm2PublicKey, user_id: bytes, message: bytes) -> bytes:
    return sm3(_user_hash(public_key, user_id) + message)


# --- key encodings -------------------------------------------------------------------------------------------------


def is_sm2_public_text(text: str) -> bool:
    """Whether `text` looks like an SM2 public key this module reads (it may still be refused as invalid)."""
    text = text.strip()
    if _HEX_POINT.fullmatch(text):
        return True
    body = _pem_body(text, "PUBLIC KEY")
    return body is not None and _SM2_CURVE_OID in body


def load_public_key(text: str) -> Sm2PublicKey:
    """An SM2 public key from SubjectPublicKeyInfo PEM, or hex of 04 ‖ x ‖ y (130 digits) or x ‖ y (128 digits)."""
    text = text.strip()
    if _HEX_POINT.fullmatch(text):
        return Sm2PublicKey.from_bytes(bytes.fromhex(text))
    body = _pem_body(text, "PUBLIC KEY")
    if body is None or len(body) != len(_SPKI_PREFIX) + POINT_SIZE or not body.startswith(_SPKI_PREFIX):
        raise Sm2Error(
            "not an SM2 public key: expected SubjectPublicKeyInfo PEM with curve 1.2.156.10197.1.301, or hex"
        )
    return Sm2PublicKey.from_bytes(body[len(_SPKI_PREFIX) :])


def is_sm2_private_pem(data: bytes) -> bool:
    body = _pem_body(data.decode("ascii", "replace"), "PRIVATE KEY")
    if body is None:
        body = _pem_body(data.decode("ascii", "replace"), "EC PRIVATE KEY")
    return body is not None and _SM2_CURVE_OID in body


def load_private_key(data: bytes) -> Sm2PrivateKey:
    """An SM2 private key from PKCS#8 PEM ("PRIVATE KEY") or SEC 1 PEM ("EC PRIVATE KEY") naming the SM2 curve."""
    text = data.decode("ascii", "replace")
    try:
        pkcs8 = _pem_body(text, "PRIVATE KEY")
        if pkcs8 is not None:
            version, algorithm, wrapped = _children(_single(pkcs8, 0x30))[:3]
            if version != (0x02, b"\x00") or algorithm[0] != 0x30 or wrapped[0] != 0x04:
                raise Sm2Error("not a PKCS#8 private key")
            if _children(algorithm[1])[:2] != [(0x06, _EC_PUBLIC_KEY_OID[2:]), (0x06, _SM2_CURVE_OID[2:])]:
                raise Sm2Error("the PKCS#8 key is not an SM2 key")
            return _from_ec_private_key(_single(wrapped[1], 0x30), curve_required=False)
        sec1 = _pem_body(text, "EC PRIVATE KEY")
        if sec1 is not None:
            return _from_ec_private_key(_single(sec1, 0x30), curve_required=True)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, Sm2Error):
            raise
        raise Sm2Error("the SM2 private key's DER structure is malformed") from None
    raise Sm2Error("not an SM2 private key in PEM (PKCS#8 or SEC 1)")


def _from_ec_private_key(body: bytes, *, curve_required: bool) -> Sm2PrivateKey:
    """RFC 5915 ECPrivateKey: version 1, the scalar, an optional [0] curve and [1] public key (checked if there)."""
    items = _children(body)
    if len(items) < 2 or items[0] != (0x02, b"\x01") or items[1][0] != 0x04 or len(items[1][1]) != 32:
        raise Sm2Error("not an EC private key of 32 bytes")
    tagged = dict(items[2:])
    if (0xA0 in tagged or curve_required) and tagged.get(0xA0) != _SM2_CURVE_OID:
        raise Sm2Error("the EC private key is not on the SM2 curve")
    key = Sm2PrivateKey(int.from_bytes(items[1][1], "big"))
    if 0xA1 in tagged:
        bits = _single(tagged[0xA1], 0x03)
        if bits[1:] != key.public_key().to_bytes():
            raise Sm2Error("the private key file's public key does not belong to its private key")
    return key


def _pem(label: str, der: bytes) -> str:
    encoded = base64.b64encode(der).decode()
    lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n"


def _pem_body(text: str, label: str) -> bytes | None:
    match = re.search(rf"-----BEGIN {label}-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END {label}-----", text)
    if match is None:
        return None
    try:
        return base64.b64decode("".join(match[1].split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _der(tag: int, value: bytes) -> bytes:
    size = len(value)
    length = (
        bytes([size])
        if size < 0x80
        else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + value


def _read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """One DER element at `offset`: its tag, its value and where the next begins. ValueError if it is cut short."""
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 2:
            raise ValueError("unsupported DER length")
        size = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    else:
        size = first
    if offset + size > len(data):
        raise ValueError("DER element runs past its container")
    return tag, data[offset : offset + size], offset + size


def _children(data: bytes) -> list[tuple[int, bytes]]:
    items, offset = [], 0
    while offset < len(data):
        tag, value, offset = _read(data, offset)
        items.append((tag, value))
    return items


def _single(data: bytes, tag: int) -> bytes:
    found, value, end = _read(data, 0)
    if found != tag or end != len(data):
        raise ValueError("unexpected DER structure")
    return value


# --- the library, checked against the standard's published example ----------------------------------------------

# GB/T 32918.5-2017 / GM/T 0003.5-2012 annex A.2: signature of "message digest" with the default user id.
EXAMPLE = {
    "d": 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8,
    "public": "04"
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13",
    "message": b"message digest",
    "z": "B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3",
    "k": 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21,
    "signature": "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA",
}


@functools.cache
def _library() -> Any:
    from pysmx import SM2 as library

    _self_test(library)
    return library


def _self_test(library: Any) -> None:
    """Raise Sm2Error unless the library, with this module, reproduces the published example exactly."""
    key = Sm2PrivateKey(EXAMPLE["d"])
    point = library.kG(key.d, _G_HEX, 64)
    public = Sm2PublicKey(int(point[:64], 16), int(point[64:], 16))
    expected = bytes.fromhex(EXAMPLE["signature"])
    e = _digest(public, DEFAULT_USER_ID, EXAMPLE["message"]).hex()
    signed = library.Sign(e, _int32(key.d).hex(), _fixed_length(EXAMPLE["k"]), 64, Hexstr=1)
    if (
        public.to_bytes() != bytes.fromhex(EXAMPLE["public"])
        or public.user_hash().hex().upper() != EXAMPLE["z"]
        or signed != expected
        or not library.Verify(expected, e, public.to_bytes()[1:].hex(), 64, Hexstr=1)
    ):
        raise Sm2Error(
            "the SM2 library does not reproduce the GB/T 32918.5 example: refusing to sign or verify with it"
        )


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is the SM2 (SM3, default user id) signature of `message` by the point `public_key`."""
    try:
        key = _public_from_bytes(public_key)
    except Sm2Error:
        return False
    return key.verify(signature, message)


@functools.lru_cache(maxsize=1024)
def _public_from_bytes(raw: bytes) -> Sm2PublicKey:
    return Sm2PublicKey.from_bytes(raw)
