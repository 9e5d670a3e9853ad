"""Signing in and staying signed in: the login check (password, TOTP, lockout), server-side sessions with a 15 minute
idle expiry, CSRF tokens, cookies, and the audit record of each of these events."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from gateway.access.authenticate import Principal
from gateway.access.directory import CallerInfo
from gateway.api.deps import audit_of, sessions_of
from gateway.audit.writer import AuditEvent, AuditUnavailable, new_request_id
from gateway.clock import SYSTEM_CLOCK
from gateway.console.accounts import (
    LOCK_MINUTES,
    MAX_FAILURES,
    SecretBox,
    as_utc,
    check_password,
    check_totp,
    is_locked,
)
from gateway.console.roles import ROLES, ConsoleRole
from gateway.console.store import ConsoleAccount, ConsoleSession
from gateway.settings import Settings
from gateway.storage.models import Caller
from schemas.errors import MsjxError

IDLE = timedelta(minutes=15)
COOKIE = "msjx_console"
LOGIN_COOKIE = "msjx_console_login"  # the CSRF token of the login form, before there is a session
COOKIE_PATH = "/console"


@dataclass
class ConsoleState:
    """The console's per-app settings. `clock` is what tests replace to pass 15 idle minutes without waiting."""

    secure_cookies: bool = True
    clock: Callable[[], datetime] = SYSTEM_CLOCK.now
    settings: Settings | None = None
    _box: SecretBox | None = None

    @property
    def box(self) -> SecretBox:
        """Opened on first use (the master key may not exist before the runtime has started)."""
        if self._box is None:
            assert self.settings is not None, "the console needs the gateway's settings for its master key"
            self._box = SecretBox.for_settings(self.settings)
        return self._box

    def now(self) -> datetime:
        return self.clock().astimezone(UTC)


@dataclass
class SignedIn:
    account: ConsoleAccount
    session: ConsoleSession
    role: ConsoleRole
    principal: Principal
    caller_name: str = ""
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def csrf(self) -> str:
        return self.session.csrf_token


def state_of(request: Request) -> ConsoleState:
    state = getattr(request.app.state, "console", None)
    if state is None:
        state = request.app.state.console = ConsoleState()
    return state


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=state_of(request).secure_cookies,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, secure=state_of(request).secure_cookies, httponly=True, samesite="strict"
    )


def principal_for(account: ConsoleAccount, caller: Caller | None) -> Principal:
    """The identity console actions are taken as: the bound caller's id and department, with only the one API role
    the account's console role acts as (a caller holding admin and officer still acts as one of them here)."""
    role = ROLES[account.role]
    key_id = f"console:{account.username}"
    if role.api_role is None or caller is None or role.api_role not in (caller.roles or []):
        info = CallerInfo(key_id, account.display_name, caller.department if caller else "", frozenset())
    else:
        info = CallerInfo(caller.caller_id, caller.name, caller.department, frozenset({role.api_role}))
    return Principal(caller=info, key_id=key_id)


async def audit_event(
    request: Request,
    event_name: str,
    *,
    username: str,
    principal: Principal | None = None,
    allowed: bool,
    status: int,
    code: str | None = None,
    detail: dict[str, object] | None = None,
    target: str | None = None,
) -> None:
    """A console event with no API twin (a login, a refusal by role): the console account is its key id."""
    caller = principal.caller if principal else None
    event = AuditEvent(
        event=event_name,
        request_id=new_request_id(),
        decision="allowed" if allowed else "refused",
        status_code=status,
        caller_id=caller.caller_id if caller else f"console:{username}",
        department=caller.department if caller else None,
        roles=tuple(sorted(caller.roles)) if caller else (),
        key_id=f"console:{username}"[:128],
        client_addr=request.client.host if request.client else None,
        method=request.method,
        path=request.url.path,
        reason_code=code,
        target_id=target,
        response_body=orjson.dumps(detail or {}),
    )
    await audit_of(request).append(event)


@dataclass
class LoginResult:
    ok: bool
    message: str = ""
    token: str = ""
    home: str = "/console/"


GENERIC_FAILURE = "用户名、密码或动态口令错误 (wrong username, password or code)"


async def login(request: Request, username: str, password: str, code: str) -> LoginResult:
    """Check password and TOTP; count failures; lock after five for 15 minutes. Each outcome is audited first."""
    now = state_of(request).now()
    username = username.strip().lower()[:64]
    async with sessions_of(request)() as db:
        account = await db.get(ConsoleAccount, username) if username else None
        if account is not None and (account.disabled or is_locked(account, now)):
            check_password(None, password)  # the same work as a real check, so timing does not tell
            await audit_event(
                request, "console.login", username=username, allowed=False, status=423, code="account_locked"
            )
            return LoginResult(False, "账户已锁定，请稍后再试或联系安全管理员 (account locked)")
        password_ok = check_password(account, password)
        box = state_of(request).box
        step = check_totp(account, code, now, box) if account is not None and password_ok else None
        if account is None or step is None:
            locked = False
            if account is not None:
                # Counted in the database, not read-modify-write: parallel guesses each count.
                await db.execute(
                    update(ConsoleAccount)
                    .where(ConsoleAccount.username == account.username)
                    .values(failed_logins=ConsoleAccount.failed_logins + 1)
                )
                locked = bool(
                    (
                        await db.execute(
                            update(ConsoleAccount)
                            .where(
                                ConsoleAccount.username == account.username,
                                ConsoleAccount.failed_logins >= MAX_FAILURES,
                            )
                            .values(failed_logins=0, locked_until=now + timedelta(minutes=LOCK_MINUTES))
                        )
                    ).rowcount
                )
                await db.commit()
            why = "password" if not password_ok else "totp"
            await audit_event(
                request,
                "console.login",
                username=username or "-",
                allowed=False,
                status=401,
                code="login_failed",
                detail={"failed": why if account is not None else "unknown_account"},
            )
            if locked:
                await audit_event(
                    request,
                    "console.lockout",
                    username=username,
                    allowed=False,
                    status=423,
                    code="account_locked",
                    detail={"failures": MAX_FAILURES, "minutes": LOCK_MINUTES},
                )
            return LoginResult(False, GENERIC_FAILURE)
        caller = await db.get(Caller, account.caller_id) if account.caller_id else None
        principal = principal_for(account, caller)
        # Audited before the session exists, and before this transaction writes (SQLite has one writer, and the
        # audit writer is another connection): no audit, no session.
        await audit_event(
            request, "console.login", username=account.username, principal=principal, allowed=True, status=200
        )
        account.totp_last_step = step
        token = await open_session(db, account, now)
        return LoginResult(True, token=token, home=ROLES[account.role].home)


async def open_session(db: AsyncSession, account: ConsoleAccount, now: datetime) -> str:
    """A new session for an account whose sign-in was already audited (by password and TOTP, or by OIDC): its token."""
    account.failed_logins = 0
    account.locked_until = None
    account.last_login_at = now
    # The account's sessions that ended, or went idle, more than a day ago are of no further use.
    await db.execute(
        delete(ConsoleSession).where(
            ConsoleSession.username == account.username, ConsoleSession.last_seen_at < now - timedelta(days=1)
        )
    )
    token = secrets.token_urlsafe(32)
    db.add(
        ConsoleSession(
            token_hash=token_hash(token),
            username=account.username,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
        )
    )
    await db.commit()
    return token


class NotSignedIn(MsjxError):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def current(request: Request) -> SignedIn:
    """The signed-in account of this request, its session touched; NotSignedIn (with why) otherwise."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise NotSignedIn("none")
    now = state_of(request).now()
    async with sessions_of(request)() as db:
        row = await db.get(ConsoleSession, token_hash(token))
        if row is None or row.ended_at is not None:
            raise NotSignedIn("ended")
        account = await db.get(ConsoleAccount, row.username)
        if account is None or account.disabled or is_locked(account, now):
            raise NotSignedIn("ended")
        caller = await db.get(Caller, account.caller_id) if account.caller_id else None
        principal = principal_for(account, caller)
        if now - as_utc(row.last_seen_at) > IDLE:
            row.ended_at = now
            row.ended_why = "idle"
            await db.commit()
            try:
                await audit_event(
                    request,
                    "console.session.expired",
                    username=account.username,
                    principal=principal,
                    allowed=False,
                    status=401,
                    code="session_idle",
                    detail={"idle_minutes": int(IDLE.total_seconds() // 60)},
                )
            except AuditUnavailable:
                pass  # the session has ended either way; the sign-in page says so
            raise NotSignedIn("idle")
        # Only this row, guarded by its old value: two tabs touching at once do not fail each other.
        await db.execute(
            update(ConsoleSession).where(ConsoleSession.token_hash == row.token_hash).values(last_seen_at=now)
        )
        await db.commit()
        return SignedIn(account, row, ROLES[account.role], principal, caller.name if caller else "")


async def logout(request: Request, who: SignedIn) -> None:
    now = state_of(request).now()
    async with sessions_of(request)() as db:
        row = await db.get(ConsoleSession, who.session.token_hash)
        if row is not None and row.ended_at is None:
            row.ended_at = now
            row.ended_why = "logout"
            await db.commit()
    await audit_event(
        request, "console.logout", username=who.account.username, principal=who.principal, allowed=True, status=200
    )
