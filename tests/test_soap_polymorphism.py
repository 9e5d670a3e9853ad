"""Abstract types with xsi:type, substitution groups, a required xsd:any and anyType as JSON, both ways, against
an lxml upstream over real HTTP that validates every request against the WSDL's own schema (libxml2 checks
xsi:type derivations, substitution group membership and the wildcard's namespace) and answers in kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lxml import etree
from pydantic import ValidationError

from adapters.base import Adapter
from adapters.errors import UpstreamMalformed
from gateway.http.problems import Problem, validation_problem
from gateway.upstreams.registry import prepare
from tests.helpers.soap import wsse_signing_pair

WSDL = Path(__file__).parent / "contracts" / "soap" / "case-registry.wsdl"
NS = "urn:example:case-registry"
EXT = "urn:example:ext"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def schema() -> etree.XMLSchema:
    wsdl = etree.parse(str(WSDL))
    return etree.XMLSchema(wsdl.find(".//{http://www.w3.org/2001/XMLSchema}schema"))


class Upstream:
    """The case registry: refuses (soap:Client) a request its schema rejects, else answers the case back with
    what it saw (each party's xsi:type, each document's element), its answer checked against the schema too."""

    def __init__(self) -> None:
        self.schema = schema()
        self.requests: list[bytes] = []
        self.answer_override: bytes | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(body)
        submit = etree.fromstring(body).find(f"{{{SOAP}}}Body/{{{NS}}}Submit")
        if submit is None or not self.schema.validate(etree.ElementTree(submit)):
            return self.fault(str(self.schema.error_log.last_error) if submit is not None else "no Submit")
        if self.answer_override is not None:
            return web.Response(body=self.answer_override, content_type="text/xml")
        seen = [xsi_type(node) for node in submit.iter(f"{{{NS}}}party", f"{{{NS}}}representative")]
        seen += [etree.QName(node).localname for node in submit if etree.QName(node).localname in ("licence", "permit")]
        response = etree.Element(f"{{{NS}}}SubmitResponse", nsmap={"t": NS})
        case = etree.SubElement(response, f"{{{NS}}}case")
        for node in submit:
            copy = etree.SubElement(case, node.tag, dict(node.attrib))
            copy.text = node.text
            copy.extend(etree.fromstring(etree.tostring(child)) for child in node)
        for original, copy in zip(submit.iter(), response.find(f"{{{NS}}}case").iter(), strict=False):
            if xsi_type(original):  # a QName in an attribute: its prefix is rebound to the answer's own
                copy.set(f"{{{XSI}}}type", "t:" + etree.QName(xsi_type(original)).localname)
        for item in seen:
            etree.SubElement(response, f"{{{NS}}}seen").text = item
        assert self.schema.validate(etree.ElementTree(response)), self.schema.error_log
        return web.Response(body=envelope(response), content_type="text/xml")

    def fault(self, reason: str) -> web.Response:
        fault = etree.Element(f"{{{SOAP}}}Fault")
        etree.SubElement(fault, "faultcode").text = "soap:Client"
        etree.SubElement(fault, "faultstring").text = reason
        return web.Response(status=500, body=envelope(fault), content_type="text/xml")


def xsi_type(node: etree._Element) -> str:
    """The xsi:type of an element as {namespace}local (the prefix resolved where it stands), or ''."""
    prefix, _, local = (node.get(f"{{{XSI}}}type") or "").rpartition(":")
    return f"{{{node.nsmap[prefix or None]}}}{local}" if local else ""


def envelope(content: etree._Element) -> bytes:
    root = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "xsi": XSI})
    etree.SubElement(root, f"{{{SOAP}}}Body").append(content)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    registry = Upstream()
    app = web.Application()
    app.router.add_post("/soap", registry.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield registry, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def adapter(upstream: tuple[Upstream, str]) -> AsyncIterator[Adapter]:
    _, url = upstream
    files = {"case-registry.wsdl": WSDL.read_text(encoding="utf-8")}
    prepared = await asyncio.to_thread(
        prepare, "case-registry", "wsdl", files=files, root="case-registry.wsdl", endpoint=url
    )
    await prepared.adapter.start()
    yield prepared.adapter
    await prepared.adapter.close()


CASE: dict[str, Any] = {
    "party": [
        {"@type": "Person", "name": "张三", "idNumber": "350203199001011234"},
        {
            "@type": "Enterprise",
            "name": "厦门某科技有限公司",
            "uscc": "91350213MAG6BDRC7A",
            "representative": {"@type": "Person", "name": "李四", "idNumber": "350203198502021234"},
        },
    ],
    "address": {"@type": "PostalAddress", "city": "厦门", "postcode": "361000"},
    "document": [{"licence": {"number": "L-1"}}, {"permit": {"number": "P-2", "authority": "湖里区市场监督管理局"}}],
    "remark": "加急",
    "extension": {"source": {"@system": "legacy", "#text": "old"}, "tags": {"tag": ["a", "b"]}},
    "any": {f"{{{EXT}}}flag": {"@level": "2", "#text": "on"}},
}


async def call(adapter: Adapter, params: dict[str, Any]) -> dict[str, Any]:
    operation = adapter.operations["Submit"]
    return (await adapter.invoke("Submit", operation.input_model.model_validate(params))).data


async def test_concrete_types_substitutes_and_wildcards_travel_both_ways(
    adapter: Adapter, upstream: tuple[Upstream, str]
) -> None:
    registry, _ = upstream
    data = await call(adapter, CASE)
    # The upstream's schema accepted the request (it faults otherwise), and it saw each concrete type by its
    # xsi:type and each substitute by its own element.
    assert data["seen"] == [f"{{{NS}}}Person", f"{{{NS}}}Enterprise", f"{{{NS}}}Person", "licence", "permit"]
    case = data["case"]
    assert case["party"] == CASE["party"]
    assert case["address"] == CASE["address"]
    # licence is of type Document, from which Permit derives: its answer names its type; a repeated choice's
    # entries carry every member, the absent ones null.
    assert case["document"] == [
        {"licence": {"@type": "Document", "number": "L-1"}, "permit": None},
        {"licence": None, "permit": CASE["document"][1]["permit"]},
    ]
    assert case["remark"] == "加急" and case["note"] is None
    assert case["extension"] == {"source": {"@system": "legacy", "#text": "old"}, "tags": {"tag": ["a", "b"]}}
    assert case["any"] == {"flag": {"@level": "2", "#text": "on"}}  # answered by local name
    sent = etree.fromstring(registry.requests[-1])
    assert sent.find(f".//{{{EXT}}}flag").get("level") == "2"
    assert sent.find(f".//{{{NS}}}licence/{{{NS}}}number").text == "L-1"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"party": [{"name": "张三", "idNumber": "1"}]}, "params/party/0", '"@type" must name the concrete type'),
        ({"party": [{"@type": "Party", "name": "x"}]}, "params/party/0", "one of: Person, Enterprise"),
        ({"address": {"@type": "Person", "city": "x"}}, "params/address", "one of: Address, PostalAddress"),
        ({"party": [{"@type": "Person", "name": "x", "uscc": "1"}]}, "params/party/0/Person/idNumber", "required"),
        ({"any": {}}, "params/any", "needs at least 1 element"),
        ({"any": {"a": "1", "b": "2"}}, "params/any", "at most 1 element"),
        ({"extension": [1, 2]}, "params/extension", "text (a string, number or boolean) or an object"),
        ({"extension": {"bad name": "x"}}, "params/extension", "'bad name' is not an XML name"),
        ({"remark": "a", "note": "b"}, "params", "only one of note, remark"),
    ],
)
def test_input_that_fits_no_type_is_a_422_naming_the_field(
    adapter: Adapter, change: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        adapter.operations["Submit"].input_model.model_validate(CASE | change)
    problem = validation_problem(refused.value.errors(), prefix=("params",))
    assert problem.status == 422
    found = [error for error in problem.errors if error["field"] == field and message in error["message"]]
    assert found, problem.errors


async def test_an_answer_outside_the_declared_family_is_malformed(
    adapter: Adapter, upstream: tuple[Upstream, str]
) -> None:
    registry, _ = upstream
    answer = (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:xsi="{XSI}"><s:Body><t:SubmitResponse xmlns:t="{NS}"><t:case>'
        "<t:party {party}</t:party>"
        "<t:address><t:city>厦门</t:city></t:address><t:licence><t:number>L</t:number></t:licence>"
        "<t:extension/><e:flag xmlns:e='urn:example:ext'/></t:case><t:seen>x</t:seen></t:SubmitResponse></s:Body>"
        "</s:Envelope>"
    )
    try:
        for party, named in (
            ('xsi:type="t:Document"><t:number>1</t:number>', "came as {urn:example:case-registry}Document"),
            ("><t:name>x</t:name>", "came as {urn:example:case-registry}Party"),  # abstract, no xsi:type
        ):
            registry.answer_override = answer.format(party=party).encode()
            with pytest.raises(UpstreamMalformed) as refused:
                await call(adapter, CASE)
            assert named in str(refused.value) and "not one of Person, Enterprise" in str(refused.value)
    finally:
        registry.answer_override = None


async def test_the_upstream_refuses_what_its_schema_refuses(upstream: tuple[Upstream, str]) -> None:
    """The upstream is a real check: the same case with the wildcard in the registry's own namespace (which
    ##other excludes) is refused by libxml2, so the passing call above was schema-valid."""
    _, url = upstream

    bad = (
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><t:Submit xmlns:t="{NS}"><t:party><t:name>x</t:name></t:party>'
        "<t:address><t:city>c</t:city></t:address><t:licence><t:number>1</t:number></t:licence><t:extension/>"
        "<t:flag/></t:Submit></s:Body></s:Envelope>"
    )
    async with aiohttp.ClientSession() as session, session.post(url + "/soap", data=bad.encode()) as response:
        assert response.status == 500 and "faultstring" in await response.text()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            ('<xs:complexType name="Person">', '<xs:complexType name="Person" abstract="true">'),
            None,  # Enterprise is still concrete: registers
        ),
        (
            ('<xs:extension base="tns:Party">', '<xs:extension base="tns:Address">'),
            "an element of the abstract type {urn:example:case-registry}Party, from which no concrete type derives,"
            " at operation Submit input/party",
        ),
        (
            (
                '<xs:element name="licence" type="tns:Document"',
                '<xs:element name="licence" type="tns:Document" abstract="true"',
            ),
            None,  # permit still stands for document
        ),
        (
            ('<part name="parameters" element="tns:Submit"/>', '<part name="parameters" element="tns:note"/>'),
            "a message part whose element {urn:example:case-registry}note heads a substitution group",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused_at_registration_naming_it(
    change: tuple[str, str], named: str | None
) -> None:
    document = WSDL.read_text(encoding="utf-8").replace(*change)
    assert document != WSDL.read_text(encoding="utf-8")
    files = {"case-registry.wsdl": document}
    if named is None:
        prepare("case-registry", "wsdl", files=files, root="case-registry.wsdl")
        return
    with pytest.raises(Problem) as refused:
        prepare("case-registry", "wsdl", files=files, root="case-registry.wsdl")
    assert refused.value.code == "contract_unsupported" and named in refused.value.detail, refused.value.detail


async def test_ws_security_reaches_the_upstream_intact(
    upstream: tuple[Upstream, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the upstream receives over HTTP carries the UsernameToken with the secret's password, or an X.509
    signature over the Body that verifies (xmlsec) with the registered certificate; the schema still accepts it."""
    from zeep.wsse.signature import verify_envelope

    registry, url = upstream
    cert_pem, key_pem = wsse_signing_pair()
    monkeypatch.setenv("MSJX_SECRET_REGISTRY_PW", "s3cr3t-pw")
    monkeypatch.setenv("MSJX_SECRET_REGISTRY_KEY", key_pem)
    files = {"case-registry.wsdl": WSDL.read_text(encoding="utf-8")}
    wsse = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
    for auth in (
        {"wsse": {"username": "district", "password": "secret:REGISTRY_PW"}},
        {"wsse": {"x509_key": "secret:REGISTRY_KEY", "x509_cert": cert_pem}},
    ):
        prepared = await asyncio.to_thread(
            prepare, "case-registry", "wsdl", files=files, root="case-registry.wsdl", endpoint=url, soap_auth=auth
        )
        await prepared.adapter.start()
        try:
            data = await call(prepared.adapter, CASE)
        finally:
            await prepared.adapter.close()
        assert data["seen"][0] == f"{{{NS}}}Person"
        received = etree.fromstring(registry.requests[-1])
        if "username" in auth["wsse"]:
            assert received.findtext(f".//{wsse}UsernameToken/{wsse}Password") == "s3cr3t-pw"
        else:
            (tmp_path / "gateway.crt").write_text(cert_pem)
            verify_envelope(received, str(tmp_path / "gateway.crt"))  # raises unless the Body is signed by the key


async def test_a_concrete_declared_type_needs_no_type_key(adapter: Adapter, upstream: tuple[Upstream, str]) -> None:
    """address is of the concrete type Address (PostalAddress derives from it): without "@type" it is sent as the
    declared type (no xsi:type), and the answer still says which type it is."""
    registry, _ = upstream
    data = await call(adapter, CASE | {"address": {"city": "厦门"}})
    sent = etree.fromstring(registry.requests[-1]).find(f".//{{{NS}}}address")
    assert sent.get(f"{{{XSI}}}type") is None and sent.findtext(f"{{{NS}}}city") == "厦门"
    assert data["case"]["address"] == {"@type": "Address", "city": "厦门"}


async def test_the_facade_offers_the_types_as_a_choice_of_elements(
    adapter: Adapter, upstream: tuple[Upstream, str]
) -> None:
    """Offered again as SOAP (GET /soap/case-registry?wsdl), each polymorphic element is an xs:choice of one element
    per concrete type, named by it (no xsi:type needed by a legacy caller): the generated schema compiles, a request
    in that form reads as the JSON above, and the answer written back validates against the generated schema."""
    from gateway.soap.contract import build_contract, wsdl_document
    from gateway.soap.messages import read_request, write_answer
    from tests.test_soap_facade import check_basic_profile, standalone

    contract = build_contract("case-registry", adapter)
    document = etree.fromstring(wsdl_document(contract, "http://gw.example/soap/case-registry"))
    check_basic_profile(document)
    xs = "{http://www.w3.org/2001/XMLSchema}"
    service = next(s for s in document.iter(f"{xs}schema") if s.get("targetNamespace") == contract.namespace)
    compiled = etree.XMLSchema(standalone(service))
    choice = service.find(f"{xs}complexType[@name='party_types']/{xs}choice")
    assert [element.get("name") for element in choice] == ["Person", "Enterprise"]

    gw = contract.namespace
    request = etree.fromstring(
        f'<Submit xmlns="{gw}"><purpose>XM-2025-001</purpose><params>'
        "<party><Person><name>张三</name><idNumber>350203199001011234</idNumber></Person></party>"
        "<party><Enterprise><name>厦门某科技有限公司</name><uscc>91350213MAG6BDRC7A</uscc>"
        "<representative><Person><name>李四</name><idNumber>350203198502021234</idNumber></Person></representative>"
        "</Enterprise></party>"
        "<address><PostalAddress><city>厦门</city><postcode>361000</postcode></PostalAddress></address>"
        "<document><licence><Document><number>L-1</number></Document></licence></document>"
        "<document><permit><number>P-2</number><authority>湖里区市场监督管理局</authority></permit></document>"
        "<remark>加急</remark>"
        '<extension>{"source": {"@system": "legacy", "#text": "old"}, "tags": {"tag": ["a", "b"]}}</extension>'
        f'<any>{{"{{{EXT}}}flag": {{"@level": "2", "#text": "on"}}}}</any>'
        "</params></Submit>"
    )
    assert compiled.validate(etree.ElementTree(request)), compiled.error_log
    shape = contract.operations["Submit"]
    params = read_request(contract, shape, request)["params"]
    assert params["party"] == CASE["party"] and params["address"] == CASE["address"]
    validated = adapter.operations["Submit"].input_model.model_validate(params)
    assert validated.model_dump(mode="json", by_alias=True, exclude_unset=True)["party"] == CASE["party"]

    data = await call(adapter, CASE)
    meta = {
        "request_id": "r-1",
        "service": "case-registry",
        "operation": "Submit",
        "grant_id": "g-1",
        "source": "case registry",
        "fetched_at": "2026-12-06T01:00:00.000+00:00",
    }
    answer = etree.fromstring(write_answer(contract, shape, "1.1", {"data": data, "meta": meta}))
    response = answer.find(f".//{{{gw}}}SubmitResponse")
    assert compiled.validate(etree.ElementTree(response)), compiled.error_log
    case = response.find(f"{{{gw}}}data/{{{gw}}}case")
    assert case.findtext(f"{{{gw}}}party/{{{gw}}}Enterprise/{{{gw}}}uscc") == "91350213MAG6BDRC7A"
    assert case.findtext(f"{{{gw}}}address/{{{gw}}}PostalAddress/{{{gw}}}postcode") == "361000"
