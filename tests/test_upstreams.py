"""District systems from their contracts: several WSDL styles and an OpenAPI document, registered and called over
real HTTP, with JSON → XML → JSON round trips that keep types, and refusals at registration naming the construct."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.contracts import MAX_DOCUMENTS, ContractBundle, bundle_from_files
from adapters.errors import UpstreamFault, UpstreamRejected
from adapters.registered import RegisteredAdapter
from adapters.resilience import ResiliencePolicy
from gateway.http.problems import Problem
from gateway.upstreams.registry import prepare
from simulators.enterprises import DEMO_USCC
from tests.helpers.district_upstreams import EXAMPLES, SEEN, rest_app, serving, soap_app

RECORD: dict[str, Any] = {
    "text": "湖里区 <&> 'quoted'",
    "amount": "12345678901234567890.123456789",
    "count": -2147483648,
    "big": 123456789012345678901234567890,
    "flag": False,
    "ratio": 0.25,
    "day": "2024-02-29",
    "stamp": "2024-05-01T10:00:00+08:00",
    "blob": base64.b64encode(bytes(range(256))).decode(),
    "level": "silver",
    "size": "L",
    "tag": ["一", "two", ""],
    "note": "可选",
    "address": {"street": "湖里大道 88 号", "postcode": None, "region": "350206"},
    "item": [{"name": "研发设备", "price": "0.10"}, {"name": "场地", "price": "100"}],
    "byCode": "C3911",
    "extra": {"key": "k", "when": "2025-12-31"},
    "version": 7,
    "lang": "en",
}


@pytest.fixture(scope="module")
async def soap_upstream() -> AsyncIterator[tuple[str, Any]]:
    app = soap_app()
    async with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
async def rest_upstream() -> AsyncIterator[tuple[str, Any]]:
    app = rest_app()
    async with serving(app) as url:
        yield url, app


def register(name: str, file: str, endpoint: str | None, kind: str = "wsdl", **options: Any) -> RegisteredAdapter:
    return prepare(name, kind, source=str(EXAMPLES / file), endpoint=endpoint, allow_files=True, **options).adapter


def refusal(name: str, file: str, kind: str = "wsdl") -> Problem:
    with pytest.raises(Problem) as caught:
        register(name, file, "http://127.0.0.1:9", kind)
    return caught.value


@pytest.fixture
async def started() -> AsyncIterator[list[RegisteredAdapter]]:
    adapters: list[RegisteredAdapter] = []
    yield adapters
    for adapter in adapters:
        await adapter.close()


async def _start(adapter: RegisteredAdapter, started: list[RegisteredAdapter]) -> RegisteredAdapter:
    await adapter.start()
    started.append(adapter)
    return adapter


# --- WSDL styles ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "body", "version", "style"),
    [
        (
            "district-wrapped.wsdl",
            lambda r: {"record": r},
            "1.1",
            "document",
        ),  # doc/literal wrapped, xsd:import+include
        ("district-bare.wsdl", lambda r: r, "1.1", "document"),  # doc/literal bare: the record is the body
        ("district-rpc.wsdl", lambda r: {"record": r, "remark": "备注"}, "1.1", "rpc"),  # rpc/literal, typed parts
        ("district-soap12.wsdl", lambda r: {"record": r}, "1.2", "document"),  # SOAP 1.2 over a wsdl:import
    ],
)
async def test_round_trip_keeps_every_type(
    soap_upstream: tuple[str, Any], started: list[RegisteredAdapter], file: str, body: Any, version: str, style: str
) -> None:
    url, app = soap_upstream
    adapter = await _start(register("district", file, url), started)
    engine_operation = adapter.engine.operations["Echo"]  # type: ignore[union-attr]
    assert (engine_operation.version, engine_operation.style) == (version, style)
    operation = adapter.operations["Echo"]
    params = operation.input_model.model_validate(body(RECORD))
    result = await adapter.invoke("Echo", params)
    expected = params.model_dump(mode="json", by_alias=True)
    assert result.data == expected
    record = result.data.get("record", result.data)
    # The types that usually break in SOAP gateways, one by one:
    assert record["amount"] == "12345678901234567890.123456789"  # exact, as a string
    assert record["big"] == 123456789012345678901234567890  # an xsd:integer beyond 64 bits
    assert record["day"] == "2024-02-29" and record["stamp"] == "2024-05-01T10:00:00+08:00"
    assert base64.b64decode(record["blob"]) == bytes(range(256))
    assert record["tag"] == ["一", "two", ""] and [i["price"] for i in record["item"]] == ["0.10", "100"]
    assert (record["byCode"], record["byName"]) == ("C3911", None)  # the choice made, and only it
    assert (record["version"], record["lang"], record["address"]["region"]) == (7, "en", "350206")  # attributes
    wire = app[SEEN][-1].decode()
    assert "<" + "ns" in wire and "12345678901234567890.123456789" in wire and "&lt;&amp;&gt;" in wire
    if version == "1.2":
        assert "http://www.w3.org/2003/05/soap-envelope" in wire


async def test_bare_simple_element_and_wrapped_business_call(
    soap_upstream: tuple[str, Any], started: list[RegisteredAdapter]
) -> None:
    url, _ = soap_upstream
    bare = await _start(register("bare", "district-bare.wsdl", url), started)
    lookup = bare.operations["Lookup"]
    assert (await bare.invoke("Lookup", lookup.input_model.model_validate({"uscc": "91350206X"}))).data == {
        "standing": "silver"
    }
    wrapped = await _start(register("wrapped", "district-wrapped.wsdl", url, safe=["GetSubsidy"]), started)
    subsidy = wrapped.operations["GetSubsidy"]
    assert subsidy.safe and not wrapped.operations["Echo"].safe
    data = (await wrapped.invoke("GetSubsidy", subsidy.input_model.model_validate({"uscc": "91X", "year": 2025}))).data
    assert data == {
        "uscc": "91X",
        "year": 2025,
        "amount": "1234567890123456.78",
        "level": "gold",
        "paidOn": "2025-03-31",
    }


def test_schemas_derived_from_the_contract() -> None:
    adapter = register("district", "district-wrapped.wsdl", "http://127.0.0.1:9")
    schema = adapter.operations["Echo"].input_model.model_json_schema()
    everything = schema["$defs"]["Everything"]
    props = everything["properties"]
    assert props["level"]["enum"] == ["gold", "silver", "bronze"]  # named simpleType, from an xsd:include
    assert props["size"]["anyOf"][0]["enum"] == ["S", "M", "L"]  # anonymous simpleType
    assert props["lang"]["anyOf"][0]["enum"] == ["zh", "en"]  # attribute with an anonymous enumeration
    assert props["amount"]["format"] == "decimal" and props["amount"]["type"] == "string"
    assert props["day"]["format"] == "date" and props["blob"]["anyOf"][0]["contentEncoding"] == "base64"
    assert props["count"]["minimum"] == -(2**31) and props["item"]["maxItems"] == 10
    assert props["tag"]["type"] == "array"
    assert everything["oneOf"] == [{"required": ["byCode"]}, {"required": ["byName"]}]
    assert set(everything["required"]) == {"text", "amount", "count", "flag", "day", "level", "address", "version"}
    assert adapter.operations["Echo"].fields == ("record",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level": "platinum"}, "level"),
        ({"byName": "also"}, "only one of byCode, byName"),
        ({"byCode": None}, "one of byCode, byName is required"),
        ({"amount": 12.5}, "not a JSON float"),
        ({"count": 2**31}, "count"),
        ({"blob": "not base64!"}, "base64"),
        ({"item": [{"name": "x", "price": "1"}] * 11}, "item"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_input_is_checked_against_the_contract(change: dict[str, Any], message: str) -> None:
    adapter = register("district", "district-wrapped.wsdl", "http://127.0.0.1:9")
    with pytest.raises(ValidationError) as caught:
        adapter.operations["Echo"].input_model.model_validate({"record": {**RECORD, **change}})
    assert message in str(caught.value)


# --- refusals at registration ----------------------------------------------------------------------------------


def test_rpc_encoded_is_refused_naming_the_construct() -> None:
    problem = refusal("legacy", "district-encoded.wsdl")
    assert (problem.status, problem.code) == (422, "contract_unsupported")
    assert 'rpc/encoded (soap:body use="encoded") in operation GetAmount of binding LegacySoap' in problem.detail


def test_mtom_is_refused_naming_the_construct() -> None:
    problem = refusal("files", "district-mtom.wsdl")
    assert problem.code == "contract_unsupported" and "MTOM" in problem.detail


def _inline(kind: str, text: str, **more: str) -> ContractBundle:
    return bundle_from_files(kind, {"main": text, **more}, "main")


@pytest.mark.parametrize(
    ("files", "code", "message"),
    [
        ({"main": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>'}, "contract_unsupported", "DTD"),
        ({"main": "<definitions"}, "contract_invalid", "not well-formed"),
        (
            {"main": (EXAMPLES / "district-wrapped.wsdl").read_text()},
            "contract_invalid",
            "'district-types.xsd', which was not given",
        ),
        (
            {"main": (EXAMPLES / "district-wrapped.wsdl").read_text(), "../x.xsd": "<x/>"},
            "contract_invalid",
            "relative",
        ),
    ],
)
def test_inline_contracts_are_checked(files: dict[str, str], code: str, message: str) -> None:
    with pytest.raises(Problem) as caught:
        prepare("inline", "wsdl", files=files, root="main")
    assert caught.value.code == code and message in caught.value.detail


def test_import_loops_and_sizes_are_bounded() -> None:
    looping = '<xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema"><xsd:include schemaLocation="{}"/></xsd:schema>'
    files = {f"s{i}.xsd": looping.format(f"s{i + 1}.xsd") for i in range(MAX_DOCUMENTS + 2)}
    with pytest.raises(Problem) as caught:
        prepare("loops", "wsdl", files=files, root="s0.xsd")
    assert f"more than {MAX_DOCUMENTS} documents" in caught.value.detail
    cycle = {"a.xsd": looping.format("b.xsd"), "b.xsd": looping.format("a.xsd")}
    assert len(_inline("wsdl", cycle["a.xsd"], **{"b.xsd": cycle["b.xsd"], "a.xsd": cycle["a.xsd"]}).documents) == 3


def test_reserved_and_malformed_names_and_bad_policy() -> None:
    for name, code in (("golden-tax", "name_taken"), ("Bad_Name", "name_invalid")):
        with pytest.raises(Problem) as caught:
            prepare(name, "wsdl", source=str(EXAMPLES / "district-wrapped.wsdl"), allow_files=True)
        assert caught.value.code == code
    with pytest.raises(Problem) as caught:
        prepare("ok-name", "wsdl", source=str(EXAMPLES / "district-wrapped.wsdl"), allow_files=True, policy={"x": 1})
    assert caught.value.code == "policy_invalid" and "unknown policy keys ['x']" in caught.value.detail
    with pytest.raises(Problem) as caught:
        prepare("ok-name", "wsdl", source=str(EXAMPLES / "district-wrapped.wsdl"), allow_files=True, safe=["Nope"])
    assert "Nope" in caught.value.detail
    with pytest.raises(Problem) as caught:
        prepare("ok-name", "wsdl", source="/etc/passwd")  # the API never reads the gateway's own files
    assert caught.value.code == "contract_unreachable"


async def test_soap_faults_map_with_code_and_string(
    soap_upstream: tuple[str, Any], started: list[RegisteredAdapter]
) -> None:
    import aiohttp

    url, _ = soap_upstream
    policy = ResiliencePolicy(max_attempts=1)
    for file in ("district-wrapped.wsdl", "district-soap12.wsdl"):
        adapter = await _start(register(file.split(".")[0], file, url, policy={"max_attempts": 1}), started)
        assert adapter.policy.max_attempts == policy.max_attempts
        async with aiohttp.ClientSession() as control:
            await control.post(url + "/_sim/faults", json={"mode": "soap_fault", "count": 1})
        params = adapter.operations["Echo"].input_model.model_validate({"record": RECORD})
        with pytest.raises(UpstreamFault) as caught:
            await adapter.invoke("Echo", params)
        fault = caught.value
        assert (fault.status, fault.code, fault.fault_string) == (502, "upstream_fault", "district system busy")
        assert fault.fault_code == ("Receiver" if "12" in file else "Server") and fault.receiver


# --- OpenAPI -----------------------------------------------------------------------------------------------------


async def test_openapi_operations_round_trip(rest_upstream: tuple[str, Any], started: list[RegisteredAdapter]) -> None:
    url, app = rest_upstream
    adapter = await _start(register("rest", "district-openapi.yaml", url + "/api/v1", "openapi"), started)
    assert {name: op.safe for name, op in adapter.operations.items()} == {
        "getSubsidy": True,
        "submitApplication": False,
        "listRegions": True,
    }
    get = adapter.operations["getSubsidy"]
    data = (await adapter.invoke("getSubsidy", get.input_model.model_validate({"uscc": DEMO_USCC, "year": 2025}))).data
    assert data == {
        "uscc": DEMO_USCC,
        "year": 2025,
        "amount": "1234567890123456.78",  # 18 digits: read with parse_float=Decimal, never a float
        "paid_on": "2025-03-31",
        "status": "paid",
        "items": [{"name": "研发补助", "price": "0.10"}],
        "receipt": "aGVsbG8=",
    }  # and "internal_note", which the contract does not declare, is dropped
    application = {
        "uscc": DEMO_USCC,
        "amount": "98765432109876543.21",
        "items": [{"name": "设备", "price": "0.01"}],
        "kind": "renewal",
    }
    post = adapter.operations["submitApplication"]
    answer = (await adapter.invoke("submitApplication", post.input_model.model_validate({"body": application}))).data
    assert answer["echo"] == {**application, "contact": None}
    assert app[SEEN][-1] == {  # what the upstream received: exact numbers, and no nulls for absent fields
        "uscc": DEMO_USCC,
        "amount": Decimal("98765432109876543.21"),
        "items": [{"name": "设备", "price": Decimal("0.01")}],
        "kind": "renewal",
    }
    assert answer["accepted_at"] == "2025-05-01T09:30:00+08:00"
    regions = (await adapter.invoke("listRegions", adapter.operations["listRegions"].input_model())).data
    assert regions == {"result": ["350206", "350211"]}
    with pytest.raises(UpstreamRejected) as caught:
        await adapter.invoke("getSubsidy", get.input_model.model_validate({"uscc": "11" + DEMO_USCC[2:], "year": 2025}))
    assert caught.value.upstream_status == "404"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"swagger": "2.0", "paths": {}}', "Swagger 2.0"),
        (
            '{"openapi": "3.0.0", "servers": [{"url": "http://x"}], "paths": {"/f": {"post": {"operationId": "up",'
            ' "requestBody": {"content": {"multipart/form-data": {"schema": {}}}},'
            ' "responses": {"200": {"description": "ok"}}}}}}',
            "multipart/form-data",
        ),
        (
            '{"openapi": "3.0.0", "servers": [{"url": "http://x"}], "paths": {"/f": {"get": {"operationId": "f",'
            ' "parameters": [{"name": "s", "in": "cookie", "schema": {"type": "string"}}],'
            ' "responses": {"200": {"description": "ok"}}}}}}',
            "cookie parameter",
        ),
        (
            '{"openapi": "3.1.0", "servers": [{"url": "http://x"}], "paths": {"/f": {"get": {"operationId": "f",'
            ' "responses": {"200": {"description": "ok", "content": {"application/json": {"schema":'
            ' {"$ref": "#/components/schemas/Node"}}}}}}}}, "components": {"schemas": {"Node": {"type": "object",'
            ' "properties": {"child": {"$ref": "#/components/schemas/Node"}}}}}}',
            "recursive schema",
        ),
        ("a: &x [1]\nb: *x\n", "aliases"),
    ],
)
def test_openapi_refusals(document: str, message: str) -> None:
    with pytest.raises(Problem) as caught:
        prepare("rest", "openapi", files={"api.json": document}, root="api.json")
    assert message in caught.value.detail, caught.value.detail


def test_a_yaml_error_is_one_line_with_its_place() -> None:
    with pytest.raises(Problem) as caught:
        prepare("rest", "openapi", files={"api.yaml": "openapi: 3.0.0\npaths: [1, 2\n"}, root="api.yaml")
    assert caught.value.code == "contract_invalid"
    assert "\n" not in caught.value.detail, caught.value.detail
    assert caught.value.detail.endswith("(expected ',' or ']', but got '<stream end>', line 3, column 1)")


EXTENDED = """<?xml version="1.0"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="urn:x" targetNamespace="urn:x">
  <wsdl:types><xsd:schema targetNamespace="urn:x" elementFormDefault="qualified">
    <xsd:complexType name="Base">
      <xsd:sequence><xsd:element name="id" type="xsd:string"/></xsd:sequence>
    </xsd:complexType>
    <xsd:complexType name="Derived"><xsd:complexContent><xsd:extension base="tns:Base"><xsd:sequence>
      <xsd:element name="amount" type="tns:Money"/>
      <xsd:element name="codes" type="tns:Codes"/>
      <xsd:group ref="tns:Extra"/>
    </xsd:sequence><xsd:attributeGroup ref="tns:Marks"/></xsd:extension></xsd:complexContent></xsd:complexType>
    <xsd:group name="Extra"><xsd:sequence><xsd:element name="note" type="xsd:string" minOccurs="0"/></xsd:sequence>
    </xsd:group>
    <xsd:attributeGroup name="Marks"><xsd:attribute name="mark" type="xsd:string"/></xsd:attributeGroup>
    <xsd:complexType name="Money"><xsd:simpleContent><xsd:extension base="xsd:decimal">
      <xsd:attribute name="currency" type="xsd:string" use="required"/>
    </xsd:extension></xsd:simpleContent></xsd:complexType>
    <xsd:simpleType name="Codes"><xsd:list itemType="xsd:int"/></xsd:simpleType>
    <xsd:element name="Put" type="tns:Derived"/><xsd:element name="Got" type="tns:Derived"/>
  </xsd:schema></wsdl:types>
  <wsdl:message name="In"><wsdl:part name="p" element="tns:Put"/></wsdl:message>
  <wsdl:message name="Out"><wsdl:part name="p" element="tns:Got"/></wsdl:message>
  <wsdl:portType name="P"><wsdl:operation name="Op"><wsdl:input message="tns:In"/><wsdl:output message="tns:Out"/>
  </wsdl:operation></wsdl:portType>
  <wsdl:binding name="B" type="tns:P"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="Op"><soap:operation soapAction="op"/><wsdl:input><soap:body use="literal"/></wsdl:input>
    <wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation></wsdl:binding>
  <wsdl:service name="S"><wsdl:port name="Q" binding="tns:B"><soap:address location="http://x.invalid/"/></wsdl:port>
  </wsdl:service>
</wsdl:definitions>"""


def test_extension_groups_simple_content_and_lists_round_trip() -> None:
    from lxml import etree

    from adapters.http import RawResponse

    adapter = prepare("extended", "wsdl", files={"x.wsdl": EXTENDED}, root="x.wsdl").adapter
    engine = adapter.engine
    operation = engine.operations["Op"]  # type: ignore[union-attr]
    value = {"id": "A-1", "amount": {"value": "10.50", "currency": "CNY"}, "codes": [3, 1, 4], "note": "n", "mark": "m"}
    params = operation.input_model.model_validate(value)
    envelope = engine.envelope(operation, params.model_dump(mode="python", by_alias=True))  # type: ignore[union-attr]
    assert b'currency="CNY">10.50<' in envelope and b">3 1 4<" in envelope
    answer = etree.fromstring(envelope)
    answer.find(".//{urn:x}Put").tag = "{urn:x}Got"  # what an echoing upstream would send back
    read = engine.read(operation, RawResponse(200, "text/xml", etree.tostring(answer)))  # type: ignore[union-attr]
    assert operation.output_model.model_validate(read).model_dump(mode="json", by_alias=True) == value
