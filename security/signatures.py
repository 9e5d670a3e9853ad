"""RFC 9421 HTTP Message Signatures (ed25519, or our sm2-sm3) with RFC 9530 Content-Digest: signing and verifying.

Both sides go through `http-message-signatures`; this module fixes the profile (covered components,
required parameters, clock window) and turns every way a request can fail into one stable code.
Verifying is one path with one async API, `verify_request`: the signature base and signature of the request, then
one verdict from a `SignatureChecker` (on the event loop, or in the verifier process). For a request in exactly the
shape `sign_request` writes, the base is built directly (`_profile_signed`); for any other, the library checks the
structure, digest and coverage and builds it. The algorithm is the registered key's (RFC 9421 section 3.2):
`ed25519`, or `sm2-sm3` for an SM2 key, a name of our own (SM2 of GB/T 32918.2 with SM3 and the default user id,
signature r ‖ s); an `alg` parameter, if sent, must name it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException, InvalidSignature

from schemas.errors import MsjxError
from schemas.problems import ProblemCode
from security.keys import PrivateKey, PublicKey, public_key_bytes
from security.sm2 import Sm2PrivateKey, Sm2PublicKey
from security.verdicts import ED25519, SM2_SM3, SignatureChecker

SIGNATURE_LABEL = "msjx"
COVERED_COMPONENTS: tuple[str, ...] = ("@method", "@target-uri")
# Covered whenever the request carries it: a key that is not signed could be swapped to make a payment run twice.
IDEMPOTENCY_KEY = "idempotency-key"
MAX_SKEW_SECONDS = 300
NONCE_MAX_LENGTH = 128


class SignatureFailure(MsjxError):
    """A request failed authentication. `code` is stable and goes into the problem+json and the audit record."""

    def __init__(self, code: ProblemCode, detail: str, *, key_id: str | None = None, compared: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.key_id = key_id
        # True when the signature was checked against the components and the detail names them.
        self.compared = compared


@dataclass(frozen=True)
class SignatureParams:
    """The signature parameters a verifier needs before it can look up the key.

    `profile_params` is the serialized `@signature-params` value when Signature-Input has exactly the shape
    this gateway's clients write (one label, plain components, only created/keyid/nonce); None otherwise.
    """

    key_id: str
    created: int
    nonce: str
    covered: tuple[str, ...]
    profile_params: str | None = None


@dataclass
class _Message:
    """The request shape `http-message-signatures` reads: method, absolute URL, header lines."""

    method: str
    url: str
    headers: Any


class HeaderLines:
    """A request's header lines, from any iterable of (name, value) pairs: as the library reads them (`items()`,
    `get`), and by lowercased name for the checks here. Indexed once, because a request's check looks up five or
    six names and each scan of every line cost about as much as the regexes that read them (docs/performance.md).
    """

    __slots__ = ("_index", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)
        index: dict[str, list[str]] = {}
        for key, value in self._pairs:
            lowered = key.lower()
            values = index.get(lowered)
            if values is None:
                index[lowered] = [value]
            else:
                values.append(value)
        self._index = index

    def items(self) -> list[tuple[str, str]]:
        return self._pairs

    def get(self, name: str) -> str | None:
        """Every line of `name` (any case) as one value, joined as HTTP joins repeated fields; None if absent."""
        values = self._index.get(name.lower())
        return ", ".join(values) if values else None

    def has(self, lowered: str) -> bool:
        return lowered in self._index

    def single(self, lowered: str) -> str | None:
        """The one line named `lowered`, trimmed as the library trims it; None if absent, repeated or folded."""
        values = self._index.get(lowered)
        if values is None or len(values) != 1:
            return None
        found = values[0]
        if "\r" in found or "\n" in found:
            return None
        return found.strip(" \t")


def header_lines(headers: Iterable[tuple[str, str]] | HeaderLines) -> HeaderLines:
    return headers if isinstance(headers, HeaderLines) else HeaderLines(headers)


class _SingleKey(HTTPSignatureKeyResolver):
    def __init__(self, public_key: Any = None, private_key: PrivateKey | None = None):
        self._public = public_key
        self._private = private_key

    def resolve_public_key(self, key_id: str) -> Any:
        return self._public

    def resolve_private_key(self, key_id: str) -> PrivateKey | None:
        return self._private


class Sm2Sm3(algorithms.HTTPSignatureAlgorithm):
    """`sm2-sm3`: SM2 (GB/T 32918.2) over the signature base, with SM3 and the default user id 1234567812345678.

    The signature is r ‖ s, 32 bytes each, as RFC 9421 encodes its ECDSA signatures.
    """

    algorithm_id = SM2_SM3

    def __init__(self, public_key: Sm2PublicKey | None = None, private_key: Sm2PrivateKey | None = None) -> None:
        if public_key is not None and not isinstance(public_key, Sm2PublicKey):
            raise HTTPMessageSignaturesException("Unexpected public key type")
        if private_key is not None and not isinstance(private_key, Sm2PrivateKey):
            raise HTTPMessageSignaturesException("Unexpected private key type")
        self.public_key, self.private_key = public_key, private_key

    def sign(self, message: bytes) -> bytes:
        assert self.private_key is not None
        return self.private_key.sign(message)

    def verify(self, signature: bytes, message: bytes) -> None:
        assert self.public_key is not None
        if not self.public_key.verify(signature, message):
            raise InvalidSignature("the sm2-sm3 signature does not match the signature base")


@dataclass
class _Deferred:
    """A key handed to the library with a deferred algorithm: what it would have checked is kept for the checker."""

    public_key: PublicKey
    signed: tuple[bytes, bytes] | None = None  # (signature, signature base)


class _DeferredEd25519(algorithms.HTTPSignatureAlgorithm):
    """An algorithm for the library's checks of structure, parameters and coverage, with the signature check itself
    left to the caller's checker: one verdict for every request, whichever way its signature base was built."""

    algorithm_id = ED25519

    def __init__(self, public_key: _Deferred | None = None, private_key: None = None) -> None:
        if not isinstance(public_key, _Deferred):
            raise HTTPMessageSignaturesException("Unexpected public key type")
        self._deferred = public_key

    def sign(self, message: bytes) -> bytes:
        raise HTTPMessageSignaturesException("a deferred check cannot sign")

    def verify(self, signature: bytes, message: bytes) -> None:
        self._deferred.signed = (signature, message)


