"""Inbound WSDLs: the XSD built-in type families (the g* dates, duration, binary, the integer, decimal and string
families, QName, anyURI, language), lists and unions, and facets enforced on input with the field named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydantic import ValidationError

from adapters.contracts import bundle_from_files
from adapters.http import RawResponse
from adapters.soap import SoapEngine
from gateway.http.problems import Problem, validation_problem
from gateway.upstreams.registry import prepare
from tests.helpers.soap import wsse_signing_pair

NS = "urn:example:types"
FIELDS = {
    # name: (XSD type or inline simpleType, a valid value as the caller sends it in JSON)
    "year": ("xs:gYear", 2024),
    "yearMonth": ("xs:gYearMonth", "2024-05"),
    "month": ("xs:gMonth", "--05"),
    "monthDay": ("xs:gMonthDay", "--05-12"),
    "day": ("xs:gDay", "---07"),
    "period": ("xs:duration", "P1Y2M3DT4H"),
    "photo": ("xs:base64Binary", "aGVsbG8="),
    "digest": ("xs:hexBinary", "0A1B"),
    "code": ("xs:token", "A B"),
    "label": ("xs:normalizedString", "a label"),
    "tag": ("xs:NMTOKEN", "x-1"),
    "lang": ("xs:language", "zh-CN"),
    "home": ("xs:anyURI", "https://gw.example/x"),
    "kind": ("xs:QName", "tns:thing"),
    "small": ("xs:unsignedByte", 200),
    "big": ("xs:long", 9007199254740993),
    "when": ("xs:dateTime", "2024-05-12T08:00:00+08:00"),
    "ok": ("xs:boolean", True),
    "ratio": ("xs:double", 0.5),
    "region": ("tns:RegionCode", "350203"),
    "amount": ("tns:Money", "1234.50"),
    "count": ("tns:Count", 5),
    "name": ("tns:ShortName", "abc"),
    "levels": ("tns:Levels", [1, 2, 3]),
    "either": ("tns:IntOrWord", "many"),
}
TYPES = """
  <xs:simpleType name="RegionCode"><xs:restriction base="xs:string"><xs:pattern value="\\d{6}"/></xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Money"><xs:restriction base="xs:decimal"><xs:totalDigits value="8"/>
    <xs:fractionDigits value="2"/><xs:minInclusive value="0"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="Count"><xs:restriction base="xs:int"><xs:minInclusive value="1"/>
    <xs:maxExclusive value="10"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="ShortName"><xs:restriction base="xs:string"><xs:minLength value="2"/>
    <xs:maxLength value="4"/></xs:restriction></xs:simpleType>
  <xs:simpleType name="Levels"><xs:list itemType="xs:int"/></xs:simpleType>
  <xs:simpleType name="IntOrWord"><xs:union memberTypes="xs:int xs:token"/></xs:simpleType>
"""


def wsdl() -> str:
    elements = "".join(f'<xs:element name="{name}" type="{kind}"/>' for name, (kind, _) in FIELDS.items())
    return f"""<?xml version="1.0"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="{NS}" targetNamespace="{NS}">
 <types><xs:schema targetNamespace="{NS}" elementFormDefault="qualified">{TYPES}
  <xs:complexType name="Everything"><xs:sequence>{elements}</xs:sequence></xs:complexType>
  <xs:element name="Echo" type="tns:Everything"/><xs:element name="EchoResponse" type="tns:Everything"/>
 </xs:schema></types>
 <message name="In"><part name="p" element="tns:Echo"/></message>
 <message name="Out"><part name="p" element="tns:EchoResponse"/></message>
 <portType name="P"><operation name="Echo"><input message="tns:In"/><output message="tns:Out"/></operation></portType>
 <binding name="B" type="tns:P"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
  <operation name="Echo"><soap:operation soapAction="echo"/><input><soap:body use="literal"/></input>
   <output><soap:body use="literal"/></output></operation></binding>
 <service name="S"><port name="P" binding="tns:B"><soap:address location="http://127.0.0.1:9/echo"/></port></service>
