"""FastAPI's route state is built before the gateway says it is ready, not by the first request into a router: that
build holds the event loop tens of milliseconds while every other call waits (gateway/app.py, build_route_state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import routing

from gateway.app import build_route_state, create_app
from gateway.settings import load_settings
from tests.helpers.gateways import running_gateway


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every route whose state FastAPI builds from now on. A private hook of FastAPI's: if a release renames it, this
    test fails at the patch and says so, rather than passing without looking."""
    built: list[Any] = []
    build = routing._IncludedRouter._build_effective_context

    def counting(self: Any, route: Any) -> Any:
        built.append(getattr(route, "path", route))
        return build(self, route)

    monkeypatch.setattr(routing._IncludedRouter, "_build_effective_context", counting)
    return built


async def test_the_first_request_into_each_router_builds_nothing(
    tmp_path: Path, credit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url})
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
        built = _count_builds(monkeypatch)
        # The docs, the SOAP façade and the console come after the routers a readiness probe passes through; the
        # catalog before them.
        for path in ("/docs", "/soap/credit", "/console/login", "/v1/catalog"):
            answer = await client.get(path)
            assert answer.status_code < 500, (path, answer.status_code)
        assert built == [], f"routes built after start-up: {built}"


def test_fastapi_builds_lazily_and_one_pass_builds_it_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above would pass on a FastAPI that built everything eagerly; this one shows the build it prevents."""
    app = create_app(load_settings(data_dir=tmp_path))
    built = _count_builds(monkeypatch)
    assert build_route_state(app) > 50
    assert built, "FastAPI no longer builds route state lazily: build_route_state can go"
    built.clear()
    assert build_route_state(app) > 50
    assert built == [], "a second pass finds it all built"
