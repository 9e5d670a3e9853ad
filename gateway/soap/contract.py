"""A service's SOAP contract: operation shapes, and the generated WSDL 1.1 (document/literal wrapped, SOAP 1.1 + 1.2).

Each operation `op` has a request element `op` holding `purpose` and `params`, and a response element `opResponse`
holding `data` (the granted fields only: every member optional) and `meta`. Every operation declares one fault,
`gw:problem`, carrying the stable problem `code` /v1 would answer with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree

from adapters.base import Adapter, Operation
from gateway.soap.shapes import XSD_NS, Complex, Member, ShapeBuilder, Simple, xml_name, xsd_pattern
from schemas.api import PURPOSE_PATTERN

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP11_BINDING_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
SOAP12_BINDING_NS = "http://schemas.xmlsoap.org/wsdl/soap12/"
HTTP_TRANSPORT = "http://schemas.xmlsoap.org/soap/http"
PROBLEM_NS = "urn:msjx-gateway:problem"
SERVICE_NS_PREFIX = "urn:msjx-gateway:soap:"

META = Complex(
    "Meta",
    [
        Member("request_id", "request_id", Simple("string", "string")),
        Member("service", "service", Simple("string", "string")),
        Member("operation", "operation", Simple("string", "string")),
        Member("grant_id", "grant_id", Simple("string", "string")),
        Member("source", "source", Simple("string", "string")),
        Member("fetched_at", "fetched_at", Simple("dateTime", "string")),
    ],
    "Who answered, under which grant, and when",
)
PURPOSE = Simple("string", "string", (("pattern", xsd_pattern(PURPOSE_PATTERN) or ".+"),), "purpose code of the grant")


@dataclass
class SoapOperationShape:
    operation: Operation
    xml_name: str  # the request element's local name; the response element is xml_name + "Response"
    params: Complex
    data: Complex


@dataclass
class ServiceContract:
    service: str
    namespace: str
    operations: dict[str, SoapOperationShape]  # by request element name
    types: dict[str, Complex]

    def action(self, shape: SoapOperationShape) -> str:
        return f"{self.namespace}#{shape.xml_name}"


def pascal(name: str) -> str:
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", name) if part]
    joined = "".join(part[:1].upper() + part[1:] for part in parts) or "Operation"
    return joined if joined[0].isalpha() else "Op" + joined


def build_contract(service: str, adapter: Adapter) -> ServiceContract:
    builder = ShapeBuilder()
    builder.types["Meta"] = META
    operations: dict[str, SoapOperationShape] = {}
    taken: set[str] = set()
    for operation in adapter.operations.values():
        name = xml_name(operation.name, taken)
        taken.add(name + "Response")
        stem = pascal(operation.name)
        params = builder.complex(_schema(operation.input_model, "validation"), f"{stem}Params")
        data = builder.complex(_schema(operation.output_model, "serialization"), f"{stem}Data", optional_members=True)
        operations[name] = SoapOperationShape(operation, name, params, data)
    return ServiceContract(service, SERVICE_NS_PREFIX + service, operations, builder.types)


def _schema(model: Any, mode: str) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(mode=mode)
    return schema


# --- WSDL --------------------------------------------------------------------------------------------------------

_NSMAP = {
    "wsdl": WSDL_NS,
    "soap": SOAP11_BINDING_NS,
    "soap12": SOAP12_BINDING_NS,
    "xs": XSD_NS,
    "gw": PROBLEM_NS,
}


def _w(tag: str) -> str:
    return f"{{{WSDL_NS}}}{tag}"


def _x(tag: str) -> str:
    return f"{{{XSD_NS}}}{tag}"


def wsdl_document(contract: ServiceContract, address: str, title: str = "") -> bytes:
    """The WSDL 1.1 document for `contract`, its ports at `address`."""
    tns = contract.namespace
    root = etree.Element(_w("definitions"), nsmap={**_NSMAP, "tns": tns})
    root.set("name", pascal(contract.service))
    root.set("targetNamespace", tns)
    doc = etree.SubElement(root, _w("documentation"))
    doc.text = (
        f"{title or contract.service} through msjx-gateway: each call carries the purpose it holds a grant for;"
        " the answer holds only the granted fields; a refusal is a SOAP Fault whose detail carries the problem code."
    )
    types = etree.SubElement(root, _w("types"))
    types.append(problem_schema())
    types.append(service_schema(contract))
    for shape in contract.operations.values():
        for suffix, element in (("Request", shape.xml_name), ("Response", shape.xml_name + "Response")):
            message = etree.SubElement(root, _w("message"), name=f"{shape.xml_name}{suffix}")
            etree.SubElement(message, _w("part"), name="parameters", element=f"tns:{element}")
    fault_message = etree.SubElement(root, _w("message"), name="Problem")
    etree.SubElement(fault_message, _w("part"), name="problem", element="gw:problem")
    port_type_name = pascal(contract.service) + "PortType"
    port_type = etree.SubElement(root, _w("portType"), name=port_type_name)
    for shape in contract.operations.values():
        operation = etree.SubElement(port_type, _w("operation"), name=shape.xml_name)
        documentation = etree.SubElement(operation, _w("documentation"))
        documentation.text = shape.operation.summary
        etree.SubElement(operation, _w("input"), message=f"tns:{shape.xml_name}Request")
        etree.SubElement(operation, _w("output"), message=f"tns:{shape.xml_name}Response")
        etree.SubElement(operation, _w("fault"), name="problem", message="tns:Problem")
    service = etree.Element(_w("service"), name=pascal(contract.service) + "Service")
    for version, namespace in (("11", SOAP11_BINDING_NS), ("12", SOAP12_BINDING_NS)):
        binding_name = f"{pascal(contract.service)}Soap{version}"
        binding = etree.SubElement(root, _w("binding"), name=binding_name, type=f"tns:{port_type_name}")
        etree.SubElement(binding, f"{{{namespace}}}binding", style="document", transport=HTTP_TRANSPORT)
        for shape in contract.operations.values():
            operation = etree.SubElement(binding, _w("operation"), name=shape.xml_name)
            soap_operation = etree.SubElement(operation, f"{{{namespace}}}operation", soapAction=contract.action(shape))
            soap_operation.set("style", "document")
            for direction in ("input", "output"):
                etree.SubElement(etree.SubElement(operation, _w(direction)), f"{{{namespace}}}body", use="literal")
            fault = etree.SubElement(operation, _w("fault"), name="problem")
            etree.SubElement(fault, f"{{{namespace}}}fault", name="problem", use="literal")
        port = etree.SubElement(service, _w("port"), name=binding_name, binding=f"tns:{binding_name}")
        etree.SubElement(port, f"{{{namespace}}}address", location=address)
    root.append(service)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


def problem_schema() -> etree._Element:
    schema = etree.Element(
        _x("schema"), nsmap={"xs": XSD_NS}, targetNamespace=PROBLEM_NS, elementFormDefault="qualified"
    )
    problem = etree.SubElement(schema, _x("element"), name="problem")
    _annotate(problem, "RFC 9457 problem details of a refusal; `code` is stable, match on it")
    sequence = etree.SubElement(etree.SubElement(problem, _x("complexType")), _x("sequence"))
    for name, xsd_type in (
        ("code", "string"),
        ("status", "int"),
        ("title", "string"),
        ("detail", "string"),
        ("request_id", "string"),
    ):
        etree.SubElement(
            sequence, _x("element"), name=name, type=f"xs:{xsd_type}", minOccurs="0" if name == "request_id" else "1"
        )
    errors = etree.SubElement(sequence, _x("element"), name="error", minOccurs="0", maxOccurs="unbounded")
    _annotate(errors, "one invalid field, named by its path (params/uscc)")
    error_sequence = etree.SubElement(etree.SubElement(errors, _x("complexType")), _x("sequence"))
    for name in ("field", "message", "type"):
        etree.SubElement(error_sequence, _x("element"), name=name, type="xs:string")
    return schema


def service_schema(contract: ServiceContract) -> etree._Element:
    schema = etree.Element(
        _x("schema"),
        nsmap={"xs": XSD_NS, "tns": contract.namespace},
        targetNamespace=contract.namespace,
        elementFormDefault="qualified",
    )
    for shape in contract.operations.values():
        request = etree.SubElement(schema, _x("element"), name=shape.xml_name)
        sequence = etree.SubElement(etree.SubElement(request, _x("complexType")), _x("sequence"))
        purpose = etree.SubElement(sequence, _x("element"), name="purpose")
        _simple_type(purpose, PURPOSE)
        params_optional = not any(member.min_occurs for member in shape.params.members)
        etree.SubElement(
            sequence,
            _x("element"),
            name="params",
            type=f"tns:{shape.params.name}",
            minOccurs="0" if params_optional else "1",
        )
        response = etree.SubElement(schema, _x("element"), name=shape.xml_name + "Response")
        sequence = etree.SubElement(etree.SubElement(response, _x("complexType")), _x("sequence"))
        etree.SubElement(sequence, _x("element"), name="data", type=f"tns:{shape.data.name}")
        etree.SubElement(sequence, _x("element"), name="meta", type="tns:Meta")
    for complex_type in contract.types.values():
        schema.append(_complex_type(complex_type))
    return schema


def _complex_type(shape: Complex) -> etree._Element:
    node = etree.Element(_x("complexType"), name=shape.name)
    if shape.description:
        _annotate(node, shape.description)
    sequence = etree.SubElement(node, _x("choice" if shape.variants else "sequence"))
    for member in shape.members:
        element = etree.SubElement(sequence, _x("element"), name=member.xml_name)
        if member.min_occurs != 1:
            element.set("minOccurs", str(member.min_occurs))
        if member.max_occurs != "1":
            element.set("maxOccurs", member.max_occurs)
        if member.nillable:
            element.set("nillable", "true")
        if isinstance(member.shape, Complex):
            element.set("type", f"tns:{member.shape.name}")
        else:
            _simple_type(element, member.shape)
    return node


def _simple_type(element: etree._Element, shape: Simple) -> None:
    if shape.description:
        _annotate(element, shape.description)
    if not shape.restricted:
        element.set("type", f"xs:{shape.xsd_type}")
        return
    restriction = etree.SubElement(etree.SubElement(element, _x("simpleType")), _x("restriction"))
    restriction.set("base", f"xs:{shape.xsd_type}")
    for facet, value in shape.facets:
        etree.SubElement(restriction, _x(facet), value=value)


def _annotate(node: etree._Element, text: str) -> None:
    annotation = etree.Element(_x("annotation"))
    documentation = etree.SubElement(annotation, _x("documentation"))
    documentation.text = text
    node.insert(0, annotation)


def contracts_for(adapters: Mapping[str, Adapter]) -> dict[str, ServiceContract]:
    return {name: build_contract(name, adapter) for name, adapter in adapters.items()}
