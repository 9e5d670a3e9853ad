"""RFC 9421 HTTP Message Signatures (ed25519) with RFC 9530 Content-Digest: signing and verifying requests.

Both sides go through `http-message-signatures`; this module fixes the profile (covered components,
required parameters, clock window) and turns every way a request can fail into one stable code.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

SIGNATURE_LABEL = "msjx"
COVERED_COMPONENTS: tuple[str, ...] = ("@method", "@target-uri")
# Covered whenever the request carries it: a key that is not signed could be swapped to make a payment run twice.
IDEMPOTENCY_KEY = "idempotency-key"
MAX_SKEW_SECONDS = 300
NONCE_MAX_LENGTH = 128


class SignatureFailure(Exception):
    """A request failed authentication. `code` is stable and goes into the problem+json and the audit record."""

    def __init__(self, code: str, detail: str, *, key_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.key_id = key_id


@dataclass(frozen=True)
class SignatureParams:
    """The signature parameters a verifier needs before it can look up the key."""

    key_id: str
    created: int
    nonce: str
    covered: tuple[str, ...]


@dataclass
class _Message:
    """The request shape `http-message-signatures` reads: method, absolute URL, header lines."""

    method: str
    url: str
    headers: Any


class _Headers:
    """Header lines as the library expects them (`items()`), from any iterable of (name, value) pairs."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def items(self) -> list[tuple[str, str]]:
        return self._pairs

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        values = [value for key, value in self._pairs if key.lower() == lowered]
        return ", ".join(values) if values else None


class _SingleKey(HTTPSignatureKeyResolver):
    def __init__(self, public_key: Ed25519PublicKey | None = None, private_key: Ed25519PrivateKey | None = None):
        self._public = public_key
        self._private = private_key

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return self._public

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey | None:
        return self._private


def parse_signature_params(headers: Iterable[tuple[str, str]]) -> SignatureParams:
    """Read keyid, created and nonce from Signature-Input, so the key can be looked up and the window checked."""
    wrapped = _Headers(headers)
    raw_input = wrapped.get("signature-input")
    if raw_input is None or wrapped.get("signature") is None:
        raise SignatureFailure("signature_missing", "the request carries no Signature and Signature-Input headers")
    try:
        parsed = http_sf.parse(raw_input.encode(), tltype="dictionary")
    except Exception as exc:  # http_sf raises ValueError and friends for malformed fields
        raise SignatureFailure("signature_malformed", "Signature-Input is not a valid structured field") from exc
    if SIGNATURE_LABEL not in parsed:
        raise SignatureFailure("signature_malformed", f"Signature-Input has no signature labelled '{SIGNATURE_LABEL}'")
    members, params = parsed[SIGNATURE_LABEL]
    if not isinstance(members, list):
        raise SignatureFailure("signature_malformed", "Signature-Input member is not an inner list")
    key_id, created, nonce = params.get("keyid"), params.get("created"), params.get("nonce")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureFailure("signature_malformed", "Signature-Input lacks the keyid parameter")
    if not isinstance(created, int) or isinstance(created, bool):
        raise SignatureFailure(
            "signature_malformed", "Signature-Input lacks an integer created parameter", key_id=key_id
        )
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= NONCE_MAX_LENGTH:
        raise SignatureFailure(
            "signature_malformed",
            f"Signature-Input lacks a nonce parameter of 8 to {NONCE_MAX_LENGTH} characters",
            key_id=key_id,
        )
    covered = tuple(str(item[0]) for item in members)
    return SignatureParams(key_id=key_id, created=created, nonce=nonce, covered=covered)


def check_created(params: SignatureParams, now: float, max_skew: int = MAX_SKEW_SECONDS) -> None:
    """Refuse a signature made more than `max_skew` seconds before or after `now`."""
    if abs(now - params.created) > max_skew:
        raise SignatureFailure(
            "signature_expired",
            f"signature created {int(now - params.created)} s from the server's clock; the window is ±{max_skew} s",
            key_id=params.key_id,
        )


def verify_request(
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    public_key: Ed25519PublicKey,
    params: SignatureParams,
) -> None:
    """Verify the signature over the request's method, target URI and, with a body, its Content-Digest."""
    pairs = list(headers)
    wrapped = _Headers(pairs)
    digest_header = wrapped.get("content-digest")
    if body and digest_header is None:
        raise SignatureFailure(
            "digest_missing", "a request with a body must carry Content-Digest", key_id=params.key_id
        )
    if digest_header is not None:
        try:
            ContentDigest.verify(digest_header, body)
        except HTTPMessageSignaturesException as exc:
            raise SignatureFailure(
                "digest_mismatch", "Content-Digest does not match the request body", key_id=params.key_id
            ) from exc
    required = (*COVERED_COMPONENTS, "content-digest") if body else COVERED_COMPONENTS
    if wrapped.get(IDEMPOTENCY_KEY) is not None:
        if IDEMPOTENCY_KEY not in params.covered:
            raise SignatureFailure(
                "signature_invalid", "the Idempotency-Key header must be covered by the signature", key_id=params.key_id
            )
        required = (*required, IDEMPOTENCY_KEY)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_SingleKey(public_key))
    try:
        verifier.verify(
            _Message(method=method, url=url, headers=wrapped),
            max_age=None,
            expect_tag=None,
            require_components=required,
            body=body if body else None,
        )
    except HTTPMessageSignaturesException as exc:
        raise SignatureFailure("signature_invalid", f"signature does not verify: {exc}", key_id=params.key_id) from exc


def sign_request(
    method: str,
    url: str,
    headers: Any,
    body: bytes,
    *,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: datetime.datetime | None = None,
    nonce: str | None = None,
) -> None:
    """Add Signature, Signature-Input and (with a body) Content-Digest to a mutable header mapping, in place.

    An Idempotency-Key header, when present, is covered too.
    """
    covered = COVERED_COMPONENTS
    if headers.get(IDEMPOTENCY_KEY) is not None:
        covered = (*covered, IDEMPOTENCY_KEY)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_SingleKey(private_key=private_key))
    signer.sign(
        _Message(method=method.upper(), url=url, headers=headers),
        key_id=key_id,
        created=created or datetime.datetime.now(datetime.UTC),
        nonce=nonce or secrets.token_urlsafe(18),
        label=SIGNATURE_LABEL,
        include_alg=False,
        covered_component_ids=covered,
        body=body if body else None,
    )
