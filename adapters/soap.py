"""The SOAP engine: a WSDL bundle parsed once by zeep into typed operations; zeep builds and reads XML, HTTP carries.

Supports document/literal (wrapped and bare) and rpc/literal, SOAP 1.1 and 1.2, xsd:import/include and wsdl:import.
Refuses, at construction (so at registration, never at call time), what it cannot carry faithfully: rpc/encoded,
MTOM/XOP, SOAP with attachments, a required SOAP header whose values were not given at registration, and XSD
constructs without a JSON form (named). WS-Security toward the upstream: zeep's wsse (UsernameToken).
XML safety: no DTDs, no entities, no network while parsing, bounded answer sizes (HttpClient.max_body).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import zeep
from lxml import etree
from yarl import URL
from zeep import exceptions as zeep_errors
from zeep.loader import parse_xml
from zeep.wsdl.bindings.soap import Soap11Binding, Soap12Binding, SoapBinding

from schemas.problems import ProblemCode

from .contracts import ContractBundle, ContractError, parse_xml_document
from .errors import UpstreamError, UpstreamFault, UpstreamMalformed, UpstreamRejected
from .http import HttpClient, RawResponse, phrase
from .jsontypes import DerivedModel
from .soap_fast import FastPath, fast_path
from .soap_types import (
    BodyShape,
    EnumIndex,
    ModelFactory,
    UnsupportedConstruct,
    body_shape,
    from_zeep,
    new_walker,
    to_zeep,
)
from .soap_wellknown import well_known

__all__ = ["FaultInfo", "SoapEngine", "SoapOperation", "unsupported_constructs"]

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
_WSDL = "http://schemas.xmlsoap.org/wsdl/"
_SOAP_BINDINGS = ("http://schemas.xmlsoap.org/wsdl/soap/", "http://schemas.xmlsoap.org/wsdl/soap12/")
_MIME = "http://schemas.xmlsoap.org/wsdl/mime/"
_MTOM_POLICIES = (
    "http://schemas.xmlsoap.org/ws/2004/09/policy/optimizedmimeserialization",
    "http://www.w3.org/2007/08/soap12-mtom-policy",
)
_XOP = "http://www.w3.org/2004/08/xop/include"


def zeep_settings() -> zeep.Settings:
    # strict parsing (no recover mode), no DTD, no entities, libxml2's size limits kept (huge_tree off), and no
    # rewriting of locations: the bundle is looked up by exactly the locations gathered at registration.
    return zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, xml_huge_tree=False, force_https=False)


def unsupported_constructs(roots: Mapping[str, etree._Element]) -> list[str]:
    """What the contract uses that the gateway refuses, each named with where it is."""
    found: list[str] = []
    for location, root in roots.items():
        for binding in root.iter(f"{{{_WSDL}}}binding"):
            binding_name = binding.get("name", "?")
            for operation in binding.iter(f"{{{_WSDL}}}operation"):
                name = operation.get("name", "?")
                for namespace in _SOAP_BINDINGS:
                    for tag in ("body", "header", "fault", "headerfault"):
                        for node in operation.iter(f"{{{namespace}}}{tag}"):
                            if node.get("use") == "encoded":
                                found.append(
                                    f'rpc/encoded (soap:{tag} use="encoded") in operation {name} of binding '
                                    f"{binding_name} ({_short(location)})"
                                )
                for _node in operation.iter(f"{{{_MIME}}}multipartRelated"):
                    found.append(
                        f"SOAP with attachments (mime:multipartRelated) in operation {name} of binding {binding_name}"
                    )
        for namespace in _MTOM_POLICIES:
            for node in root.iter(f"{{{namespace}}}*"):
                found.append(f"MTOM ({etree.QName(node).localname} policy assertion) in {_short(location)}")
        for _node in root.iter(f"{{{_XOP}}}Include"):
            found.append(f"MTOM/XOP (xop:Include) in {_short(location)}")
    return sorted(set(found))


def _short(location: str) -> str:
    return location.rsplit("/", 1)[-1] or location


class BundleTransport(zeep.Transport):
    """zeep's loader reads documents from the bundle only: parsing a contract never touches the network or disk."""

    binding_classes: ClassVar[list[type]] = [Soap11Binding, Soap12Binding]  # HTTP GET/POST bindings are not offered

    def __init__(self, bundle: ContractBundle) -> None:  # no requests session: this transport never sends
        self.documents = bundle.documents
        self._close_session = False
        self.cache = None
        self.load_timeout = None
        self.operation_timeout = None

    def load(self, url: str) -> bytes:
        try:
            return self.documents[url]
        except KeyError:
            known = well_known(url)
            if known is not None:
                return known
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, f"the contract refers to {url}, which is not in it"
            ) from None

    def post_xml(self, address: str, envelope: Any, headers: Any) -> Any:
        raise RuntimeError("BundleTransport does not send; the SOAP engine carries messages over its HttpClient")


