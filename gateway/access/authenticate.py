"""Authentication of a request: signature, key, clock window, digest and nonce; each refusal has its own code."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.access.directory import CallerInfo, Directory
from gateway.access.nonces import NonceStore
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.forwarded import AUTHORITY_KEY, ignored_headers
from gateway.http.problems import Problem
from gateway.storage.health import REDIS_ERRORS
from schemas.problems import ProblemCode
from security.signatures import HeaderLines, SignatureFailure, check_created, parse_signature_params, verify_request
from security.sm2 import Sm2PublicKey
from security.verdicts import SignatureChecker
from security.verifier_process import InlineVerifier


@dataclass(frozen=True)
class Principal:
    caller: CallerInfo
    key_id: str


def target_uri(request: Request) -> str:
    """The URI the client signed: scheme, Host header and the raw path and query as they came on the wire; behind a
    trusted proxy, the scheme and host it forwarded (gateway/http/forwarded.py)."""
    scope = request.scope
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    host = scope.get(AUTHORITY_KEY)
    if host is None:
        # The first Host line, as request.headers.get("host") reads it, without building a Headers object.
        host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "") or "localhost"
    uri = f"{scope.get('scheme', 'http')}://{host}{raw_path.decode('latin-1')}"
    return f"{uri}?{query.decode('latin-1')}" if query else uri


def proxy_hint(request: Request) -> str:
    """Why the gateway's view of the URI may differ from the client's: a reverse proxy in front."""
    ignored = ignored_headers(request.scope)
    if ignored:
        peer = request.client.host if request.client else "?"
        return (
            f"the request's {', '.join(ignored)} header(s) were ignored: its peer {peer} is not in"
            " MSJX_TRUSTED_PROXIES (docs/deploy.md)"
        )
    return (
        "behind a reverse proxy that changes Host or the scheme, list the proxy in MSJX_TRUSTED_PROXIES and have it"
        " send X-Forwarded-Host and X-Forwarded-Proto, or Forwarded (docs/deploy.md)"
    )


def _refuse(code: ProblemCode, detail: str, **context: object) -> Problem:
    return Problem(code, detail, status=401, headers={"WWW-Authenticate": 'Signature label="msjx"'}, context=context)


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        nonces: NonceStore,
        max_skew: int = 300,
        offload: SignatureChecker | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._directory = directory
        self._time = clock.time  # kept bound: per request one call, as time.time() would be
        self._nonces = nonces
        self._max_skew = max_skew
        self._inline = InlineVerifier()
        self._offload = offload or self._inline

    @property
    def offload(self) -> SignatureChecker:
        """The checker that takes signature checks off the event loop (the inline one when none is configured)."""
        return self._offload

    async def authenticate(self, request: Request, body: bytes, *, offload: bool = False) -> Principal:
        """The caller behind a signed request, or a 401 Problem. With `offload`, the Ed25519 check is made by the
        offload checker (the verifier process): more throughput for the event loop, a little more latency. An SM2
        check always is: at milliseconds of CPU it would stall every other request on the loop."""
        headers = HeaderLines(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"]]
        )
        try:
            params = parse_signature_params(headers)
            check_created(params, self._time(), self._max_skew)
        except SignatureFailure as failure:
            raise _refuse(failure.code, failure.detail, key_id=failure.key_id) from None
        # The nonce store remembers nothing from before it started (a gateway restart in-process, a Redis restart):
        # a signature made earlier may have been used already, and a replay of it would pass the nonce check.
        # Whole seconds: `created` has no fraction, and a signature of the store's first second is no older.
        if params.created < int(self._nonces.started):
            raise _refuse(
                ProblemCode.SIGNATURE_BEFORE_RESTART,
                f"signature created {int(self._nonces.started) - params.created} s before the gateway's replay"
                " memory started (it restarted); sign the request again",
                key_id=params.key_id,
            )
        key = await self._directory.key(params.key_id)
        if key is None:
            raise _refuse(
                ProblemCode.KEY_UNKNOWN, f"no key with id {params.key_id!r} is registered", key_id=params.key_id
            )
        caller_context = {
            "key_id": key.key_id,
            "caller_id": key.caller.caller_id,
            "department": key.caller.department,
            "roles": tuple(sorted(key.caller.roles)),
        }
        if key.status != "active" or key.public_key is None:
            raise _refuse(ProblemCode.KEY_REVOKED, f"key {key.key_id!r} is revoked", **caller_context)
        try:
            await verify_request(
                self._offload if offload or isinstance(key.public_key, Sm2PublicKey) else self._inline,
                request.method,
                target_uri(request),
                headers,
                body,
                key.public_key,
                params,
            )
        except SignatureFailure as failure:
            detail = failure.detail
            if failure.code is ProblemCode.SIGNATURE_INVALID and failure.compared:
                detail = f"{detail}; {proxy_hint(request)}"
            raise _refuse(failure.code, detail, **caller_context) from None
        # Only a verified signature may spend a nonce, so nobody can burn another caller's nonces.
        health = self._nonces.health
        try:
            fresh = await self._nonces.claim(key.key_id, params.nonce, params.created, self._max_skew)
        except REDIS_ERRORS as exc:  # fail closed: a nonce that cannot be recorded could be replayed
            health.failed(exc)
            problem = health.problem("the request's nonce could not be recorded, so it was not accepted; retry later")
            problem.context = caller_context
            raise problem from None
        health.succeeded()
        if not fresh:
            raise _refuse(ProblemCode.NONCE_REPLAYED, "this nonce was already used with this key", **caller_context)
        return Principal(caller=key.caller, key_id=key.key_id)

    async def close(self) -> None:
        await self._offload.close()
