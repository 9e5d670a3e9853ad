"""MSJX_TRUSTED_PROXIES: forwarded scheme, host and client believed from trusted peers only (gateway/http/forwarded)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select as sql_select

from gateway.app import create_app
from gateway.audit.rows import AUDIT_TABLE
from gateway.http.forwarded import ForwardedView, TrustedProxies
from gateway.settings import SettingsError, load_settings
from gateway.storage import db
from security.signatures import sign_request
from tests.helpers.gateways import Identity, new_identity

PUBLIC = "https://gw.example:8443"  # what the client signs: the proxy's address
INTERNAL = "http://127.0.0.1:8000"  # what the gateway sees on the wire (nginx's default Host is the upstream's)
PROXY = "192.0.2.10"


def headers_of(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in pairs]


def test_the_setting_takes_addresses_and_networks_and_names_a_bad_entry() -> None:
    proxies = TrustedProxies.from_setting("127.0.0.1, 198.51.100.0/24 2001:db8::/32")
    assert proxies.trusts("127.0.0.1") and proxies.trusts("198.51.100.4") and proxies.trusts("2001:db8::7")
    assert proxies.trusts("::ffff:198.51.100.1"), "an IPv4-mapped peer is the IPv4 address"
    assert not proxies.trusts("127.0.0.2") and not proxies.trusts("192.0.2.1") and not proxies.trusts(None)
    assert not TrustedProxies.from_setting("")
    with pytest.raises(SettingsError, match=r"^MSJX_TRUSTED_PROXIES: 'proxy\.example' is not an IP address"):
        load_settings(trusted_proxies="127.0.0.1,proxy.example")


def test_forwarded_headers_of_an_untrusted_peer_are_not_read() -> None:
    proxies = TrustedProxies.from_setting("127.0.0.1")
    forged = headers_of(("X-Forwarded-Host", "gw.example"), ("Forwarded", "for=192.0.2.1;host=gw.example"))
    assert proxies.view("192.0.2.99", forged) is None
    assert TrustedProxies().view("127.0.0.1", forged) is None, "the default trusts nobody"


def test_forwarded_rfc7239_walks_back_through_trusted_hops_only() -> None:
    proxies = TrustedProxies.from_setting("127.0.0.1 198.51.100.0/24")
    # client 192.0.2.60 -> edge proxy 198.51.100.5 -> local proxy 127.0.0.1 -> gateway; a client-written element first.
    header = (
        'for=198.51.100.1;host=evil.example;proto=http, for=192.0.2.60;host="gw.example:8443";proto=https,'
        ' for="198.51.100.5:4711";host=127.0.0.1:8000;proto=http'
    )
    view = proxies.view("127.0.0.1", headers_of(("Forwarded", header)))
    assert view == ForwardedView(client="192.0.2.60", host="gw.example:8443", scheme="https")
    # The same chain with the edge proxy not trusted: only the element the local proxy wrote counts.
    narrow = TrustedProxies.from_setting("127.0.0.1")
    assert narrow.view("127.0.0.1", headers_of(("Forwarded", header))) == ForwardedView(
        client="198.51.100.5", host="127.0.0.1:8000", scheme="http"
    )
    ipv6 = proxies.view("127.0.0.1", headers_of(("Forwarded", 'for="[2001:db8::1]:80";proto=HTTPS')))
    assert ipv6 == ForwardedView(client="2001:db8::1", host=None, scheme="https")


def test_malformed_or_odd_forwarded_values_are_not_believed() -> None:
    proxies = TrustedProxies.from_setting("127.0.0.1")
    assert proxies.view("127.0.0.1", headers_of(("Forwarded", "for=192.0.2.1;for=192.0.2.2"))) is None
    assert proxies.view("127.0.0.1", headers_of(("Forwarded", "for 192.0.2.1"))) is None
    odd = proxies.view("127.0.0.1", headers_of(("Forwarded", 'for=_hidden;host="a b";proto=gopher')))
    assert odd == ForwardedView(client=None, host=None, scheme=None)


def test_x_forwarded_family_takes_the_values_of_the_outermost_trusted_hop() -> None:
    proxies = TrustedProxies.from_setting("127.0.0.1 198.51.100.5")
    view = proxies.view(
        "127.0.0.1",
        headers_of(
            ("X-Forwarded-For", "198.51.100.1, 192.0.2.60"),  # the first one the client wrote itself
            ("X-Forwarded-For", "198.51.100.5"),
            ("X-Forwarded-Host", "gw.example:8443, 198.51.100.9:8000"),
            ("X-Forwarded-Proto", "https, http"),
        ),
    )
    assert view == ForwardedView(client="192.0.2.60", host="gw.example:8443", scheme="https")


@asynccontextmanager
async def gateway_app(tmp_path: Path, trusted: str) -> AsyncIterator[tuple[Any, Identity]]:
    settings = load_settings(data_dir=tmp_path, trusted_proxies=trusted, signature_verifier="inline")
    await db.upgrade_async(settings)
    engine = db.create_engine(settings)
    async with db.sessionmaker(engine)() as session:
        admin = await new_identity(session, "admin", ["admin"], "市大数据中心")
    await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, admin


async def through_proxy(app: Any, admin: Identity, peer: str, forwarding: dict[str, str]) -> httpx.Response:
    """GET /v1/callers signed for the public URL, arriving from `peer` at the internal address with `forwarding`."""
    signed: dict[str, str] = {}
    sign_request("GET", f"{PUBLIC}/v1/callers", signed, b"", key_id=admin.key_id, private_key=admin.private_key)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=INTERNAL) as client:
        return await client.get("/v1/callers", headers={**signed, **forwarding})


X_FORWARDED = {"X-Forwarded-For": "192.0.2.60", "X-Forwarded-Host": "gw.example:8443", "X-Forwarded-Proto": "https"}
RFC7239 = {"Forwarded": 'for=192.0.2.60;host="gw.example:8443";proto=https'}


@pytest.mark.parametrize("forwarding", [X_FORWARDED, RFC7239], ids=["x-forwarded", "forwarded"])
async def test_a_trusted_proxy_rebuilds_the_target_uri_the_client_signed(
    tmp_path: Path, forwarding: dict[str, str]
) -> None:
    async with gateway_app(tmp_path, f"{PROXY}/32") as (app, admin):
        response = await through_proxy(app, admin, PROXY, forwarding)
        assert response.status_code == 200, response.text
        assert [caller["caller_id"] for caller in response.json()] == ["admin"]
        async with app.state.runtime.engine.connect() as connection:
            row = (
                await connection.execute(
                    sql_select(AUDIT_TABLE.c.client_addr).where(
                        AUDIT_TABLE.c.request_id == response.headers["X-Request-Id"]
                    )
                )
            ).one()
        assert row.client_addr == "192.0.2.60", "the audit names the client, not the proxy"


async def test_an_untrusted_peer_gets_signature_invalid_naming_what_was_compared(tmp_path: Path) -> None:
    async with gateway_app(tmp_path, "127.0.0.1") as (app, admin):
        response = await through_proxy(app, admin, PROXY, X_FORWARDED)
        assert response.status_code == 401
        problem = response.json()
        assert problem["code"] == "signature_invalid"
        detail = problem["detail"]
        assert '"@method" "@target-uri"' in detail
        assert f"@target-uri {INTERNAL}/v1/callers" in detail
        assert "@authority 127.0.0.1:8000, @scheme http" in detail
        assert f"x-forwarded-for, x-forwarded-host, x-forwarded-proto header(s) were ignored: its peer {PROXY}" in (
            detail
        )
        assert "MSJX_TRUSTED_PROXIES" in detail
        assert admin.key_id not in detail and "sig" not in detail.lower().replace("signature", "")
        # Without forwarding headers at all, the detail still says where to look.
        bare = (await through_proxy(app, admin, PROXY, {})).json()
        assert bare["code"] == "signature_invalid"
        assert "list the proxy in MSJX_TRUSTED_PROXIES" in bare["detail"]


async def test_the_unauthenticated_limit_counts_the_forwarded_client(tmp_path: Path) -> None:
    """An unsigned request through a trusted proxy is recorded (and limited) under the client's address."""
    async with gateway_app(tmp_path, PROXY) as (app, _admin):
        transport = httpx.ASGITransport(app=app, client=(PROXY, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=INTERNAL) as client:
            trusted = await client.get("/v1/callers", headers={"X-Forwarded-For": "192.0.2.61"})
        transport = httpx.ASGITransport(app=app, client=("192.0.2.99", 40000))
        async with httpx.AsyncClient(transport=transport, base_url=INTERNAL) as client:
            forged = await client.get("/v1/callers", headers={"X-Forwarded-For": "192.0.2.62"})
        addresses = {}
        async with app.state.runtime.engine.connect() as connection:
            for response in (trusted, forged):
                assert response.json()["code"] == "signature_missing"
                query = sql_select(AUDIT_TABLE.c.client_addr).where(
                    AUDIT_TABLE.c.request_id == response.headers["X-Request-Id"]
                )
                addresses[response] = (await connection.execute(query)).scalar_one()
        assert addresses[trusted] == "192.0.2.61"
        assert addresses[forged] == "192.0.2.99", "an untrusted peer cannot choose the address it is counted under"
