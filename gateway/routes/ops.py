"""Operations endpoints: liveness, readiness (database, Redis, audit writer) and Prometheus metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness", description="200 while the process serves HTTP.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    description="200 when the database, Redis (when configured) and the audit writer all work; 503 otherwise.",
    responses={503: {"description": "A dependency is down; the body names it"}},
)
async def readyz(request: Request) -> Response:
    checks = await request.app.state.runtime.readiness()
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
