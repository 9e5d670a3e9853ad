"""The platform's door: invoke one operation of one upstream service, and list what a caller may invoke."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from adapters.base import Operation
from adapters.errors import UpstreamError
from gateway.access.directory import GrantInfo
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.http.json_bodies import load_body
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem, validation_problem
from gateway.payments.idempotency import MAX_HEADER_LENGTH, MAX_KEY_LENGTH, parse_key
from gateway.payments.intents import REPLAYED_HEADER, Payments, VoucherCall
from gateway.pipeline.exchange import Exchange, request_path, run_exchange
from gateway.runtime import Runtime
from gateway.sharing.ownership import owners
from schemas.api import InvokeRequest, InvokeResponse
from schemas.problems import ProblemCode

router = APIRouter(prefix="/v1/services", tags=["services"])

IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Required by treasury/submit-voucher (IETF httpapi-idempotency-key draft): a Structured Field String unique"
        " per payment, covered by the signature. A repeat with the same key and body gets the stored answer"
        " (header `Idempotent-Replayed: true`); the same key with another body is refused with 422"
        " `idempotency_key_reused`; while the first is in flight, 409 `idempotency_in_flight`. The key is 1 to"
        f" {MAX_KEY_LENGTH} characters, so the header is at most {MAX_HEADER_LENGTH} with its quotes; every operation"
        " refuses a malformed one with 400 `idempotency_key_invalid`."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_HEADER_LENGTH},
}


def parse_json(body: bytes, model: type[BaseModel], *, exact: bool = False) -> Any:
    document = load_body(body, exact=exact)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(exc.errors()) from None


def upstream_status(status: str | None, attempts: int) -> str | None:
    """What the audit record keeps of the upstream's answer; retries show as `503;attempts=3`."""
    if attempts <= 1:
        return status
    return f"{status or 'none'};attempts={attempts}"[:64]


def select_grant(
    grants: tuple[GrantInfo, ...], service: str, operation: str, purpose: str, method: str = "api"
) -> GrantInfo:
    """The grant that allows this call now by this share method (`api`, or `batch` for a batch job), or the most
    specific refusal."""
    if not grants:
        raise Problem(ProblemCode.NO_GRANT, f"the caller holds no grant for {service}/{operation}")
    for_purpose = [grant for grant in grants if grant.purpose == purpose]
    if not for_purpose:
        raise Problem(ProblemCode.PURPOSE_NOT_GRANTED, f"no grant for {service}/{operation} with purpose {purpose!r}")
    by_method = [grant for grant in for_purpose if method in grant.share_methods]
    if not by_method:
        raise Problem(
            ProblemCode.SHARE_METHOD_NOT_GRANTED,
            f"the grant for {service}/{operation} with purpose {purpose!r} does not allow share method {method!r}"
            f" (共享方式 {'批量交换' if method == 'batch' else '服务接口'})",
            context={"grant_id": for_purpose[0].grant_id},
        )
    for_purpose = by_method
    now = datetime.now(UTC)
    for grant in for_purpose:
        if grant.valid_at(now):
            return grant
    if all(grant.valid_to <= now for grant in for_purpose):
        # Ended since the snapshot was taken (it is at most 1 s old).
        raise ended_problem(ProblemCode.GRANT_EXPIRED, for_purpose[0].grant_id, purpose, for_purpose[0].valid_to)
    raise Problem(
        ProblemCode.GRANT_NOT_VALID,
        f"the grant for purpose {purpose!r} is not valid at {now.isoformat(timespec='seconds')}",
        context={"grant_id": for_purpose[0].grant_id},
    )


ENDED = {
    ProblemCode.GRANT_REVOKED: "was revoked",
    ProblemCode.GRANT_SUSPENDED: "was suspended",
    ProblemCode.GRANT_EXPIRED: "expired",
}


def ended_problem(
    code: ProblemCode, grant_id: str, purpose: str, since: datetime, reason: str | None = None
) -> Problem:
    """403 for a grant the caller had for this purpose that may not be used now; the refusal names the grant."""
    detail = f"the grant {grant_id} for purpose {purpose!r} {ENDED[code]} at {since.isoformat(timespec='seconds')}"
    if code is ProblemCode.GRANT_SUSPENDED:
        detail += f" and is refused until resumed: {reason}"
    return Problem(code, detail, context={"grant_id": grant_id})


