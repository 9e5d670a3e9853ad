"""Sharing requests (共享需求) over HTTP: file, edit, endorse, decide, extend, revoke; and the deadline calculator.

Each transition is one audited exchange whose sealed response holds the request with its history, so
the audit record carries the actor and the before/after of every changed field.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.access.directory import Directory
from gateway.api.deps import DirectoryDep, EngineDep, SessionsDep, SharingDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.http.json_bodies import load_body, parse_body
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.sharing import obligations, workflow
from gateway.sharing.calendar import calendar_for
from gateway.sharing.errors import DOMAIN_TYPES, calendar_problem
from gateway.sharing.request_states import Actor
from gateway.sharing.service import SharingService
from gateway.sharing.workdays import FIRST_YEAR, LAST_YEAR, CalendarYearUnsupported, supported_years
from schemas.api import PURPOSE_PATTERN
from schemas.sharing import (
    ApproveIn,
    Deadline,
    DeliverIn,
    EndorseIn,
    ExtendIn,
    RefuseIn,
    ReturnIn,
    RevokeIn,
    SharingRequestIn,
    SharingRequestOut,
    SharingRequestPatch,
)
from schemas.times import Day

router = APIRouter(tags=["sharing requests"])
PREFIX = "/v1/sharing-requests"
B = TypeVar("B", bound=BaseModel)
Action = Callable[[AsyncSession, Actor, str, Any, datetime], Awaitable[workflow.Outcome]]
StateName = Literal["draft", "submitted", "approved", "refused", "returned", "granted", "revoked", "expired"]
DeliveryName = Literal["pending", "delivered", "overdue", "cancelled"]
READERS = {"department", "officer", "admin", "coordinator"}


@dataclass(frozen=True)
class Requests:
    """What a route on sharing requests works with: the database, the grants snapshot, this node's clock."""

    sessions: async_sessionmaker
    directory: Directory
    sharing: SharingService


async def _requests(sessions: SessionsDep, directory: DirectoryDep, sharing: SharingDep) -> Requests:
    return Requests(sessions, directory, sharing)


RequestsDep = Annotated[Requests, Depends(_requests)]


def _dump(value: SharingRequestOut | list[SharingRequestOut]) -> bytes:
    if isinstance(value, list):
        return orjson.dumps([item.model_dump(mode="json") for item in value])
    return orjson.dumps(value.model_dump(mode="json"))


def _note(exchange: Exchange, out: SharingRequestOut, outcome: workflow.Outcome) -> None:
    event = exchange.event
    event.service, event.operation = outcome.item.service, outcome.item.operation
    event.purpose = out.purpose.code
    if out.grants:
        event.grant_id = out.grants[0].grant_id


async def _run(
    requests: Requests,
    exchange: Exchange,
    status: int,
    act: Callable[[AsyncSession, Actor, datetime], Awaitable[Any]],
) -> tuple[int, bytes]:
    now = requests.sharing.now()
    actor = Actor.of(exchange.principal.caller)
    async with requests.sessions() as session:
        outcome = await act(session, actor, now)
        out = await workflow.outcome_out(session, outcome, now)
    if outcome.grants_changed:
        # This node's next call sees it at once; every other node within the directory's 1 s.
        requests.directory.invalidate()
    _note(exchange, out, outcome)
    return status, _dump(out)


def _purpose_of(document: Any) -> str | None:
    """The purpose code of a body not validated yet, for the audit record of a refusal; only a well-formed one."""
    purpose = document.get("purpose") if isinstance(document, dict) else None
    code = purpose.get("code") if isinstance(purpose, dict) else None
    return code if isinstance(code, str) and re.fullmatch(PURPOSE_PATTERN, code) else None


def _transition_route(
    name: str, model: type[B], action: Action, *, optional: bool = False, collecting: bool = False
) -> Callable[..., Any]:
    """A POST/PATCH on one request. `collecting`: the action validates the raw JSON itself (一次性告知)."""

    async def route(request: Request, request_id: str, requests: RequestsDep) -> Response:
        async def handler(exchange: Exchange) -> tuple[int, bytes]:
            body = (
                load_body(exchange.body)
                if collecting
                else parse_body(exchange.body, model, optional=optional, domain_codes=DOMAIN_TYPES)
            )
            return await _run(
                requests, exchange, 200, lambda session, actor, now: action(session, actor, request_id, body, now)
            )

        return await run_exchange(request, f"sharing.{name}", handler, roles=READERS)

    return route


