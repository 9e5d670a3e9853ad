"""The ASGI application factory: routes, problem+json for every error, and the runtime's life cycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from adapters.base import Adapter
from gateway import __version__
from gateway.access.certificates import CertificateAuthenticator
from gateway.api import admin, audit, calendar, catalog, grant_duties, ops, services, sharing, swagger, upstreams
from gateway.api.openapi import finish, is_signed_route
from gateway.audit.writer import AuditUnavailable
from gateway.batches import routes as batches
from gateway.batches.service import BatchService
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.console import pages as console_pages
from gateway.http.forwarded import TrustedProxies
from gateway.http.forwarded import apply as apply_forwarded
from gateway.http.nul import nul_in_target, nul_problem
from gateway.http.problems import Problem, validation_problem
from gateway.pipeline.exchange import Exchange, outage_problem, run_exchange
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.sharing.service import SharingService
from gateway.soap import routes as soap
from gateway.upstreams.registry import UpstreamIn
from schemas.api import CallerIn, GrantIn, InvokeRequest, KeyIn, ProblemDetails
from schemas.batches import BatchIn
from schemas.problems import ProblemCode
from schemas.sharing import REQUEST_MODELS

log = logging.getLogger("msjx.app")
# The framework's own 404 and 405 (no route, wrong method) have codes of their own; any other is http_error.
HTTP_CODES = {404: ProblemCode.NOT_FOUND, 405: ProblemCode.METHOD_NOT_ALLOWED}

DESCRIPTION = """The one door between a 免申即享 platform and the systems that hold the data.

