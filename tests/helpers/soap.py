"""Shared by the SOAP façade tests: a small PKI (a CA, the listener's certificate, client certificates), the gateway's
own TLS listener with client certificates on a running gateway, and a legacy caller registered by certificate."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.access.certificates import add_cert
from gateway.server.protocol import guarded_protocol
from gateway.server.tls import tls_options
from gateway.soap.contract import PROBLEM_NS
from gateway.soap.messages import SOAP11_ENV, SOAP12_ENV
from schemas.api import CallerIn, GrantIn
from simulators import credit, golden_tax
from tests.helpers.certs import certificate_builder
from tests.helpers.gateways import RunningGateway, make_gateway
from tests.helpers.services import free_port
from tests.helpers.serving import served
from tests.helpers.upstreams import grant_all, started_simulator

LEGACY = "district-tax"  # the caller that only has a client certificate
LEGACY_PURPOSE = "DS-2025-010"
NARROW = "QZ-2025-007"  # the platform's narrow grants: credit `listed` only, golden-tax `uscc` and `status`


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


@dataclass
class Pki:
    root: Path
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, root: Path) -> Pki:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "msjx test district CA")])
        ca = (
            certificate_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(root / "ca", ca, key)
        return cls(root, ca, key)

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.crt"

    def issue(self, name: str, *, server: bool = False) -> tuple[Path, Path]:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = certificate_builder(subject, self.ca.subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), True
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
            ).add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        return _write(self.root / name, builder.sign(self.ca_key, hashes.SHA256()), key)


@asynccontextmanager
async def tls_listener(gw: RunningGateway, pki: Pki) -> AsyncIterator[str]:
    """The running gateway's app also served by the gateway's own TLS listener (as `serve` runs it with
    MSJX_TLS_CERT/KEY/CLIENT_CA), on another port; yields its https URL."""
    cert, key = pki.issue("127.0.0.1", server=True)
    settings = gw.settings.model_copy(update={"tls_cert": cert, "tls_key": key, "tls_client_ca": pki.ca_path})
    port = free_port()
    config = uvicorn.Config(
        gw.app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",  # the app's runtime is the running gateway's
        http=guarded_protocol(settings),
        **tls_options(settings),
    )
    async with served(config):
        yield f"https://127.0.0.1:{port}"


async def register_legacy_caller(gw: RunningGateway, pki: Pki) -> None:
    """A district system with no signing key: a certificate from the district CA with CN `district-tax`, and
    narrow grants on a REST-backed (credit) and a SOAP-backed (golden-tax) operation."""
    valid_to = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    async with gw.runtime.sessions() as session:
        await callers.add_caller(
            session,
            CallerIn(caller_id=LEGACY, name="区税务局旧系统", department="区税务局", roles=["platform"], keys=[]),
        )
        await add_cert(session, LEGACY, ca=pki.ca.public_bytes(serialization.Encoding.PEM), subject_cn=LEGACY)
        for service, operation, fields in (
            ("credit", "dishonest-debtor", ["listed"]),
            ("golden-tax", "tax-registration", ["uscc", "status"]),
        ):
            await grant_rows.add_grant(
                session,
                GrantIn(
                    caller_id=LEGACY,
                    service=service,
                    operation=operation,
                    purpose=LEGACY_PURPOSE,
                    fields=fields,
                    valid_to=valid_to,
                ),
                gw.runtime.adapters,
            )
    gw.runtime.directory.invalidate()


@asynccontextmanager
async def soap_gateway(data_dir: Path) -> AsyncIterator[RunningGateway]:
    """A gateway (PostgreSQL + Redis) in front of the credit (REST) and golden-tax (SOAP) simulators, the platform
    granted every golden-tax operation under PURPOSE and tax-registration narrowly (uscc, status) under NARROW,
    trusting 127.0.0.1 as a proxy that passes verified client certificates in X-Client-Cert."""
    async for credit_sim in started_simulator(credit):
        async for tax_sim in started_simulator(golden_tax):
            urls = {"credit": credit_sim.url, "golden-tax": tax_sim.url}
            async with make_gateway(
                "postgres_redis",
                data_dir=data_dir,
                upstream_urls=urls,
                upstream_timeout=2.0,
                trusted_proxies="127.0.0.1",
                client_cert_header="X-Client-Cert",
            ) as running:
                await grant_all(running, "golden-tax")
                async with running.runtime.sessions() as session:
                    await grant_rows.add_grant(
                        session,
                        GrantIn(
                            caller_id="platform",
                            service="golden-tax",
                            operation="tax-registration",
                            purpose=NARROW,
                            fields=["uscc", "status"],
                            valid_to=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1),
                        ),
                        running.runtime.adapters,
                    )
                running.runtime.directory.invalidate()
                yield running


def envelope(version: str, service: str, operation: str, inner: str, header: str = "") -> bytes:
    env = SOAP12_ENV if version == "1.2" else SOAP11_ENV
    return (
        f'<s:Envelope xmlns:s="{env}" xmlns:t="urn:msjx-gateway:soap:{service}"><s:Header>{header}</s:Header>'
        f"<s:Body><t:{operation}>{inner}</t:{operation}></s:Body></s:Envelope>"
    ).encode()


def call_body(service: str, operation: str, purpose: str, uscc: str, version: str = "1.1") -> bytes:
    inner = f"<t:purpose>{purpose}</t:purpose><t:params><t:uscc>{uscc}</t:uscc></t:params>"
    return envelope(version, service, operation, inner)


def fault_code(content: bytes) -> str | None:
    return etree.fromstring(content).findtext(f".//{{{PROBLEM_NS}}}code")


def wsse_signing_pair(common_name: str = "gw.example") -> tuple[str, str]:
    """A self-signed RSA certificate and its PKCS#8 key, both PEM: what an operator registers for WS-Security
    X.509 signatures toward an upstream (xmlsec signs with RSA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = certificate_builder(name, name, key.public_key()).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem
