"""The console's page machinery: templates, security headers, the role guard (三员分立), CSRF, static assets,
and the pages every account has (sign in, sign out, home)."""

from __future__ import annotations

import secrets
from datetime import datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from gateway.audit.writer import AuditUnavailable
from gateway.console.roles import ROLES
from gateway.console.session import (
    COOKIE,
    LOGIN_COOKIE,
    NotSignedIn,
    SignedIn,
    audit_event,
    clear_cookie,
    current,
    login,
    logout,
    set_cookie,
    state_of,
)
from gateway.http.nul import NUL
from schemas.times import BEIJING

router = APIRouter(prefix="/console", include_in_schema=False)
NUL_MESSAGE = "表单含有 NUL 字符，请删除后重试 (a NUL character is not allowed)"
HTMX = "htmx-2.0.11.min.js"
STATIC = {HTMX: "text/javascript", "console.css": "text/css", "console.js": "text/javascript"}
# No other origin, no inline script, no framing: a console page can only run the gateway's own pinned files.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
IDLE_MESSAGES = {
    "idle": "会话已超过 15 分钟无操作，已自动退出，请重新登录 (signed out after 15 idle minutes)",
    "ended": "会话已结束，请重新登录 (session ended)",
    "logout": "已安全退出 (signed out)",
}

TEMPLATES = Environment(
    loader=PackageLoader("gateway.console", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _beijing(moment: Any) -> str:
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


TEMPLATES.filters["beijing"] = _beijing
TEMPLATES.globals["ROLES"] = ROLES
TEMPLATES.globals["HTMX"] = HTMX


def render(
    request: Request, template: str, who: SignedIn | None = None, status: int = 200, **context: Any
) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(request=request, who=who, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _to_login(request: Request, why: str) -> Response:
    target = f"/console/login?why={why}" if why in IDLE_MESSAGES else "/console/login"
    if is_htmx(request):
        # htmx follows this header with a full page load instead of swapping a login page into a fragment.
        return Response(status_code=401, headers={"HX-Redirect": target, **HEADERS})
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    clear_cookie(response, request, COOKIE)
    return response


async def guard(request: Request, *roles: str) -> SignedIn | Response:
    """The signed-in account if its role may use this page; else the sign-in page, or a 403 that is audited."""
    try:
        who = await current(request)
    except NotSignedIn as exc:
        return _to_login(request, exc.why)
    if roles and who.account.role not in roles:
        allowed = "、".join(ROLES[name].label for name in roles)
        await audit_event(
            request,
            "console.forbidden",
            username=who.account.username,
            principal=who.principal,
            allowed=False,
            status=403,
            code="role_separation",
            detail={"role": who.account.role, "needs": list(roles)},
        )
        return render(
            request,
            "forbidden.html",
            who,
            status=403,
            message=f"三员分立：{who.role.label}不能使用此功能，仅限{allowed} (separation of duties)",
        )
    return who


async def posted(request: Request, who: SignedIn) -> dict[str, Any] | Response:
    """The form of a POST whose CSRF token is the session's; a 403 (audited) otherwise."""
    form = await request.form()
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in values:
            existing = values[name]
            values[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            values[name] = value
    token = values.get("csrf_token")
    if not isinstance(token, str) or not secrets.compare_digest(token, who.csrf):
        await audit_event(
            request,
            "console.csrf_rejected",
            username=who.account.username,
            principal=who.principal,
            allowed=False,
            status=403,
            code="csrf_invalid",
            detail={"path": request.url.path},
        )
        return render(request, "forbidden.html", who, status=403, message="表单令牌无效，请刷新页面后重试 (CSRF token)")
    # PostgreSQL's text cannot hold a NUL (gateway/http/nul.py).
    if any(NUL in name or any(NUL in item for item in as_list(value)) for name, value in values.items()):
        return render(request, "forbidden.html", who, status=422, message=NUL_MESSAGE)
    return values


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


# --- assets, sign in, sign out, home -----------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    data = resources.files("gateway.console").joinpath("static", name).read_bytes()
    # The htmx file's name carries its version, so it may be cached for good; the others change with the gateway.
    cache = "public, max-age=31536000, immutable" if name == HTMX else "no-cache"
    return Response(
        data, media_type=STATIC[name], headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    )


def login_page(request: Request, message: str = "", status: int = 200, username: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    settings = state_of(request).settings
    oidc = settings is not None and settings.oidc_issuer is not None  # the 统一身份认证 button (console/oidc.py)
    response = render(request, "login.html", status=status, message=message, csrf=token, username=username, oidc=oidc)
    set_cookie(response, request, LOGIN_COOKIE, token)
    return response


@router.get("/login")
async def login_form(request: Request, why: str = "") -> Response:
    return login_page(request, IDLE_MESSAGES.get(why, ""))


@router.post("/login")
async def login_submit(request: Request) -> Response:
    form = await request.form()
    token = form.get("csrf_token")
    cookie = request.cookies.get(LOGIN_COOKIE)
    username = str(form.get("username") or "")
    if not isinstance(token, str) or not cookie or not secrets.compare_digest(token, cookie):
        await audit_event(
            request,
            "console.csrf_rejected",
            username=username.strip().lower()[:64] or "-",
            allowed=False,
            status=403,
            code="csrf_invalid",
            detail={"path": request.url.path},
        )
        return login_page(request, "表单令牌无效，请重新登录 (CSRF token)", 403, username)
    if any(NUL in str(value) for value in form.values()):  # PostgreSQL's text cannot hold one (gateway/http/nul.py)
        return login_page(request, NUL_MESSAGE, 422)
    try:
        result = await login(request, username, str(form.get("password") or ""), str(form.get("totp") or ""))
    except AuditUnavailable:
        return login_page(request, "审计日志不可用，暂不能登录 (audit log unavailable)", 503, username)
    if not result.ok:
        return login_page(request, result.message, 401, username)
    response = RedirectResponse(result.home, status_code=303, headers=HEADERS)
    set_cookie(response, request, COOKIE, result.token)
    clear_cookie(response, request, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout_submit(request: Request) -> Response:
    who = await guard(request)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    await logout(request, who)
    response = RedirectResponse("/console/login?why=logout", status_code=303, headers=HEADERS)
    clear_cookie(response, request, COOKIE)
    return response


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    who = await guard(request)
    if isinstance(who, Response):
        return who
    return RedirectResponse(who.role.home, status_code=303, headers=HEADERS)
