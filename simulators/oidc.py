"""A small OpenID Connect provider (a province's unified identity platform) for the console's OIDC tests: discovery,
JWKS, an authorize endpoint that approves the configured user at once, and a token endpoint issuing RS256 ID tokens.

`POST /_sim/next` sets who signs in next and how the token is spoiled ({"user", "amr", "fault"}; faults:
bad_signature, wrong_audience, wrong_nonce, expired); `DELETE /_sim/next` restores the defaults.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from simulators import serving

CLIENT_ID = "msjx-console"
CLIENT_SECRET = "console-test-secret"  # a test double's own secret, not a credential of anything real
DEFAULT_USER = "dept-officer"
FAULTS = ("bad_signature", "wrong_audience", "wrong_nonce", "expired")

KEY: web.AppKey[RSAKey] = web.AppKey("key", RSAKey)
STATE: web.AppKey[dict[str, Any]] = web.AppKey("state", dict)


def _issuer(request: web.Request) -> str:
    return f"http://{request.host}"


async def discovery(request: web.Request) -> web.Response:
    issuer = _issuer(request)
    return web.json_response(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "profile"],
        }
    )


async def jwks(request: web.Request) -> web.Response:
    return web.json_response({"keys": [request.app[KEY].as_dict(private=False)]})


async def authorize(request: web.Request) -> web.Response:
    """Approves at once (no login form): the user is whoever `_sim/next` named."""
    query = request.query
    if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
        return web.json_response({"error": "unauthorized_client"}, status=400)
    if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
        return web.json_response({"error": "invalid_request", "error_description": "PKCE S256 required"}, status=400)
    if "openid" not in query.get("scope", "").split():
        return web.json_response({"error": "invalid_scope"}, status=400)
    state = request.app[STATE]
    code = secrets.token_urlsafe(24)
    state["codes"][code] = {
        "challenge": query["code_challenge"],
        "redirect_uri": query.get("redirect_uri", ""),
        "nonce": query.get("nonce"),
        "user": state["user"],
        "amr": state["amr"],
        "fault": state["fault"],
    }
    target = query.get("redirect_uri", "") + "?" + urlencode({"code": code, "state": query.get("state", "")})
    raise web.HTTPFound(target)


def _client_ok(request: web.Request, form: Any) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user == CLIENT_ID and secrets.compare_digest(password, CLIENT_SECRET)
    return form.get("client_id") == CLIENT_ID and secrets.compare_digest(
        str(form.get("client_secret", "")), CLIENT_SECRET
    )


async def token(request: web.Request) -> web.Response:
    form = await request.post()
    if not _client_ok(request, form):
        return web.json_response({"error": "invalid_client"}, status=401)
    grant = request.app[STATE]["codes"].pop(str(form.get("code", "")), None)
    if form.get("grant_type") != "authorization_code" or grant is None:
        return web.json_response({"error": "invalid_grant"}, status=400)
    verifier = str(form.get("code_verifier", ""))
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    if challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
        return web.json_response({"error": "invalid_grant", "error_description": "PKCE or redirect_uri"}, status=400)
    now = int(time.time())
    fault = grant["fault"]
    claims = {
        "iss": _issuer(request),
        "sub": f"sub-{grant['user']}",
        "aud": "someone-else" if fault == "wrong_audience" else CLIENT_ID,
        "iat": now,
        "exp": now - 600 if fault == "expired" else now + 300,
        "nonce": "not-the-nonce" if fault == "wrong_nonce" else grant["nonce"],
        "preferred_username": grant["user"],
        "amr": grant["amr"],
    }
    key = request.app[KEY]
    if fault == "bad_signature":
        key = RSAKey.generate_key(2048, parameters={"kid": key.kid})  # same kid, another key: the signature fails
    id_token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
    return web.json_response(
        {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300, "id_token": id_token},
        headers={"Cache-Control": "no-store"},
    )


def _defaults() -> dict[str, Any]:
    return {"user": DEFAULT_USER, "amr": ["pwd", "otp"], "fault": None}


async def set_next(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("fault") not in (None, *FAULTS):
        return web.json_response({"error": f"fault must be one of {FAULTS}"}, status=400)
    state = request.app[STATE]
    state.update({key: body[key] for key in ("user", "amr", "fault") if key in body})
    return web.json_response({key: state[key] for key in ("user", "amr", "fault")})


async def reset_next(request: web.Request) -> web.Response:
    request.app[STATE].update(_defaults())
    return web.json_response(_defaults())


def create_app() -> web.Application:
    app = web.Application()
    app[KEY] = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})
    app[STATE] = {"codes": {}, **_defaults()}
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    app.router.add_post("/_sim/next", set_next)
    app.router.add_delete("/_sim/next", reset_next)
    return app


async def start_with_port(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve the provider; return its runner and the port it bound (useful with port 0)."""
    return await serving.start_app(create_app(), host, port)


def main(argv: list[str] | None = None) -> None:
    serving.main(
        argv,
        module="oidc",
        description=__doc__.splitlines()[0],
        default_port=9180,
        start_with_port=start_with_port,
        banner=lambda host, port: f"oidc provider listening on http://{host}:{port}",
    )


if __name__ == "__main__":
    main()