@dataclass(frozen=True)
class FaultInfo:
    """A SOAP Fault as the upstream sent it: code (with subcodes for 1.2), string, and its detail element."""

    code: str
    string: str
    receiver: bool
    detail: etree._Element | None
    http_status: int


FaultMapper = Callable[[FaultInfo], UpstreamError | None]


@dataclass
class SoapOperation:
    name: str
    summary: str
    version: str  # "1.1" or "1.2"
    style: str  # document or rpc
    address: str
    soap_action: str | None
    binding: SoapBinding
    zeep_operation: Any
    input: BodyShape
    output: BodyShape
    input_model: type[DerivedModel]
    output_model: type[DerivedModel]
    header_values: dict[str, Any] | None = None  # the SOAP header the upstream requires, as registered
    fast: FastPath | None = None  # flat simple input and output: envelope and answer without zeep per call

    @property
    def envelope_ns(self) -> str:
        return SOAP12_ENV if self.version == "1.2" else SOAP11_ENV

    def headers(self) -> dict[str, str]:
        action = self.soap_action or ""
        if self.version == "1.2":
            return {"Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"'}
        return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}

    @cached_property
    def request_headers(self) -> Mapping[str, str]:
        # The same for every call: built once.
        return MappingProxyType(self.headers())

    @cached_property
    def url(self) -> URL:
        # Parsed once: HttpClient takes a URL as it is, where a str is parsed on every request.
        return URL(self.address)


class SoapEngine:
    """One WSDL, parsed once: typed operations, and `call` to run one over HTTP.

    `endpoint` replaces every port's soap:address (when it has a path) or its scheme and host (when it has none:
    `http://127.0.0.1:9102` keeps the WSDL's path). `operations` restricts which operations are offered.
    """

    def __init__(
        self,
        service: str,
        bundle: ContractBundle,
        *,
        endpoint: str | None = None,
        http: HttpClient | None = None,
        fault_mapper: FaultMapper | None = None,
        soap_headers: Mapping[str, Mapping[str, Any]] | None = None,
        wsse: Any | None = None,
    ) -> None:
        if bundle.kind != "wsdl":
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{bundle.source}: not a WSDL bundle")
        started = time.perf_counter()
        self.service = service
        self.bundle = bundle
        self.http = http or HttpClient(service)
        self.fault_mapper = fault_mapper
        # Static values of the SOAP headers the upstream requires, by header part (from secrets: never logged), and
        # a zeep wsse signer (UsernameToken) applied to every envelope.
        self._soap_headers = dict(soap_headers or {})
        self._wsse = wsse
        roots = {location: parse_xml_document(location, content) for location, content in bundle.documents.items()}
        refused = unsupported_constructs(roots)
        if refused:
            raise ContractError(ProblemCode.CONTRACT_UNSUPPORTED, "not supported: " + "; ".join(refused))
        self.settings = zeep_settings()
        self.transport = BundleTransport(bundle)
        try:
            self.document = zeep.wsdl.Document(bundle.root, self.transport, settings=self.settings)
        except ContractError:
            raise
        except (zeep_errors.Error, LookupError, ValueError, KeyError, NotImplementedError) as exc:
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{bundle.source}: zeep cannot read it ({exc})") from None
        self.operations = self._operations(roots, endpoint)
        if not self.operations:
            raise ContractError(
                ProblemCode.CONTRACT_UNSUPPORTED, f"{bundle.source}: no SOAP 1.1 or 1.2 operation with an address"
            )
        self.build_seconds = time.perf_counter() - started

    def _operations(self, roots: Mapping[str, etree._Element], endpoint: str | None) -> dict[str, SoapOperation]:
        walker = new_walker(EnumIndex.from_documents(roots.values()), self.document.types)
        self._docs = _documentation(roots)
        factory = ModelFactory(self.service, enforce_facets=True)  # input models: facets refuse a call with 422
        self._outputs = ModelFactory(self.service)  # what the upstream answers is read as its contract types it
        operations: dict[str, SoapOperation] = {}
        port_types: dict[str, Any] = {}  # operation name → the portType it was taken from
        for service in self.document.services.values():
            for port in service.ports.values():
                binding = port.binding
                address = (port.binding_options or {}).get("address")
                if not isinstance(binding, SoapBinding) or not address:
                    continue
                version = "1.2" if isinstance(binding, Soap12Binding) else "1.1"
                port_type = getattr(binding.port_type, "name", None)
                for name, operation in binding._operations.items():
                    exposed = name
                    if name in operations:
                        if port_types[name] == port_type:  # the same operation on another port (its SOAP 1.2 twin)
                            continue
                        # Another portType's operation of the same name (a second service in the WSDL): offered
                        # under its port's name, never dropped.
                        exposed = next(
                            candidate
                            for candidate in (f"{port.name}.{name}", f"{service.name}.{port.name}.{name}")
                            if candidate not in operations
                        )
                    port_types[exposed] = port_type
                    operations[exposed] = self._operation(
                        exposed, operation, binding, version, _endpoint(address, endpoint), walker, factory, name
                    )
        return operations

    def _operation(
        self,
        name: str,
        operation: Any,
        binding: SoapBinding,
        version: str,
        address: str,
        walker: Any,
        factory: ModelFactory,
        wsdl_name: str | None = None,
    ) -> SoapOperation:
        wsdl_name = wsdl_name or name
        where = f"operation {name}"
        header = getattr(operation.input, "header", None)
        header_values: dict[str, Any] | None = None
        if header is not None and header.type.elements:
            parts = [item for item, _ in header.type.elements]
            missing = [part for part in parts if part not in self._soap_headers]
            if missing:
                raise ContractError(
                    ProblemCode.CONTRACT_UNSUPPORTED,
                    f"not supported: a SOAP header ({', '.join(missing)}) in the input of {where} without its values:"
                    " give them at registration (soap_headers, values from secrets)",
                )
            header_values = _header_values(header, {part: self._soap_headers[part] for part in parts}, where)
        try:
            input_shape = body_shape(operation.input.body if operation.input else None, walker, f"{where} input")
            output_shape = body_shape(operation.output.body if operation.output else None, walker, f"{where} output")
        except UnsupportedConstruct as exc:
            raise ContractError(ProblemCode.CONTRACT_UNSUPPORTED, f"not supported: {exc}") from None
        style = operation.style or binding.default_style
        summary = self._docs.get(wsdl_name) or f"{wsdl_name} ({style}/literal, SOAP {version})"
        prefix = f"{self.service}.{name}"
        envelope_ns = SOAP12_ENV if version == "1.2" else SOAP11_ENV
        fast = None
        if header_values is None and self._wsse is None:  # a signed or headed envelope is zeep's to render
            fast = fast_path(
                envelope_ns, style, operation, input_shape.struct, output_shape.struct, self.document.types
            )
        return SoapOperation(
            name=name,
            summary=summary,
            version=version,
            style=style,
            address=address,
            soap_action=operation.soapaction,
            binding=binding,
            zeep_operation=operation,
            input=input_shape,
            output=output_shape,
            input_model=factory.model(input_shape.struct, f"{prefix}.input", f"Input of {name}"),
            output_model=self._outputs.model(output_shape.struct, f"{prefix}.output", f"Output of {name}"),
            header_values=header_values,
            fast=fast,
        )

    # --- calling --------------------------------------------------------------------------------------------------

    def envelope(self, operation: SoapOperation, data: Mapping[str, Any]) -> bytes:
        """The request envelope for input `data` (a model dump: python values, keyed by JSON names)."""
        fast = operation.fast
        if fast is not None:
            body = fast.envelope(data)
            if body is not None:
                return body
        body = self.zeep_envelope(operation, data)
        if fast is not None and not fast.learnt:
            fast.learn(data, body)
        return body

    def zeep_envelope(self, operation: SoapOperation, data: Mapping[str, Any]) -> bytes:
        """The request envelope as zeep renders it (the fast path's reference)."""
        kwargs = to_zeep(operation.input.struct, data)
        if operation.header_values is not None:
            kwargs["_soapheaders"] = operation.header_values
        message = operation.zeep_operation.input
        if operation.input.complex_body:
            serialized = message.serialize(**kwargs)
        else:
            (value,) = [value for name, value in kwargs.items() if name != "_soapheaders"] or (None,)
            headers = {"_soapheaders": kwargs["_soapheaders"]} if "_soapheaders" in kwargs else {}
            serialized = message.serialize(value, **headers)
        content = serialized.content
        if self._wsse is not None:
            content, _ = self._wsse.apply(content, {})
        return etree.tostring(content, xml_declaration=True, encoding="utf-8")

    async def call(self, operation_name: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Run one operation: returns (output keyed by JSON names, upstream status) or raises an UpstreamError."""
        operation = self.operations[operation_name]
        body = self.envelope(operation, data)
        response = await self.http.request("POST", operation.url, data=body, headers=operation.request_headers)
        return self.read(operation, response), str(response.status)

    def read(self, operation: SoapOperation, response: RawResponse) -> dict[str, Any]:
        fast = operation.fast
        if fast is not None and response.status == 200 and "multipart/related" not in response.content_type.lower():
            output = fast.read(response.body)
            if output is not None:
                return output
        return self.zeep_read(operation, response)

    def zeep_read(self, operation: SoapOperation, response: RawResponse) -> dict[str, Any]:
        """The answer read by zeep: every shape, every fault and error (the fast path's reference)."""
        status = response.status
        if not response.body.strip():
            if status in (200, 202) and operation.zeep_operation.output is None:
                return {}
            raise (
                UpstreamRejected(self.service, str(status), phrase(status))
                if status >= 400
                else UpstreamMalformed(self.service, "an empty answer", str(status))
            )
        if "multipart/related" in response.content_type.lower():
            raise UpstreamMalformed(self.service, "a multipart (MTOM/attachments) answer is not accepted", str(status))
        try:
            document = parse_xml(response.body, self.transport, settings=self.settings)
        except zeep_errors.DTDForbidden:
            raise UpstreamMalformed(self.service, "the answer carries a DTD", str(status)) from None
        except zeep_errors.EntitiesForbidden:
            raise UpstreamMalformed(self.service, "the answer declares entities", str(status)) from None
        except zeep_errors.XMLSyntaxError:
            if status >= 400:  # an HTML error page, not a SOAP answer
                raise UpstreamRejected(self.service, str(status), phrase(status)) from None
            raise UpstreamMalformed(self.service, "the answer is not well-formed XML", str(status)) from None
        envelope_ns = operation.envelope_ns
        if document.tag != f"{{{envelope_ns}}}Envelope":
            if status >= 400:
                raise UpstreamRejected(self.service, str(status), phrase(status))
            raise UpstreamMalformed(self.service, f"the answer is not a SOAP {operation.version} envelope", str(status))
        body = document.find(f"{{{envelope_ns}}}Body")
        if body is None:
            raise UpstreamMalformed(self.service, "the envelope has no Body", str(status))
        fault = body.find(f"{{{envelope_ns}}}Fault")
        if fault is not None:
            raise self._fault(_fault_info(fault, operation.version, status))
        if status != 200:
            raise UpstreamRejected(self.service, str(status), phrase(status))
        message = operation.zeep_operation.output
        if message is None or message.body is None:
            return {}
        if not len(body):
            raise UpstreamMalformed(self.service, "the Body is empty", str(status))
        try:
            parsed = message._deserialize_body(body)["body"]
            output = operation.output
            if output.complex_body:
                return from_zeep(output.struct, parsed)
        except (zeep_errors.Error, ValueError, ArithmeticError, TypeError, AttributeError, IndexError) as exc:
            # BodyMismatch is a ValueError: an xsi:type outside the declared family, an abstract one unnamed
            raise UpstreamMalformed(self.service, f"the Body does not match the WSDL ({exc})", str(status)) from None
        return {output.struct.fields[0].json_name: parsed}

    def _fault(self, info: FaultInfo) -> UpstreamError:
        if self.fault_mapper is not None:
            mapped = self.fault_mapper(info)
            if mapped is not None:
                return mapped
        return UpstreamFault(self.service, info.code, info.string, receiver=info.receiver)


def _header_values(header: Any, values: Mapping[str, Mapping[str, Any]], where: str) -> dict[str, Any]:
    """The registered header values as zeep takes them, each rendered once now: a field the header does not have,
    a value its type refuses or a required one left out is refused at registration, naming the part, never a
    failed envelope at call time. A header part of a simple type (Hoover's API-KEY) is given as PART.value."""
    elements = dict(header.type.elements)
    result: dict[str, Any] = {}
    for part, fields in values.items():
        element = elements[part]
        try:
            if isinstance(element.type, zeep.xsd.ComplexType):
                children = dict(element.type.elements)
                for name, given in fields.items():  # zeep writes what it is given: its parser is the check
                    child = children.get(name)
                    if child is not None and isinstance(child.type, zeep.xsd.AnySimpleType):
                        child.type.pythonvalue(str(given))
                value: Any = dict(fields)
                element.render(etree.Element("Header"), element(**fields))
            else:
                if set(fields) != {"value"}:
                    raise ValueError(f"{part} is a single value of type {element.type.name}: give it as {part}.value")
                value = str(fields["value"])
                element.type.pythonvalue(value)
                element.render(etree.Element("Header"), value)
            result[part] = value
        except (TypeError, ValueError, ArithmeticError, zeep_errors.Error) as exc:
            message = getattr(exc, "message", None) or str(exc)
            for given in fields.values():  # a parser's message may quote the value: a secret never leaves
                if str(given):
                    message = message.replace(str(given), "[value]")
            raise ContractError(
                ProblemCode.CONTRACT_INVALID,
                f"the SOAP header {part} of {where} does not take the values given (soap_headers): {message}",
            ) from None
    return result


def _fault_info(fault: etree._Element, version: str, status: int) -> FaultInfo:
    if version == "1.2":
        codes = [node.text or "" for node in fault.iter(f"{{{SOAP12_ENV}}}Value")]
        code = "/".join(_local(value) for value in codes if value)
        string = fault.findtext(f"{{{SOAP12_ENV}}}Reason/{{{SOAP12_ENV}}}Text") or ""
        detail = fault.find(f"{{{SOAP12_ENV}}}Detail")
        receiver = bool(codes) and _local(codes[0]) == "Receiver"
    else:
        code = _local(fault.findtext("faultcode") or "")
        string = fault.findtext("faultstring") or ""
        detail = fault.find("detail")
        receiver = code.split(".")[0] == "Server"
    return FaultInfo(code or "unknown", string, receiver, detail, status)


def _local(value: str) -> str:
    # "soap:Server" → "Server": prefixes are the sender's choice, the local name is the code.
    return value.strip().rpartition(":")[2]


def _endpoint(address: str, override: str | None) -> str:
    if not override:
        return address
    parts = urlsplit(override)
    if parts.path not in ("", "/"):
        return override
    original = urlsplit(address)
    return parts._replace(path=original.path, query=original.query).geturl()


def _documentation(roots: Mapping[str, etree._Element]) -> dict[str, str]:
    """wsdl:documentation of each portType operation, by operation name (zeep does not keep it)."""
    found: dict[str, str] = {}
    for root in roots.values():
        for port_type in root.iter(f"{{{_WSDL}}}portType"):
            for operation in port_type.findall(f"{{{_WSDL}}}operation"):
                text = operation.findtext(f"{{{_WSDL}}}documentation")
                if text and text.strip():
                    found.setdefault(operation.get("name", ""), " ".join(text.split()))
    return found
