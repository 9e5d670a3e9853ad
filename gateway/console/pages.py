"""Every console page on one router: importing the role modules registers their routes on `web.router`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.audit.writer import AuditUnavailable
from gateway.console import admin, auditor, officer, oidc, operator, web
from gateway.console.session import ConsoleState
from gateway.http.problems import Problem
from schemas.problems import ProblemCode

__all__ = ["ConsoleState", "audit_unavailable", "router", "store_unavailable"]

# The role modules are imported for their routes.
_ROOMS = (admin, auditor, officer, oidc, operator)
router: APIRouter = web.router


async def audit_unavailable(request: Request, exc: AuditUnavailable) -> Response:
    """A console action whose own audit record could not be made durable did not happen: 503, as the API answers."""
    if request.url.path.startswith("/console"):
        return web.render(
            request,
            "forbidden.html",
            None,
            status=503,
            message="审计日志暂不可用，操作未执行，请稍后重试 (audit log unavailable)",
        )
    problem = Problem(ProblemCode.AUDIT_UNAVAILABLE, "the action could not be recorded; retry later")
    return problem.response(instance=request.url.path)


def store_unavailable(request: Request, problem: Problem) -> Response:
    """A console page whose database was away, or gave up on a query: 503 with a page saying to retry."""
    return web.render(
        request,
        "forbidden.html",
        None,
        status=problem.status,
        message=f"数据库暂不可用，请稍后重试 ({problem.title})",
    )
