"""The web console over HTTP (the browser journeys are in test_console_browser.py): sign-in to 等保 level 3
(password policy, TOTP, lockout, idle expiry, cookies, CSRF), every 三员分立 refusal, console actions audited as
their API twins naming the console account, the console-users CLI and the demo's accounts file."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyotp
import pytest

from gateway.console import accounts
from gateway.console.auditor import mask_personal
from gateway.console.roles import ROLES
from gateway.console.session import principal_for
from gateway.console.store import ConsoleAccount
from gateway.storage.models import Caller
from tests.helpers.console import ConsoleWorld, console_world, csrf_of, signed_in
from tests.helpers.services import check_redis, create_test_database, drop_database


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, credit_url: str) -> AsyncIterator[ConsoleWorld]:
    async with console_world(tmp_path_factory.mktemp("console"), credit_url) as running:
        yield running


# --- units -------------------------------------------------------------------------------------------------------


def test_password_policy() -> None:
    assert accounts.password_problems("short1A!", "x")
    assert accounts.password_problems("alllowercaseletters", "x"), "one class of characters"
    assert accounts.password_problems("Zhang.San-2026x", "zhang.san"), "contains the username"
    assert accounts.password_problems("Aa1!Aa1!Aa1!Aa1!", "x"), "too few distinct characters"
    assert not accounts.password_problems("Correct-Horse-42", "operator")
    assert not accounts.password_problems(accounts.generate_password(), "anyone")


def test_vendored_htmx_is_the_pinned_file() -> None:
    static = Path(__file__).parents[1] / "gateway" / "console" / "static"
    digest = hashlib.sha256((static / "htmx-2.0.11.min.js").read_bytes()).hexdigest()
    assert digest == "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
    assert "Zero-Clause BSD" in (static / "htmx-LICENSE.txt").read_text()


def test_payloads_are_masked_unless_asked() -> None:
    document = {
        "id": "350203199001011234",
        "phone": "13912345678",
        "note": "账号 6222020200112233445 联系 13800001111",
        "account": 6222020200112233445,
        "uscc": "91350200MA2XYZ1234",
    }
    masked = mask_personal(document)
    assert "199001011234" not in str(masked) and masked["id"].startswith("350")
    assert masked["phone"] != "13912345678" and masked["phone"].endswith("5678")
    assert "6222020200112233445" not in str(masked) and "13800001111" not in masked["note"]
    assert masked["uscc"] == document["uscc"], "an enterprise's USCC is what the officer searched by"


def test_an_account_acts_as_one_role_of_its_caller() -> None:
    both = Caller(caller_id="ops", name="运维", department="市大数据中心", roles=["admin", "officer"])
    for role, api_role in (("operator", "admin"), ("auditor", "officer")):
        account = ConsoleAccount(username="u", display_name="u", role=role, caller_id="ops")
        assert principal_for(account, both).caller.roles == frozenset({api_role})
        assert principal_for(account, both).key_id == "console:u"
    admin = ConsoleAccount(username="sec", display_name="sec", role="security_admin", caller_id=None)
    assert principal_for(admin, None).caller.roles == frozenset(), "the security admin acts as no caller"


# --- signing in --------------------------------------------------------------------------------------------------


async def test_sign_in_sets_a_strict_http_only_cookie_and_audits(world: ConsoleWorld) -> None:
    async with signed_in(world, "auditor") as client:
        page = await client.get("/console/audit")
        assert page.status_code == 200 and "审计检索" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
    records = await world.records(event="console.login", key_id="console:auditor", decision="allowed")
    assert records and records[-1]["caller_id"] == "officer" and records[-1]["roles"] == "officer"


async def test_cookies_are_secure_unless_the_demo_turns_it_off(world: ConsoleWorld) -> None:
    world.app.state.console.secure_cookies = True
    try:
        async with await _client(world) as client:
            cookie = (await client.get("/console/login")).headers["set-cookie"].lower()
    finally:
        world.app.state.console.secure_cookies = False
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie


async def test_wrong_password_wrong_code_and_unknown_user_fail_alike(world: ConsoleWorld) -> None:
    async with await _client(world) as client:
        for username, password, code in (
            ("operator", "Wrong-Password-1", world.code("operator")),
            ("operator", world.accounts["operator"]["password"], "000000"),
            ("nobody-here", "Wrong-Password-1", "123456"),
        ):
            page = await client.get("/console/login")
            response = await client.post(
                "/console/login",
                data={"csrf_token": csrf_of(page.text), "username": username, "password": password, "totp": code},
            )
            assert response.status_code == 401
            assert "用户名、密码或动态口令错误" in response.text
    failures = await world.records(event="console.login", reason_code="login_failed")
    assert {record["key_id"] for record in failures} >= {"console:operator", "console:nobody-here"}


async def test_a_totp_code_is_accepted_once(world: ConsoleWorld) -> None:
    code = world.code("dept-officer")
    async with await _client(world) as client:
        statuses = []
        for _ in range(2):
            page = await client.get("/console/login")
            response = await client.post(
                "/console/login",
                data={
                    "csrf_token": csrf_of(page.text),
                    "username": "dept-officer",
                    "password": world.accounts["dept-officer"]["password"],
                    "totp": code,
                },
            )
            statuses.append(response.status_code)
    assert statuses == [303, 401]


async def test_five_failures_lock_the_account_for_fifteen_minutes(world: ConsoleWorld) -> None:
    created = await _new_account(world, "locktest", "auditor", "officer")
    async with await _client(world) as client:
        for _ in range(5):
            page = await client.get("/console/login")
            await client.post(
                "/console/login",
                data={"csrf_token": csrf_of(page.text), "username": "locktest", "password": "nope", "totp": "1"},
            )
        page = await client.get("/console/login")
        right = {
            "csrf_token": csrf_of(page.text),
            "username": "locktest",
            "password": created.password,
            "totp": world.code("locktest", created.totp_secret),
        }
        locked = await client.post("/console/login", data=right)
        assert locked.status_code == 401 and "账户已锁定" in locked.text, "even the right password is refused"
    assert await world.records(event="console.lockout", key_id="console:locktest")
    assert (await world.records(event="console.login", key_id="console:locktest"))[-1][
        "reason_code"
    ] == "account_locked"
    world.clock.advance(minutes=15)
    world.accounts["locktest"] = {"password": created.password, "totp_secret": created.totp_secret}
    async with signed_in(world, "locktest") as client:
        assert (await client.get("/console/audit")).status_code == 200, "unlocked after 15 minutes"


async def test_fifteen_idle_minutes_end_the_session(world: ConsoleWorld) -> None:
    async with signed_in(world, "operator") as client:
        world.clock.advance(minutes=14)
        assert (await client.get("/console/status")).status_code == 200, "activity resets the idle time"
        world.clock.advance(minutes=14)
        assert (await client.get("/console/status")).status_code == 200
        world.clock.advance(minutes=15, seconds=1)
        expired = await client.get("/console/status")
        assert expired.status_code == 303 and expired.headers["location"] == "/console/login?why=idle"
        assert (await client.get("/console/status")).status_code == 303, "the session stays ended"
    assert await world.records(event="console.session.expired", key_id="console:operator")


async def test_sign_out_ends_the_session(world: ConsoleWorld) -> None:
    async with signed_in(world, "secadmin") as client:
        page = await client.get("/console/accounts")
        out = await client.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await client.get("/console/accounts")).status_code == 303
    assert await world.records(event="console.logout", key_id="console:secadmin")


async def test_a_form_without_the_session_csrf_token_is_refused(world: ConsoleWorld) -> None:
    async with signed_in(world, "operator") as client:
        for token in (None, "forged"):
            data = {"caller_id": "csrf-x", "name": "x", "department": "x", "role": "platform"}
            if token:
                data["csrf_token"] = token
            response = await client.post("/console/callers", data=data)
            assert response.status_code == 403 and "表单令牌无效" in response.text
        listing = await client.get("/console/callers")
        assert "csrf-x" not in listing.text, "nothing was registered"
    assert len(await world.records(event="console.csrf_rejected", key_id="console:operator")) >= 2
    async with await _client(world) as client:
        await client.get("/console/login")
        response = await client.post("/console/login", data={"csrf_token": "forged", "username": "operator"})
        assert response.status_code == 403


# --- 三员分立 ----------------------------------------------------------------------------------------------------

REFUSED = {
    # 系统管理员: never audit records or payloads; nor accounts, nor department decisions.
    "operator": [
        ("GET", "/console/audit"),
        ("GET", "/console/audit/records/any"),
        ("POST", "/console/audit/records/any/payload"),
        ("GET", "/console/audit/chains"),
        ("POST", "/console/audit/export"),
        ("GET", "/console/accounts"),
        ("POST", "/console/accounts"),
        ("POST", "/console/requests/any/approve"),
        ("POST", "/console/catalog/new"),
    ],
    # 审计管理员: no configuration, no grants, no accounts.
    "auditor": [
        ("GET", "/console/upstreams"),
        ("POST", "/console/upstreams"),
        ("POST", "/console/callers"),
        ("POST", "/console/callers/platform/keys/any/revoke"),
        ("GET", "/console/requests"),
        ("POST", "/console/requests/any/approve"),
        ("POST", "/console/requests/any/revoke"),
        ("GET", "/console/accounts"),
        ("POST", "/console/accounts/operator/lock"),
    ],
    # 安全管理员: accounts and roles only; acts as neither of the other two.
    "security_admin": [
        ("GET", "/console/audit"),
        ("POST", "/console/audit/records/any/payload"),
        ("GET", "/console/upstreams"),
        ("POST", "/console/callers"),
        ("GET", "/console/requests"),
        ("POST", "/console/requests/any/approve"),
    ],
    "department": [
        ("GET", "/console/audit"),
        ("POST", "/console/audit/records/any/payload"),
        ("GET", "/console/upstreams"),
        ("POST", "/console/callers"),
        ("GET", "/console/accounts"),
    ],
}
USERS = {"operator": "operator", "auditor": "auditor", "security_admin": "secadmin", "department": "dept-officer"}


@pytest.mark.parametrize("role", sorted(REFUSED))
async def test_separation_of_duties(world: ConsoleWorld, role: str) -> None:
    username = USERS[role]
    async with signed_in(world, username) as client:
        home = await client.get(ROLES[role].home)
        assert home.status_code == 200
        token = csrf_of(home.text)
        before = len(await world.records(event="console.forbidden", key_id=f"console:{username}"))
        for method, path in REFUSED[role]:
            response = await client.request(method, path, data={"csrf_token": token} if method == "POST" else None)
            assert response.status_code == 403, (method, path)
            assert "三员分立" in response.text
    refusals = await world.records(event="console.forbidden", key_id=f"console:{username}")
    assert len(refusals) - before == len(REFUSED[role])
    assert {record["reason_code"] for record in refusals} == {"role_separation"}


async def test_the_security_admin_cannot_change_its_own_account(world: ConsoleWorld) -> None:
    async with signed_in(world, "secadmin") as client:
        page = await client.get("/console/accounts")
        response = await client.post("/console/accounts/secadmin/reset-totp", data={"csrf_token": csrf_of(page.text)})
        assert response.status_code == 403 and "不能修改自己的账户" in response.text


async def test_the_security_admin_adds_locks_and_resets_accounts(world: ConsoleWorld) -> None:
    async with signed_in(world, "secadmin") as client:
        token = csrf_of((await client.get("/console/accounts")).text)
        refused = await client.post(
            "/console/accounts",
            data={
                "csrf_token": token,
                "username": "wrongcaller",
                "display_name": "x",
                "role": "operator",
                "caller_id": "platform",
            },
        )
        assert refused.status_code == 422 and "没有 admin 角色" in refused.text
        added = await client.post(
            "/console/accounts",
            data={
                "csrf_token": token,
                "username": "ops2",
                "display_name": "值班员",
                "role": "operator",
                "caller_id": "admin",
            },
        )
        assert added.status_code == 200 and "仅显示一次" in added.text and "otpauth://" in added.text
        locked = await client.post("/console/accounts/ops2/lock", data={"csrf_token": token})
        assert locked.status_code == 200 and "已停用" in locked.text
    async with world.app.state.runtime.sessions() as session:
        assert (await session.get(ConsoleAccount, "ops2")).disabled
    assert await world.records(event="console.account.add", target_id="ops2", decision="allowed")
    assert await world.records(event="console.account.lock", target_id="ops2")


# --- actions are their API twins ---------------------------------------------------------------------------------


async def test_a_console_decision_is_audited_as_its_api_twin_naming_the_account(world: ConsoleWorld) -> None:
    request_id = await _submitted_request(world)
    async with signed_in(world, "dept-officer") as client:
        page = await client.get(f"/console/requests/{request_id}")
        token = csrf_of(page.text)
        incomplete = await client.post(
            f"/console/requests/{request_id}/refuse",
            data={"csrf_token": token, "reasons": "超出范围", "ground": "none"},
        )
        assert incomplete.status_code == 422, "a refusal needs a legal basis or an unmet condition"
        returned = await client.post(
            f"/console/requests/{request_id}/return",
            data={"csrf_token": token, "missing": "basis：请补充政策文件文号\nscope：请说明使用人员范围"},
        )
        assert returned.status_code == 303, returned.text
        detail = await client.get(returned.headers["location"])
        assert "退回补正" in detail.text and "请补充政策文件文号" in detail.text
    record = (await world.records(event="sharing.return", path=f"/v1/sharing-requests/{request_id}/return"))[-1]
    assert record["key_id"] == "console:dept-officer"
    assert record["caller_id"] == "credit-officer" and record["department"] == "市发改委"
    assert record["decision"] == "allowed" and record["purpose"]
    refusal = (await world.records(event="sharing.refuse", path=f"/v1/sharing-requests/{request_id}/refuse"))[-1]
    assert refusal["decision"] == "refused" and refusal["key_id"] == "console:dept-officer"


async def test_the_inbox_shows_working_days_and_overdue_in_red(world: ConsoleWorld) -> None:
    async with signed_in(world, "dept-officer") as client:
        page = await client.get("/console/requests")
        assert page.status_code == 200
        assert 'class="overdue"' in page.text and "已逾期" in page.text
        fragment = await client.get("/console/requests?state=refused&box=incoming", headers={"HX-Request": "true"})
        assert "<html" not in fragment.text and "不予共享" in fragment.text


async def test_catalog_create_and_edit(world: ConsoleWorld) -> None:
    async with signed_in(world, "dept-officer") as client:
        token = csrf_of((await client.get("/console/catalog/new")).text)
        form = {
            "csrf_token": token,
            "code": "FGW-XY-0999",
            "name": "信用承诺信息",
            "data_items": "uscc|统一社会信用代码|string|general\nlisted|是否在册|boolean|general",
            "share_attribute": "not_shared",
            "share_method": "api",
            "update_frequency": "daily",
            "basis_kind": "law",
            "basis_title": "《中华人民共和国数据安全法》",
            "basis_article": "第二十一条",
        }
        created = await client.post("/console/catalog/new", data=form)
        assert created.status_code == 303, created.text
        listing = await client.get("/console/catalog")
        assert "FGW-XY-0999" in listing.text and "第二十一条" in listing.text
        item_id = listing.text.split("FGW-XY-0999", 1)[1].split("/console/catalog/", 1)[1].split("/edit", 1)[0]
        edit = await client.get(f"/console/catalog/{item_id}/edit")
        assert "信用承诺信息" in edit.text
        changed = await client.post(f"/console/catalog/{item_id}/edit", data={**form, "name": "信用承诺信息（更新）"})
        assert changed.status_code == 303, changed.text
        assert "信用承诺信息（更新）" in (await client.get("/console/catalog")).text
    assert await world.records(event="catalog.update", key_id="console:dept-officer")


async def test_operator_registers_a_caller_and_revokes_its_key(world: ConsoleWorld) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from security.keys import public_key_pem

    pem = public_key_pem(Ed25519PrivateKey.generate().public_key())
    async with signed_in(world, "operator") as client:
        token = csrf_of((await client.get("/console/callers")).text)
        added = await client.post(
            "/console/callers",
            data={
                "csrf_token": token,
                "caller_id": "district-x",
                "name": "某区平台",
                "department": "某区数据局",
                "role": "platform",
                "key_id": "district-x.k1",
                "public_key": pem,
            },
        )
        assert added.status_code == 303, added.text
        revoked = await client.post("/console/callers/district-x/keys/district-x.k1/revoke", data={"csrf_token": token})
        assert revoked.status_code == 303
        assert "已吊销" in (await client.get("/console/callers")).text
        status = await client.get("/console/status")
        assert "就绪" in status.text
        upstreams = await client.get("/console/upstreams")
        assert "credit" in upstreams.text
        examples = Path(__file__).parents[1] / "schemas" / "contracts" / "examples"
        registered = await client.post(
            "/console/upstreams",
            data={
                "csrf_token": token,
                "name": "district-ws",
                "owner_department": "湖里区数据管理局",
                "kind": "wsdl",
                "endpoint": "http://192.0.2.10/ws",
            },
            files=[
                ("contract", (name, (examples / name).read_bytes(), "application/xml"))
                for name in ("district-wrapped.wsdl", "district-types.xsd", "district-common.xsd")
            ],
        )
        assert registered.status_code == 303, registered.text
        assert "district-ws" in (await client.get("/console/upstreams")).text
    assert (await world.records(event="admin.key.revoke"))[-1]["key_id"] == "console:operator"
    assert (await world.records(event="admin.upstream.add"))[-1]["key_id"] == "console:operator"


# --- CLI and demo -----------------------------------------------------------------------------------------------


def test_console_users_cli(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "console-users", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "NEW_PASSWORD": "Another-Secret-77"},
        )

    added = cli("add", "sec1", "--role", "security_admin", "--name", "安全管理员")
    assert added.returncode == 0, added.stderr
    assert "password: " in added.stdout and "otpauth://totp/" in added.stdout
    secret = added.stdout.split("totp secret: ", 1)[1].split()[0]
    assert len(pyotp.TOTP(secret).now()) == 6
    refused = cli("add", "dept1", "--role", "department", "--caller", "nobody")
    assert refused.returncode == 1 and "不存在" in refused.stderr
    assert cli("lock", "sec1").returncode == 0
    assert " disabled " in cli("list").stdout
    reset = cli("reset-totp", "sec1")
    assert reset.returncode == 0 and secret not in reset.stdout
    assert cli("set-password", "sec1", "--password-env", "NEW_PASSWORD").returncode == 0
    with sqlite3.connect(tmp_path / "msjx.db") as connection:
        rows = connection.execute(
            "SELECT event, decision, key_id, target_id, chain_id FROM audit_records"
            " WHERE event LIKE 'console.account.%' ORDER BY height"
        ).fetchall()
    events = [(event, decision, target) for event, decision, _, target, _ in rows]
    assert events == [
        ("console.account.add", "allowed", "sec1"),
        ("console.account.add", "refused", "dept1"),
        ("console.account.lock", "allowed", "sec1"),
        ("console.account.reset-totp", "allowed", "sec1"),
        ("console.account.set-password", "allowed", "sec1"),
    ]
    assert all(key.startswith("cli:") and chain.startswith("cli-") for _, _, key, _, chain in rows)


def test_demo_accounts_file_is_private_and_complete(world: ConsoleWorld) -> None:
    path = world.settings.data_dir / "demo" / "console-accounts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listing = json.loads(path.read_text())
    assert sorted(role for entry in listing for role in entry["roles"]) == sorted(ROLES)
    for entry in listing:
        assert set(entry) == {"username", "password", "totp_secret", "roles"}


# --- helpers -----------------------------------------------------------------------------------------------------


async def _client(world: ConsoleWorld) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=world.url, follow_redirects=False, timeout=30)


async def _new_account(world: ConsoleWorld, username: str, role: str, caller: str | None) -> accounts.NewAccount:
    async with world.app.state.runtime.sessions() as session:
        return await accounts.add_account(
            session,
            username=username,
            role=role,
            display_name=username,
            caller_id=caller,
            password=None,
            created_by="test",
            now=world.clock(),
            box=world.app.state.console.box,
        )


async def _submitted_request(world: ConsoleWorld) -> str:
    """A request to 市发改委 filed and endorsed by the demo's 市数据管理局 officers, through the workflow itself."""
    from sqlalchemy import select

    from gateway.demo.sharing import DATA_HEAD, DATA_OFFICER
    from gateway.sharing import workflow
    from gateway.storage.models import CatalogItem
    from schemas.sharing import EndorseIn, Purpose, SharingRequestIn

    async with world.app.state.runtime.sessions() as session:
        item = (await session.scalars(select(CatalogItem).where(CatalogItem.operation == "abnormal-operation"))).one()
        body = SharingRequestIn(
            item_id=item.item_id,
            fields=["uscc", "listed"],
            purpose=Purpose(code="XM-2025-099", name="测试"),
            basis="《厦门市惠企政策免申即享工作方案》",
            scenario="资格比对",
            scope="免申即享平台",
            valid_to=world.clock().replace(year=world.clock().year + 1),
            daily_volume=100,
            callers=["platform"],
        )
        now = world.app.state.sharing.now()
        filed = await workflow.file_request(session, DATA_OFFICER, body, now)
        await workflow.endorse(session, DATA_HEAD, filed.row.request_id, EndorseIn(), now)
        return filed.row.request_id


