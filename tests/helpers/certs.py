"""X.509 certificates for tests: the builder every test certificate starts from (valid from 5 minutes ago for a day)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes


def certificate_builder(
    subject: x509.Name, issuer: x509.Name, public_key: CertificateIssuerPublicKeyTypes
) -> x509.CertificateBuilder:
    """Subject, issuer, key, a random serial and a one-day validity; the caller adds extensions and signs."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