async def explain_refusal(
    runtime: Runtime, refusal: Problem, caller_id: str, service: str, operation: str, purpose: str
) -> Problem:
    """The refusal that says what happened, for a call no grant in the snapshot allowed.

    The snapshot holds only grants that may answer, so a granted call never comes here. A `no_grant` or
    `purpose_not_granted` looks for a suspended, revoked or expired grant of the caller for that purpose in the
    database; when there is one, the refusal names it.
    """
    if refusal.code not in (ProblemCode.NO_GRANT, ProblemCode.PURPOSE_NOT_GRANTED):
        return refusal
    ended = await runtime.directory.ended_grant(caller_id, service, operation, purpose, datetime.now(UTC))
    if ended is None:
        return refusal
    code, row = ended
    since = {ProblemCode.GRANT_REVOKED: row.revoked_at, ProblemCode.GRANT_SUSPENDED: row.suspended_at}.get(
        code
    ) or row.valid_to
    return ended_problem(code, row.grant_id, purpose, since, row.suspend_reason)


async def _invoke(service: str, operation_name: str, exchange: Exchange) -> tuple[int, bytes]:
    status, answer = await invoke_operation(exchange, service, operation_name, _read_json)
    return status, answer if isinstance(answer, bytes) else orjson.dumps(answer)


def _read_json(exchange: Exchange, operation: Operation) -> InvokeRequest:
    # An operation that changes state (a payment) reads its body exactly: numbers as decimals, never floats.
    request: InvokeRequest = parse_json(exchange.body, InvokeRequest, exact=not operation.safe)
    return request


RequestReader = Callable[[Exchange, Operation], InvokeRequest]


