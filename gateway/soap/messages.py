"""SOAP messages of the façade: a request envelope read into (operation, purpose, params); answers and Faults.

Requests are parsed without DTDs, entities or network; unknown elements are refused naming their path, as /v1
refuses unknown JSON keys. Values are turned into JSON values by the operation's shape, then validated by the
same model /v1 uses, so a 422 names the same field (`params/uscc`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from lxml import etree

from gateway.http.problems import Problem
from gateway.soap.contract import META, PROBLEM_NS, ServiceContract, SoapOperationShape
from gateway.soap.shapes import TYPE_KEY, Complex, Member, Simple
from schemas.problems import ProblemCode

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
CONTENT_TYPES = {"1.1": "text/xml; charset=utf-8", "1.2": "application/soap+xml; charset=utf-8"}

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
)


def _invalid(detail: str, code: ProblemCode = ProblemCode.SOAP_REQUEST_INVALID, field: str | None = None) -> Problem:
    errors = [{"field": field, "message": detail, "type": code}] if field is not None else None
    return Problem(code, detail, title="SOAP request is invalid", errors=errors)


@dataclass
class Envelope:
    version: str  # "1.1" or "1.2"
    header: etree._Element | None
    body: etree._Element


def parse_envelope(body: bytes) -> Envelope:
    """The envelope of a request, or a 400 Problem; the SOAP version is the envelope's namespace."""
    if not body.strip():
        raise _invalid("the request has no body; POST a SOAP envelope")
    try:
        document = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise _invalid(f"the body is not well-formed XML ({exc.msg})") from None
    tree = document.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _invalid("a document type declaration (DTD) is not accepted", ProblemCode.XML_DTD_FORBIDDEN)
    namespace = etree.QName(document).namespace
    version = {SOAP11_ENV: "1.1", SOAP12_ENV: "1.2"}.get(namespace or "")
    if version is None or etree.QName(document).localname != "Envelope":
        raise Problem(
            ProblemCode.SOAP_VERSION_MISMATCH,
            f"the root element is {document.tag}; expected a SOAP 1.1 or 1.2 Envelope",
        )
    header = document.find(f"{{{namespace}}}Header")
    found = document.find(f"{{{namespace}}}Body")
    if found is None:
        raise _invalid("the envelope has no Body")
    children = [child for child in found if isinstance(child.tag, str)]
    if len(children) != 1:
        raise _invalid(f"the Body holds {len(children)} elements; document/literal wrapped needs exactly one")
    return Envelope(version, header, children[0])


def refuse_username_token(envelope: Envelope) -> None:
    """WS-Security UsernameToken is refused, signed or not: the gateway takes no shared passwords."""
    if envelope.header is None:
        return
    for block in envelope.header:
        if not isinstance(block.tag, str) or etree.QName(block).localname != "Security":
            continue
        names = {etree.QName(node).localname for node in block.iter() if isinstance(node.tag, str)}
        if "UsernameToken" in names:
            raise Problem(
                ProblemCode.WS_SECURITY_REFUSED,
                "the gateway takes no shared passwords: sign the HTTP request (RFC 9421) or present a client"
                " certificate registered with `msjx-gateway callers add-cert`",
            )


def check_headers(envelope: Envelope) -> None:
    """No UsernameToken; and a header the caller marks mustUnderstand is not understood by the gateway, so the call
    is refused rather than run without it."""
    refuse_username_token(envelope)
    if envelope.header is None:
        return
    env = SOAP12_ENV if envelope.version == "1.2" else SOAP11_ENV
    for block in envelope.header:
        if isinstance(block.tag, str) and block.get(f"{{{env}}}mustUnderstand") in ("1", "true"):
            raise Problem(
                ProblemCode.SOAP_MUST_UNDERSTAND,
                f"the header block {block.tag} is marked mustUnderstand and the gateway does not process it",
            )


def operation_for(contract: ServiceContract, envelope: Envelope) -> SoapOperationShape:
    element = envelope.body
    qname = etree.QName(element)
    if qname.namespace != contract.namespace or qname.localname not in contract.operations:
        known = sorted(contract.operations)
        raise Problem(
            ProblemCode.UNKNOWN_OPERATION,
            f"{contract.service} has no operation {{{qname.namespace or ''}}}{qname.localname};"
            f" known (in {contract.namespace}): {known}",
        )
    return contract.operations[qname.localname]