</definitions>"""


@pytest.fixture(scope="module")
def engine() -> SoapEngine:
    return SoapEngine("types", bundle_from_files("wsdl", {"types.wsdl": wsdl()}, "types.wsdl"))


def valid() -> dict[str, Any]:
    return {name: value for name, (_, value) in FIELDS.items()}


def test_every_type_family_round_trips_json_to_xml_to_json(engine: SoapEngine) -> None:
    operation = engine.operations["Echo"]
    params = operation.input_model.model_validate(valid())
    envelope = engine.envelope(operation, params.model_dump(by_alias=True))
    body = etree.fromstring(envelope).find(f".//{{{NS}}}Echo")
    texts = {etree.QName(child).localname: child.text for child in body}
    assert texts["month"] == "--05" and texts["period"] == "P1Y2M3DT4H" and texts["levels"] == "1 2 3"
    assert texts["yearMonth"] == "2024-05" and texts["kind"] == "tns:thing" and texts["either"] == "many"
    # The upstream echoes: the same envelope, the body element renamed to the response element.
    body.tag = f"{{{NS}}}EchoResponse"
    answer = etree.tostring(body.getroottree())
    data = engine.read(operation, RawResponse(200, "text/xml", answer))
    output = operation.output_model.model_validate(data).model_dump(mode="json", by_alias=True)
    expected = valid()
    expected["amount"] = "1234.50"
    assert output == expected | {"amount": output["amount"]}
    assert Decimal(output["amount"]) == Decimal("1234.50")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("region", "35020", "does not match the pattern"),
        ("amount", "1234.567", "at most 2 digits after the point"),
        ("amount", "123456789", "at most 8 digits"),
        ("amount", "-1", ">= 0"),
        ("count", 10, "< 10"),
        ("count", 0, ">= 1"),
        ("name", "a", "at least 2"),
        ("name", "abcde", "at most 4"),
        ("small", 256, "less than or equal to 255"),
        ("period", "1 year", "not a valid xsd:duration"),
        ("yearMonth", "2024/05", "not a valid xsd:gYearMonth"),
        ("day", "7", "not a valid xsd:gDay"),
    ],
)
def test_facets_refuse_input_naming_the_field(engine: SoapEngine, field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        engine.operations["Echo"].input_model.model_validate(valid() | {field: value})
    problem = validation_problem(refused.value.errors(), prefix=("params",))
    assert problem.status == 422
    assert problem.errors[0]["field"] == f"params/{field}", problem.errors
    assert message in problem.errors[0]["message"], problem.errors


RECURSIVE = f"""<?xml version="1.0"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="{NS}" targetNamespace="{NS}">
 <types><xs:schema targetNamespace="{NS}" elementFormDefault="qualified">
  <xs:complexType name="Unit"><xs:sequence><xs:element name="name" type="xs:string"/>
   <xs:element name="parent" type="tns:Unit" minOccurs="0"/>
   <xs:element name="children" type="tns:Unit" minOccurs="0" maxOccurs="unbounded"/></xs:sequence></xs:complexType>
  <xs:element name="Tree"><xs:complexType><xs:sequence><xs:element name="root" type="tns:Unit"/></xs:sequence>
  </xs:complexType></xs:element>
  <xs:element name="TreeResponse"><xs:complexType><xs:sequence><xs:element name="root" type="tns:Unit"/>
  </xs:sequence></xs:complexType></xs:element>
 </xs:schema></types>
 <message name="In"><part name="p" element="tns:Tree"/></message>
 <message name="Out"><part name="p" element="tns:TreeResponse"/></message>
 <portType name="P"><operation name="Tree"><input message="tns:In"/><output message="tns:Out"/></operation></portType>
 <binding name="B" type="tns:P"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
  <operation name="Tree"><soap:operation soapAction="tree"/><input><soap:body use="literal"/></input>
   <output><soap:body use="literal"/></output></operation></binding>
 <service name="S"><port name="P" binding="tns:B"><soap:address location="http://127.0.0.1:9/tree"/></port></service>
