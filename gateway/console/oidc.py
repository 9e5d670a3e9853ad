"""Optional console sign-in through an OpenID Connect provider (a province's unified identity platform): authorization
code with PKCE, state and nonce, the ID token checked against the IdP's JWKS, mapped to an existing local account."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.api.deps import sessions_of
from gateway.audit.writer import AuditUnavailable
from gateway.console.accounts import SEALED, AccountError, is_locked
from gateway.console.roles import ROLES
from gateway.console.session import COOKIE, audit_event, open_session, principal_for, set_cookie, state_of
from gateway.console.store import ConsoleAccount
from gateway.console.web import HEADERS, login_page, router
from gateway.settings import Settings
from gateway.storage.models import Caller
from schemas.errors import MsjxError

PENDING_COOKIE = "msjx_console_oidc"
PENDING_PATH = "/console/oidc"
PENDING_SECONDS = 600
PENDING_AAD = "oidc:pending"  # the SecretBox binding: ':' is in no username, so it cannot open a TOTP secret
ALGORITHMS = ("RS256", "PS256", "ES256")
LEEWAY = 60


class OidcFailed(MsjxError):
    """The IdP's answer was refused; `failed` names the check (audited, never shown with the token)."""

    def __init__(self, failed: str) -> None:
        super().__init__(failed)
        self.failed = failed


@dataclass
class Pending:
    state: str
    nonce: str
    verifier: str
    started: float


class OidcClient:
    """The console's relying party: discovery and JWKS fetched on first use (the IdP may be down when the gateway
    starts), the JWKS fetched again once when a token names a key it does not have (the IdP rotated)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self._secret = settings.oidc_client_secret
        self.claim = settings.oidc_username_claim
        self.second_factor = settings.oidc_second_factor
        self.mfa_values = settings.mfa_values
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    async def _get(self, url: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
            response.raise_for_status()
            return dict(response.json())

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                found = OpenIDProviderMetadata(await self._get(url))
                found.validate_issuer()
                found.validate_authorization_endpoint()
                found.validate_token_endpoint()
                found.validate_jwks_uri()
            except (httpx.HTTPError, ValueError) as exc:
                raise OidcFailed("discovery") from exc
            # OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer asked.
            if found["issuer"] != self.issuer:
                raise OidcFailed("discovery_issuer")
            self._metadata = dict(found)
        return self._metadata

    async def keys(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            try:
                document = await self._get((await self.metadata())["jwks_uri"])
                self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                raise OidcFailed("jwks") from exc
        return self._keys

    async def authorization_url(self, redirect_uri: str, started: float) -> tuple[str, Pending]:
        """Where to send the browser, and what the callback must match; `started` (Unix time, the console's clock)
        bounds how long the sign-in may take."""
        pending = Pending(generate_token(32), generate_token(32), generate_token(64), started)
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        return add_params_to_uri((await self.metadata())["authorization_endpoint"], params), pending

    async def exchange(self, code: str, pending: Pending, redirect_uri: str) -> dict[str, Any]:
        """The verified ID token's claims for this code: signature by the IdP's keys, iss, aud, exp, nonce."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
        }
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(
                    metadata["token_endpoint"],
                    data=form,
                    auth=(self.client_id, self._secret.get_secret_value()),
                    headers={"Accept": "application/json"},
                )
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcFailed("token_endpoint") from exc
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise OidcFailed("token_endpoint")
        claims = await self._verified(id_token)
        registry = JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": pending.nonce},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise OidcFailed("expired") from exc
        except ClaimError as exc:
            raise OidcFailed({"aud": "audience", "iss": "issuer"}.get(exc.claim, exc.claim)) from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise OidcFailed("audience")  # OIDC Core 3.1.3.7: several audiences need azp to be this client
        return claims

    async def _verified(self, id_token: str) -> dict[str, Any]:
        for refresh in (False, True):
            keys = await self.keys(refresh)
            try:
                return dict(jwt.decode(id_token, keys, algorithms=list(ALGORITHMS)).claims)
            except BadSignatureError as exc:
                if refresh:
                    raise OidcFailed("signature") from exc
            except ValueError as exc:  # no key with that kid: fetch the JWKS once more
                if refresh:
                    raise OidcFailed("signature") from exc
            except JoseError as exc:
                raise OidcFailed("token") from exc
        raise OidcFailed("signature")

    def two_factors(self, claims: dict[str, Any]) -> bool:
        """Whether this sign-in counts as two factors (等保 level 3): by configuration, or by the token's amr/acr."""
        if self.second_factor == "idp":
            return True
        amr = claims.get("amr")
        methods = {str(item) for item in amr} if isinstance(amr, list) else set()
        return bool(methods & self.mfa_values) or str(claims.get("acr", "")) in self.mfa_values


def client_of(request: Request) -> OidcClient | None:
    """This app's OIDC client, made on first use; None when no issuer is configured."""
    state = state_of(request)
    if state.settings is None or not state.settings.oidc_issuer:
        return None
    client = getattr(request.app.state, "console_oidc", None)
    if client is None:
        client = request.app.state.console_oidc = OidcClient(state.settings)
    return client


def _redirect_uri(request: Request) -> str:
    return str(request.url.replace(path=f"{PENDING_PATH}/callback", query="", fragment=""))


def _back_to_login(request: Request, word: str, status: int) -> Response:
    return login_page(request, OIDC_MESSAGES[word], status)


