"""Operations endpoints: liveness, readiness (database, Redis, audit writer; the calendar as advice) and metrics."""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import metrics as gateway_metrics
from gateway.api.deps import EngineDep, ReadinessDep, SharingDep
from gateway.sharing.calendar import calendar_for, calendar_warning, count_open_provisional
from gateway.sharing.service import SharingService

router = APIRouter(tags=["ops"])
PUBLIC = {"security": []}  # no signature: gateway/api/openapi.py documents every other route as signed
log = logging.getLogger("msjx.ops")
# Checks that report but never make the node unready.
ADVISORY = frozenset({"calendar"})


async def _calendar_check(engine: AsyncEngine, sharing: SharingService) -> str:
    """'ok', or what the operator must load (this year; next year from 1 November); never fails the probe."""
    try:
        calendar = await calendar_for(engine)
        return calendar_warning(calendar, sharing.now()) or "ok"
    except Exception as exc:  # the database check reports an outage; this one only advises
        return f"unknown: {type(exc).__name__}"


@router.get("/healthz", summary="Liveness", description="200 while the process serves HTTP.", openapi_extra=PUBLIC)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    description=(
        "200 when the database, Redis (when configured) and the audit writer all work; 503 otherwise. `calendar`"
        " only advises: from 1 November it says `next year not loaded` until next year's holiday schedule is"
        " imported (deadlines reaching into it are provisional meanwhile), and the node stays ready."
    ),
    responses={503: {"description": "A dependency is down; the body names it"}},
    openapi_extra=PUBLIC,
)
async def readyz(readiness: ReadinessDep, engine: EngineDep, sharing: SharingDep) -> Response:
    checks = await readiness()
    checks["calendar"] = await _calendar_check(engine, sharing)
    ready = all(value == "ok" for name, value in checks.items() if name not in ADVISORY)
    body: dict[str, object] = {"status": "ready" if ready else "not_ready", "checks": checks}
    if checks["calendar"] != "ok":
        body["calendar"] = checks["calendar"]
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, openapi_extra=PUBLIC)
async def metrics(engine: EngineDep) -> Response:
    try:
        # A count over the shared database, so whichever node or worker is scraped reports the same figure.
        gateway_metrics.PROVISIONAL_DEADLINES.set(await count_open_provisional(engine))
    except Exception as exc:  # the scrape still answers; the gauge keeps its last value
        log.warning("provisional deadline count failed: %s", type(exc).__name__)
    return Response(gateway_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