Every call is signed (RFC 9421, ed25519 or 国密 sm2-sm3), allowed only inside a grant for its purpose, answered with
only the granted fields, and recorded in an encrypted, hash-chained audit log before the answer leaves.
Errors are RFC 9457 problem+json with a stable `code`.
"""


class GatewayApp(FastAPI):
    """FastAPI, with the invoke route answered ahead of FastAPI's own middleware.

    The invoke call is the one the platform makes hundreds of thousands of times. Profiling (docs/performance.md)
    showed FastAPI's router, dependency solving and middleware costing about as much per request as the signature
    check; the endpoint needs none of it: `run_exchange` reads the raw body and answers every error itself. So that
    route is a plain Starlette `Route` with an ASGI endpoint (`services.invoke_route`), registered in the router like
    every other, and `__call__` asks that route itself whether a request is its own: a full match (its path and
    POST) is answered at once; anything else (another path, another method: the 405) goes through FastAPI as usual.
    There is one route and one endpoint; the route table decides. Middleware added to the app must see every
    request, so with any the invoke call goes through the stack too, to the same route.
    """

    direct_route: Route | None = None
    trusted_proxies: TrustedProxies = TrustedProxies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Before anything reads the client address or the target URI (MSJX_TRUSTED_PROXIES, gateway/http/forwarded.py).
        if self.trusted_proxies and scope["type"] == "http":
            apply_forwarded(self.trusted_proxies, scope)  # type: ignore[arg-type]
        route = self.direct_route
        if route is not None and scope["type"] == "http" and not self.user_middleware:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
        if scope["type"] == "http":
            # Path and query parameters reach database queries; the invoke route above looks its own up in memory.
            where = nul_in_target(scope["path"], scope["query_string"])
            if where is not None:
                await nul_problem(where).response()(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def route_methods(app: FastAPI, path: str) -> set[str] | None:
    """Every method some route serves at `path` (None: no route there); Starlette's 405 names only one route's."""
    methods: set[str] | None = None
    for route in iter_route_contexts(app.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path):
            methods = (methods or set()) | set(route.methods or ())
    return methods


def not_found_detail(app: FastAPI, path: str) -> str:
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    if other and route_methods(app, other) is not None:
        return f"no route at {path}; the route is {other}"
    return "no route at this path"


def build_route_state(app: FastAPI) -> int:
    """Have FastAPI build every included router's route state now; returns how many routes there are.

    FastAPI builds a router's state (dependencies, parameter models) when a request first passes through it, on the
    event loop, while other calls wait. The invoke route bypasses FastAPI, so on a node that only served calls the
    first scrape of /metrics would build all but the last three routers (about 40 ms, timed in process on a slow
    host), and the first console request the console's 35 routes (10-12 ms). Before the node says it is ready, that
    delays no call.
    """
    return sum(1 for _ in iter_route_contexts(app.routes))


def create_app(
    settings: Settings,
    adapters: Mapping[str, Adapter] | None = None,
    on_ready: Callable[[], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> FastAPI:
    """`on_ready` runs once the runtime is up, when the server already handles signals: the place to announce it.
    `clock` is the wall time of everything the gateway does (tests give their own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = app.state.runtime = await Runtime.start(settings, adapters, clock)
        app.state.exchanges = runtime.exchanges
        sharing = app.state.sharing = SharingService(
            engine=runtime.engine,
            sessions=runtime.sessions,
            directory=runtime.directory,
            audit=runtime.audit,
            overdue_action=settings.sharing_overdue_action,
            interval=settings.sharing_sweep_seconds,
            clock=runtime.clock,
        )
        app.state.invocations = services.Invocations(
            adapters=runtime.adapters,
            directory=runtime.directory,
            quotas=runtime.quotas,
            payments=runtime.payments,
            note_first_use=sharing.note_first_use,
            clock=runtime.clock,
        )
        app.state.certificates = CertificateAuthenticator(runtime.sessions, settings.client_cert_header, runtime.clock)
        await app.state.sharing.start()
        app.state.batches = BatchService.from_runtime(runtime, worker=settings.batch_workers > 0)
        await app.state.batches.start()
        build_route_state(app)
        log.info("gateway node %s ready (%s)", settings.node_id, "PostgreSQL" if not settings.is_sqlite else "SQLite")
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await app.state.batches.close()
            await app.state.sharing.close()
            await app.state.runtime.close()

    app = GatewayApp(
        title="msjx-gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # our own /docs: Swagger UI's assets from a pinned package, not from a CDN
        redoc_url=None,
        # No 307 to the path with or without a trailing slash: a signed request would arrive there with a
        # signature over the old target URI and fail, and a POST would send its body twice. A 404 names the path.
        redirect_slashes=False,
    )
    app.trusted_proxies = settings.trusted_proxy_networks
    app.router.routes.append(services.invoke_route)
    app.direct_route = services.invoke_route
    app.include_router(services.router)
    app.include_router(catalog.router)
    app.include_router(sharing.router)
    app.include_router(calendar.router)
    app.include_router(admin.router)
    app.include_router(grant_duties.router)
    app.include_router(upstreams.router)
    app.include_router(audit.router)
    app.include_router(batches.router)
    app.include_router(ops.router)
    app.include_router(swagger.router)
    app.include_router(soap.router)
    app.include_router(console_pages.router)
    app.state.console = console_pages.ConsoleState(secure_cookies=settings.console_secure_cookies, settings=settings)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return exc.response(instance=request.url.path)

    # The console's own audit records (sign-ins, refusals, exports) fail closed: a page, never a traceback.
    app.add_exception_handler(AuditUnavailable, console_pages.audit_unavailable)  # type: ignore[arg-type]

    # Routes outside an exchange (the public catalog and calendar) and console pages meet the database too: an
    # outage there, or a statement it gave up on, is a 503 as on the audited routes, not a 500 with a traceback.
    async def _store_failed(request: Request, exc: Exception) -> Response:
        route = request.scope.get("route")
        operation = f"{request.method} {getattr(route, 'path', 'other')}"
        problem = outage_problem(request.app.state.runtime.exchanges, exc, operation)
        if problem is None:
            raise exc  # a bug: the 500 and its traceback
        if request.url.path.startswith("/console"):
            return console_pages.store_unavailable(request, problem)
        return problem.response(instance=request.url.path)

    # A refused connect reaches the route as the socket's own error, not wrapped by the pool.
    for failure in (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, TimeoutError):
        app.add_exception_handler(failure, _store_failed)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problem = validation_problem(list(exc.errors()))
        if not is_signed_route(request.scope.get("route")):
            return problem.response(instance=request.url.path)

        # FastAPI checks query and path parameters before the handler's exchange authenticates. A signed route
        # authenticates and audits first all the same: an unsigned request gets 401 (and teaches nothing about the
        # parameters), a signed one its 422 on the record.
        async def refuse(exchange: Exchange) -> tuple[int, bytes]:
            raise problem

        return await run_exchange(request, "request.invalid", refuse)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, ProblemCode.HTTP_ERROR)
        detail = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = sorted(route_methods(app, request.scope["path"]) or ())
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        elif exc.status_code == 404:
            detail = not_found_detail(app, request.scope["path"])
        problem = Problem(code, detail, status=exc.status_code, title=str(exc.detail), headers=headers)
        return problem.response(instance=request.url.path)

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        # The invoke route is a plain Starlette route, which FastAPI does not describe: its documentation is an
        # APIRoute of its own, never in the router.
        routes = [services.invoke_documentation, *app.routes]
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # Routes that read the raw body (to check its digest) reference these by name.
        for model in (BatchIn, InvokeRequest, CallerIn, KeyIn, GrantIn, ProblemDetails, UpstreamIn, *REQUEST_MODELS):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in model_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = model_schema
        app.openapi_schema = finish(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
