"""Pre-signed invoke requests for wrk: complete HTTP/1.1 requests, each with its own nonce, written to one file.

Signing through `security.signatures.sign_request` costs ~300 µs a request, too slow for the ~10^5 requests a
run needs, so the signature base is filled in from a template here. Ed25519 is deterministic, so `check()`
proves the template right: the library, given the same created time and nonce, must write the very same
headers; the harness runs it before every batch.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.signatures import SIGNATURE_LABEL, parse_signature_params, sign_request, verify_request
from security.verifier_process import InlineVerifier

COMPONENTS = '("@method" "@target-uri" "content-digest")'


def pool_size(expected_rps: float, seconds: float) -> int:
    """Enough fresh nonces for a run 30 % faster than expected; a run that still runs out is reported."""
    return int(expected_rps * seconds * 1.3) + 2000


@dataclass
class Presigner:
    """Signs POSTs of `body` to http://<authority><path> with one key; `created` is the time of each batch."""

    authority: str
    path: str
    body: bytes
    key_id: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        self.url = f"http://{self.authority}{self.path}"
        self.digest = f"sha-256=:{base64.b64encode(hashlib.sha256(self.body).digest()).decode()}:"
        self._prefix = secrets.token_hex(6)
        self._counter = 0

    def _nonce(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter:010d}"

    def headers(self, created: int, nonce: str) -> dict[str, str]:
        params = f'{COMPONENTS};created={created};keyid="{self.key_id}";nonce="{nonce}"'
        base = (
            f'"@method": POST\n"@target-uri": {self.url}\n"content-digest": {self.digest}\n'
            f'"@signature-params": {params}'
        )
        signature = base64.b64encode(self.private_key.sign(base.encode())).decode()
        return {
            "content-digest": self.digest,
            "signature-input": f"{SIGNATURE_LABEL}={params}",
            "signature": f"{SIGNATURE_LABEL}=:{signature}:",
        }

    def raw(self, created: int, nonce: str) -> bytes:
        signed = self.headers(created, nonce)
        head = (
            f"POST {self.path} HTTP/1.1\r\n"
            f"Host: {self.authority}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            f"Content-Digest: {signed['content-digest']}\r\n"
            f"Signature-Input: {signed['signature-input']}\r\n"
            f"Signature: {signed['signature']}\r\n"
            "\r\n"
        )
        return head.encode() + self.body

    def check(self) -> None:
        """Raise unless the template writes exactly what the library writes, and the library verifies it."""
        created, nonce = int(time.time()), self._nonce()
        ours = self.headers(created, nonce)
        theirs = httpx.Headers({"content-type": "application/json"})
        sign_request(
            "POST",
            self.url,
            theirs,
            self.body,
            key_id=self.key_id,
            private_key=self.private_key,
            created=datetime.datetime.fromtimestamp(created, datetime.UTC),
            nonce=nonce,
        )
        for name, value in ours.items():
            if theirs.get(name) != value:
                raise AssertionError(f"pre-signed {name} differs from the library's: {value!r} != {theirs.get(name)!r}")
        pairs = [(name, value) for name, value in theirs.items()]
        params = parse_signature_params(pairs)
        public_key = self.private_key.public_key()
        asyncio.run(verify_request(InlineVerifier(), "POST", self.url, pairs, self.body, public_key, params))

    def write(self, path: Path, count: int) -> Path:
        """Write `count` requests, each with a fresh nonce, created now, separated by NUL bytes."""
        self.check()
        created = int(time.time())
        with path.open("wb") as out:
            for _ in range(count):
                out.write(self.raw(created, self._nonce()))
                out.write(b"\0")
        return path
