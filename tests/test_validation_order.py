"""A signed route authenticates before it judges its query parameters: an unsigned request with a bad parameter
gets 401, not a 422 that describes the parameter; a signed one gets its 422 with the field, on the record."""

from __future__ import annotations

import httpx

from tests.helpers.calls import assert_problem, last_record
from tests.helpers.gateways import RunningGateway

LIST = "/v1/sharing-requests"


async def test_an_unsigned_bad_query_gets_401_and_is_audited(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as anonymous:
        answer = await anonymous.get(LIST, params={"state": "bogus"})
    problem = assert_problem(answer, 401, "signature_missing")
    assert "state" not in problem["detail"]
    record = await last_record(gateway)
    assert (record["request_id"], record["event"], record["decision"]) == (
        answer.headers["x-request-id"],
        "request.invalid",
        "refused",
    )
    assert record["reason_code"] == "signature_missing"


async def test_a_signed_bad_query_gets_422_naming_the_field_on_the_callers_record(gateway: RunningGateway) -> None:
    async with gateway.client(gateway.officer) as officer:
        answer = await officer.get(LIST, params={"state": "bogus", "limit": "0"})
    problem = assert_problem(answer, 422, "validation_failed")
    assert {error["field"] for error in problem["errors"]} == {"query/state", "query/limit"}, problem
    record = await last_record(gateway)
    assert record["request_id"] == answer.headers["x-request-id"]
    assert (record["caller_id"], record["event"], record["reason_code"]) == (
        "officer",
        "request.invalid",
        "validation_failed",
    )


async def test_a_public_route_still_answers_a_bad_query_with_422(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as anonymous:
        answer = await anonymous.get("/v1/calendar/deadline", params={"start": "not-a-date", "working_days": "x"})
    assert_problem(answer, 422, "validation_failed")