class _DeferredSm2(_DeferredEd25519):
    algorithm_id = SM2_SM3


def parse_signature_params(headers: Iterable[tuple[str, str]] | HeaderLines) -> SignatureParams:
    """Read keyid, created and nonce from Signature-Input, so the key can be looked up and the window checked."""
    wrapped = header_lines(headers)
    raw_input = wrapped.get("signature-input")
    if raw_input is None or wrapped.get("signature") is None:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_MISSING, "the request carries no Signature and Signature-Input headers"
        )
    quick = _parse_profile_input(raw_input)
    if quick is not None:
        return quick
    try:
        parsed = http_sf.parse(raw_input.encode(), tltype="dictionary")
    except Exception as exc:  # http_sf raises ValueError and friends for malformed fields
        raise SignatureFailure(
            ProblemCode.SIGNATURE_MALFORMED, "Signature-Input is not a valid structured field"
        ) from exc
    if SIGNATURE_LABEL not in parsed:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_MALFORMED, f"Signature-Input has no signature labelled '{SIGNATURE_LABEL}'"
        )
    members, params = parsed[SIGNATURE_LABEL]
    if not isinstance(members, list):
        raise SignatureFailure(ProblemCode.SIGNATURE_MALFORMED, "Signature-Input member is not an inner list")
    key_id, created, nonce = params.get("keyid"), params.get("created"), params.get("nonce")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureFailure(ProblemCode.SIGNATURE_MALFORMED, "Signature-Input lacks the keyid parameter")
    if not isinstance(created, int) or isinstance(created, bool):
        raise SignatureFailure(
            ProblemCode.SIGNATURE_MALFORMED, "Signature-Input lacks an integer created parameter", key_id=key_id
        )
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= NONCE_MAX_LENGTH:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_MALFORMED,
            f"Signature-Input lacks a nonce parameter of 8 to {NONCE_MAX_LENGTH} characters",
            key_id=key_id,
        )
    covered = tuple(str(item[0]) for item in members)
    return SignatureParams(key_id=key_id, created=created, nonce=nonce, covered=covered)