</definitions>"""


def test_recursive_types_register_and_round_trip() -> None:
    engine = SoapEngine("tree", bundle_from_files("wsdl", {"tree.wsdl": RECURSIVE}, "tree.wsdl"))
    operation = engine.operations["Tree"]
    tree = {"root": {"name": "市", "children": [{"name": "区", "children": [{"name": "街道", "children": []}]}]}}
    params = operation.input_model.model_validate(tree)
    envelope = engine.envelope(operation, params.model_dump(by_alias=True))
    body = etree.fromstring(envelope).find(f".//{{{NS}}}Tree")
    assert [node.text for node in body.iter(f"{{{NS}}}name")] == ["市", "区", "街道"]
    body.tag = f"{{{NS}}}TreeResponse"
    data = engine.read(operation, RawResponse(200, "text/xml", etree.tostring(body.getroottree())))
    assert data["root"]["children"][0]["children"][0]["name"] == "街道"
    assert "$defs" in operation.input_model.model_json_schema()  # the schema refers to itself, it does not recurse
    with pytest.raises(ValidationError):
        operation.input_model.model_validate({"root": {"name": "x", "children": [{"children": []}]}})


def test_any_type_travels_as_json() -> None:
    document = RECURSIVE.replace(
        '<xs:element name="root" type="tns:Unit"/></xs:sequence>\n  </xs:complexType></xs:element>',
        '<xs:element name="root" type="tns:Unit"/><xs:element name="extra" type="xs:anyType"/></xs:sequence>\n'
        "  </xs:complexType></xs:element>",
    ).replace(
        '<xs:element name="root" type="tns:Unit"/>\n  </xs:sequence>',
        '<xs:element name="root" type="tns:Unit"/><xs:element name="extra" type="xs:anyType"/>\n  </xs:sequence>',
    )
    assert document.count('name="extra"') == 2
    engine = SoapEngine("any", bundle_from_files("wsdl", {"any.wsdl": document}, "any.wsdl"))
    operation = engine.operations["Tree"]
    params = operation.input_model.model_validate({"root": {"name": "x", "children": []}, "extra": 42})
    body = etree.fromstring(engine.envelope(operation, params.model_dump(by_alias=True))).find(f".//{{{NS}}}Tree")
    assert body.findtext(f"{{{NS}}}extra") == "42"
    params = operation.input_model.model_validate({"root": {"name": "x", "children": []}, "extra": {"a": {"@n": 1}}})
    body = etree.fromstring(engine.envelope(operation, params.model_dump(by_alias=True))).find(f".//{{{NS}}}Tree")
    assert body.find(f"{{{NS}}}extra/a").get("n") == "1"  # an object is the element's content
    with pytest.raises(ValidationError, match="or an object of its content"):
        operation.input_model.model_validate({"root": {"name": "x", "children": []}, "extra": [1]})
    answer = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        f'<t:TreeResponse xmlns:t="{NS}"><t:root><t:name>x</t:name></t:root>'
        '<t:extra><item id="1"><v>a</v><v>b</v></item><note>n</note></t:extra></t:TreeResponse></s:Body></s:Envelope>'
    )
    data = engine.read(operation, RawResponse(200, "text/xml", answer.encode()))
    assert data["extra"] == {"item": {"@id": "1", "v": ["a", "b"]}, "note": "n"}


CORPUS = Path(__file__).parent / "contracts" / "wsdl-corpus"


def test_soap_headers_from_a_secret_and_ws_security_toward_the_upstream(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Interhome's real WSDL requires a ServiceAuthHeader: refused without its values, registered with them, the
    password read from MSJX_SECRET_INTERHOME on each node; a WS-Security UsernameToken likewise."""
    files = {"interhome.wsdl": (CORPUS / "interhome.wsdl").read_text(encoding="utf-8")}
    with pytest.raises(Problem) as refused:
        prepare("interhome", "wsdl", files=files, root="interhome.wsdl")
    assert "SOAP header (ServiceAuthHeader)" in refused.value.detail and "soap_headers" in refused.value.detail
    auth = {
        "headers": {"ServiceAuthHeader": {"Username": "district", "Password": "secret:INTERHOME"}},
        "wsse": {"username": "district", "password": "secret:INTERHOME"},
    }
    # The password itself instead of its secret reference would be stored and listed: refused, nothing echoed.
    in_the_clear = {"headers": {"ServiceAuthHeader": {"Username": "district", "Password": "hunter2-plain"}}}
    with pytest.raises(Problem) as clear:
        prepare("interhome", "wsdl", files=files, root="interhome.wsdl", soap_auth=in_the_clear)
    assert clear.value.code == "secret_invalid" and clear.value.errors[0]["field"] == "soap_headers"
    assert "ServiceAuthHeader.Password is a credential" in clear.value.detail
    assert "hunter2-plain" not in clear.value.detail
    monkeypatch.delenv("MSJX_SECRET_INTERHOME", raising=False)
    with pytest.raises(Problem) as missing:
        prepare("interhome", "wsdl", files=files, root="interhome.wsdl", soap_auth=auth)
    assert missing.value.code == "secret_missing" and missing.value.errors[0]["field"] == "soap_headers"
    monkeypatch.setenv("MSJX_SECRET_INTERHOME", "s3cr3t-pw")
    prepared = prepare("interhome", "wsdl", files=files, root="interhome.wsdl", soap_auth=auth)
    engine = prepared.adapter.engine
    name, operation = next((name, op) for name, op in engine.operations.items() if op.header_values)
    envelope = engine.envelope(operation, {})
    header = etree.fromstring(envelope).find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    credentials = header.find("{http://www.interhome.com/webservice}ServiceAuthHeader")
    assert credentials.findtext("{http://www.interhome.com/webservice}Password") == "s3cr3t-pw", name
    wsse = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
    assert header.find(f".//{wsse}UsernameToken/{wsse}Password").text == "s3cr3t-pw"
    assert prepared.spec.soap_auth == auth  # what is stored: the reference, not the value
    assert "s3cr3t-pw" not in caplog.text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            ('<xs:complexType name="Unit">', '<xs:complexType name="Unit" abstract="true">'),
            "an element of the abstract type {urn:example:types}Unit, from which no concrete type derives, at "
            "operation Tree input/root",
        ),
        (
            (
                '<xs:element name="Tree"><xs:complexType><xs:sequence>',
                '<xs:element name="Head" type="xs:string" abstract="true"/><xs:element name="Other" type="xs:string"'
                ' substitutionGroup="tns:Head" abstract="true"/><xs:element name="Tree"><xs:complexType><xs:sequence>'
                '<xs:element ref="tns:Head"/>',
            ),
            "a substitution group whose head {urn:example:types}Head and members are all abstract at operation Tree"
            " input",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused_at_registration_naming_it(change: tuple[str, str], named: str) -> None:
    document = RECURSIVE.replace(*change)
    assert document != RECURSIVE
    with pytest.raises(Problem) as refused:
        prepare("tree", "wsdl", files={"tree.wsdl": document}, root="tree.wsdl")
    assert refused.value.code == "contract_unsupported" and named in refused.value.detail, refused.value.detail


def test_an_x509_signature_toward_the_upstream(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """WS-Security X.509 (xmlsec through zeep): the envelope carries a signature over its Body that verifies with
    the certificate; the key comes from a secret."""
    from zeep.wsse.signature import verify_envelope

    cert_pem, key_pem = wsse_signing_pair()
    monkeypatch.setenv("MSJX_SECRET_INTERHOME", "s3cr3t-pw")
    monkeypatch.setenv("MSJX_SECRET_SIGNING_KEY", key_pem)
    auth = {
        "headers": {"ServiceAuthHeader": {"Username": "district", "Password": "secret:INTERHOME"}},
        "wsse": {"x509_key": "secret:SIGNING_KEY", "x509_cert": cert_pem},
    }
    files = {"interhome.wsdl": (CORPUS / "interhome.wsdl").read_text(encoding="utf-8")}
    prepared = prepare("interhome", "wsdl", files=files, root="interhome.wsdl", soap_auth=auth)
    engine = prepared.adapter.engine
    operation = next(op for op in engine.operations.values() if op.header_values)
    envelope = etree.fromstring(engine.envelope(operation, {}))
    assert envelope.find(".//{http://www.w3.org/2000/09/xmldsig#}Signature") is not None
    (tmp_path / "upstream-view.crt").write_text(cert_pem)
    verify_envelope(envelope, str(tmp_path / "upstream-view.crt"))  # raises if the signature does not verify
    assert "BEGIN PRIVATE KEY" not in str(prepared.spec.soap_auth)


def test_several_services_in_one_wsdl_each_keep_their_operations() -> None:
    """Two services whose portTypes both name an operation Get: the second is offered as PB.Get (its port's name),
    with its own address and action, never dropped; the first's SOAP 1.2 port is its twin, not a third."""
    document = (Path(__file__).parent / "contracts" / "soap" / "two-services.wsdl").read_text(encoding="utf-8")
    engine = SoapEngine("two", bundle_from_files("wsdl", {"two.wsdl": document}, "two.wsdl"))
    assert sorted(engine.operations) == ["Get", "PB.Get"]
    first, second = engine.operations["Get"], engine.operations["PB.Get"]
    assert (first.address, first.soap_action) == ("http://a.example/a", "a")
    assert (second.address, second.soap_action) == ("http://b.example/b", "b")
    envelope = engine.envelope(second, second.input_model.model_validate({"x": 7}).model_dump(by_alias=True))
    assert etree.fromstring(envelope).findtext(".//{urn:m}B/{urn:m}x") == "7"
    params = first.input_model.model_validate(
        {"m": {"value": "1.50", "currency": "CNY", "tag": "t"}, "u": "1 2", "c": ["red", "blue"]}
    )
    sent = etree.fromstring(engine.envelope(first, params.model_dump(by_alias=True))).find(".//{urn:m}A")
    assert sent.find("{urn:m}m").attrib == {"currency": "CNY", "tag": "t"} and sent.findtext("{urn:m}m") == "1.50"
    assert sent.findtext("{urn:m}u") == "1 2" and sent.findtext("{urn:m}c") == "red blue"
    with pytest.raises(ValidationError, match="'red' or 'blue'"):
        first.input_model.model_validate({"m": {"value": "1"}, "u": "x", "c": ["green"]})
    # Money has TaggedMoney derived from it: the answer names which one it is.
    answer = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><t:AResponse xmlns:t="urn:m">'
        '<t:m currency="CNY">2.5</t:m></t:AResponse></s:Body></s:Envelope>'
    )
    data = engine.read(first, RawResponse(200, "text/xml", answer.encode()))
    assert data == {"m": {"@type": "Money", "value": Decimal("2.5"), "currency": "CNY"}}


def test_header_values_the_header_does_not_take_are_refused_at_registration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A field the header does not have, or a value its type refuses, is refused when registering (naming the part),
    not turned into a failed envelope at call time; a secret quoted by a parser's message is not repeated."""
    files = {"interhome.wsdl": (CORPUS / "interhome.wsdl").read_text(encoding="utf-8")}
    with pytest.raises(Problem) as unknown:
        prepare(
            "interhome",
            "wsdl",
            files=files,
            root="interhome.wsdl",
            soap_auth={"headers": {"ServiceAuthHeader": {"Usr": "x"}}},
        )
    assert unknown.value.code == "contract_invalid" and "SOAP header ServiceAuthHeader" in unknown.value.detail
    assert "'Usr'" in unknown.value.detail
    typed = {
        "interhome.wsdl": files["interhome.wsdl"].replace(
            'name="Password" type="s:string"', 'name="Password" type="s:int"'
        )
    }
    monkeypatch.setenv("MSJX_SECRET_INTERHOME", "s3cr3t-pw")
    auth = {"headers": {"ServiceAuthHeader": {"Password": "secret:INTERHOME"}}}
    with pytest.raises(Problem) as refused:
        prepare("interhome", "wsdl", files=typed, root="interhome.wsdl", soap_auth=auth)
    assert refused.value.code == "contract_invalid" and "SOAP header ServiceAuthHeader" in refused.value.detail
    assert "s3cr3t-pw" not in refused.value.detail and "s3cr3t-pw" not in caplog.text


def test_a_header_of_a_simple_type_is_given_as_its_value() -> None:
    """Hoover's real WSDL requires the API-KEY header (an xsd:string element): PART.value gives it; fields do not."""
    files = {"hoovers.wsdl": (CORPUS / "hoovers.wsdl").read_text(encoding="utf-8")}
    with pytest.raises(Problem) as refused:
        prepare(
            "hoovers", "wsdl", files=files, root="hoovers.wsdl", soap_auth={"headers": {"parameters": {"key": "k"}}}
        )
    assert "give it as parameters.value" in refused.value.detail
    prepared = prepare(
        "hoovers", "wsdl", files=files, root="hoovers.wsdl", soap_auth={"headers": {"parameters": {"value": "k-1"}}}
    )
    engine = prepared.adapter.engine
    header = etree.fromstring(engine.envelope(engine.operations["GetCompanyDetail"], {"uniqueId": 1})).find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Header"
    )
    assert header.findtext("{http://applications.dnb.com/webservice/schema/}API-KEY") == "k-1"