def read_request(contract: ServiceContract, shape: SoapOperationShape, element: etree._Element) -> dict[str, Any]:
    """{"purpose": ..., "params": {...}} from the request element, as /v1's JSON body would have it."""
    ns = contract.namespace
    purpose: str | None = None
    params: dict[str, Any] = {}
    for child in _elements(element):
        qname = etree.QName(child)
        if qname.namespace != ns or qname.localname not in ("purpose", "params"):
            raise _unexpected(child, "")
        if qname.localname == "purpose":
            purpose = (child.text or "").strip()
        else:
            params = _complex(shape.params, child, ns, "params")
    document: dict[str, Any] = {"params": params}
    if purpose is not None:
        document["purpose"] = purpose
    return document


def _elements(node: etree._Element) -> list[etree._Element]:
    return [child for child in node if isinstance(child.tag, str)]


def _unexpected(child: etree._Element, path: str) -> Problem:
    name = etree.QName(child).localname
    where = f"{path}/{name}" if path else name
    return Problem(
        ProblemCode.VALIDATION_FAILED,
        f"{where}: unexpected element {child.tag}",
        errors=[{"field": where, "message": f"unexpected element {child.tag}", "type": "extra_forbidden"}],
    )


def _nil(node: etree._Element) -> bool:
    return node.get(f"{{{XSI_NS}}}nil") in ("true", "1")


def _complex(shape: Complex, node: etree._Element, ns: str, path: str) -> dict[str, Any]:
    members = shape.by_xml()
    if shape.variants:  # one element naming the concrete type: {"@type": its name, ...its members}
        children = _elements(node)
        if len(children) != 1:
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                f"{path}: one element naming its type is expected",
                errors=[{"field": path, "message": "one element naming its type is expected", "type": "xsi_type"}],
            )
        (child,) = children
        qname = etree.QName(child)
        member = members.get(qname.localname) if qname.namespace == ns else None
        if member is None or not isinstance(member.shape, Complex):
            raise _unexpected(child, path)
        return {TYPE_KEY: member.json_name, **_complex(member.shape, child, ns, f"{path}/{member.json_name}")}
    result: dict[str, Any] = {}
    for child in _elements(node):
        qname = etree.QName(child)
        member = members.get(qname.localname) if qname.namespace == ns else None
        if member is None:
            raise _unexpected(child, path)
        where = f"{path}/{member.json_name}"
        value = None if _nil(child) else _value(member, child, ns, where)
        if member.repeated:
            result.setdefault(member.json_name, []).append(value)
        elif member.json_name in result:
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                f"{where}: the element appears more than once",
                errors=[{"field": where, "message": "the element appears more than once", "type": "too_long"}],
            )
        else:
            result[member.json_name] = value
    return result


def _value(member: Member, node: etree._Element, ns: str, path: str) -> Any:
    if isinstance(member.shape, Complex):
        return _complex(member.shape, node, ns, path)
    if _elements(node):
        raise _unexpected(_elements(node)[0], path)
    return _scalar(member.shape, node.text or "", path)


def _scalar(shape: Simple, text: str, path: str) -> Any:
    """The JSON value of an element's text; a text that cannot be one is passed on as text, so that the model's
    validation names the field with its usual message."""
    kind = shape.kind
    if kind == "string":
        return text
    stripped = text.strip()
    if kind == "boolean":
        return {"true": True, "1": True, "false": False, "0": False}.get(stripped, stripped)
    if kind == "integer":
        try:
            return int(stripped)
        except ValueError:
            return stripped
    if kind == "number":
        try:
            number = Decimal(stripped)
        except InvalidOperation:
            return stripped
        return int(number) if number == number.to_integral_value() and "." not in stripped else float(number)
    if kind == "json":
        try:
            return orjson.loads(stripped) if stripped else None
        except orjson.JSONDecodeError:
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                f"{path}: not JSON text",
                errors=[{"field": path, "message": "not JSON text", "type": "json_invalid"}],
            ) from None
    return stripped  # decimal: the model reads the exact text


# --- answers -----------------------------------------------------------------------------------------------------


def _envelope(version: str) -> tuple[etree._Element, etree._Element, str]:
    env = SOAP12_ENV if version == "1.2" else SOAP11_ENV
    root = etree.Element(f"{{{env}}}Envelope", nsmap={"soap": env})
    body = etree.SubElement(root, f"{{{env}}}Body")
    return root, body, env


