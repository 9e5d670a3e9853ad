"""Path parameters of a registered OpenAPI upstream stay inside their segment: encoded as RFC 6570 simple expansion
encodes them, and a dot segment ('.' or '..') is refused with 422 naming the field, never sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.openapi import path_segment
from adapters.registered import RegisteredAdapter
from gateway.http.problems import validation_problem
from gateway.upstreams.registry import prepare
from tests.helpers.calls import assert_problem, last_record
from tests.helpers.district_upstreams import serving
from tests.helpers.gateways import PURPOSE, RunningGateway

CONTRACT = """{
  "openapi": "3.0.3",
  "info": {"title": "records", "version": "1"},
  "servers": [{"url": "http://district.example/api"}],
  "paths": {
    "/records/{name}": {"get": {"operationId": "getRecord",
      "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object",
        "properties": {"path": {"type": "string"}}}}}}}}},
    "/tags/{tags}/count": {"get": {"operationId": "countTags",
      "parameters": [{"name": "tags", "in": "path", "required": true,
        "schema": {"type": "array", "items": {"type": "string"}}}],
      "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object",
        "properties": {"path": {"type": "string"}}}}}}}}}
  }
}"""


@pytest.fixture
async def records() -> AsyncIterator[tuple[RegisteredAdapter, list[str]]]:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"path": request.raw_path})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    async with serving(app) as url:
        adapter = prepare("records", "openapi", files={"api.json": CONTRACT}, root="api.json", endpoint=url + "/api")
        await adapter.adapter.start()
        try:
            yield adapter.adapter, seen
        finally:
            await adapter.adapter.close()


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("a/b?c#d%e", "/api/records/a%2Fb%3Fc%23d%25e"),
        ("%2e%2E", "/api/records/%252e%252E"),  # an already-encoded dot segment is data, encoded again
        ("...", "/api/records/..."),  # three dots are a name, not a dot segment
        ("企业 1", "/api/records/%E4%BC%81%E4%B8%9A%201"),
    ],
)
async def test_path_parameters_are_encoded_inside_their_segment(
    records: tuple[RegisteredAdapter, list[str]], value: str, sent: str
) -> None:
    adapter, seen = records
    operation = adapter.operations["getRecord"]
    result = await adapter.invoke("getRecord", operation.input_model.model_validate({"name": value}))
    assert seen[-1] == sent
    assert result.data == {"path": sent}


async def test_list_path_parameter_is_expanded_with_commas(records: tuple[RegisteredAdapter, list[str]]) -> None:
    adapter, seen = records
    operation = adapter.operations["countTags"]
    await adapter.invoke("countTags", operation.input_model.model_validate({"tags": ["a,b", "c/d", "e"]}))
    assert seen[-1] == "/api/tags/a%2Cb,c%2Fd,e/count"


@pytest.mark.parametrize(
    ("operation_name", "params", "field"),
    [
        ("getRecord", {"name": ".."}, "params/name"),
        ("getRecord", {"name": "."}, "params/name"),
        ("countTags", {"tags": [".."]}, "params/tags"),
        ("countTags", {"tags": ["a", "."]}, "params/tags"),
    ],
)
async def test_dot_segments_are_refused_with_the_field_named(
    records: tuple[RegisteredAdapter, list[str]], operation_name: str, params: dict[str, Any], field: str
) -> None:
    adapter, seen = records
    before = len(seen)
    with pytest.raises(ValidationError) as caught:
        adapter.operations[operation_name].input_model.model_validate(params)
    problem = validation_problem(caught.value.errors(), prefix=("params",))  # as the invoke route turns it into
    assert (problem.status, problem.code) == (422, "validation_failed")
    assert problem.errors is not None
    assert [(error["field"], error["type"]) for error in problem.errors] == [(field, "path_dot_segment")]
    assert len(seen) == before  # nothing went upstream


def test_path_segment_never_writes_a_dot_segment() -> None:
    assert path_segment(["x.y", "..."]) == "x.y,..."
    for value in (".", ".."):
        with pytest.raises(ValueError, match="dot segment"):
            path_segment([value])


async def test_the_invoke_path_refuses_a_dot_segment_with_its_own_code(gateway: RunningGateway) -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"path": request.raw_path})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    async with serving(app) as url, gateway.client(gateway.admin) as admin, gateway.client() as platform:
        body = {
            "name": "records",
            "owner_department": "湖里区数据管理局",
            "kind": "openapi",
            "files": {"api.json": CONTRACT},
            "root": "api.json",
        }
        registered = await admin.post("/v1/upstreams", json={**body, "endpoint": url + "/api"})
        assert registered.status_code == 201, registered.text
        grant = await admin.post(
            "/v1/grants",
            json={
                "caller_id": "platform",
                "service": "records",
                "operation": "getRecord",
                "purpose": PURPOSE,
                "fields": ["path"],
                "valid_to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            },
        )
        assert grant.status_code == 201, grant.text
        invoke = "/v1/services/records/getRecord"
        ok = await platform.post(invoke, json={"purpose": PURPOSE, "params": {"name": "a/b"}})
        assert ok.status_code == 200, ok.text
        assert ok.json()["data"] == {"path": "/api/records/a%2Fb"}
        refused = await platform.post(invoke, json={"purpose": PURPOSE, "params": {"name": ".."}})
    body = assert_problem(refused, 422, "path_dot_segment")
    assert [(error["field"], error["type"]) for error in body["errors"]] == [("params/name", "path_dot_segment")]
    assert seen == ["/api/records/a%2Fb"]
    record = await last_record(gateway)
    assert (record["decision"], record["reason_code"]) == ("refused", "path_dot_segment")
