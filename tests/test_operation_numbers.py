"""Numbers in an operation's parameters and answers, from an OpenAPI or WSDL contract: a JSON boolean is not an
integer or a number (pydantic's lax mode read `true` as 1), while digits as text, which the CLI's --param and a CSV of
subjects send, still are."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from adapters.golden_tax import GoldenTaxAdapter
from gateway.upstreams.registry import prepare

CONTRACT = """{
  "openapi": "3.0.3",
  "info": {"title": "counts", "version": "1"},
  "servers": [{"url": "http://district.example/api"}],
  "paths": {
    "/counts": {"get": {"operationId": "getCount",
      "parameters": [
        {"name": "limit", "in": "query", "required": true, "schema": {"type": "integer"}},
        {"name": "ratio", "in": "query", "schema": {"type": "number", "format": "double"}}],
      "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object",
        "properties": {"count": {"type": "integer"}}}}}}}}}
  }
}"""


@pytest.fixture(scope="module")
def models() -> tuple[type[BaseModel], type[BaseModel]]:
    prepared = prepare("counts", "openapi", files={"api.json": CONTRACT}, root="api.json")
    operation = prepared.adapter.operations["getCount"]
    return operation.input_model, operation.output_model


def _error(model: type[BaseModel], document: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    return caught.value.errors()[0]


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_an_integer_parameter(models: tuple[type[BaseModel], type[BaseModel]], value: bool) -> None:
    error = _error(models[0], {"limit": value})
    assert error["type"] == "int_type"
    assert error["loc"] == ("limit",)
    assert error["msg"] == "Input should be a valid integer, not a boolean"


def test_a_boolean_is_not_a_number_parameter(models: tuple[type[BaseModel], type[BaseModel]]) -> None:
    error = _error(models[0], {"limit": 1, "ratio": True})
    assert (error["type"], error["loc"]) == ("float_type", ("ratio",))


@pytest.mark.parametrize(("given", "read"), [(5, 5), ("5", 5), (5.0, 5)])
def test_integers_and_their_digits_are_read(
    models: tuple[type[BaseModel], type[BaseModel]], given: object, read: int
) -> None:
    assert models[0].model_validate({"limit": given, "ratio": "0.5"}).model_dump(by_alias=True) == {
        "limit": read,
        "ratio": 0.5,
    }


def test_an_upstream_answering_a_boolean_for_an_integer_is_refused(
    models: tuple[type[BaseModel], type[BaseModel]],
) -> None:
    assert _error(models[1], {"count": True})["type"] == "int_type"
    assert models[1].model_validate({"count": 3}).model_dump(by_alias=True) == {"count": 3}


def test_the_schema_still_says_integer(models: tuple[type[BaseModel], type[BaseModel]]) -> None:
    properties = models[0].model_json_schema()["properties"]
    assert properties["limit"]["type"] == "integer"
    assert properties["ratio"]["anyOf"] == [{"type": "number"}, {"type": "null"}]


@pytest.mark.parametrize("value", [True, "2024"])
def test_a_wsdl_integer_parameter_too(value: object) -> None:
    """golden-tax's year is bounded (1994–2100); a boolean is now named as such, not as a year below 1994."""
    model = GoldenTaxAdapter("http://tax.example").operations["tax-credit-rating"].input_model
    if value is True:
        assert _error(model, {"uscc": "91350100M000100Y43", "year": value})["type"] == "int_type"
    else:
        assert model.model_validate({"uscc": "91350100M000100Y43", "year": value}).year == 2024  # type: ignore[attr-defined]


def test_a_voucher_year_that_is_a_boolean_is_named_as_such() -> None:
    from schemas.treasury import VoucherSubmission
    from tests.helpers.treasury import voucher

    error = _error(VoucherSubmission, voucher(st_year=True))
    assert (error["type"], error["loc"]) == ("int_type", ("st_year",))
    assert VoucherSubmission.model_validate(voucher(st_year="2025")).st_year == 2025