def test_xml_xsd_and_the_soap_envelope_schema_need_no_fetch() -> None:
    """Imported by their public URL (no fetch is allowed here), they are read from the gateway's own copies."""
    document = RECURSIVE.replace(
        '<xs:schema targetNamespace="urn:example:types" elementFormDefault="qualified">',
        '<xs:schema targetNamespace="urn:example:types" elementFormDefault="qualified">'
        '<xs:import namespace="http://www.w3.org/XML/1998/namespace" schemaLocation="http://www.w3.org/2001/xml.xsd"/>'
        '<xs:import namespace="http://schemas.xmlsoap.org/soap/envelope/"'
        ' schemaLocation="http://schemas.xmlsoap.org/soap/envelope/"/>',
    ).replace(
        '<xs:complexType name="Unit"><xs:sequence><xs:element name="name" type="xs:string"/>',
        '<xs:complexType name="Unit"><xs:sequence><xs:element name="name"><xs:complexType><xs:simpleContent>'
        '<xs:extension base="xs:string"><xs:attribute ref="xml:lang"/></xs:extension></xs:simpleContent>'
        "</xs:complexType></xs:element>",
    )
    assert "xml.xsd" in document and 'ref="xml:lang"' in document
    prepared = prepare("tree", "wsdl", files={"tree.wsdl": document}, root="tree.wsdl")
    assert len(prepared.spec.bundle.documents) == 1  # nothing fetched, nothing added to what is stored
    operation = prepared.adapter.engine.operations["Tree"]
    params = operation.input_model.model_validate({"root": {"name": {"value": "市", "lang": "zh"}, "children": []}})
    envelope = prepared.adapter.engine.envelope(operation, params.model_dump(by_alias=True))
    assert b'xml:lang="zh"' in envelope


