"""A pre-rendered envelope and a direct reader for SOAP operations whose input and output are flat sequences of
simple elements: the same bytes and the same values as zeep, at a fraction of the CPU; anything else goes to zeep.

The envelope is learnt from zeep's own first rendering (its bytes split around the values, checked to give them back
exactly); an answer is read with lxml only when it is the plain shape, and zeep's element parsers convert each value.
Whatever is not plain (an attribute, xsi:nil, a missing or extra element, a fault, a DTD...) returns None, and the
caller takes zeep's path, which gives the answer or the error zeep gives.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import zeep
from lxml import etree

from .soap_types import Scalar, Struct, from_zeep, to_zeep

__all__ = ["FastPath", "fast_path"]

# Scalar kinds whose zeep value the fast reader hands to from_zeep unchanged in meaning (not a wildcard, not mixed).
_KINDS = frozenset({"string", "decimal", "integer", "boolean", "float", "date", "datetime", "time", "base64", "year"})


def _flat(body: Any, struct: Struct) -> list[Any] | None:
    """The zeep elements of a body element whose type is a sequence of single simple elements, in order, matching
    `struct`'s fields one for one; None when the body is anything else."""
    if not isinstance(body, zeep.xsd.Element) or not isinstance(body.type, zeep.xsd.ComplexType):
        return None
    xsd_type = body.type
    if xsd_type.attributes or not isinstance(xsd_type._element, zeep.xsd.Sequence):
        return None
    if struct.choices or struct.dropped or len(struct.fields) != len(xsd_type._element):
        return None
    elements = []
    for item, element in zip(struct.fields, xsd_type._element, strict=True):
        if not isinstance(element, zeep.xsd.Element) or isinstance(element, zeep.xsd.Any):
            return None
        if not isinstance(element.type, zeep.xsd.AnySimpleType) or element.max_occurs != 1:
            return None
        shape = item.shape
        if not isinstance(shape, Scalar) or shape.kind not in _KINDS or shape.item_list:
            return None
        if item.attribute or item.in_choice or item.repeated or item.zeep_name != element.attr_name:
            return None
        elements.append(element)
    return elements