@router.post(
    PREFIX,
    status_code=201,
    summary="File a sharing request (draft)",
    description=(
        "A department's data officer files a request for fields of a catalog item, for a purpose, for a time."
        " It stays a draft until another person of the same department (its head) endorses it. " + SIGNED
    ),
    response_model=SharingRequestOut,
    responses=problem_responses(401, 403, 422),
    openapi_extra=json_body(SharingRequestIn),
)
async def file_request(request: Request, requests: RequestsDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        document = load_body(exchange.body)
        exchange.event.purpose = _purpose_of(document)
        return await _run(
            requests, exchange, 201, lambda session, actor, now: workflow.file_request(session, actor, document, now)
        )

    return await run_exchange(request, "sharing.file", handler, roles={"department"})


@router.get(
    PREFIX,
    summary="List sharing requests",
    description=(
        "A department sees its own requests and those addressed to it; an officer or admin sees all; a coordinator"
        " sees the escalated and overdue ones. Newest first, without history. `delivery=overdue` lists approved"
        " requests whose data is not yet usable 20 working days after approval. " + SIGNED
    ),
    response_model=list[SharingRequestOut],
    responses=problem_responses(401, 403),
)
async def list_requests(
    request: Request,
    sessions: SessionsDep,
    sharing: SharingDep,
    state: Annotated[StateName | None, Query(description="only requests in this state")] = None,
    overdue: Annotated[bool | None, Query(description="only overdue (true) or not overdue (false)")] = None,
    escalated: Annotated[bool | None, Query(description="only escalated (true) or not (false)")] = None,
    delivery: Annotated[
        DeliveryName | None, Query(description="only approved requests whose delivery is in this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        now = sharing.now()
        actor = Actor.of(exchange.principal.caller)
        async with sessions() as session:
            found = await workflow.list_requests(
                session,
                actor,
                now,
                state=state,
                overdue=overdue,
                escalated=escalated,
                limit=1000 if delivery is not None else limit,
            )
        if delivery is not None:
            found = [entry for entry in found if entry.delivery is not None and entry.delivery.state == delivery][
                :limit
            ]
        return 200, _dump(found)

    return await run_exchange(request, "sharing.list", handler, roles=READERS)


@router.get(
    PREFIX + "/{request_id}",
    summary="One sharing request, with its history",
    description="Every transition with its actor and the before/after of what changed. " + SIGNED,
    response_model=SharingRequestOut,
    responses=problem_responses(401, 403, 404),
)
async def get_request(request: Request, request_id: str, sessions: SessionsDep, sharing: SharingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        now = sharing.now()
        async with sessions() as session:
            out = await workflow.get_request(session, Actor.of(exchange.principal.caller), request_id, now)
        exchange.event.purpose = out.purpose.code
        return 200, _dump(out)

    return await run_exchange(request, "sharing.read", handler, roles=READERS)


async def _update(session: AsyncSession, actor: Actor, request_id: str, body: Any, now: datetime) -> workflow.Outcome:
    return await workflow.update_request(session, actor, request_id, body, now)


router.add_api_route(
    PREFIX + "/{request_id}",
    _transition_route("update", SharingRequestPatch, _update, collecting=True),
    methods=["PATCH"],
    summary="Change a draft or returned request",
    description="The requesting department corrects its request (e.g. after 退回补正); only given fields change. "
    + SIGNED,
    response_model=SharingRequestOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=json_body(SharingRequestPatch),
)

_TRANSITIONS: list[tuple[str, type[BaseModel], Action, bool, str, str]] = [
    (
        "endorse",
        EndorseIn,
        workflow.endorse,
        True,
        "Endorse (本部门负责人审核) and submit",
        "A second person of the requesting department (not the filer) approves the request, which submits it."
        " A 无条件 item is approved on submission and its grants issued; a 有条件 one gets a deadline of 10 Chinese"
        " working days. A deadline that counts days of a year with no loaded holiday schedule is provisional"
        " (`deadline_provisional`, `deadline_source`) and is recomputed when that year is imported."
        " The body is optional.",
    ),
    (
        "approve",
        ApproveIn,
        workflow.approve,
        False,
        "Approve, fully or in part, creating the grants",
        "The provider department (or, once escalated, a coordinator) approves: one grant per caller named, with"
        " the daily quota (default and maximum: the expected daily volume) and rate limit (default 20/second)"
        " shared by them. A partial approval grants fewer `fields` than requested (422 `field_not_requested`"
        " otherwise), an earlier `valid_to` or a lower `daily_quota`: the request is narrowed to it, its history"
        " shows before and after, and `decision.narrowed` what was requested. The grants are due for delivery"
        " within 20 working days. The request is `granted`, or `approved` until a later requested start.",
    ),
    (
        "refuse",
        RefuseIn,
        workflow.refuse,
        False,
        "Refuse, with reasons and their ground",
        "The provider (or, once escalated, a coordinator) refuses with reasons and a ground (共享为常态): a"
        " `legal_basis` (`kind`, `title`, `article`, as a 不予共享 item cites it) or, for a 有条件 item, the"
        " `condition_not_met`; without either, 422 `refusal_ground_missing`.",
    ),
    (
        "return",
        ReturnIn,
        workflow.return_request,
        False,
        "Return as incomplete (退回补正)",
        "Every missing item at once (一次性告知): a later return of the same request may name only items the first"
        " named. The requester corrects it and its head endorses it again.",
    ),
    (
        "extend",
        ExtendIn,
        workflow.extend,
        False,
        "Extend the deadline once",
        "The provider extends a 有条件 request's deadline once, by 1–10 working days, before it passes; the reason"
        " is recorded on the request for the requester. Counted like the deadline (provisional in an unloaded year).",
    ),
    (
        "deliver",
        DeliverIn,
        obligations.deliver,
        True,
        "Deliver: the approved data is usable",
        "The provider states that the approved data is delivered (条例: within 20 working days of approval), by"
        " the request's 共享方式; every grant of the request not yet usable becomes `delivered`. A grant is also"
        " delivered by the first successful call under it. Until then the request's `delivery` is `pending`, and"
        " `overdue` once the due day (Beijing time) has ended. The body (a `note`) is optional.",
    ),
    (
        "revoke",
        RevokeIn,
        workflow.revoke,
        False,
        "Revoke an approved or granted request",
        "The provider, the requester or an admin ends it: its grants are revoked and refused on every node within"
        " one second.",
    ),
]

for _name, _model, _action, _optional, _summary, _description in _TRANSITIONS:
    _body = json_body(_model)
    _body["requestBody"]["required"] = not _optional
    router.add_api_route(
        f"{PREFIX}/{{request_id}}/{_name}",
        _transition_route(_name, _model, _action, optional=_optional),
        methods=["POST"],
        summary=_summary,
        description=_description + " " + SIGNED,
        response_model=SharingRequestOut,
        responses=problem_responses(401, 403, 404, 422),
        openapi_extra=_body,
    )


@router.get(
    "/v1/calendar/deadline",
    summary="Deadline in Chinese working days",
    description=(
        "The `working_days`-th Chinese working day after `start` (public holidays off, 调休 weekend workdays on),"
        " as the workflow counts it: an imported schedule, else chinese-calendar, else (`provisional: true`)"
        " weekends and the statutory holidays of the `holidays` package. Only a day outside"
        f" {FIRST_YEAR}–{LAST_YEAR} is a 422 `calendar_year_unsupported`. Public, not audited."
    ),
    response_model=Deadline,
    responses=problem_responses(422),
    openapi_extra={"security": []},
)
async def deadline(
    engine: EngineDep,
    start: Annotated[Day, Query(description="the day counting starts after, e.g. 2025-09-30")],
    working_days: Annotated[int, Query(ge=1, le=60)] = 10,
) -> Deadline:
    calendar = await calendar_for(engine)
    try:
        count = calendar.add_working_days(start, working_days)
    except CalendarYearUnsupported as exc:
        field = "start" if not FIRST_YEAR <= start.year <= LAST_YEAR else "working_days"
        raise calendar_problem(exc, field) from None
    return Deadline(
        start=start,
        working_days=working_days,
        due=count.due,
        provisional=count.provisional,
        source=count.source,
        sources=count.sources,
        calendar=calendar.describe(count.sources),
        years=supported_years(),
    )