def write_answer(contract: ServiceContract, shape: SoapOperationShape, version: str, answer: dict[str, Any]) -> bytes:
    """The response envelope for /v1's answer document ({"data": ..., "meta": ...})."""
    root, body, _ = _envelope(version)
    ns = contract.namespace
    response = etree.SubElement(body, f"{{{ns}}}{shape.xml_name}Response", nsmap={"tns": ns, "xsi": XSI_NS})
    _write_complex(etree.SubElement(response, f"{{{ns}}}data"), shape.data, answer.get("data") or {}, ns)
    _write_complex(etree.SubElement(response, f"{{{ns}}}meta"), META, answer.get("meta") or {}, ns)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def _write_complex(node: etree._Element, shape: Complex, data: dict[str, Any], ns: str) -> None:
    if shape.variants:
        chosen = next((member for member in shape.members if member.json_name == data.get(TYPE_KEY)), None)
        if chosen is not None and isinstance(chosen.shape, Complex):
            _write_complex(etree.SubElement(node, f"{{{ns}}}{chosen.xml_name}"), chosen.shape, data, ns)
        return
    for member in shape.members:
        if member.json_name not in data:
            continue
        value = data[member.json_name]
        values = value if member.repeated and isinstance(value, list) else [value]
        for item in values:
            child = etree.SubElement(node, f"{{{ns}}}{member.xml_name}")
            if item is None:
                child.set(f"{{{XSI_NS}}}nil", "true")
            elif isinstance(member.shape, Complex) and isinstance(item, dict):
                _write_complex(child, member.shape, item, ns)
            else:
                child.text = _text(member.shape, item)


def _text(shape: Simple | Complex, value: Any) -> str:
    if isinstance(shape, Simple) and shape.kind == "json":
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


# --- faults ------------------------------------------------------------------------------------------------------


def fault_status(version: str, status: int) -> int:
    """SOAP 1.1 answers every Fault with 500 (WS-I BP R1126); SOAP 1.2 with 400 for the sender's, 500 for ours."""
    if version == "1.2" and status < 500:
        return 400
    return 500


def write_fault(version: str, problem: dict[str, Any]) -> bytes:
    """A Fault in the request's SOAP version, from a problem document (Problem.to_dict, as /v1 would answer)."""
    root, body, env = _envelope(version)
    status = int(problem.get("status", 500))
    code = str(problem.get("code", ProblemCode.INTERNAL_ERROR))
    text = f"{problem.get('title', '')}: {problem.get('detail', '')}".strip(": ")
    fault = etree.SubElement(body, f"{{{env}}}Fault", nsmap={"gw": PROBLEM_NS})
    if version == "1.2":
        code_node = etree.SubElement(fault, f"{{{env}}}Code")
        value = etree.SubElement(code_node, f"{{{env}}}Value")
        value.text = "soap:Sender" if status < 500 else "soap:Receiver"
        if code == ProblemCode.SOAP_MUST_UNDERSTAND:
            value.text = "soap:MustUnderstand"
        elif code == ProblemCode.SOAP_VERSION_MISMATCH:
            value.text = "soap:VersionMismatch"
        subcode = etree.SubElement(etree.SubElement(code_node, f"{{{env}}}Subcode"), f"{{{env}}}Value")
        subcode.text = f"gw:{code}"
        reason = etree.SubElement(etree.SubElement(fault, f"{{{env}}}Reason"), f"{{{env}}}Text")
        reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        reason.text = text
        detail = etree.SubElement(fault, f"{{{env}}}Detail")
    else:
        faultcode = etree.SubElement(fault, "faultcode")
        faultcode.text = "soap:Client" if status < 500 else "soap:Server"
        if code == ProblemCode.SOAP_MUST_UNDERSTAND:
            faultcode.text = "soap:MustUnderstand"
        elif code == ProblemCode.SOAP_VERSION_MISMATCH:
            faultcode.text = "soap:VersionMismatch"
        etree.SubElement(fault, "faultstring").text = text
        detail = etree.SubElement(fault, "detail")
    node = etree.SubElement(detail, f"{{{PROBLEM_NS}}}problem")
    for name in ("code", "status", "title", "detail", "request_id"):
        if problem.get(name) is not None:
            etree.SubElement(node, f"{{{PROBLEM_NS}}}{name}").text = str(problem[name])
    for error in problem.get("errors") or ():
        item = etree.SubElement(node, f"{{{PROBLEM_NS}}}error")
        for name in ("field", "message", "type"):
            etree.SubElement(item, f"{{{PROBLEM_NS}}}{name}").text = str(error.get(name, ""))
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")
