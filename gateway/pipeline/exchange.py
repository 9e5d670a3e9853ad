"""One audited exchange: read the body, authenticate, run the handler, record the outcome, answer.

Every route that needs a caller goes through `run_exchange`, so no path can forget to authenticate
or to audit, and a refusal is recorded exactly like a success.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway import metrics
from gateway.access.authenticate import Authenticator, Principal
from gateway.audit.writer import AuditEvent, AuditUnavailable, AuditWriter, new_request_id
from gateway.http.json_bodies import check_depth
from gateway.http.problems import Problem
from gateway.pipeline.loop_load import LoopLoad
from gateway.pipeline.unauthenticated import PREAUTH_BODY_BYTES, UnauthenticatedGate
from gateway.storage.health import Cancellations, Dependency, is_database_outage, is_statement_cancelled
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.exchange")
MAX_BODY_BYTES = 1 << 20
PREAUTHENTICATED = "msjx.principal"
JSON = "application/json"
# Offload a signature check only while the loop's thread was running or runnable at least this share of the last
# window (loop_load.py).
# Why: the count of requests in progress also counts those waiting on the upstream or the audit commit. At half the
# gateway's maximum rate it was above the bound half the time, the loop itself about half busy; the hop to the
# verifier process took those requests p50 6.2 ms against 0.23 ms on the loop (docs/performance.md), and every
# slower request kept the count above the bound. Under full load the loop's thread is busy nearly all the time.
OFFLOAD_BUSY = 0.75
# ...and only while the machine had at least this many CPUs idle (loop_load.py): about what the verifier process uses
# at full load on a 2-core host (80-90 µs a check at 2,500-3,000 checks a second).
# Why: the hand-off costs CPU on both sides (a pipe each way, a process woken), which pays only when the check runs on
# a CPU that would otherwise idle. With two workers on two cores the machine had 0.03-0.07 CPUs idle, and checking on
# the loop cost 8 % less CPU a call (docs/performance.md).
OFFLOAD_SPARE = 0.25


@dataclass
class Exchanges:
    """What every audited exchange of this worker goes through, and how many are under way.

    Built once by the runtime (`app.state.exchanges`); `run_exchange` is its only reader.
    """

    authenticator: Authenticator
    audit: AuditWriter
    # The stores whose outage answers 503 rather than 500: the database, and Redis beyond nonces and quotas
    # (breakers, payment locks).
    database: Dependency
    shared_state: Dependency
    # Above this many exchanges under way, signature checks go to the verifier process (MSJX_SIGNATURE_OFFLOAD_ABOVE).
    offload_above: int
    # Refusals before authentication: audited one by one up to a rate per address, then only counted.
    unauthenticated: UnauthenticatedGate | None = None
    # Signed exchanges begun and not yet answered: how congested this worker's event loop is.
    in_progress: int = 0
    loop_load: LoopLoad = field(default_factory=LoopLoad)
    # Statements the database gave up on (a DBA's statement_timeout): 503, not a 500 with a traceback.
    cancellations: Cancellations = field(default_factory=Cancellations)

    def offload(self) -> bool:
        """Whether this request's signature check goes to the verifier process: more than `offload_above` requests
        in progress (0: always), the loop's thread busy (OFFLOAD_BUSY) and a CPU idle to take it (OFFLOAD_SPARE)."""
        if self.in_progress <= self.offload_above:
            return False
        if self.offload_above == 0:
            return True
        load = self.loop_load
        return load.busy() >= OFFLOAD_BUSY and load.spare() >= OFFLOAD_SPARE


@dataclass
class Exchange:
    """One authenticated request as a handler sees it; the services a handler uses come to it as arguments."""

    request: Request
    request_id: str
    body: bytes
    principal: Principal
    event: AuditEvent
    # What the handler adds to a successful answer (e.g. Idempotent-Replayed on a stored answer).
    response_headers: dict[str, str] = field(default_factory=dict)
    media_type: str = JSON
    # A handler whose answer is too long to hold (batch results) streams it; the payload then only describes it
    # for the audit record, which is durable before the first byte goes out.
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Exchange], Awaitable[tuple[int, bytes]]]
# Who is calling, from the request and its body (the SOAP façade also takes a verified client certificate).
Authenticate = Callable[[Request, bytes, bool], Awaitable[Principal]]


def _declared_length(request: Request) -> str | None:
    # The raw ASGI headers, not request.headers: Starlette builds a Headers object to answer one lookup.
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            return value.decode("latin-1")
    return None


def request_path(request: Request) -> str:
    """`request.url.path`, without building the URL when the path holds nothing URL parsing would change."""
    path: str = request.scope["path"]
    if path.startswith("//") or any(char in path for char in _URL_SPECIAL):
        return request.url.path
    return path


_URL_SPECIAL = frozenset("?#\\\t\r\n")


def body_too_large(limit: int) -> Problem:
    # The rest of the body is not read, so the connection cannot carry another request: say it closes.
    return Problem(ProblemCode.BODY_TOO_LARGE, f"the limit is {limit} bytes", headers={"Connection": "close"})


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = _declared_length(request)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _apply_context(event: AuditEvent, context: dict[str, object]) -> None:
    for name, value in context.items():
        if hasattr(event, name) and value is not None:
            setattr(event, name, value)


async def run_exchange(
    request: Request,
    event_name: str,
    handler: Handler,
    *,
    roles: Iterable[str] | None = None,
    service: str | None = None,
    operation: str | None = None,
    body_limit: int = MAX_BODY_BYTES,
    authenticate: Authenticate | None = None,
) -> Response:
    exchanges: Exchanges = request.app.state.exchanges
    started = time.perf_counter()
    request_id = new_request_id()
    event = AuditEvent(
        event=event_name,
        request_id=request_id,
        decision="refused",
        status_code=0,
        client_addr=request.client.host if request.client else None,
        method=request.method,
        path=request_path(request),
        service=service,
        operation=operation,
    )
    instance = event.path
    exchanges.in_progress += 1
    authenticated = False
    try:
        # Until the caller is known, a record keeps only the start of the body (gateway/pipeline/unauthenticated.py).
        event.request_kept = PREAUTH_BODY_BYTES
        body = await read_body(request, body_limit)
        event.request_body = body
        check_depth(body)  # before anything parses it, on every route: a refusal, never a RecursionError
        offload = exchanges.offload()
        # A web console action (gateway/console/twin.py) arrives already authenticated, as its signed-in account;
        # an ASGI scope key, so no client can set it.
        principal = request.scope.get(PREAUTHENTICATED)
        if principal is None and authenticate is None:
            principal = await exchanges.authenticator.authenticate(request, body, offload=offload)
        elif principal is None:
            principal = await authenticate(request, body, offload)
        authenticated = True
        event.request_kept = None
        event.caller_id = principal.caller.caller_id
        event.department = principal.caller.department
        event.roles = tuple(sorted(principal.caller.roles))
        event.key_id = principal.key_id
        if roles is not None and not principal.caller.roles.intersection(roles):
            raise Problem(
                ProblemCode.ROLE_FORBIDDEN,
                f"needs one of the roles {sorted(roles)}",
                title="Caller lacks the role for this operation",
            )
        exchange = Exchange(request, request_id, body, principal, event)
        status, payload = await handler(exchange)
        event.decision = "allowed"
        event.status_code = status
        event.response_body = payload
        event.duration_us = int((time.perf_counter() - started) * 1e6)
        await exchanges.audit.append(event)
        metrics.observe(event)
        headers = {**exchange.response_headers, "X-Request-Id": request_id}
        if exchange.stream is not None:
            return StreamingResponse(
                exchange.stream, status_code=status, media_type=exchange.media_type, headers=headers
            )
        return Response(payload, status_code=status, media_type=exchange.media_type, headers=headers)
    except AuditUnavailable:
        return _audit_down(request_id, instance)
    except ClientDisconnect:
        # The client's choice, not the gateway's failure: one line, no traceback; nobody reads the answer.
        log.info("request %s: the client closed the connection before its body ended", request_id)
        problem = Problem(ProblemCode.CLIENT_CLOSED, "the request body did not arrive")
        return await _record_refusal(exchanges, event, problem, started, instance, authenticated)
    except Problem as problem:
        return await _record_refusal(exchanges, event, problem, started, instance, authenticated)
    except Exception as exc:
        problem = outage_problem(exchanges, exc, event_name)
        if problem is None:
            log.exception("unhandled error in %s (request %s)", event_name, request_id)
            problem = Problem(ProblemCode.INTERNAL_ERROR, "the gateway failed; the request id names it in logs")
        return await _record_problem(exchanges, event, problem, started, instance, decision="failed")
    finally:
        exchanges.in_progress -= 1


async def _record_refusal(
    exchanges: Exchanges, event: AuditEvent, problem: Problem, started: float, instance: str, authenticated: bool
) -> Response:
    """A refusal before authentication is audited on its own only up to a rate per client address; beyond, the
    client gets 429 and the refusal is only counted. Server-side failures (5xx) are always audited."""
    gate = exchanges.unauthenticated
    if authenticated or gate is None or problem.status >= 500:
        return await _record_problem(exchanges, event, problem, started, instance)
    verdict = await gate.judge(event.client_addr)
    if verdict.audit:
        return await _record_problem(exchanges, event, problem, started, instance)
    limited = Problem(
        ProblemCode.UNAUTHENTICATED_RATE_LIMITED,
        "this address sent too many requests that were not correctly signed; retry after the window resets",
        # A body left unread (413) still closes the connection.
        headers={"Retry-After": str(verdict.retry_after), **_connection_close(problem)},
    )
    return limited.response(event.request_id, instance)


def _connection_close(problem: Problem) -> dict[str, str]:
    return {"Connection": "close"} if problem.headers.get("Connection") == "close" else {}


async def _record_problem(
    exchanges: Exchanges,
    event: AuditEvent,
    problem: Problem,
    started: float,
    instance: str,
    decision: str | None = None,
) -> Response:
    _apply_context(event, problem.context)
    body = problem.render(event.request_id, instance)
    event.decision = decision or ("failed" if problem.status >= 500 else "refused")
    event.reason_code = problem.code.value  # a plain str: the audit committer marshals its records
    event.status_code = problem.status
    event.response_body = body
    event.duration_us = int((time.perf_counter() - started) * 1e6)
    try:
        await exchanges.audit.append(event)
    except AuditUnavailable:
        return _audit_down(event.request_id, instance)
    metrics.observe(event)
    return problem.response(event.request_id, instance, body=body)


def outage_problem(exchanges: Exchanges, exc: Exception, event_name: str) -> Problem | None:
    """A 503 for a store that is down (counted and logged once by its Dependency, no traceback), or that gave up on
    a statement (counted, logged at most once a minute); None for a bug."""
    if is_statement_cancelled(exc):
        return exchanges.cancellations.problem(event_name, exc)
    if isinstance(exc, RedisError):  # shared state (breakers, payment locks) beyond nonces and quotas
        exchanges.shared_state.failed(exc)
        return exchanges.shared_state.problem("shared state in Redis could not be reached; retry later")
    if is_database_outage(exc):
        health = exchanges.database
        health.failed(exc)
        return health.problem("the database could not be reached; retry later")
    return None


def _audit_down(request_id: str, instance: str) -> Response:
    # Counted here; the audit writer logs the store going down and coming back, not each refused request.
    metrics.AUDIT_UNAVAILABLE.inc()
    return Problem(
        ProblemCode.AUDIT_UNAVAILABLE,
        "the exchange could not be recorded, so no data was released; retry later",
        headers={"Retry-After": "5"},
    ).response(request_id, instance)
