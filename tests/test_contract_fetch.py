"""Contracts are fetched by URL only from hosts and networks the operator lists in MSJX_CONTRACT_FETCH_ALLOW:
empty means upload only, every redirect and every referenced document is checked again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from adapters.fetch_allow import FetchAllowlist
from gateway.http.problems import Problem
from gateway.settings import SettingsError, load_settings
from gateway.upstreams.registry import prepare
from tests.helpers.district_upstreams import EXAMPLES, serving
from tests.helpers.gateways import RunningGateway


@pytest.fixture(scope="module")
async def contracts() -> AsyncIterator[str]:
    """The example OpenAPI contract (which $refs a second document) on 127.0.0.1, with redirects to elsewhere."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/contracts/redirect", redirect)  # before the static route, which would shadow it
    app.router.add_static("/contracts/", EXAMPLES)
    async with serving(app) as url:
        yield url


def fetch(url: str, allow: str) -> Problem | None:
    try:
        prepare("district-rest", "openapi", source=url, fetch_allow=FetchAllowlist.from_setting(allow))
    except Problem as problem:
        return problem
    return None


def test_allowlist_entries() -> None:
    allow = FetchAllowlist.from_setting("district.example, *.gov.example 192.0.2.0/24 2001:db8::/32")
    assert allow.refusal("http://district.example/x?wsdl") is None
    assert allow.refusal("https://a.b.gov.example/api.yaml") is None
    assert allow.refusal("http://192.0.2.7:8080/x") is None
    assert allow.refusal("http://[2001:db8::1]/x") is None
    for refused in (
        "http://gov.example/x",  # '*.gov.example' names the names under it
        "http://district.example.attacker.example/x",
        "http://198.51.100.3/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:198.51.100.3]/x",
    ):
        assert allow.refusal(refused) is not None, refused
    # A name not listed passes only if every address it resolves to is in a listed network.
    assert FetchAllowlist.from_setting("127.0.0.0/8").refusal("http://localhost/x", lambda host: ["127.0.0.1"]) is None
    mixed = FetchAllowlist.from_setting("127.0.0.0/8")
    assert mixed.refusal("http://two.example/x", lambda host: ["127.0.0.1", "198.51.100.1"]) is not None
    assert "upload" in (FetchAllowlist.from_setting("").refusal("http://district.example/") or "")
    for bad in ("198.51.100.0/33", "bad host!", "*.", "fe80::zz/64"):
        with pytest.raises(ValueError, match="not"):
            FetchAllowlist.from_setting(bad)


def test_a_malformed_setting_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="MSJX_CONTRACT_FETCH_ALLOW"):
        load_settings(contract_fetch_allow="198.51.100.0/99")


async def test_fetch_only_from_allowed_hosts(contracts: str) -> None:
    url = f"{contracts}/contracts/district-openapi.yaml"
    empty = await asyncio.to_thread(fetch, url, "")
    assert empty is not None and (empty.status, empty.code) == (422, "contract_fetch_forbidden")
    assert empty.errors is not None and empty.errors[0]["field"] == "url"
    other = await asyncio.to_thread(fetch, url, "192.0.2.0/24, district.example")
    assert other is not None and other.code == "contract_fetch_forbidden" and "127.0.0.1" in other.detail
    assert await asyncio.to_thread(fetch, url, "127.0.0.1/32") is None  # the root and the document it $refs
    assert await asyncio.to_thread(fetch, url.replace("127.0.0.1", "localhost"), "localhost") is None


async def test_redirects_are_checked_again(contracts: str) -> None:
    inside = f"{contracts}/contracts/redirect?to={contracts}/contracts/district-openapi.yaml"
    assert await asyncio.to_thread(fetch, inside, "127.0.0.1") is None
    port = contracts.rsplit(":", 1)[1]
    for target in (f"http://127.0.0.2:{port}/contracts/district-openapi.yaml", "file:///etc/passwd"):
        outside = await asyncio.to_thread(fetch, f"{contracts}/contracts/redirect?to={target}", "127.0.0.1")
        assert outside is not None and outside.code == "contract_fetch_forbidden", target


async def test_the_api_refuses_a_url_when_fetching_is_off(gateway: RunningGateway, contracts: str) -> None:
    body = {
        "name": "district-rest",
        "owner_department": "湖里区数据管理局",
        "kind": "openapi",
        "url": f"{contracts}/contracts/district-openapi.yaml",
    }
    async with gateway.client(gateway.admin) as admin:
        refused = await admin.post("/v1/upstreams", json=body)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert (problem["code"], problem["errors"][0]["field"]) == ("contract_fetch_forbidden", "url")
    assert "MSJX_CONTRACT_FETCH_ALLOW" in problem["detail"]
