"""The OpenAPI says what the gateway does: problem+json errors, the signature as security schemes, common statuses,
and the inputs it documents as refused are refused (numeric date-times, long Idempotency-Keys, oversized heights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem
from gateway.payments.idempotency import MAX_HEADER_LENGTH, parse_key
from gateway.settings import load_settings
from schemas.api import GrantIn
from schemas.audit import AuditSearchParams
from schemas.sharing import SharingRequestPatch
from tests.helpers.api_access import ACCESS, UNSIGNED
from tests.helpers.gateways import PURPOSE, RunningGateway


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return create_app(load_settings(data_dir=tmp_path_factory.mktemp("openapi"))).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_every_error_answer_is_documented_as_problem_json(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):  # readiness names its checks, in JSON
                continue
            content = response.get("content", {})
            assert list(content) == [PROBLEM_CONTENT_TYPE], f"{method} {path} {status}: {list(content)}"
            assert content[PROBLEM_CONTENT_TYPE]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}


def test_signature_is_a_security_scheme_on_every_signed_operation(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert {name: (s["type"], s["in"], s["name"]) for name, s in schemes.items()} == {
        "signature": ("apiKey", "header", "Signature"),
        "signatureInput": ("apiKey", "header", "Signature-Input"),
    }
    assert "RFC 9421" in schemes["signature"]["description"]
    for method, path, operation in operations(spec):
        public = UNSIGNED in ACCESS[(method, path)]
        expected = [] if public else [{"signature": [], "signatureInput": []}]
        assert operation["security"] == expected, f"{method} {path}"


def test_common_statuses_are_documented(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        statuses = set(operation["responses"])
        assert "500" in statuses, f"{method} {path}"
        if operation["security"]:
            assert {"401", "413", "429", "500", "503"} <= statuses, f"{method} {path}: {sorted(statuses)}"


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    text = json.dumps(spec)
    names = set(spec["components"]["schemas"])
    for reference in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert reference in names, reference
    assert "HTTPValidationError" not in names


def test_idempotency_key_length_is_documented_and_enforced(spec: dict[str, Any]) -> None:
    invoke = spec["paths"]["/v1/services/{service}/{operation}"]["post"]
    header = next(p for p in invoke["parameters"] if p["name"] == "Idempotency-Key")
    assert header["schema"]["maxLength"] == MAX_HEADER_LENGTH == 257
    assert parse_key(['"' + "k" * 255 + '"']) == "k" * 255
    for value in ('"' + "k" * 256 + '"', "k" * 258, '"' + "\\\\" * 130 + '"'):
        with pytest.raises(Problem) as caught:
            parse_key([value])
        assert (caught.value.status, caught.value.code) == (400, "idempotency_key_invalid")


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.7e9, True, "0", "1700000000", " 1.5e3 ", "-1"])
def test_numeric_date_times_are_refused(value: object) -> None:
    cases: list[tuple[type, dict[str, Any], str]] = [
        (GrantIn, {"caller_id": "p", "service": "s", "operation": "o", "purpose": PURPOSE}, "valid_from"),
        (SharingRequestPatch, {}, "valid_to"),
        (AuditSearchParams, {}, "from"),
    ]
    for model, base, name in cases:
        if model is GrantIn:
            base = {**base, "fields": ["listed"], "valid_to": "2030-01-01T00:00:00+08:00"}
        with pytest.raises(ValidationError) as caught:
            model.model_validate({**base, name: value})
        error = caught.value.errors()[0]
        assert error["type"] == "datetime_number" and "a number is not a time" in error["msg"], (model, error)


def test_rfc3339_date_times_are_still_read() -> None:
    grant = GrantIn.model_validate(
        {
            "caller_id": "p",
            "service": "s",
            "operation": "o",
            "purpose": PURPOSE,
            "fields": ["a"],
            "valid_from": "2025-10-01T00:00:00+08:00",
            "valid_to": "2026-10-01T00:00:00Z",
        }
    )
    assert grant.valid_from is not None and grant.valid_from.isoformat() == "2025-10-01T00:00:00+08:00"


async def test_the_server_refuses_what_the_spec_refuses(gateway: RunningGateway, tmp_path: Path) -> None:
    grant = {
        "caller_id": "platform",
        "service": "credit",
        "operation": "dishonest-debtor",
        "purpose": "XM-2025-099",
        "fields": ["listed"],
        "valid_from": 0,
        "valid_to": "2030-01-01T00:00:00+08:00",
    }
    async with gateway.client(gateway.admin) as admin:
        refused = await admin.post("/v1/grants", json=grant)
    async with gateway.client(gateway.officer) as officer:
        height = await officer.get("/v1/audit/checkpoints", params={"after": str(2**64)})
        since = await officer.get("/v1/audit/records", params={"from": "0"})
    async with gateway.client() as platform:
        long_key = await platform.post(
            "/v1/services/credit/dishonest-debtor",
            json={"purpose": PURPOSE, "params": {"uscc": "91110000600037341L"}},
            headers={"Idempotency-Key": '"' + "k" * 300 + '"'},
        )
        sharing = await platform.get("/v1/sharing-requests", params={"state": "nonsense"})
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        deadline = await anonymous.get("/v1/calendar/deadline", params={"start": "2025-09-30", "working_days": 0})
        epoch = await anonymous.get("/v1/calendar/deadline", params={"start": "0"})
    for response, status, field in (
        (refused, 422, "valid_from"),
        (height, 422, "query/after"),
        (since, 422, "query/from"),
        (long_key, 400, None),
        (deadline, 422, "query/working_days"),
        (sharing, 422, "query/state"),
        (epoch, 422, "query/start"),
    ):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
        if field is not None:
            assert response.json()["errors"][0]["field"] == field, response.text
    assert long_key.json()["code"] == "idempotency_key_invalid"