def test_mixed_content_keeps_its_text() -> None:
    """zeep drops the text of mixed content (text between elements, .NET's XmlNode pattern); the gateway reads and
    writes such an element whole, as anyType's JSON: its text as "#text", its children and attributes by name."""
    document = RECURSIVE.replace(
        '<xs:complexType name="Unit"><xs:sequence><xs:element name="name" type="xs:string"/>',
        '<xs:complexType name="Unit"><xs:sequence><xs:element name="name" type="xs:string"/>'
        '<xs:element name="note" minOccurs="0"><xs:complexType mixed="true"><xs:sequence>'
        '<xs:element name="b" type="xs:string" minOccurs="0"/></xs:sequence>'
        '<xs:attribute name="lang" type="xs:string"/></xs:complexType></xs:element>',
    )
    assert 'mixed="true"' in document
    engine = SoapEngine("mixed", bundle_from_files("wsdl", {"m.wsdl": document}, "m.wsdl"))
    operation = engine.operations["Tree"]
    params = operation.input_model.model_validate(
        {"root": {"name": "x", "note": {"@lang": "zh", "#text": "急件 ", "b": "今天"}, "children": []}}
    )
    sent = etree.fromstring(engine.envelope(operation, params.model_dump(by_alias=True))).find(f".//{{{NS}}}note")
    assert sent.get("lang") == "zh" and sent.text == "急件 " and sent.findtext("b") == "今天"
    answer = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        f'<t:TreeResponse xmlns:t="{NS}"><t:root><t:name>x</t:name><t:note lang="zh">请 <t:b>今天</t:b> 办理</t:note>'
        "</t:root></t:TreeResponse></s:Body></s:Envelope>"
    )
    data = engine.read(operation, RawResponse(200, "text/xml", answer.encode()))
    assert data["root"]["note"] == {"@lang": "zh", "b": "今天", "#text": "请  办理"}