@router.get("/oidc/login")
async def oidc_start(request: Request) -> Response:
    client = client_of(request)
    if client is None:
        return Response("not found", status_code=404, media_type="text/plain")
    try:
        url, pending = await client.authorization_url(_redirect_uri(request), state_of(request).now().timestamp())
    except OidcFailed as exc:
        await audit_event(
            request, "console.login", username="-", allowed=False, status=502, code="oidc_failed",
            detail={"method": "oidc", "failed": exc.failed},
        )  # fmt: skip
        return _back_to_login(request, "unavailable", 502)
    sealed = state_of(request).box.seal(PENDING_AAD, orjson.dumps(pending.__dict__).decode())
    response = RedirectResponse(url, status_code=303, headers=HEADERS)
    # Lax, not Strict: the IdP's redirect back is a cross-site navigation, and must bring this cookie with it.
    response.set_cookie(
        PENDING_COOKIE,
        sealed,
        max_age=PENDING_SECONDS,
        path=PENDING_PATH,
        secure=state_of(request).secure_cookies,
        httponly=True,
        samesite="lax",
    )
    return response


def _pending(request: Request) -> Pending | None:
    sealed = request.cookies.get(PENDING_COOKIE)
    if not sealed or not sealed.startswith(SEALED):  # SecretBox.open passes unsealed (legacy TOTP) values through
        return None
    try:
        pending = Pending(**orjson.loads(state_of(request).box.open(PENDING_AAD, sealed)))
    except (AccountError, ValueError, TypeError):
        return None
    return pending if state_of(request).now().timestamp() - pending.started < PENDING_SECONDS else None


@router.get("/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    client = client_of(request)
    if client is None:
        return Response("not found", status_code=404, media_type="text/plain")
    query = request.query_params
    pending = _pending(request)
    try:
        if pending is None or not secrets.compare_digest(query.get("state", ""), pending.state):
            raise OidcFailed("state")
        if query.get("error"):
            raise OidcFailed("idp:" + query["error"][:40])
        claims = await client.exchange(query.get("code", ""), pending, _redirect_uri(request))
        username = claims.get(client.claim)
        if not isinstance(username, str) or not username.strip():
            raise OidcFailed("claim")
    except OidcFailed as exc:
        await audit_event(
            request, "console.login", username="-", allowed=False, status=401, code="oidc_failed",
            detail={"method": "oidc", "failed": exc.failed},
        )  # fmt: skip
        return _finish(request, _back_to_login(request, "failed", 401))
    username = username.strip().lower()[:64]
    identity = {"method": "oidc", "issuer": client.issuer, "sub": str(claims.get("sub", ""))[:128]}
    now = state_of(request).now()
    async with sessions_of(request)() as db:
        account = await db.get(ConsoleAccount, username)
        refusal = None
        if account is None:
            refusal = (403, "oidc_unknown_account", "unknown")
        elif account.disabled or is_locked(account, now):
            refusal = (423, "account_locked", "locked")
        elif not client.two_factors(claims):
            refusal = (401, "second_factor_missing", "second_factor")
        if refusal is not None:
            status, code, word = refusal
            await audit_event(
                request, "console.login", username=username, allowed=False, status=status, code=code,
                detail={**identity, "amr": claims.get("amr"), "acr": claims.get("acr")},
            )  # fmt: skip
            return _finish(request, _back_to_login(request, word, status))
        assert account is not None
        caller = await db.get(Caller, account.caller_id) if account.caller_id else None
        principal = principal_for(account, caller)
        # As for a local sign-in: audited before the session exists; no record, no session.
        try:
            await audit_event(
                request, "console.login", username=username, principal=principal, allowed=True, status=200,
                detail=identity,
            )  # fmt: skip
        except AuditUnavailable:
            return _finish(request, _back_to_login(request, "audit", 503))
        token = await open_session(db, account, now)
    home = ROLES[account.role].home
    # A page, not a redirect: the browser arrives here from the IdP (a cross-site chain), and would withhold the
    # SameSite=Strict session cookie from a redirect that continues that chain. The refresh is a same-site navigation.
    html = (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={home}"><title>登录成功</title></head>'
        f'<body><p><a href="{home}">登录成功，继续 (signed in, continue)</a></p></body></html>'
    )
    response = HTMLResponse(html, headers=HEADERS)
    set_cookie(response, request, COOKIE, token)
    return _finish(request, response)


def _finish(request: Request, response: Response) -> Response:
    """The pending sign-in is used up whatever happened: a second callback with the same state finds nothing."""
    response.delete_cookie(
        PENDING_COOKIE, path=PENDING_PATH, secure=state_of(request).secure_cookies, httponly=True, samesite="lax"
    )
    return response


OIDC_MESSAGES = {
    "failed": "统一身份认证登录失败，请重试 (identity provider sign-in failed)",
    "unknown": "统一身份认证账号未开通本控制台账户，请联系安全管理员 (no console account for this identity)",
    "locked": "账户已锁定，请稍后再试或联系安全管理员 (account locked)",
    "second_factor": "统一身份认证未使用双因素，请改用本地登录 (the identity provider did not use two factors)",
    "unavailable": "统一身份认证平台暂不可用 (identity provider unavailable)",
    "audit": "审计日志不可用，暂不能登录 (audit log unavailable)",
}
