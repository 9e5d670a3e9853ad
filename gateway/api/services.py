"""The platform's door: invoke one operation of one upstream service, and list what a caller may invoke."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapters.base import Adapter, Operation
from adapters.errors import UpstreamError
from gateway.access.directory import Directory, GrantInfo
from gateway.access.grants import grant_for
from gateway.access.minimize import answer_document, minimize
from gateway.access.quotas import Quotas
from gateway.api.deps import AdaptersDep, DirectoryDep, SessionsDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.json_bodies import parse_body
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem, validation_problem
from gateway.payments.idempotency import MAX_HEADER_LENGTH, MAX_KEY_LENGTH, parse_key
from gateway.payments.intents import REPLAYED_HEADER, Payments, VoucherCall
from gateway.pipeline.exchange import Exchange, request_path, run_exchange
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


def upstream_status(status: str | None, attempts: int) -> str | None:
    """What the audit record keeps of the upstream's answer; retries show as `503;attempts=3`."""
    if attempts <= 1:
        return status
    return f"{status or 'none'};attempts={attempts}"[:64]


@dataclass(frozen=True)
class Invocations:
    """What invoking an operation works with; built once the runtime is up (`app.state.invocations`)."""

    adapters: Mapping[str, Adapter]
    directory: Directory
    quotas: Quotas
    payments: Payments | None
    # Records a grant's delivery on its first successful call (the sharing service, off the request path).
    note_first_use: Callable[[GrantInfo], None]
    clock: Clock = SYSTEM_CLOCK

    async def invoke(self, service: str, operation_name: str, exchange: Exchange) -> tuple[int, bytes]:
        """The /v1 JSON call: its body read as JSON, its answer rendered as JSON."""
        status, answer = await self.call(exchange, service, operation_name, read_json)
        return status, answer if isinstance(answer, bytes) else orjson.dumps(answer)

    async def call(
        self, exchange: Exchange, service: str, operation_name: str, read: RequestReader
    ) -> tuple[int, dict[str, Any] | bytes]:
        """One call of one operation, whichever interface it came through (/v1 JSON, the SOAP façade): grant,
        quota, the upstream, minimization. `read` turns the exchange's body into purpose and params. Returns the
        status and the answer document ({"data", "meta"}), or the payment path's answer already rendered as JSON."""
        adapter = self.adapters.get(service)
        if adapter is None:
            raise Problem(ProblemCode.UNKNOWN_SERVICE, f"no service {service!r}")
        operation = adapter.operations.get(operation_name)
        if operation is None:
            raise Problem(ProblemCode.UNKNOWN_OPERATION, f"{service} has no operation {operation_name!r}")
        # The key is checked as documented wherever it is sent, though only payments use it.
        keys = [
            value.decode("latin-1") for name, value in exchange.request.scope["headers"] if name == b"idempotency-key"
        ]
        idempotency_key = parse_key(keys) if keys else None
        body = read(exchange, operation)
        event = exchange.event
        event.purpose = body.purpose
        caller_id = exchange.principal.caller.caller_id
        grant = await grant_for(self.directory, caller_id, service, operation_name, body.purpose)
        event.grant_id = grant.grant_id
        try:
            params = operation.input_model.model_validate(body.params)
        except ValidationError as exc:
            problem = validation_problem(exc.errors(), prefix=("params",))
            if any(error["type"] == ProblemCode.PATH_DOT_SEGMENT for error in problem.errors or ()):
                # A traversal attempt, not a typo: its own code for the audit and alerts.
                problem.code = ProblemCode.PATH_DOT_SEGMENT
            raise problem from None
        event.subject = getattr(params, "uscc", None)
        # Counted only for a call that will be made: a refused or malformed one spends no quota.
        await self.quotas.check(grant)
        if self.payments is not None and self.payments.handles(service, operation_name):
            return await _pay(self.payments, exchange, grant, params, idempotency_key)
        started = time.perf_counter()
        try:
            result = await adapter.invoke(operation_name, params)
        except UpstreamError as exc:
            event.upstream_us = int((time.perf_counter() - started) * 1e6)
            event.upstream_status = upstream_status(exc.upstream_status, exc.attempts)
            raise Problem(exc.code, exc.detail, status=exc.status, headers=exc.headers) from None
        event.upstream_us = int((time.perf_counter() - started) * 1e6)
        event.upstream_status = upstream_status(result.upstream_status, result.attempts)
        data = minimize(result.data, grant.fields)
        event.fields = tuple(data)
        if grant.undelivered:
            # The first successful call proves the grant usable: its delivery is recorded, once, off this path.
            self.note_first_use(grant)
        return 200, answer_document(
            data,
            request_id=exchange.request_id,
            service=service,
            operation=operation_name,
            grant_id=grant.grant_id,
            source=adapter.title or service,
            fetched_at=self.clock.now(),
        )


