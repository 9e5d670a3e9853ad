"""The ASGI application factory: routes, problem+json for every error, and the runtime's life cycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.base import Adapter
from gateway import __version__
from gateway.problems import Problem, validation_problem
from gateway.routes import admin, audit, ops, services
from gateway.runtime import Runtime
from gateway.settings import Settings
from schemas.api import CallerIn, GrantIn, InvokeRequest, KeyIn, ProblemDetails

log = logging.getLogger("msjx.app")

DESCRIPTION = """The one door between a 免申即享 platform and the systems that hold the data.

Every call is signed (RFC 9421, ed25519), allowed only inside a grant for its purpose, answered with
only the granted fields, and recorded in an encrypted, hash-chained audit log before the answer leaves.
Errors are RFC 9457 problem+json with a stable `code`.
"""


def create_app(settings: Settings, adapters: dict[str, Adapter] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, adapters)
        log.info("gateway node %s ready (%s)", settings.node_id, "PostgreSQL" if not settings.is_sqlite else "SQLite")
        try:
            yield
        finally:
            await app.state.runtime.close()

    app = FastAPI(
        title="msjx-gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(services.router)
    app.include_router(admin.router)
    app.include_router(audit.router)
    app.include_router(ops.router)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return exc.response(instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(list(exc.errors())).response(instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return Problem(exc.status_code, code, str(exc.detail), str(exc.detail)).response(instance=request.url.path)

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # Routes that read the raw body (to check its digest) reference these by name.
        for model in (InvokeRequest, CallerIn, KeyIn, GrantIn, ProblemDetails):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in model_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