# --- the gateway's own profile, read and based directly --------------------------------------------------------------
# http-message-signatures re-parses both signature headers, the digest and the URL, and re-serializes every
# parameter, on each request: about three times the cost of the Ed25519 check itself (docs/performance.md).
# For a request in exactly the shape `sign_request` writes, Signature-Input is read by one regex and the signature
# base is built here, as the library builds it (RFC 9421 section 2.5). This only ever shortens the way: on any doubt
# it returns None and the library reads the request, so every refusal keeps its code and message; the signature is
# then checked once, the same way for both (`verify_request`).

_PROFILE_PARAMS = {"created", "keyid", "nonce"}
# A subset of what the library's URL grammar accepts, in which its @target-uri rebuilds the URL unchanged:
# http(s), a reg-name host, an optional port, a non-empty path, an optional query; no userinfo, no fragment.
_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9.\-]+(?::[0-9]+)?"
    r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@/\-]|%[0-9A-Fa-f]{2})*"
    r"(?:\?(?:[A-Za-z0-9._~!$&'()*+,;=:@/?\-]|%[0-9A-Fa-f]{2})*)?"
)
_PLAIN_METHOD = re.compile(r"[A-Z]+")
_SIGNATURE_MEMBER = re.compile(rf"{SIGNATURE_LABEL}=:([A-Za-z0-9+/]+={{0,2}}):")
_SHA256_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/]{43}=):")


# Signature-Input exactly as `sign_request` writes it (parameters in any order, each once): for such a value http_sf
# would return just what this regex reads, so parsing it here changes no outcome. Anything else goes to http_sf.
_PROFILE_INPUT = re.compile(
    rf'{SIGNATURE_LABEL}=(\("@method" "@target-uri"(?: "content-digest")?\))'
    r'((?:;(?:created=(?:0|[1-9][0-9]{0,14})|keyid="[ !#-\[\]-~]*"|nonce="[ !#-\[\]-~]*")){3})'
)
_PROFILE_PARAM = re.compile(r';(created)=([0-9]+)|;(keyid|nonce)="([^"]*)"')


def _parse_profile_input(raw_input: str) -> SignatureParams | None:
    match = _PROFILE_INPUT.fullmatch(raw_input)
    if match is None:
        return None
    values: dict[str, str] = {}
    for number_name, number, string_name, string in _PROFILE_PARAM.findall(match[2]):
        values[number_name or string_name] = number or string
    if values.keys() != _PROFILE_PARAMS:  # a parameter twice (and so another missing)
        return None
    key_id, nonce = values["keyid"], values["nonce"]
    if not key_id or not 8 <= len(nonce) <= NONCE_MAX_LENGTH:
        return None  # refused by the general path, with its message
    covered = tuple(component.strip('"') for component in match[1][1:-1].split(" "))
    return SignatureParams(
        key_id=key_id,
        created=int(values["created"]),
        nonce=nonce,
        covered=covered,
        profile_params=match[1] + match[2],
    )


