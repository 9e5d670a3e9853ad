"""The invoke route answered ahead of FastAPI's middleware answers exactly as when reached through FastAPI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import GatewayApp
from simulators.enterprises import DEMO_LISTED_USCC, DEMO_USCC
from tests.helpers.calls import INVOKE, body_for, send, signed
from tests.helpers.gateways import PURPOSE, RunningGateway

VOLATILE = {"date", "x-request-id", "content-length"}


def _shape(response: httpx.Response) -> dict[str, Any]:
    """What must not differ between the two ways: status, headers (names and stable values) and the body."""
    body: Any = response.content
    if response.headers.get("content-type", "").startswith(("application/json", "application/problem+json")):
        body = orjson.loads(response.content)
        body.pop("request_id", None)
        body.get("meta", {}).pop("request_id", None)
        body.get("meta", {}).pop("fetched_at", None)
    headers = {name: value for name, value in response.headers.items() if name not in VOLATILE}
    return {"status": response.status_code, "headers": headers, "body": body}


CASES: dict[str, Callable[[RunningGateway], httpx.Request]] = {
    "allowed": lambda gw: signed(gw, gw.platform, body=body_for(DEMO_LISTED_USCC)),
    "unsigned": lambda gw: httpx.Request("POST", gw.url + INVOKE, content=body_for(DEMO_USCC)),
    "bad signature": lambda gw: _edited(signed(gw, gw.platform), "signature", "msjx=:AAAA:"),
    "wrong purpose": lambda gw: signed(gw, gw.platform, body=body_for(DEMO_USCC, "SH-9999")),
    "unknown service": lambda gw: signed(gw, gw.platform, path="/v1/services/nope/x"),
    "bad input": lambda gw: signed(gw, gw.platform, body=orjson.dumps({"purpose": PURPOSE, "params": {"uscc": "1"}})),
    "trailing slash": lambda gw: signed(gw, gw.platform, path=INVOKE + "/"),
    "three segments": lambda gw: signed(gw, gw.platform, path=INVOKE + "/batch"),
    "percent-encoded": lambda gw: signed(gw, gw.platform, path="/v1/services/cr%65dit/dishonest-debtor"),
    "query string": lambda gw: signed(gw, gw.platform, path=INVOKE + "?x=1"),
    "GET": lambda gw: httpx.Request("GET", gw.url + INVOKE),
}


def _edited(request: httpx.Request, header: str, value: str) -> httpx.Request:
    request.headers[header] = value
    return request


@pytest.mark.parametrize("case", list(CASES))
async def test_short_way_answers_as_fastapi_does(gateway: RunningGateway, case: str) -> None:
    app = gateway.app
    assert isinstance(app, GatewayApp) and app.direct_route is not None
    route = app.direct_route
    shapes = []
    try:
        for direct in (True, False):
            app.direct_route = route if direct else None
            shapes.append(_shape(await send(CASES[case](gateway))))
    finally:
        app.direct_route = route
    assert shapes[0] == shapes[1]


async def test_invoke_takes_the_short_way(gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed call is answered without entering FastAPI's application stack."""
    entered = []
    original = GatewayApp.__mro__[1].__call__

    async def spy(self: Any, scope: Any, receive: Any, send_: Any) -> None:
        entered.append(scope["path"])
        await original(self, scope, receive, send_)

    monkeypatch.setattr(GatewayApp.__mro__[1], "__call__", spy)
    response = await send(signed(gateway, gateway.platform))
    assert response.status_code == 200, response.text
    assert entered == []
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert entered == ["/healthz"]


@pytest.mark.parametrize(
    "path",
    ["/v1/services/credit/x", "/v1/a?b/c", "/v1/a#b", "/v1/a\\b", "//v1/x", "/v1/tab\there", "/v1/百", "/v1/a%2Fb"],
)
@pytest.mark.parametrize("host", [b"gw.example:8000", b"", None])
def test_request_path_and_target_uri_read_as_starlette_does(path: str, host: bytes | None) -> None:
    from starlette.requests import Request

    from gateway.access.authenticate import target_uri
    from gateway.pipeline.exchange import request_path

    headers = [(b"content-type", b"application/json")] + ([(b"host", host)] if host is not None else [])
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"q=1"}
    scope |= {"headers": headers, "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": ""}
    request = Request(scope)
    assert request_path(request) == request.url.path
    expected_host = request.headers.get("host") or "localhost"
    assert target_uri(request) == f"http://{expected_host}{path.encode().decode('latin-1')}?q=1"


async def test_one_route_answers_invoke_and_middleware_sees_it(tmp_path: Any) -> None:
    """The route table holds one invoke route, the short way's own; middleware added to the app sees the call."""
    from fastapi.routing import APIRoute
    from starlette.middleware.base import BaseHTTPMiddleware

    from gateway.api import services
    from gateway.app import create_app
    from gateway.settings import Settings
    from gateway.storage import db

    settings = Settings(data_dir=tmp_path)
    await db.upgrade_async(settings)
    app = create_app(settings)
    assert isinstance(app, GatewayApp) and app.direct_route is services.invoke_route
    serving = [route for route in app.routes if getattr(route, "path", None) == services.INVOKE_PATH]
    assert serving == [services.invoke_route], "no second route (an APIRoute) answers invoke calls"
    assert not any(isinstance(route, APIRoute) and route.path == services.INVOKE_PATH for route in app.routes)
    assert services.INVOKE_PATH in app.openapi()["paths"], "the OpenAPI document still describes it"

    async def tag(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-middleware"] = "seen"
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=tag)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            response = await client.post(INVOKE, content=body_for(DEMO_USCC))
    assert response.status_code == 401
    assert response.headers.get("x-middleware") == "seen", "the invoke call went through the app's middleware"