# --- PostgreSQL and Redis -----------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_console_on_postgresql_and_redis(tmp_path: Path, credit_url: str) -> None:
    """Sessions, lockout, the inbox, search and the charts' SQL on the production stores."""
    database = await create_test_database()
    try:
        async with console_world(tmp_path, credit_url, database_url=database, redis_url=await check_redis()) as pg:
            async with signed_in(pg, "dept-officer") as client:
                inbox = await client.get("/console/requests")
                assert inbox.status_code == 200 and 'class="overdue"' in inbox.text
            async with signed_in(pg, "auditor") as client:
                search = await client.get("/console/audit", params={"go": "1", "event": "console.login"})
                assert search.status_code == 200 and "console:dept-officer" in search.text
                charts = await client.get("/console/audit/charts")
                assert charts.status_code == 200 and charts.text.count("<svg") == 5
                chains = await client.get("/console/audit/chains")
                assert chains.status_code == 200 and "node-1" in chains.text
                pg.clock.advance(minutes=16)
                assert (await client.get("/console/audit")).status_code == 303
            async with signed_in(pg, "operator") as client:
                assert "credit" in (await client.get("/console/upstreams")).text
    finally:
        await drop_database(database)


async def test_totp_secrets_are_sealed_at_rest(world: ConsoleWorld) -> None:
    async with world.app.state.runtime.sessions() as session:
        stored = (await session.get(ConsoleAccount, "auditor")).totp_secret
    assert stored.startswith(accounts.SEALED) and world.accounts["auditor"]["totp_secret"] not in stored
    box = world.app.state.console.box
    assert box.open("auditor", stored) == world.accounts["auditor"]["totp_secret"]
    with pytest.raises(accounts.AccountError):
        box.open("operator", stored)  # bound to its account: a copied value does not open for another
    with pytest.raises(accounts.AccountError):
        accounts.SecretBox.from_master(b"\x01" * 32).open("auditor", stored)


