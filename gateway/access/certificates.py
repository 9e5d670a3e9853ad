"""Mutual TLS for callers that cannot sign: a verified client certificate, registered to a caller, authenticates it.

A certificate is registered (`msjx-gateway callers add-cert`) by its SHA-256 fingerprint, or by its issuing CA
(every certificate that CA issued, optionally only with one subject CN). The chain is verified before the gateway
sees the certificate: by the gateway's own TLS listener (MSJX_TLS_CLIENT_CA), or by a reverse proxy listed in
MSJX_TRUSTED_PROXIES that passes it in the header MSJX_CLIENT_CERT_HEADER names (nginx: `$ssl_client_escaped_cert`;
or only its SHA-256 in hex) with `X-Client-Verify: SUCCESS`. From any other peer, or with no header named, those
headers are ignored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from gateway.access.authenticate import Principal
from gateway.access.directory import CallerInfo
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.forwarded import PEER_KEY
from gateway.http.problems import Problem
from gateway.storage.models import Caller, CallerCert
from schemas.errors import MsjxError
from schemas.problems import ProblemCode

VERIFY_HEADER = b"x-client-verify"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CertificateError(MsjxError, ValueError):
    """A certificate or fingerprint that cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class ClientCertificate:
    fingerprint: str  # SHA-256 of the DER, lower-case hex
    certificate: x509.Certificate | None  # None when a proxy passed only the fingerprint
    source: str  # "tls" (the gateway's listener) or "proxy"


def fingerprint_of(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def load_certificate(data: bytes | str) -> x509.Certificate:
    raw = data.encode() if isinstance(data, str) else data
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise CertificateError(f"not an X.509 certificate in PEM or DER ({exc})") from None


def normalize_fingerprint(text: str) -> str:
    value = text.strip().lower().replace(":", "").removeprefix("sha256=")
    if not _HEX64.match(value):
        raise CertificateError("a SHA-256 fingerprint is 64 hex digits (colons allowed)")
    return value


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


# --- where the certificate comes from ----------------------------------------------------------------------------


def client_certificate(request: Request, header_name: str) -> ClientCertificate | None:
    """The verified client certificate of this request, if any: from the gateway's TLS listener, or from a trusted
    proxy's header `header_name` (MSJX_CLIENT_CERT_HEADER). A certificate that cannot be read is refused (401), never
    ignored."""
    scope = request.scope
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if chain:
        certificate = _read(chain[0], "the TLS client certificate")
        return ClientCertificate(fingerprint_of(certificate), certificate, "tls")
    header = header_name.lower().encode("latin-1")
    trusted = getattr(request.app, "trusted_proxies", None)
    peer = scope.get(PEER_KEY) or (scope["client"][0] if scope.get("client") else None)
    if not header or not trusted or not trusted.trusts(peer):
        return None
    passed = verified = None
    for name, value in scope["headers"]:
        if name == header:
            passed = value.decode("latin-1").strip()
        elif name == VERIFY_HEADER:
            verified = value.decode("latin-1").strip()
    if not passed:
        return None
    if (verified or "").upper() != "SUCCESS":
        raise _refuse(ProblemCode.CERTIFICATE_UNVERIFIED, "the proxy did not report the client certificate as verified")
    if "BEGIN" in passed:
        certificate = _read(unquote(passed), f"the proxy's {header.decode()}")
        return ClientCertificate(fingerprint_of(certificate), certificate, "proxy")
    try:
        return ClientCertificate(normalize_fingerprint(passed), None, "proxy")
    except CertificateError as exc:
        raise _refuse(ProblemCode.CERTIFICATE_INVALID, f"the proxy's {header.decode()}: {exc}") from None


def _read(pem: str, what: str) -> x509.Certificate:
    try:
        return load_certificate(pem)
    except CertificateError as exc:
        raise _refuse(ProblemCode.CERTIFICATE_INVALID, f"{what}: {exc}") from None


def _refuse(code: ProblemCode, detail: str, **context: object) -> Problem:
    return Problem(code, detail, status=401, context=context)


# --- which caller it is ------------------------------------------------------------------------------------------


class CertificateAuthenticator:
    """Authentication by a verified client certificate, with what it needs: the registrations in the database, the
    header a trusted proxy passes the certificate in, and the clock its validity is judged by."""

    def __init__(self, sessions: async_sessionmaker, header_name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._sessions = sessions
        self._header_name = header_name
        self._clock = clock

    def client_certificate(self, request: Request) -> ClientCertificate | None:
        return client_certificate(request, self._header_name)

    async def authenticate(self, client: ClientCertificate) -> Principal:
        return await authenticate_certificate(self._sessions, client, self._clock.now())


async def authenticate_certificate(sessions: async_sessionmaker, client: ClientCertificate, now: datetime) -> Principal:
    """The caller a verified certificate is registered to, or a 401 Problem."""
    certificate = client.certificate
    if certificate is not None and not (certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc):
        raise _refuse(
            ProblemCode.CERTIFICATE_EXPIRED, f"the certificate {client.fingerprint[:16]}… is not valid at this time"
        )
    async with sessions() as session:
        rows = (await session.scalars(select(CallerCert).where(CallerCert.status == "active"))).all()
        match = _match(rows, client)
        if match is None:
            raise _refuse(
                ProblemCode.CERTIFICATE_UNKNOWN,
                f"no caller is registered for the client certificate with SHA-256 {client.fingerprint}"
                " (msjx-gateway callers add-cert)",
            )
        caller = await session.get(Caller, match.caller_id)
    if caller is None:
        raise _refuse(ProblemCode.CERTIFICATE_UNKNOWN, "the certificate's caller no longer exists")
    info = CallerInfo(caller.caller_id, caller.name, caller.department, frozenset(caller.roles))
    return Principal(caller=info, key_id=f"cert:{match.cert_id}")


def _match(rows: Any, client: ClientCertificate) -> CallerCert | None:
    for row in rows:
        if row.kind == "fingerprint" and row.fingerprint == client.fingerprint:
            return row
    if client.certificate is None:
        return None
    for row in rows:
        if row.kind != "issuer" or row.ca_pem is None:
            continue
        try:
            client.certificate.verify_directly_issued_by(load_certificate(row.ca_pem))
        except (ValueError, TypeError, InvalidSignature, CertificateError):  # not issued by this CA
            continue
        if row.subject_cn is None or row.subject_cn == _common_name(client.certificate):
            return row
    return None


def _common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


# --- registration ------------------------------------------------------------------------------------------------


def cert_out(row: CallerCert) -> dict[str, Any]:
    return {
        "cert_id": row.cert_id,
        "caller_id": row.caller_id,
        "kind": row.kind,
        "fingerprint": row.fingerprint,
        "subject_cn": row.subject_cn,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


async def add_cert(
    session: AsyncSession,
    caller_id: str,
    *,
    certificate: bytes | None = None,
    fingerprint: str | None = None,
    ca: bytes | None = None,
    subject_cn: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any]:
    """Register a client certificate (or a fingerprint, or an issuing CA) to a caller. CertificateError or a Problem
    (unknown caller, already registered) says why not."""
    if await session.get(Caller, caller_id) is None:
        raise Problem(ProblemCode.CALLER_UNKNOWN, f"no caller {caller_id!r}")
    if sum(value is not None for value in (certificate, fingerprint, ca)) != 1:
        raise CertificateError("give exactly one of a certificate, a fingerprint or an issuing CA")
    if subject_cn is not None and ca is None:
        raise CertificateError("a subject CN narrows an issuing CA; it needs --ca")
    ca_pem = None
    if ca is not None:
        authority = load_certificate(ca)
        kind, value, ca_pem = "issuer", fingerprint_of(authority), _pem(authority)
    elif certificate is not None:
        kind, value = "fingerprint", fingerprint_of(load_certificate(certificate))
    else:
        kind, value = "fingerprint", normalize_fingerprint(fingerprint or "")
    existing = (
        await session.scalars(
            select(CallerCert).where(
                CallerCert.fingerprint == value, CallerCert.kind == kind, CallerCert.status == "active"
            )
        )
    ).all()
    for row in existing:
        if kind == "fingerprint" or row.subject_cn == subject_cn:
            raise Problem(ProblemCode.CERTIFICATE_EXISTS, f"it is registered to {row.caller_id!r}")
    row = CallerCert(
        cert_id="c-" + secrets.token_hex(8),
        caller_id=caller_id,
        kind=kind,
        fingerprint=value,
        ca_pem=ca_pem,
        subject_cn=subject_cn,
        status="active",
        created_at=clock.now(),
    )
    session.add(row)
    await session.commit()
    return cert_out(row)


async def list_certs(session: AsyncSession, caller_id: str | None = None) -> list[dict[str, Any]]:
    query = select(CallerCert).order_by(CallerCert.created_at, CallerCert.cert_id)
    if caller_id is not None:
        query = query.where(CallerCert.caller_id == caller_id)
    return [cert_out(row) for row in (await session.scalars(query)).all()]


async def revoke_cert(session: AsyncSession, cert_id: str, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    row = await session.get(CallerCert, cert_id)
    if row is None:
        raise Problem(
            ProblemCode.CERTIFICATE_UNKNOWN,
            f"no registered certificate {cert_id!r}",
            status=404,
            title="Certificate not found",
        )
    if row.status != "revoked":
        row.status = "revoked"
        row.revoked_at = clock.now()
        await session.commit()
    return cert_out(row)