def _text(value: str) -> str | None:
    """`value` escaped as lxml writes text, or None when lxml might write it otherwise (then zeep renders)."""
    if not value or not value.isprintable():  # \t \n \r, controls, surrogates, non-characters: zeep's path
        return None
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class FastPath:
    """The envelope and answer of one operation without zeep's per-call machinery (see the module's docstring)."""

    def __init__(
        self,
        envelope_ns: str,
        input_struct: Struct,
        inputs: list[Any],
        output_struct: Struct,
        output_tag: str,
        outputs: list[Any],
        schema: Any,
    ) -> None:
        self.envelope_ns = envelope_ns
        self.input_struct = input_struct
        self.inputs = [(element.attr_name, element.type) for element in inputs]
        self.output_struct = output_struct
        self.output_tag = output_tag
        self.outputs = [(element.qname.text, element.attr_name, element, element.min_occurs) for element in outputs]
        self.schema = schema
        self.pieces: list[bytes] | None = None  # the envelope around each value, learnt from zeep's first
        self.learnt = False
        # One parser for every answer: the settings of zeep's parse_xml (strict, no entities resolved, comments
        # dropped, libxml2's size limits kept), without building a parser per call. The event loop is its one user.
        # No xml:id index (collect_ids): nothing here looks elements up by id, and building it was a third of a parse.
        self.parser = etree.XMLParser(
            remove_comments=True, resolve_entities=False, recover=False, huge_tree=False, collect_ids=False
        )

    # --- the request ---------------------------------------------------------------------------------------------

    def _texts(self, data: Mapping[str, Any]) -> list[str] | None:
        kwargs = to_zeep(self.input_struct, data)
        if len(kwargs) != len(self.inputs):
            return None  # an absent optional value: zeep leaves its element out
        texts = []
        for name, xsd_type in self.inputs:
            value = kwargs.get(name)
            if value is None or value is zeep.xsd.Nil:
                return None
            texts.append(xsd_type.xmlvalue(value))
        return texts

    def envelope(self, data: Mapping[str, Any]) -> bytes | None:
        """The envelope for `data`, or None when zeep must render it (not learnt yet, or a value to be careful of)."""
        if self.pieces is None:
            return None
        texts = self._texts(data)
        if texts is None:
            return None
        pieces = self.pieces
        out = [pieces[0]]
        for index, text in enumerate(texts):
            escaped = _text(text) if isinstance(text, str) else None
            if escaped is None:
                return None
            out.append(escaped.encode())
            out.append(pieces[index + 1])
        return b"".join(out)

    def learn(self, data: Mapping[str, Any], rendered: bytes) -> None:
        """Take the envelope's template from zeep's rendering of `data`, once; kept only if filling it with the same
        values gives zeep's bytes exactly."""
        if self.learnt:
            return
        texts = self._texts(data)
        if texts is None or any(not isinstance(text, str) or _text(text) is None for text in texts):
            return  # learn from a plainer call
        self.learnt = True
        root = etree.fromstring(rendered, self.parser)
        body = root.find(f"{{{self.envelope_ns}}}Body")
        if body is None or len(body) != 1:
            return
        children = list(body[0])
        if len(children) != len(texts):
            return
        if any(child.text != text or len(child) for child, text in zip(children, texts, strict=True)):
            return
        if etree.tostring(root, xml_declaration=True, encoding="utf-8") != rendered:
            return  # zeep's bytes do not survive a round trip through lxml: not a template we can trust
        marker = "MSJX" + secrets.token_hex(8)
        if marker.encode() in rendered:
            return
        for index, child in enumerate(children):
            child.text = f"{marker}{index}{marker}"
        template = etree.tostring(root, xml_declaration=True, encoding="utf-8")
        pieces = [template]
        for index in range(len(texts)):
            head, _, tail = pieces[-1].partition(f"{marker}{index}{marker}".encode())
            pieces[-1:] = [head, tail]
        self.pieces = pieces
        if self.envelope(data) != rendered:
            self.pieces = None

    # --- the answer ----------------------------------------------------------------------------------------------

    def read(self, body: bytes) -> dict[str, Any] | None:
        """The output of a 200 answer, keyed by JSON names as zeep's path gives it; None when zeep must read it."""
        try:
            root = etree.fromstring(body, self.parser)
        except (etree.XMLSyntaxError, ValueError):
            return None
        if root.getroottree().docinfo.doctype or root.tag != f"{{{self.envelope_ns}}}Envelope":
            return None
        soap_body = root.find(f"{{{self.envelope_ns}}}Body")
        if soap_body is None or len(soap_body) != 1:
            return None
        wrapper = soap_body[0]
        if wrapper.tag != self.output_tag or wrapper.attrib:
            return None
        children = list(wrapper)
        values: dict[str, Any] = {}
        position = 0
        for tag, name, element, min_occurs in self.outputs:
            child = children[position] if position < len(children) else None
            if child is None or child.tag != tag:
                if min_occurs:
                    return None  # zeep says what is missing
                values[name] = None
                continue
            if child.attrib or len(child):
                return None  # xsi:nil, xsi:type, content: zeep's rules
            try:
                # No attribute, so no xsi:type: zeep's Element.parse would take the declared type's parser.
                values[name] = element.type.parse_xmlelement(child, self.schema)
            except (ValueError, TypeError, ArithmeticError, AttributeError, IndexError):
                return None  # a value its type refuses: zeep's path names it
            position += 1
        if position != len(children):
            return None  # an element the sequence does not have (or a processing instruction)
        try:
            return from_zeep(self.output_struct, values)
        except (ValueError, TypeError, ArithmeticError, AttributeError, IndexError):
            return None


def fast_path(
    envelope_ns: str, style: str, zeep_operation: Any, input_struct: Struct, output_struct: Struct, schema: Any
) -> FastPath | None:
    """A FastPath for a document/literal operation whose input and output bodies are flat sequences of simple
    elements; None for every other operation."""
    if style != "document" or zeep_operation.input is None or zeep_operation.output is None:
        return None
    input_body = zeep_operation.input.body
    output_body = zeep_operation.output.body
    if getattr(zeep_operation.input, "header", None) is not None and zeep_operation.input.header.type.elements:
        return None
    inputs = _flat(input_body, input_struct)
    outputs = _flat(output_body, output_struct)
    if inputs is None or outputs is None:
        return None
    return FastPath(envelope_ns, input_struct, inputs, output_struct, output_body.qname.text, outputs, schema)