async def invoke_operation(
    exchange: Exchange, service: str, operation_name: str, read: RequestReader
) -> tuple[int, dict[str, Any] | bytes]:
    """One call of one operation, whichever interface it came through (/v1 JSON, the SOAP façade): grant, quota,
    the upstream, minimization. `read` turns the exchange's body into purpose and params. Returns the status and
    the answer document ({"data", "meta"}), or the payment path's answer already rendered as JSON."""
    runtime = exchange.runtime
    adapter = runtime.adapters.get(service)
    if adapter is None:
        raise Problem(ProblemCode.UNKNOWN_SERVICE, f"no service {service!r}")
    operation = adapter.operations.get(operation_name)
    if operation is None:
        raise Problem(ProblemCode.UNKNOWN_OPERATION, f"{service} has no operation {operation_name!r}")
    # The key is checked as documented wherever it is sent, though only payments use it.
    keys = [value.decode("latin-1") for name, value in exchange.request.scope["headers"] if name == b"idempotency-key"]
    idempotency_key = parse_key(keys) if keys else None
    body = read(exchange, operation)
    event = exchange.event
    event.purpose = body.purpose
    caller_id = exchange.principal.caller.caller_id
    grants = await runtime.directory.grants_for(caller_id, service, operation_name)
    try:
        grant = select_grant(grants, service, operation_name, body.purpose)
    except Problem as refusal:
        # Only a refused call looks further (a try costs nothing when no exception is raised).
        raise await explain_refusal(runtime, refusal, caller_id, service, operation_name, body.purpose) from None
    event.grant_id = grant.grant_id
    try:
        params = operation.input_model.model_validate(body.params)
    except ValidationError as exc:
        problem = validation_problem(exc.errors(), prefix=("params",))
        if any(error["type"] == ProblemCode.PATH_DOT_SEGMENT for error in problem.errors or ()):
            problem.code = (
                ProblemCode.PATH_DOT_SEGMENT
            )  # a traversal attempt, not a typo: its own code for the audit and alerts
        raise problem from None
    event.subject = getattr(params, "uscc", None)
    # Counted only for a call that will be made: a refused or malformed one spends no quota.
    await runtime.quotas.check(grant)
    if runtime.payments is not None and runtime.payments.handles(service, operation_name):
        return await _pay(runtime.payments, exchange, grant, params, idempotency_key)
    started = time.perf_counter()
    try:
        result = await adapter.invoke(operation_name, params)
    except UpstreamError as exc:
        event.upstream_us = int((time.perf_counter() - started) * 1e6)
        event.upstream_status = upstream_status(exc.upstream_status, exc.attempts)
        raise Problem(exc.code, exc.detail, status=exc.status, headers=exc.headers) from None
    event.upstream_us = int((time.perf_counter() - started) * 1e6)
    event.upstream_status = upstream_status(result.upstream_status, result.attempts)
    # Minimization: only granted fields leave the gateway, whatever the upstream sent.
    data = {name: result.data[name] for name in grant.fields if name in result.data}
    event.fields = tuple(data)
    if grant.undelivered:
        # The first successful call proves the grant usable: its delivery is recorded, once, off this path.
        exchange.request.app.state.sharing.note_first_use(grant)
    answer = {
        "data": data,
        "meta": {
            "request_id": exchange.request_id,
            "service": service,
            "operation": operation_name,
            "grant_id": grant.grant_id,
            "source": adapter.title or service,
            "fetched_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        },
    }
    return 200, answer


async def _pay(
    payments: Payments, exchange: Exchange, grant: GrantInfo, params: Any, idempotency_key: str | None
) -> tuple[int, bytes]:
    event = exchange.event
    call = VoucherCall(
        caller_id=exchange.principal.caller.caller_id,
        idempotency_key=idempotency_key,
        method=exchange.request.method,
        path=request_path(exchange.request),
        body=exchange.body,
        request_id=exchange.request_id,
        purpose=event.purpose or "",
        grant=grant,
        params=params,
    )
    answer = await payments.submit(call)
    if answer.replayed:
        exchange.response_headers[REPLAYED_HEADER] = "true"
        if answer.status >= 400:
            exchange.media_type = PROBLEM_CONTENT_TYPE
        event.reason_code = "idempotent_replay"
        return answer.status, answer.body
    event.upstream_status = answer.upstream_status
    event.upstream_us = answer.upstream_us
    if answer.fields is not None:
        event.fields = answer.fields
    return answer.status, answer.body


@router.post(
    "/{service}/{operation}",
    summary="Invoke an operation",
    description="Call one operation of an upstream system for a granted purpose; only granted fields return."
    " A grant's rate limit and daily quota answer 429 with Retry-After when reached. Without a grant usable now:"
    " 403 `grant_suspended`, `grant_revoked` or `grant_expired` when the caller held one for the purpose (the"
    " detail names it), else `purpose_not_granted` or `no_grant`. " + SIGNED,
    response_model=InvokeResponse,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
    openapi_extra={**json_body(InvokeRequest), "parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def invoke(request: Request, service: str, operation: str) -> Response:
    return await run_exchange(
        request, "service.invoke", partial(_invoke, service, operation), service=service, operation=operation
    )


async def _list(exchange: Exchange) -> tuple[int, bytes]:
    caller = exchange.principal.caller
    async with exchange.runtime.sessions() as session:
        owned = await owners(session)
    services = []
    for name, adapter in sorted(exchange.runtime.adapters.items()):
        operations = []
        for operation in adapter.operations.values():
            grants = await exchange.runtime.directory.grants_for(caller.caller_id, name, operation.name)
            operations.append(
                {
                    "operation": operation.name,
                    "summary": operation.summary,
                    "safe": operation.safe,
                    "fields": list(operation.fields),
                    "input_schema": operation.input_model.model_json_schema(),
                    "output_schema": operation.output_model.model_json_schema(),
                    "grants": [
                        {"grant_id": g.grant_id, "purpose": g.purpose, "fields": list(g.fields)} for g in grants
                    ],
                }
            )
        services.append(
            {"service": name, "title": adapter.title, "owner_department": owned.get(name), "operations": operations}
        )
    return 200, orjson.dumps({"services": services})


@router.get(
    "",
    summary="List services",
    description="Every service with its owning department (提供单位, who publishes its catalog items and decides"
    " requests), and every operation with its input and output JSON schema and the caller's grants. " + SIGNED,
    responses=problem_responses(401),
)
async def list_services(request: Request) -> Response:
    return await run_exchange(request, "service.list", _list)