def test_a_restricted_list_counts_its_items() -> None:
    """A restriction of a list type (zeep leaves its item type unresolved and could not write it): the list it
    restricts is found, and length facets count items (not each item's characters), named or anonymous."""
    document = (Path(__file__).parent / "contracts" / "soap" / "two-services.wsdl").read_text(encoding="utf-8")
    named = document.replace(
        '<xs:simpleType name="Colours"><xs:list itemType="tns:Colour"/></xs:simpleType>',
        '<xs:simpleType name="Words"><xs:list itemType="xs:string"/></xs:simpleType><xs:simpleType name="Colours">'
        '<xs:restriction base="tns:Words"><xs:maxLength value="2"/></xs:restriction></xs:simpleType>',
    )
    anonymous = document.replace(
        '<xs:element name="c" type="tns:Colours"/>',
        '<xs:element name="c"><xs:simpleType><xs:restriction base="tns:Colours"><xs:minLength value="1"/>'
        '<xs:maxLength value="2"/></xs:restriction></xs:simpleType></xs:element>',
    )
    for variant in (named, anonymous):
        assert variant != document
        engine = SoapEngine("lists", bundle_from_files("wsdl", {"l.wsdl": variant}, "l.wsdl"))
        operation = engine.operations["Get"]
        ok = operation.input_model.model_validate({"m": {"value": "1"}, "u": "x", "c": ["red", "blue"]})
        sent = etree.fromstring(engine.envelope(operation, ok.model_dump(by_alias=True)))
        assert sent.findtext(".//{urn:m}A/{urn:m}c") == "red blue"
        with pytest.raises(ValidationError, match="must have at most 2 items"):
            operation.input_model.model_validate({"m": {"value": "1"}, "u": "x", "c": ["red", "blue", "red"]})
    with pytest.raises(ValidationError, match="must have at least 1 items"):
        operation.input_model.model_validate({"m": {"value": "1"}, "u": "x", "c": []})
