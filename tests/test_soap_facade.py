"""The SOAP façade through an independent client: zeep reads the generated WSDL, signs with a requests auth, calls a
REST-backed (credit) and a SOAP-backed (golden-tax) service, gets minimized answers and Faults with problem codes;
the WSDL passes the WS-I Basic Profile checks lxml can make; the audit and /metrics say `soap`."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import requests
import zeep
from lxml import etree
from zeep.exceptions import Fault

from gateway.soap.client import RequestsSignatureAuth
from gateway.soap.contract import PROBLEM_NS, SOAP11_BINDING_NS, SOAP12_BINDING_NS, WSDL_NS
from gateway.soap.messages import SOAP11_ENV, SOAP12_ENV
from gateway.soap.shapes import XSD_NS
from simulators.enterprises import DEMO_USCC
from tests.helpers.calls import last_record
from tests.helpers.district_upstreams import EXAMPLES
from tests.helpers.gateways import PURPOSE, RunningGateway
from tests.helpers.soap import NARROW, envelope, soap_gateway
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with soap_gateway(tmp_path_factory.mktemp("soap")) as running:
        yield running


def zeep_client(gw: RunningGateway, service: str) -> zeep.Client:
    session = requests.Session()
    session.auth = RequestsSignatureAuth(gw.platform.key_id, gw.platform.private_key)
    return zeep.Client(f"{gw.url}/soap/{service}?wsdl", transport=zeep.Transport(session=session))


def fault_code(fault: Fault) -> str:
    problem = fault.detail.find(f"{{{PROBLEM_NS}}}problem")
    return str(problem.findtext(f"{{{PROBLEM_NS}}}code"))


async def test_zeep_calls_a_rest_backed_and_a_soap_backed_service(gw: RunningGateway) -> None:
    def run() -> dict[str, Any]:
        credit_client = zeep_client(gw, "credit")
        tax_client = zeep_client(gw, "golden-tax")
        full = credit_client.service["dishonest-debtor"](purpose=PURPOSE, params={"uscc": DEMO_USCC})
        narrow = credit_client.service["dishonest-debtor"](purpose=NARROW, params={"uscc": DEMO_USCC})
        tax = tax_client.service["tax-registration"](purpose=NARROW, params={"uscc": DEMO_USCC})
        paid = tax_client.service["annual-tax-paid"](purpose=PURPOSE, params={"uscc": DEMO_USCC, "year": 2024})
        with pytest.raises(Fault) as refused:
            credit_client.service["dishonest-debtor"](purpose="NOT-GRANTED", params={"uscc": DEMO_USCC})
        with pytest.raises(Fault) as invalid:
            tax_client.service["tax-registration"](purpose=PURPOSE, params={"uscc": "91350203MA0000001X"})
        return {"full": full, "narrow": narrow, "tax": tax, "paid": paid, "refused": refused, "invalid": invalid}

    before = await scrape(gw)
    out = await asyncio.to_thread(run)
    assert out["full"].data.uscc == DEMO_USCC and out["full"].data.listed is not None
    assert out["full"].meta.grant_id == gw.grant_id
    # Minimization: the narrow grant gives `listed` only; the other elements are absent.
    narrow = out["narrow"].data
    assert narrow.listed is not None and narrow.uscc is None and narrow.cases == []
    tax = out["tax"].data
    assert tax.uscc == DEMO_USCC and tax.status and tax.name is None and tax.tax_authority is None
    assert str(out["paid"].data.amount).replace(".", "").isdigit()  # xsd:decimal: an exact Decimal in zeep
    assert fault_code(out["refused"].value) == "purpose_not_granted"
    assert out["refused"].value.code.endswith("Client")
    assert fault_code(out["invalid"].value) in ("validation_failed", "uscc_invalid")
    record = await last_record(gw)
    assert record["event"] == "soap.invoke" and record["path"] == "/soap/golden-tax"
    after = await scrape(gw)
    soap_allowed = dict(interface="soap", event="soap.invoke", decision="allowed", code="")
    refused = dict(interface="soap", event="soap.invoke", decision="refused", code="purpose_not_granted")
    assert (
        value(after, "msjx_exchanges_total", **soap_allowed) - value(before, "msjx_exchanges_total", **soap_allowed)
        == 4
    )
    assert value(after, "msjx_exchanges_total", **refused) - value(before, "msjx_exchanges_total", **refused) == 1


async def test_audit_record_of_a_facade_call(gw: RunningGateway) -> None:
    def run() -> Any:
        return zeep_client(gw, "credit").service["dishonest-debtor"](purpose=NARROW, params={"uscc": DEMO_USCC})

    answer = await asyncio.to_thread(run)
    record = await last_record(gw)
    assert record["event"] == "soap.invoke"
    assert record["decision"] == "allowed"
    assert record["caller_id"] == "platform" and record["purpose"] == NARROW
    assert record["operation"] == "dishonest-debtor" and record["request_id"] == answer.meta.request_id


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_faults_in_both_versions_carry_the_problem_code(gw: RunningGateway, version: str) -> None:
    body = envelope(
        version,
        "credit",
        "dishonest-debtor",
        f"<t:purpose>NOPE</t:purpose><t:params><t:uscc>{DEMO_USCC}</t:uscc></t:params>",
    )
    content_type = "application/soap+xml; charset=utf-8" if version == "1.2" else "text/xml; charset=utf-8"
    async with gw.client() as client:
        response = await client.post("/soap/credit", content=body, headers={"Content-Type": content_type})
    assert response.status_code == (400 if version == "1.2" else 500)
    assert response.headers["content-type"].startswith(content_type.split(";")[0])
    document = etree.fromstring(response.content)
    env = SOAP12_ENV if version == "1.2" else SOAP11_ENV
    fault = document.find(f"{{{env}}}Body/{{{env}}}Fault")
    assert fault is not None
    assert fault.findtext(f".//{{{PROBLEM_NS}}}code") == "purpose_not_granted"
    if version == "1.2":
        assert fault.findtext(f"{{{env}}}Code/{{{env}}}Value") == "soap:Sender"
        assert fault.findtext(f"{{{env}}}Code/{{{env}}}Subcode/{{{env}}}Value") == "gw:purpose_not_granted"
    else:
        assert fault.findtext("faultcode") == "soap:Client"


async def test_unsigned_call_and_username_token_are_refused_with_faults(gw: RunningGateway) -> None:
    inner = f"<t:purpose>{PURPOSE}</t:purpose><t:params><t:uscc>{DEMO_USCC}</t:uscc></t:params>"
    wsse = (
        '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
        "<wsse:UsernameToken><wsse:Username>platform</wsse:Username><wsse:Password>pw</wsse:Password>"
        "</wsse:UsernameToken></wsse:Security>"
    )
    async with httpx.AsyncClient(base_url=gw.url) as plain:
        unsigned = await plain.post("/soap/credit", content=envelope("1.1", "credit", "dishonest-debtor", inner))
        token = await plain.post("/soap/credit", content=envelope("1.1", "credit", "dishonest-debtor", inner, wsse))
    async with gw.client() as client:
        signed_token = await client.post(
            "/soap/credit", content=envelope("1.1", "credit", "dishonest-debtor", inner, wsse)
        )
    for response, code in (
        (unsigned, "signature_missing"),
        (token, "ws_security_refused"),
        (signed_token, "ws_security_refused"),
    ):
        assert response.status_code == 500
        assert etree.fromstring(response.content).findtext(f".//{{{PROBLEM_NS}}}code") == code


async def test_bad_requests_name_the_field_or_construct(gw: RunningGateway) -> None:
    cases = [
        (b"<not-xml", "soap_request_invalid"),
        (b'<!DOCTYPE x [<!ENTITY e "x">]><x/>', "xml_dtd_forbidden"),
        (b"<x/>", "soap_version_mismatch"),
        (envelope("1.1", "credit", "no-such-op", ""), "unknown_operation"),
        (
            envelope(
                "1.1",
                "credit",
                "dishonest-debtor",
                f"<t:purpose>{PURPOSE}</t:purpose><t:params><t:nope>1</t:nope></t:params>",
            ),
            "validation_failed",
        ),
    ]
    async with gw.client() as client:
        for body, code in cases:
            response = await client.post("/soap/credit", content=body, headers={"Content-Type": "text/xml"})
            assert response.status_code == 500, response.text
            assert etree.fromstring(response.content).findtext(f".//{{{PROBLEM_NS}}}code") == code, response.text
        missing = await client.post(
            "/soap/credit",
            content=envelope("1.1", "credit", "dishonest-debtor", f"<t:purpose>{PURPOSE}</t:purpose><t:params/>"),
        )
    fault = etree.fromstring(missing.content)
    assert fault.findtext(f".//{{{PROBLEM_NS}}}error/{{{PROBLEM_NS}}}field") == "params/uscc"


# --- the WSDL against the WS-I Basic Profile rules lxml can check ---------------------------------------------------


def standalone(schema: etree._Element) -> etree._Element:
    """An xs:schema taken out of its WSDL with the namespaces in scope there (its QName values use them)."""
    copied = etree.Element(schema.tag, attrib=dict(schema.attrib), nsmap=schema.nsmap)
    copied.extend(copy.deepcopy(child) for child in schema)
    return etree.fromstring(etree.tostring(copied))


def check_basic_profile(document: etree._Element) -> None:
    w = f"{{{WSDL_NS}}}"
    xs = f"{{{XSD_NS}}}"
    schemas = list(document.iter(f"{xs}schema"))
    assert schemas
    compiled = [etree.XMLSchema(standalone(schema)) for schema in schemas]  # R2800-ish: valid XML Schema
    assert compiled
    for port_type in document.iter(f"{w}portType"):
        names = [operation.get("name") for operation in port_type.findall(f"{w}operation")]
        assert len(names) == len(set(names)), "R2304: operation names unique in a portType"
    for binding in document.iter(f"{w}binding"):
        soap = binding.find(f"{{{SOAP11_BINDING_NS}}}binding")
        if soap is None:
            soap = binding.find(f"{{{SOAP12_BINDING_NS}}}binding")
        assert soap is not None and soap.get("style") == "document"
        assert soap.get("transport") == "http://schemas.xmlsoap.org/soap/http"  # R2702
        for body in binding.iter(f"{{{SOAP11_BINDING_NS}}}body", f"{{{SOAP12_BINDING_NS}}}body"):
            assert body.get("use") == "literal", "R2706: literal, never encoded"
            assert body.get("encodingStyle") is None
        for fault in binding.iter(f"{{{SOAP11_BINDING_NS}}}fault", f"{{{SOAP12_BINDING_NS}}}fault"):
            assert fault.get("use") == "literal" and fault.get("name")
    elements = {
        (schema.get("targetNamespace"), element.get("name"))
        for schema in schemas
        for element in schema.findall(f"{xs}element")
    }
    for message in document.iter(f"{w}message"):
        parts = message.findall(f"{w}part")
        assert len(parts) <= 1, "R2210: document/literal messages have at most one part"
        for part in parts:
            assert part.get("element") and not part.get("type"), "R2204: parts refer to elements"
            prefix, local = part.get("element").split(":")
            assert (part.nsmap[prefix], local) in elements, f"{part.get('element')} is declared"
    for port_type in document.iter(f"{w}portType"):
        for operation in port_type.findall(f"{w}operation"):
            children = [etree.QName(c).localname for c in operation if isinstance(c.tag, str)]
            assert children[:1] == ["documentation"] or children[0] == "input"  # R2025: documentation first


async def test_generated_wsdl_for_every_service_is_valid(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for service in gw.runtime.adapters:
            response = await client.get(f"/soap/{service}", params={"wsdl": ""})
            assert response.status_code == 200
            document = etree.fromstring(response.content)
            check_basic_profile(document)
            address = document.find(f".//{{{SOAP11_BINDING_NS}}}address").get("location")
            assert address == f"{gw.url}/soap/{service}"
        unknown = await client.get("/soap/no-such-service?wsdl")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_service"


async def test_xsd_carries_the_operations_own_constraints(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        tax = etree.fromstring((await client.get("/soap/golden-tax?wsdl")).content)
    xs = f"{{{XSD_NS}}}"
    params = tax.find(f".//{xs}complexType[@name='TaxpayerQuery']") or tax.find(
        f".//{xs}complexType[@name='TaxRegistrationParams']"
    )
    assert params is not None
    uscc = params.find(f".//{xs}element[@name='uscc']")
    assert uscc.find(f".//{xs}pattern").get("value") == "[0-9A-HJ-NPQRTUWXY]{18}"
    assert uscc.find(f".//{xs}length").get("value") == "18"
    paid = tax.find(f".//{xs}complexType[@name='AnnualTaxPaidData']")
    amount = paid.find(f".//{xs}element[@name='amount']")
    restriction = amount.find(f".//{xs}restriction")
    assert restriction.get("base") == "xs:decimal"  # money: decimal, never double
    assert restriction.find(f"{xs}fractionDigits").get("value") == "2"
    assert amount.get("minOccurs") == "0"  # a minimized answer may leave any field out
    rating = tax.find(f".//{xs}complexType[@name='TaxCreditRatingData']/{xs}sequence/{xs}element[@name='rating']")
    assert rating.get("nillable") == "true"
    assert [e.get("value") for e in rating.iter(f"{xs}enumeration")] == ["A", "B", "M", "C", "D"]
    year = tax.find(f".//{xs}complexType[@name='TaxCreditRatingParams']//{xs}element[@name='year']")
    assert year.find(f".//{xs}minInclusive").get("value") == "1994"
    entries = tax.find(f".//{xs}complexType[@name='MajorTaxViolationData']//{xs}element[@name='entries']")
    assert entries.get("maxOccurs") == "unbounded" and entries.get("type") == "tns:ListingEntry"


async def test_every_registered_upstream_is_offered_too(gw: RunningGateway) -> None:
    """A district SOAP system and a district REST system registered at runtime each get a generated WSDL, valid by
    the same checks, with their contract's constraints (the REST one's USCC pattern, the SOAP one's types)."""
    wsdl_files = {
        name: (EXAMPLES / name).read_text()
        for name in ("district-wrapped.wsdl", "district-types.xsd", "district-common.xsd")
    }
    openapi_files = {
        name: (EXAMPLES / name).read_text() for name in ("district-openapi.yaml", "district-openapi-common.yaml")
    }
    registrations = [
        {"name": "huli-soap", "kind": "wsdl", "files": wsdl_files, "root": "district-wrapped.wsdl"},
        {"name": "huli-rest", "kind": "openapi", "files": openapi_files, "root": "district-openapi.yaml"},
    ]
    async with gw.client(gw.admin) as admin:
        for body in registrations:
            added = await admin.post(
                "/v1/upstreams", json={**body, "owner_department": "湖里区数据管理局", "endpoint": "http://127.0.0.1:9"}
            )
            assert added.status_code == 201, added.text
    async with httpx.AsyncClient(base_url=gw.url) as client:
        soap = etree.fromstring((await client.get("/soap/huli-soap?wsdl")).content)
        rest = etree.fromstring((await client.get("/soap/huli-rest?wsdl")).content)
    for document in (soap, rest):
        check_basic_profile(document)
    operations = {op.get("name") for op in soap.iter(f"{{{WSDL_NS}}}operation")}
    assert {"Echo", "GetSubsidy"} <= operations
    assert {"getSubsidy", "submitApplication", "listRegions"} <= {
        op.get("name") for op in rest.iter(f"{{{WSDL_NS}}}operation")
    }
    async with gw.client() as client:  # the platform holds no grant on them: the Fault says so
        refused = await client.post(
            "/soap/huli-rest",
            content=envelope("1.1", "huli-rest", "listRegions", f"<t:purpose>{PURPOSE}</t:purpose>"),
        )
    assert etree.fromstring(refused.content).findtext(f".//{{{PROBLEM_NS}}}code") == "no_grant"
