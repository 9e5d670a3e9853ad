"""Security admin (安全管理员) pages: console accounts and their roles. It acts as no caller, reads no audit records
and changes no configuration; it cannot change its own account (三员分立)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from gateway.api.deps import sessions_of
from gateway.console import accounts
from gateway.console.accounts import AccountError, is_locked, provisioning_uri
from gateway.console.roles import ROLES
from gateway.console.session import audit_event, state_of
from gateway.console.web import guard, posted, render, router

SECURITY_ADMIN = "security_admin"


async def _page(request: Request, who: Any, status: int = 200, **extra: Any) -> Response:
    now = state_of(request).now()
    async with sessions_of(request)() as db:
        found = await accounts.list_accounts(db)
    rows = [
        {
            "username": account.username,
            "display_name": account.display_name,
            "role": ROLES[account.role].label if account.role in ROLES else account.role,
            "caller_id": account.caller_id or "—",
            "locked": account.disabled or is_locked(account, now),
            "disabled": account.disabled,
            "last_login_at": account.last_login_at,
            "self": account.username == who.account.username,
        }
        for account in found
    ]
    return render(request, "admin/accounts.html", who, status=status, rows=rows, roles=ROLES, **extra)


@router.get("/accounts")
async def accounts_page(request: Request) -> Response:
    who = await guard(request, SECURITY_ADMIN)
    if isinstance(who, Response):
        return who
    return await _page(request, who)


async def _audit(request: Request, who: Any, event: str, target: str, ok: bool, detail: dict[str, Any]) -> None:
    await audit_event(
        request,
        event,
        username=who.account.username,
        principal=who.principal,
        allowed=ok,
        status=200 if ok else 422,
        code=None if ok else "account_refused",
        target=target[:64],
        detail=detail,
    )


@router.post("/accounts")
async def add_account(request: Request) -> Response:
    who = await guard(request, SECURITY_ADMIN)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    username = (form.get("username") or "").strip().lower()
    role = form.get("role") or ""
    try:
        async with sessions_of(request)() as db:
            created = await accounts.add_account(
                db,
                username=username,
                role=role,
                display_name=(form.get("display_name") or "").strip(),
                caller_id=(form.get("caller_id") or "").strip() or None,
                password=None,
                created_by=f"console:{who.account.username}",
                now=state_of(request).now(),
                box=state_of(request).box,
            )
    except AccountError as exc:
        await _audit(request, who, "console.account.add", username, False, {"role": role, "refused": str(exc)})
        return await _page(request, who, 422, error=str(exc))
    await _audit(request, who, "console.account.add", username, True, {"role": role})
    secret = {
        "username": created.username,
        "password": created.password,
        "totp_secret": created.totp_secret,
        "uri": provisioning_uri(created.username, created.totp_secret),
    }
    return await _page(request, who, created=secret)


@router.post("/accounts/{username}/{action}")
async def change_account(request: Request, username: str, action: str) -> Response:
    who = await guard(request, SECURITY_ADMIN)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    if username == who.account.username:
        message = "不能修改自己的账户 (you cannot change your own account)"
        await _audit(request, who, f"console.account.{action}"[:32], username, False, {"refused": "own account"})
        return await _page(request, who, 403, error=message)
    now = state_of(request).now()
    extra: dict[str, Any] = {}
    try:
        async with sessions_of(request)() as db:
            if action == "lock":
                await accounts.lock_account(db, username, now, None)
            elif action == "unlock":
                await accounts.unlock_account(db, username)
            elif action == "reset-totp":
                secret = await accounts.reset_totp(db, username, now, state_of(request).box)
                extra["created"] = {
                    "username": username,
                    "totp_secret": secret,
                    "uri": provisioning_uri(username, secret),
                }
            else:
                return await _page(request, who, 404, error=f"未知操作 {action}")
    except AccountError as exc:
        await _audit(request, who, f"console.account.{action}"[:32], username, False, {"refused": str(exc)})
        return await _page(request, who, 422, error=str(exc))
    await _audit(request, who, f"console.account.{action}"[:32], username, True, {})
    labels = {"lock": "已停用 (locked)", "unlock": "已解锁 (unlocked)", "reset-totp": "已重置动态口令 (TOTP reset)"}
    return await _page(request, who, flash=f"{username}：{labels[action]}", **extra)
