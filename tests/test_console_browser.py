"""The web console in a real browser: Debian's chromium driven by Playwright, against a gateway seeded like
`serve --demo`. Each role's main journey end to end, CSRF rejection, lockout, idle expiry (the console's clock is
moved, nobody waits 15 minutes) and the 三员分立 refusals, at 1280×800 and with the keyboard where it matters.

MSJX_CONSOLE_SCREENSHOTS=1 writes the main pages to docs/console/ (README and docs/console.md show them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from gateway.console import accounts
from simulators.enterprises import DEMO_USCC
from tests.helpers.console import ConsoleWorld, console_world

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).parents[1] / "docs" / "console"
PURPOSE = "XM-2025-011"  # the demo's request waiting for 市发改委's decision


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, credit_url: str) -> AsyncIterator[ConsoleWorld]:
    # Secure cookies as in production: chromium keeps them for http://127.0.0.1, a potentially trustworthy origin.
    async with console_world(
        tmp_path_factory.mktemp("console-browser"), credit_url, console_secure_cookies=True
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        if os.environ.get("REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: scripts/run-tests.sh installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        # --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def context(browser: object) -> AsyncIterator[object]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")  # type: ignore[attr-defined]
    try:
        yield context
    finally:
        await context.close()


async def shoot(page: object, name: str, tmp_path: Path, *, full_page: bool = False) -> None:
    target = DOCS if os.environ.get("MSJX_CONSOLE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(target / f"{name}.png"), full_page=full_page)  # type: ignore[attr-defined]


async def sign_in(page: object, world: ConsoleWorld, username: str) -> None:
    """With the keyboard: from the username field, Tab moves on, Enter submits."""
    await page.goto(world.url + "/console/login")  # type: ignore[attr-defined]
    await page.get_by_label("用户名").focus()  # type: ignore[attr-defined]
    keyboard = page.keyboard  # type: ignore[attr-defined]
    await keyboard.type(username)
    await keyboard.press("Tab")
    await keyboard.type(world.accounts[username]["password"])
    await keyboard.press("Tab")
    await keyboard.type(world.code(username))
    async with page.expect_navigation():  # type: ignore[attr-defined]
        await keyboard.press("Enter")
    await page.wait_for_load_state()  # type: ignore[attr-defined]


async def test_officer_approves_and_the_platform_gets_exactly_those_fields_then_the_auditor_reads_it(
    world: ConsoleWorld, context: object, tmp_path: Path
) -> None:
    page = await context.new_page()  # type: ignore[attr-defined]
    await page.goto(world.url + "/console/login")
    await shoot(page, "login", tmp_path)
    await sign_in(page, world, "dept-officer")
    assert page.url.endswith("/console/requests")
    await shoot(page, "inbox", tmp_path)
    assert await page.locator("tr.overdue").count() >= 1, "the demo's overdue request is marked"
    row = page.locator("tr", has_text=PURPOSE)
    await row.get_by_role("link").click()
    await page.wait_for_url("**/console/requests/*")
    await shoot(page, "request", tmp_path)
    approve = page.locator("form[action$='/approve']")
    await approve.get_by_label("uscc").uncheck()  # grant only `listed`
    await approve.get_by_label("每日配额").fill("100")
    async with page.expect_navigation():
        await approve.get_by_role("button", name="同意").click()
    assert "已同意" in await page.locator(".flash").inner_text()
    assert "已授权" in await page.locator("h1").inner_text()

    async with httpx.AsyncClient(base_url=world.url, auth=world.platform_auth(), timeout=30) as platform:
        answer = await platform.post(
            "/v1/services/credit/abnormal-operation", json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}}
        )
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["data"]) == {"listed"}, "exactly the approved fields"
        # A call for a purpose never granted, refused: the charts show refusals too.
        refused = await platform.post(
            "/v1/services/credit/serious-violation", json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}}
        )
        assert refused.status_code == 403
    approval = (await world.records(event="sharing.approve", key_id="console:dept-officer"))[-1]
    assert approval["caller_id"] == "credit-officer" and approval["purpose"] == PURPOSE

    # The security officer finds that call by the enterprise's USCC and reads its payload, stating why.
    auditor = await context.new_page()  # type: ignore[attr-defined]
    await context.clear_cookies()  # type: ignore[attr-defined]
    await sign_in(auditor, world, "auditor")
    await auditor.get_by_label("企业统一社会信用代码").fill(DEMO_USCC)
    await auditor.get_by_label("用途").fill(PURPOSE)
    async with auditor.expect_navigation():
        await auditor.get_by_role("button", name="检索").click()
    results = auditor.locator("#results tr", has_text="service.invoke")
    assert await results.count() == 1
    await shoot(auditor, "audit-search", tmp_path)
    await results.get_by_role("link").click()
    await auditor.wait_for_url("**/console/audit/records/*")
    await auditor.get_by_label("事由类别").select_option("complaint")
    await auditor.get_by_label("案件号").fill("投诉-2026-0412")
    await auditor.get_by_label("查看理由").fill("企业投诉经营异常名录核查结果有误，复核本次比对")
    async with auditor.expect_navigation():
        await auditor.get_by_role("button", name="查看").click()
    response = await auditor.locator("pre[data-part=response]").inner_text()
    assert '"listed"' in response and '"uscc"' not in response
    await shoot(auditor, "audit-record", tmp_path, full_page=True)
    reading = (await world.records(event="audit.payload.read", key_id="console:auditor"))[-1]
    assert reading["reason_category"] == "complaint" and reading["reason_ref"] == "投诉-2026-0412"
    assert reading["target_id"] == auditor.url.split("/")[-2]  # …/records/{id}/payload

    await auditor.goto(world.url + "/console/audit/charts")
    assert await auditor.locator("svg").count() == 5
    await shoot(auditor, "audit-charts", tmp_path)
    await auditor.goto(world.url + "/console/audit/chains")
    await auditor.get_by_role("link", name="立即校验").click()
    rows = auditor.locator("#verify tbody tr")
    await expect(rows.first).to_be_visible()
    await expect(auditor.locator("#verify tbody tr:not([data-ok])")).to_have_count(0)  # filled in chain by chain
    assert await rows.count() >= 1
    assert await auditor.locator("#verify tr[data-ok=true]").count() == await rows.count()
    await shoot(auditor, "audit-chains", tmp_path)


async def test_operator_and_security_admin_pages(world: ConsoleWorld, context: object, tmp_path: Path) -> None:
    page = await context.new_page()  # type: ignore[attr-defined]
    await sign_in(page, world, "operator")
    assert "credit" in await page.locator("table").inner_text()
    await shoot(page, "upstreams", tmp_path)
    # By keyboard: the first Tab reaches the skip link, the next ones the navigation; Enter follows a link.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    for _ in range(2):
        await page.keyboard.press("Tab")
    assert "调用方与密钥" in await page.evaluate("document.activeElement.textContent")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert page.url.endswith("/console/callers")
    await context.clear_cookies()  # type: ignore[attr-defined]
    await sign_in(page, world, "secadmin")
    assert page.url.endswith("/console/accounts")
    await shoot(page, "accounts", tmp_path)


async def test_a_tampered_csrf_token_is_refused(world: ConsoleWorld, context: object) -> None:
    page = await context.new_page()  # type: ignore[attr-defined]
    await sign_in(page, world, "operator")
    await page.goto(world.url + "/console/callers")
    form = page.locator("form[action='/console/callers']")
    await form.locator("input[name=csrf_token]").evaluate("input => { input.value = 'forged' }")
    await form.get_by_label("调用方 ID").fill("csrf-browser")
    await form.get_by_label("名称").fill("x")
    await form.get_by_label("部门").fill("x")
    async with page.expect_navigation():
        await form.get_by_role("button", name="登记").click()
    assert "表单令牌无效" in await page.locator("main").inner_text()
    await page.goto(world.url + "/console/callers")
    assert "csrf-browser" not in await page.locator("main").inner_text()


async def test_five_failed_sign_ins_lock_the_account(world: ConsoleWorld, context: object) -> None:
    async with world.app.state.runtime.sessions() as session:
        created = await accounts.add_account(
            session,
            username="browser-lock",
            role="auditor",
            display_name="锁定测试",
            caller_id="officer",
            password=None,
            created_by="test",
            now=world.clock(),
            box=world.app.state.console.box,
        )
    page = await context.new_page()  # type: ignore[attr-defined]
    for _ in range(5):
        await page.goto(world.url + "/console/login")
        await page.get_by_label("用户名").fill("browser-lock")
        await page.get_by_label("密码", exact=False).first.fill("Not-The-Password-1")
        await page.get_by_label("动态口令").fill("123456")
        async with page.expect_navigation():
            await page.get_by_role("button", name="登录").click()
        assert "用户名、密码或动态口令错误" in await page.locator("main").inner_text()
    world.accounts["browser-lock"] = {"password": created.password, "totp_secret": created.totp_secret}
    await sign_in(page, world, "browser-lock")
    assert "账户已锁定" in await page.locator("main").inner_text(), "the right password no longer opens it"
    assert await world.records(event="console.lockout", key_id="console:browser-lock")


async def test_fifteen_idle_minutes_sign_the_browser_out(world: ConsoleWorld, context: object) -> None:
    page = await context.new_page()  # type: ignore[attr-defined]
    await sign_in(page, world, "dept-officer")
    world.clock.advance(minutes=15, seconds=1)
    await page.get_by_role("link", name="资源目录").click()
    await page.wait_for_url("**/console/login?why=idle")
    assert "15 分钟无操作" in await page.locator("main").inner_text()


FORBIDDEN = {
    "operator": ["/console/audit", "/console/audit/charts", "/console/accounts", "/console/requests"],
    "auditor": ["/console/upstreams", "/console/callers", "/console/requests", "/console/accounts"],
    "secadmin": ["/console/audit", "/console/upstreams", "/console/requests", "/console/catalog"],
    "dept-officer": ["/console/audit", "/console/upstreams", "/console/callers", "/console/accounts"],
}


@pytest.mark.parametrize("username", sorted(FORBIDDEN))
async def test_each_role_is_refused_the_others_pages(world: ConsoleWorld, context: object, username: str) -> None:
    page = await context.new_page()  # type: ignore[attr-defined]
    await sign_in(page, world, username)
    nav = await page.locator("header nav").inner_text()
    for path in FORBIDDEN[username]:
        response = await page.goto(world.url + path)
        assert response is not None and response.status == 403, path
        assert "三员分立" in await page.locator("main").inner_text()
    assert "审计" not in nav or username == "auditor"