def _profile_signed(
    method: str,
    url: str,
    lines: HeaderLines,
    body: bytes,
    public_key: PublicKey,
    params: SignatureParams,
) -> tuple[bytes, bytes] | None:
    """(signature, signature base) of a request in the gateway's profile whose digest matches; else None."""
    if params.profile_params is None or not isinstance(public_key, Ed25519PublicKey | Sm2PublicKey):
        return None
    # Every rule of what must be signed lives in required_components; the direct path takes only a request that
    # covers exactly that, so a rule added there can never be skipped here.
    if params.covered != required_components(lines, body):
        return None
    if not _PLAIN_METHOD.fullmatch(method) or not _PLAIN_URL.fullmatch(url):
        return None
    if lines.single("signature-input") is None:
        return None
    signature_field = lines.single("signature")
    member = _SIGNATURE_MEMBER.fullmatch(signature_field) if signature_field is not None else None
    if member is None or len(member[1]) % 4:
        return None
    base_lines = [f'"@method": {method}', f'"@target-uri": {url}']
    if body:
        digest_field = lines.single("content-digest")
        digest = _SHA256_DIGEST.fullmatch(digest_field) if digest_field is not None else None
        if digest is None or not hmac.compare_digest(base64.b64decode(digest[1]), hashlib.sha256(body).digest()):
            return None
        base_lines.append(f'"content-digest": {digest_field}')
    elif lines.has("content-digest"):
        return None
    base_lines.append(f'"@signature-params": {params.profile_params}')
    base = "\n".join(base_lines)
    if not base.isascii():
        return None
    try:
        signature = base64.b64decode(member[1])
    except (binascii.Error, ValueError):
        return None
    return signature, base.encode()


def _algorithm(public_key: PublicKey) -> str:
    return SM2_SM3 if isinstance(public_key, Sm2PublicKey) else ED25519


def required_components(headers: Iterable[tuple[str, str]] | HeaderLines, body: bytes) -> tuple[str, ...]:
    """What a request must have signed: method and target URI, its Content-Digest with a body, its Idempotency-Key."""
    required = (*COVERED_COMPONENTS, "content-digest") if body else COVERED_COMPONENTS
    if header_lines(headers).has(IDEMPOTENCY_KEY):
        required = (*required, IDEMPOTENCY_KEY)
    return required


class _Verifier(HTTPMessageVerifier):
    # The time window is the gateway's own policy, enforced by check_created (±MSJX_SIGNATURE_MAX_SKEW, at most
    # 3600 s) before the signature is verified; the library's own 5 s bound on a future "created" would narrow it.
    max_clock_skew = datetime.timedelta(seconds=3600)


def check_created(params: SignatureParams, now: float, max_skew: int = MAX_SKEW_SECONDS) -> None:
    """Refuse a signature made more than `max_skew` seconds before or after `now`."""
    if abs(now - params.created) > max_skew:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_EXPIRED,
            f"signature created {int(now - params.created)} s from the server's clock; the window is ±{max_skew} s",
            key_id=params.key_id,
        )


async def verify_request(
    checker: SignatureChecker,
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]] | HeaderLines,
    body: bytes,
    public_key: PublicKey,
    params: SignatureParams,
) -> None:
    """Verify the signature over the request's method, target URI and, with a body, its Content-Digest (and its
    Idempotency-Key when it has one). `checker` makes the signature check itself; every refusal is a SignatureFailure.
    """
    lines = header_lines(headers)
    algorithm = _algorithm(public_key)
    signed = _profile_signed(method, url, lines, body, public_key, params) or _library_signed(
        method, url, lines, body, public_key, params
    )
    if await checker.verify(public_key_bytes(public_key), *signed, algorithm):
        return
    if isinstance(public_key, Ed25519PublicKey) and _openssl_verifies(public_key, *signed):
        return
    why = "the sm2-sm3 signature does not match the signature base" if algorithm == SM2_SM3 else ""
    raise SignatureFailure(
        ProblemCode.SIGNATURE_INVALID,
        compared_detail(method, url, params.covered, why),
        key_id=params.key_id,
        compared=True,
    )