async def _invocations(request: Request) -> Invocations:
    return request.app.state.invocations


# For another interface's routes to the same operations (the SOAP façade).
InvocationsDep = Annotated[Invocations, Depends(_invocations)]

RequestReader = Callable[[Exchange, Operation], InvokeRequest]


def read_json(exchange: Exchange, operation: Operation) -> InvokeRequest:
    # An operation that changes state (a payment) reads its body exactly: numbers as decimals, never floats.
    return parse_body(exchange.body, InvokeRequest, exact=not operation.safe)


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


INVOKE_PATH = router.prefix + "/{service}/{operation}"
INVOKE_SUMMARY = "Invoke an operation"
INVOKE_DESCRIPTION = (
    "Call one operation of an upstream system for a granted purpose; only granted fields return."
    " A grant's rate limit and daily quota answer 429 with Retry-After when reached. Without a grant usable now:"
    " 403 `grant_suspended`, `grant_revoked` or `grant_expired` when the caller held one for the purpose (the"
    " detail names it), else `purpose_not_granted` or `no_grant`. " + SIGNED
)


class InvokeEndpoint:
    """The invoke route's endpoint, as a plain ASGI application: it reads the raw body (for its digest) and
    answers every error itself, so it needs none of FastAPI's request parsing, validation or dependencies."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        service, operation = scope["path_params"]["service"], scope["path_params"]["operation"]
        invocations: Invocations = scope["app"].state.invocations
        handler = partial(invocations.invoke, service, operation)
        response = await run_exchange(request, "service.invoke", handler, service=service, operation=operation)
        await response(scope, receive, send)


# The one route to invoke: a Starlette route (gateway/app.py answers it ahead of FastAPI's middleware).
invoke_route = Route(INVOKE_PATH, InvokeEndpoint(), methods=["POST"], name="invoke")


async def invoke(service: str, operation: str) -> InvokeResponse:  # pragma: no cover - documentation only
    """Never called: the signature from which FastAPI writes the invoke route's OpenAPI operation."""
    raise NotImplementedError


# Only for the OpenAPI document (gateway/app.py adds it there): never in the router, never answers a request.
invoke_documentation = APIRoute(
    INVOKE_PATH,
    invoke,
    methods=["POST"],
    tags=["services"],
    summary=INVOKE_SUMMARY,
    description=INVOKE_DESCRIPTION,
    response_model=InvokeResponse,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
    openapi_extra={**json_body(InvokeRequest), "parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)


async def _list(
    sessions: async_sessionmaker, adapters: Mapping[str, Adapter], directory: Directory, exchange: Exchange
) -> tuple[int, bytes]:
    caller = exchange.principal.caller
    async with sessions() as session:
        owned = await owners(session)
    services = []
    for name, adapter in sorted(adapters.items()):
        operations = []
        for operation in adapter.operations.values():
            grants = await directory.grants_for(caller.caller_id, name, operation.name)
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
async def list_services(
    request: Request, sessions: SessionsDep, adapters: AdaptersDep, directory: DirectoryDep
) -> Response:
    return await run_exchange(request, "service.list", partial(_list, sessions, adapters, directory))
