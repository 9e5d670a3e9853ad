"""Console sign-in through an OpenID Connect provider (simulators/oidc.py as its own process) over real HTTP: the
identity maps to the local account and its role; unknown, locked, spoiled tokens and missing second factors are
refused; every outcome is audited like a local sign-in."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from gateway.audit.search import open_payload
from gateway.console import accounts
from gateway.settings import SettingsError, load_settings
from simulators import oidc as provider
from tests.helpers.console import ConsoleWorld, console_world, csrf_of
from tests.helpers.processes import stop

REFRESH = re.compile(r'http-equiv="refresh" content="0;url=([^"]+)"')


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.oidc", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", banner)
        assert match, f"the provider did not start: {banner!r}"
        yield match.group(1)
    finally:
        stop(process)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, credit_url: str, idp: str) -> AsyncIterator[ConsoleWorld]:
    async with console_world(
        tmp_path_factory.mktemp("console-oidc"),
        credit_url,
        oidc_issuer=idp,
        oidc_client_id=provider.CLIENT_ID,
        oidc_client_secret=provider.CLIENT_SECRET,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
async def next_sign_in(idp: str) -> AsyncIterator[None]:
    yield
    async with httpx.AsyncClient() as client:
        await client.delete(f"{idp}/_sim/next")


async def _as(idp: str, **next_sign_in: object) -> None:
    async with httpx.AsyncClient() as client:
        (await client.post(f"{idp}/_sim/next", json=next_sign_in)).raise_for_status()


async def _sign_in(client: httpx.AsyncClient) -> httpx.Response:
    """The button's flow: the gateway → the IdP's authorize → back to the callback, redirects followed."""
    return await client.get("/console/oidc/login", follow_redirects=True)


def _client(world: ConsoleWorld) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=world.url, follow_redirects=False, timeout=30)


def test_settings_all_or_nothing() -> None:
    assert load_settings().oidc_issuer is None
    wrong = [
        ({"oidc_issuer": "https://idp.example"}, "MSJX_OIDC_CLIENT_ID"),
        ({"oidc_client_id": "x"}, "MSJX_OIDC_ISSUER"),
        ({"oidc_issuer": "http://idp.example", "oidc_client_id": "x", "oidc_client_secret": "s"}, "MSJX_OIDC_ISSUER"),
        ({"oidc_issuer": "https://idp.example", "oidc_client_id": "x"}, "MSJX_OIDC_CLIENT_SECRET"),
    ]
    for overrides, named in wrong:
        with pytest.raises(SettingsError) as caught:
            load_settings(**overrides)
        assert str(caught.value).startswith(named) and "\n" not in str(caught.value)


async def test_the_button_shows_only_when_configured(world: ConsoleWorld) -> None:
    async with _client(world) as client:
        assert "统一身份认证登录" in (await client.get("/console/login")).text
        settings = world.app.state.console.settings
        world.app.state.console.settings = settings.model_copy(update={"oidc_issuer": None})
        try:
            assert "统一身份认证登录" not in (await client.get("/console/login")).text
            assert (await client.get("/console/oidc/login")).status_code == 404
        finally:
            world.app.state.console.settings = settings


async def test_sign_in_maps_to_the_local_account_and_its_role(world: ConsoleWorld, idp: str) -> None:
    await _as(idp, user="auditor")
    async with _client(world) as client:
        done = await _sign_in(client)
        assert done.status_code == 200, done.text
        assert [str(hop.url).split("?")[0] for hop in done.history][1] == f"{idp}/authorize"
        home = REFRESH.search(done.text)
        assert home and home.group(1) == "/console/audit"
        cookie = done.headers["set-cookie"].lower()
        assert "msjx_console=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        page = await client.get("/console/audit")
        assert page.status_code == 200 and "审计检索" in page.text
        # 三员分立 applies unchanged: the auditor has no department pages.
        assert (await client.get("/console/requests")).status_code == 403
        # The normal session: its CSRF token, and signing out ends it.
        out = await client.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await client.get("/console/audit")).status_code == 303
    record = (await world.records(event="console.login", key_id="console:auditor"))[-1]
    assert record["decision"] == "allowed" and record["caller_id"] == "officer" and record["roles"] == "officer"
    assert await _detail(world, record) == {"method": "oidc", "issuer": idp, "sub": "sub-auditor"}


async def test_an_unknown_identity_is_refused_and_audited(world: ConsoleWorld, idp: str) -> None:
    await _as(idp, user="zhang.nobody")
    async with _client(world) as client:
        refused = await _sign_in(client)
        assert refused.status_code == 403 and "未开通" in refused.text
        assert "msjx_console=" not in refused.headers.get("set-cookie", "")
    record = (await world.records(event="console.login", key_id="console:zhang.nobody"))[-1]
    assert record["decision"] == "refused" and record["reason_code"] == "oidc_unknown_account"


async def _detail(world: ConsoleWorld, record: dict[str, object]) -> dict[str, object]:
    return orjson.loads(await open_payload(world.app.state.runtime.keyring, record, "response"))


@pytest.mark.parametrize(
    ("fault", "failed"),
    [("bad_signature", "signature"), ("wrong_audience", "audience"), ("wrong_nonce", "nonce"), ("expired", "expired")],
)
async def test_a_spoiled_id_token_is_refused_and_audited(
    world: ConsoleWorld, idp: str, fault: str, failed: str
) -> None:
    before = len(await world.records(event="console.login", reason_code="oidc_failed"))
    await _as(idp, user="dept-officer", fault=fault)
    async with _client(world) as client:
        refused = await _sign_in(client)
        assert refused.status_code == 401 and "登录失败" in refused.text
        assert (await client.get("/console/requests")).status_code == 303, "no session"
    records = await world.records(event="console.login", reason_code="oidc_failed")
    assert len(records) == before + 1
    assert await _detail(world, records[-1]) == {"method": "oidc", "failed": failed}


async def test_a_locked_account_is_refused_and_audited(world: ConsoleWorld, idp: str) -> None:
    async with world.app.state.runtime.sessions() as db:
        await accounts.lock_account(db, "operator", world.clock(), minutes=5)
    await _as(idp, user="operator")
    try:
        async with _client(world) as client:
            refused = await _sign_in(client)
            assert refused.status_code == 423 and "账户已锁定" in refused.text
    finally:
        async with world.app.state.runtime.sessions() as db:
            await accounts.unlock_account(db, "operator")
    record = (await world.records(event="console.login", key_id="console:operator"))[-1]
    assert record["decision"] == "refused" and record["reason_code"] == "account_locked"


async def test_one_factor_at_the_idp_is_not_enough(world: ConsoleWorld, idp: str) -> None:
    await _as(idp, user="dept-officer", amr=["pwd"])
    async with _client(world) as client:
        assert (await _sign_in(client)).status_code == 401
    record = (await world.records(event="console.login", key_id="console:dept-officer"))[-1]
    assert record["reason_code"] == "second_factor_missing"


async def test_a_callback_without_its_pending_sign_in_is_refused(world: ConsoleWorld) -> None:
    async with _client(world) as client:
        forged = await client.get("/console/oidc/callback", params={"code": "x", "state": "y"})
        assert forged.status_code == 401
        # A pending sign-in the browser wrote itself, not sealed by the gateway, is no pending sign-in.
        unsealed = orjson.dumps({"state": "y", "nonce": "n", "verifier": "v", "started": 9e9}).decode()
        client.cookies.set("msjx_console_oidc", unsealed, path="/console/oidc")
        forged = await client.get("/console/oidc/callback", params={"code": "x", "state": "y"})
        assert forged.status_code == 401
    record = (await world.records(event="console.login", reason_code="oidc_failed"))[-1]
    assert await _detail(world, record) == {"method": "oidc", "failed": "state"}


async def test_a_sign_in_that_took_longer_than_ten_minutes_by_the_consoles_clock_is_refused(
    world: ConsoleWorld, idp: str
) -> None:
    await _as(idp, user="auditor")
    async with _client(world) as client:
        to_idp = await client.get("/console/oidc/login")
        assert to_idp.status_code == 303
        back = await client.get(to_idp.headers["location"])  # the IdP answers at once, with its code
        assert back.is_redirect and back.headers["location"].startswith(f"{world.url}/console/oidc/callback")
        world.clock.advance(minutes=11)  # the console's clock, not the machine's: the pending sign-in has lapsed
        late = await client.get(back.headers["location"])
        assert late.status_code == 401
    record = (await world.records(event="console.login", reason_code="oidc_failed"))[-1]
    assert await _detail(world, record) == {"method": "oidc", "failed": "state"}