async def test_audit_search_by_problem_code_and_cursor_pages(world: ConsoleWorld) -> None:
    async with world.app.state.runtime.sessions() as session:
        await accounts.add_account(
            session,
            username="codetest",
            role="auditor",
            display_name="codetest",
            caller_id="officer",
            password=None,
            created_by="test",
            now=world.clock(),
            box=world.app.state.console.box,
        )
    async with await _client(world) as client:
        for _ in range(3):  # three refusals coded login_failed (fewer than five: no lockout)
            page = await client.get("/console/login")
            await client.post(
                "/console/login",
                data={"csrf_token": csrf_of(page.text), "username": "codetest", "password": "x", "totp": "1"},
            )
    async with signed_in(world, "auditor") as client:
        found = await client.get(
            "/console/audit", params={"go": "1", "code": "login_failed", "caller": "console:codetest"}
        )
        assert found.status_code == 200 and found.text.count("console.login") == 3
        assert "更多" not in found.text
        first = await client.get(
            "/console/audit", params={"go": "1", "code": "login_failed", "caller": "console:codetest", "limit": "2"}
        )
        assert first.text.count("console.login") == 2 and "更多" in first.text
        more = first.text.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        rest = await client.get(more, headers={"HX-Request": "true"})
        assert "<html" not in rest.text and rest.text.count("console.login") == 1 and "更多" not in rest.text
    search = (await world.records(event="audit.search", key_id="console:auditor"))[-1]
    assert search["decision"] == "allowed"


async def test_no_audit_record_no_console_action(world: ConsoleWorld) -> None:
    from gateway.audit.writer import AuditUnavailable

    audit = world.app.state.runtime.audit

    async def down(event: object) -> None:
        raise AuditUnavailable("test: the audit store is down")

    async with signed_in(world, "auditor") as client:
        token = csrf_of((await client.get("/console/audit/export")).text)
        audit.append = down
        try:
            charts = await client.get("/console/audit/charts")
            export = await client.post("/console/audit/export", data={"csrf_token": token})
            async with await _client(world) as stranger:
                page = await stranger.get("/console/login")
                login = await stranger.post(
                    "/console/login",
                    data={"csrf_token": csrf_of(page.text), "username": "operator", "password": "x", "totp": "1"},
                )
        finally:
            del audit.append
    assert charts.status_code == 503 and "审计日志暂不可用" in charts.text
    assert export.status_code == 503 and "application/x-ndjson" not in export.headers["content-type"]
    assert login.status_code == 503 and "审计日志不可用" in login.text
