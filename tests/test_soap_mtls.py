"""Mutual TLS for legacy SOAP callers: a client certificate registered with `callers add-cert` (by issuing CA and
subject CN, or by fingerprint) authenticates the caller, verified either by the gateway's own TLS listener or by a
trusted proxy that passes it in MSJX_CLIENT_CERT_HEADER; from an untrusted peer that header means nothing."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.access.certificates import add_cert
from gateway.http.forwarded import TrustedProxies
from simulators.enterprises import DEMO_USCC
from tests.helpers.calls import last_record
from tests.helpers.gateways import RunningGateway
from tests.helpers.nginx import nginx_block, run_site, self_signed, substitute
from tests.helpers.services import free_port
from tests.helpers.soap import (
    LEGACY,
    LEGACY_PURPOSE,
    Pki,
    call_body,
    fault_code,
    register_legacy_caller,
    soap_gateway,
    tls_listener,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with soap_gateway(tmp_path_factory.mktemp("mtls")) as running:
        yield running


@pytest.fixture(scope="module")
async def pki(gw: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    authority = Pki.create(tmp_path_factory.mktemp("pki"))
    await register_legacy_caller(gw, authority)
    return authority


@pytest.fixture(scope="module")
async def https(gw: RunningGateway, pki: Pki) -> AsyncIterator[str]:
    async with tls_listener(gw, pki) as url:
        yield url


def client(pki: Pki, url: str, cert: tuple[Path, Path] | None) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.AsyncClient(base_url=url, verify=context, timeout=10)


async def test_a_certificate_from_the_registered_ca_and_cn_calls_both_services(
    gw: RunningGateway, pki: Pki, https: str
) -> None:
    async with client(pki, https, pki.issue(LEGACY)) as legacy:
        credit = await legacy.post(
            "/soap/credit", content=call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
        )
        record = await last_record(gw)
        tax = await legacy.post(
            "/soap/golden-tax", content=call_body("golden-tax", "tax-registration", LEGACY_PURPOSE, DEMO_USCC)
        )
        refused = await legacy.post(
            "/soap/credit", content=call_body("credit", "dishonest-debtor", "XM-2025-001", DEMO_USCC)
        )
    assert credit.status_code == 200, credit.text
    assert b"<tns:listed>" in credit.content and b"<tns:uscc>" not in credit.content
    assert record["caller_id"] == LEGACY and record["key_id"].startswith("cert:c-") and record["event"] == "soap.invoke"
    assert tax.status_code == 200, tax.text
    assert b"<tns:status>" in tax.content and b"<tns:name>" not in tax.content
    assert refused.status_code == 500 and fault_code(refused.content) == "purpose_not_granted"


async def test_other_subjects_and_unknown_cas_are_refused(
    gw: RunningGateway, pki: Pki, https: str, tmp_path: Path
) -> None:
    async with client(pki, https, pki.issue("someone-else")) as other:
        response = await other.post(
            "/soap/credit", content=call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
        )
    assert response.status_code == 500 and fault_code(response.content) == "certificate_unknown"
    # A certificate the listener cannot verify never reaches the application: the handshake fails.
    stranger = self_signed(tmp_path)
    with pytest.raises(httpx.HTTPError):
        async with client(pki, https, stranger) as untrusted:
            await untrusted.post("/soap/credit", content=b"<x/>")
    async with client(pki, https, None) as anonymous:
        unsigned = await anonymous.post(
            "/soap/credit", content=call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
        )
    assert fault_code(unsigned.content) == "signature_missing"


async def test_a_certificate_registered_by_fingerprint(gw: RunningGateway, pki: Pki, https: str) -> None:
    kiosk = pki.issue("kiosk-7")
    async with gw.runtime.sessions() as session:
        row = await add_cert(session, LEGACY, certificate=kiosk[0].read_bytes())
    assert row["kind"] == "fingerprint" and len(row["fingerprint"]) == 64
    async with client(pki, https, kiosk) as legacy:
        response = await legacy.post(
            "/soap/credit", content=call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
        )
    assert response.status_code == 200, response.text


async def test_a_trusted_proxy_passes_the_verified_certificate(gw: RunningGateway, pki: Pki) -> None:
    pem = pki.issue(LEGACY)[0].read_text()
    body = call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
    passed = {"X-Client-Cert": quote(pem), "X-Client-Verify": "SUCCESS"}
    async with httpx.AsyncClient(base_url=gw.url) as proxy:
        allowed = await proxy.post("/soap/credit", content=body, headers=passed)
        unverified = await proxy.post("/soap/credit", content=body, headers={**passed, "X-Client-Verify": "FAILED:x"})
        trusted, gw.app.trusted_proxies = gw.app.trusted_proxies, TrustedProxies()
        try:
            untrusted = await proxy.post("/soap/credit", content=body, headers=passed)
        finally:
            gw.app.trusted_proxies = trusted
    assert allowed.status_code == 200, allowed.text
    assert fault_code(unverified.content) == "certificate_unverified"
    assert fault_code(untrusted.content) == "signature_missing"  # the header alone proves nothing


async def test_add_cert_refuses_what_it_cannot_use(gw: RunningGateway, pki: Pki) -> None:
    from gateway.access.certificates import CertificateError
    from gateway.http.problems import Problem

    ca = pki.ca.public_bytes(serialization.Encoding.PEM)
    async with gw.runtime.sessions() as session:
        with pytest.raises(CertificateError, match="64 hex"):
            await add_cert(session, LEGACY, fingerprint="abc")
        with pytest.raises(CertificateError, match="exactly one"):
            await add_cert(session, LEGACY, fingerprint="ab" * 32, ca=ca)
        with pytest.raises(Problem) as taken:
            await add_cert(session, LEGACY, ca=ca, subject_cn=LEGACY)
    assert taken.value.code == "certificate_exists"


async def test_nginx_verifies_the_certificate_and_passes_it(
    gw: RunningGateway, pki: Pki, nginx_binary: str, tmp_path: Path
) -> None:
    """docs/adapters.md's nginx block, in Debian's nginx: it verifies the client certificate and passes it; a
    client's own X-Client-Cert header never gets through."""
    cert, key = pki.issue("127.0.0.1", server=True)
    port = free_port()
    site = substitute(
        nginx_block("adapters.md"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "/etc/ssl/msjx/gw.example.crt": str(cert),
            "/etc/ssl/msjx/gw.example.key": str(key),
            "/etc/ssl/msjx/client-cas.pem": str(pki.ca_path),
            "proxy_pass http://127.0.0.1:8000;": f"proxy_pass {gw.url};",
        },
    )
    proxy = run_site(tmp_path, nginx_binary, site, port)
    url = f"https://127.0.0.1:{port}"
    body = call_body("credit", "dishonest-debtor", LEGACY_PURPOSE, DEMO_USCC)
    forged = {"X-Client-Cert": quote(pki.issue(LEGACY)[0].read_text()), "X-Client-Verify": "SUCCESS"}
    try:
        async with client(pki, url, pki.issue(LEGACY)) as legacy:
            allowed = await legacy.post("/soap/credit", content=body)
            record = await last_record(gw)
        async with client(pki, url, None) as anonymous:
            spoofed = await anonymous.post("/soap/credit", content=body, headers=forged)
        async with client(pki, url, self_signed(tmp_path)) as stranger:
            unverified = await stranger.post("/soap/credit", content=body)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert allowed.status_code == 200, allowed.text
    assert record["caller_id"] == LEGACY and record["event"] == "soap.invoke"
    assert fault_code(spoofed.content) == "signature_missing"  # nginx replaced the forged headers with nothing
    assert unverified.status_code == 400  # nginx refuses a certificate it cannot verify