def _openssl_verifies(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    # libsodium (the checkers' Ed25519) refuses non-canonical encodings and small-order points that OpenSSL, which
    # the library verifies with, accepts: after a False, OpenSSL's verdict is the one the library would have given.
    try:
        public_key.verify(signature, message)
    except CryptoInvalidSignature:
        return False
    return True


def _library_signed(
    method: str,
    url: str,
    wrapped: HeaderLines,
    body: bytes,
    public_key: PublicKey,
    params: SignatureParams,
) -> tuple[bytes, bytes]:
    """(signature, signature base) of any request, by the library, which refuses what is malformed or not covered."""
    digest_header = wrapped.get("content-digest")
    if body and digest_header is None:
        raise SignatureFailure(
            ProblemCode.DIGEST_MISSING, "a request with a body must carry Content-Digest", key_id=params.key_id
        )
    if digest_header is not None:
        try:
            ContentDigest.verify(digest_header, body)
        except HTTPMessageSignaturesException as exc:
            raise SignatureFailure(
                ProblemCode.DIGEST_MISMATCH, "Content-Digest does not match the request body", key_id=params.key_id
            ) from exc
    required = required_components(wrapped, body)
    if IDEMPOTENCY_KEY in required and IDEMPOTENCY_KEY not in params.covered:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_INVALID,
            "the Idempotency-Key header must be covered by the signature",
            key_id=params.key_id,
        )
    deferred = _Deferred(public_key)
    algorithm = _DeferredSm2 if isinstance(public_key, Sm2PublicKey) else _DeferredEd25519
    verifier = _Verifier(signature_algorithm=algorithm, key_resolver=_SingleKey(deferred))
    try:
        verifier.verify(
            _Message(method=method, url=url, headers=wrapped),
            max_age=None,
            expect_tag=None,
            require_components=required,
            body=body if body else None,
        )
    except HTTPMessageSignaturesException as exc:
        raise SignatureFailure(
            ProblemCode.SIGNATURE_INVALID,
            compared_detail(method, url, params.covered, exc),
            key_id=params.key_id,
            compared=True,
        ) from exc
    if deferred.signed is None:  # the library accepted without asking for a check: never let that pass
        raise SignatureFailure(
            ProblemCode.SIGNATURE_INVALID,
            compared_detail(method, url, params.covered, "no signature was checked"),
            key_id=params.key_id,
            compared=True,
        )
    return deferred.signed


def compared_detail(method: str, url: str, covered: tuple[str, ...], exc: Exception | str) -> str:
    """Which components the signature was checked over, and the verifier's view of the ones that come from the
    request line and Host (the usual suspects behind a proxy). No key, signature or header value beyond those."""
    parts = urlsplit(url)
    why = str(exc).strip()
    names = " ".join('"' + component + '"' for component in covered)
    return (
        f"signature does not verify{f' ({why})' if why else ''} over {names};"
        f" the gateway compared @method {method}, @target-uri {url}"
        f" (@authority {parts.netloc}, @scheme {parts.scheme})"
    )


def sign_request(
    method: str,
    url: str,
    headers: Any,
    body: bytes,
    *,
    key_id: str,
    private_key: PrivateKey,
    created: datetime.datetime | None = None,
    nonce: str | None = None,
) -> None:
    """Add Signature, Signature-Input and (with a body) Content-Digest to a mutable header mapping, in place.

    The algorithm is the key's: `ed25519` for an Ed25519 key, `sm2-sm3` for an SM2 one. An Idempotency-Key header,
    when present, is covered too.
    """
    covered = COVERED_COMPONENTS
    if headers.get(IDEMPOTENCY_KEY) is not None:
        covered = (*covered, IDEMPOTENCY_KEY)
    algorithm = Sm2Sm3 if isinstance(private_key, Sm2PrivateKey) else algorithms.ED25519
    signer = HTTPMessageSigner(signature_algorithm=algorithm, key_resolver=_SingleKey(private_key=private_key))
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
