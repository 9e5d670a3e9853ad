"""XSD types (as zeep resolved them) → JSON shapes → pydantic models, and values both ways between JSON and zeep.

A `Struct` is the JSON view of a complex type: its elements and attributes as fields, `choice` groups, repeated
and optional elements, nested types. Enumerations are read from the schema documents themselves (zeep drops
facets). Anything without a faithful JSON form is refused here, at registration, with the construct named.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from lxml import etree
from pydantic import AfterValidator, ConfigDict, Field, StrictBool, create_model
from zeep import xsd
from zeep.xsd.elements import Any as XsdAny
from zeep.xsd.elements import Choice, Group, Sequence
from zeep.xsd.elements.indicators import All
from zeep.xsd.types import builtins as b
from zeep.xsd.types.any import AnyType
from zeep.xsd.types.builtins import _unparse_timezone
from zeep.xsd.types.collection import ListType, UnionType

from schemas.errors import MsjxError

from .jsontypes import Base64, DecimalText, DerivedModel, choice_schema

__all__ = [
    "EnumIndex",
    "Scalar",
    "Struct",
    "StructField",
    "UnsupportedConstruct",
    "body_shape",
    "from_zeep",
    "model_for",
    "to_zeep",
]

XSD_NS = "http://www.w3.org/2001/XMLSchema"
_X = f"{{{XSD_NS}}}"


class UnsupportedConstruct(MsjxError, ValueError):
    """The contract uses something the gateway cannot translate faithfully; the message names it and where."""


# --- enumerations, read from the documents ----------------------------------------------------------------------


def _qname(prefixed: str, node: etree._Element, tns: str | None) -> str:
    prefix, _, local = prefixed.rpartition(":")
    namespace = node.nsmap.get(prefix or None, tns if not prefix else None)
    return f"{{{namespace}}}{local}" if namespace else local


@dataclass
class EnumIndex:
    """Enumeration facets by named simple type, and by (owner type, element|attribute, name) for anonymous ones.

    zeep names an anonymous type after its element, in the schema's target namespace; owners here follow the same
    convention, so the walker can look a field up by where it stands.
    """

    named: dict[str, tuple[str, ...]] = field(default_factory=dict)
    local: dict[tuple[str | None, str, str], tuple[str, ...]] = field(default_factory=dict)
    # Every other facet (pattern, length, ranges, digits), through the restriction chain; see Facets.
    named_facets: dict[str, Facets] = field(default_factory=dict)
    local_facets: dict[tuple[str | None, str, str], Facets] = field(default_factory=dict)
    # What zeep does not model: complex types declared abstract (an instance names its type with xsi:type), and
    # elements others substitute for (substitution groups). An element of either is refused, named.
    abstract_types: set[str] = field(default_factory=set)
    substitution_heads: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_documents(cls, roots: Iterable[etree._Element]) -> EnumIndex:
        raw_named: dict[str, _Raw] = {}
        raw_local: dict[tuple[str | None, str, str], _Raw] = {}
        abstract: set[str] = set()
        heads: dict[str, list[str]] = {}
        for root in roots:
            schemas = [root] if root.tag == _X + "schema" else list(root.iter(_X + "schema"))
            for schema in schemas:
                tns = schema.get("targetNamespace")
                for complex_type in schema.iter(_X + "complexType"):
                    if complex_type.get("abstract") in ("true", "1") and complex_type.get("name"):
                        name = complex_type.get("name", "")
                        abstract.add(f"{{{tns}}}{name}" if tns else name)
                for element in schema.iter(_X + "element"):
                    head = element.get("substitutionGroup")
                    if head:
                        heads.setdefault(_qname(head, element, tns), []).append(element.get("name", "?"))
                for simple in schema.iter(_X + "simpleType"):
                    facets = _facets(simple, tns)
                    if facets is None:
                        continue
                    name = simple.get("name")
                    if name is not None:
                        raw_named[f"{{{tns}}}{name}" if tns else name] = facets
                        continue
                    parent = simple.getparent()
                    if parent is None or parent.tag not in (_X + "element", _X + "attribute") or not parent.get("name"):
                        continue
                    kind = "attribute" if parent.tag == _X + "attribute" else "element"
                    raw_local[(_owner(parent, tns), kind, parent.get("name", ""))] = facets
        index = cls(abstract_types=abstract, substitution_heads=heads)
        for qname in raw_named:
            values = _resolve(qname, raw_named, set())
            if values:
                index.named[qname] = values
            facets = _resolve_facets(qname, raw_named, set())
            if facets:
                index.named_facets[qname] = facets
        for key, raw in raw_local.items():
            values, base = raw.values, raw.base
            resolved = values or (_resolve(base, raw_named, set()) if base else ())
            if resolved:
                index.local[key] = resolved
            facets = (_resolve_facets(base, raw_named, set()) if base else ()) + raw.facets
            if facets:
                index.local_facets[key] = facets
        return index

    def lookup(self, owner: str | None, kind: str, name: str, type_qname: str | None) -> tuple[str, ...] | None:
        found = self.local.get((owner, kind, name))
        if found is None and type_qname is not None:
            found = self.named.get(type_qname)
        return found

    def lookup_facets(self, owner: str | None, kind: str, name: str, type_qname: str | None) -> Facets:
        found = self.local_facets.get((owner, kind, name))
        if found is None and type_qname is not None:
            found = self.named_facets.get(type_qname)
        return found or ()


# (facet, value) pairs, base type's first; every pattern of each derivation step must match (XSD 1.0 §4.3.4).
Facets = tuple[tuple[str, str], ...]
_CHECKED_FACETS = (
    "pattern",
    "length",
    "minLength",
    "maxLength",
    "minInclusive",
    "maxInclusive",
    "minExclusive",
    "maxExclusive",
    "totalDigits",
    "fractionDigits",
)


@dataclass(frozen=True)
class _Raw:
    values: tuple[str, ...]
    base: str | None
    facets: Facets


def _facets(simple: etree._Element, tns: str | None) -> _Raw | None:
    restriction = simple.find(_X + "restriction")
    if restriction is None:
        return None
    values = tuple(node.get("value", "") for node in restriction.findall(_X + "enumeration"))
    base = restriction.get("base")
    patterns = [node.get("value", "") for node in restriction.findall(_X + "pattern")]
    facets: list[tuple[str, str]] = []
    if patterns:  # the patterns of one step are alternatives
        facets.append(("pattern", "|".join(f"(?:{pattern})" for pattern in patterns)))
    for name in _CHECKED_FACETS[1:]:
        node = restriction.find(_X + name)
        if node is not None and node.get("value") is not None:
            facets.append((name, node.get("value", "")))
    return _Raw(values, _qname(base, restriction, tns) if base else None, tuple(facets))


def _resolve(qname: str, raw: Mapping[str, _Raw], seen: set[str]) -> tuple[str, ...]:
    if qname in seen or qname not in raw:
        return ()
    seen.add(qname)
    entry = raw[qname]
    if entry.values:
        return entry.values
    return _resolve(entry.base, raw, seen) if entry.base else ()


def _resolve_facets(qname: str, raw: Mapping[str, _Raw], seen: set[str]) -> Facets:
    if qname in seen or qname not in raw:
        return ()
    seen.add(qname)
    entry = raw[qname]
    inherited = _resolve_facets(entry.base, raw, seen) if entry.base else ()
    return inherited + entry.facets


def _owner(node: etree._Element, tns: str | None) -> str | None:
    """The zeep qname of the complex type a local element or attribute belongs to; None for a global one."""
    ancestor = node.getparent()
    while ancestor is not None and ancestor.tag != _X + "schema":
        if ancestor.tag == _X + "complexType":
            name = ancestor.get("name")
            if name is None:
                holder = ancestor.getparent()
                name = holder.get("name") if holder is not None else None
            if name is None:
                return None
            return f"{{{tns}}}{name}" if tns else name
        ancestor = ancestor.getparent()
    return None


# --- shapes ------------------------------------------------------------------------------------------------------

ScalarKind = Literal[
    "string", "decimal", "integer", "boolean", "float", "date", "datetime", "time", "base64", "year", "lexical", "any"
]


@dataclass(frozen=True)
class Scalar:
    kind: ScalarKind
    xsd_name: str
    enum: tuple[Any, ...] | None = None
    ge: int | None = None
    le: int | None = None
    item_list: bool = False  # xsd:list of this scalar: a JSON array, space-separated in XML
    facets: Facets = ()
    # kind "lexical": the zeep type whose lexical form the JSON string is (duration, gMonth…, QName, a union)
    codec: Any = field(default=None, compare=False, hash=False)


@dataclass
class StructField:
    json_name: str
    zeep_name: str
    shape: Scalar | Struct
    min_occurs: int = 1
    max_occurs: int | None = 1  # None: unbounded
    nillable: bool = False
    attribute: bool = False
    in_choice: bool = False

    @property
    def repeated(self) -> bool:
        return self.max_occurs is None or self.max_occurs > 1

    @property
    def optional(self) -> bool:
        return self.min_occurs == 0 or self.nillable or self.in_choice


@dataclass
class Struct:
    name: str
    fields: list[StructField] = field(default_factory=list)
    choices: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # optional xsd:any / anyType content that is not carried


_INT_BOUNDS: tuple[tuple[type, int | None, int | None], ...] = (
    (b.UnsignedByte, 0, 255),
    (b.UnsignedShort, 0, 65535),
    (b.UnsignedInt, 0, 2**32 - 1),
    (b.UnsignedLong, 0, 2**64 - 1),
    (b.PositiveInteger, 1, None),
    (b.NonNegativeInteger, 0, None),
    (b.Byte, -128, 127),
    (b.Short, -32768, 32767),
    (b.Int, -(2**31), 2**31 - 1),
    (b.Long, -(2**63), 2**63 - 1),
    (b.NegativeInteger, None, -1),
    (b.NonPositiveInteger, None, 0),
    (b.Integer, None, None),
)
_SIMPLE: tuple[tuple[type, ScalarKind], ...] = (
    (b.Boolean, "boolean"),
    (b.Decimal, "decimal"),
    (b.Float, "float"),
    (b.Double, "float"),
    (b.DateTime, "datetime"),
    (b.Date, "date"),
    (b.Time, "time"),
    (b.Base64Binary, "base64"),
    (b.gYear, "year"),
    (b.String, "string"),
    (b.AnyURI, "string"),
    (b.HexBinary, "string"),
)
# Carried as their XSD lexical form in a JSON string, checked by zeep's own parser on input.
_LEXICAL = {
    b.Duration: "xsd:duration",
    b.gYearMonth: "xsd:gYearMonth",
    b.gMonthDay: "xsd:gMonthDay",
    b.gDay: "xsd:gDay",
    b.gMonth: "xsd:gMonth",
    b.QName: "xsd:QName",
    b.Notation: "xsd:NOTATION",
}


def _type_qname(xsd_type: Any) -> str | None:
    qname = getattr(xsd_type, "qname", None)
    return qname.text if isinstance(qname, etree.QName) else (str(qname) if qname else None)


class _Walker:
    """Turns zeep types into shapes; one per contract so that a complex type becomes one shape, reused."""

    def __init__(self, enums: EnumIndex) -> None:
        self.enums = enums
        self._structs: dict[int, Struct] = {}
        self._stack: list[int] = []
        self._building: dict[int, Struct] = {}
        self._names: dict[str, int] = {}

    def scalar(self, xsd_type: Any, where: str, owner: str | None, kind: str, name: str) -> Scalar:
        if isinstance(xsd_type, UnionType):
            # A union's value is the lexical form of one of its members: zeep tries each when it parses.
            return Scalar("lexical", "xsd:union", codec=xsd_type)
        if isinstance(xsd_type, ListType):
            item = self.scalar(xsd_type.item_type, where, owner, kind, name)
            return Scalar(
                item.kind,
                item.xsd_name,
                item.enum,
                item.ge,
                item.le,
                item_list=True,
                facets=item.facets,
                codec=item.codec,
            )
        type_qname = _type_qname(xsd_type)
        facets = self.enums.lookup_facets(owner, kind, name, type_qname)
        for lexical, label in _LEXICAL.items():
            if isinstance(xsd_type, lexical):
                return Scalar("lexical", label, facets=facets, codec=xsd_type)
        enum = self.enums.lookup(owner, kind, name, type_qname)
        for cls, low, high in _INT_BOUNDS:
            if isinstance(xsd_type, cls):
                values = tuple(int(value) for value in enum) if enum else None
                return Scalar("integer", _xsd_label(cls), values, low, high, facets=facets)
        for cls, scalar_kind in _SIMPLE:
            if isinstance(xsd_type, cls):
                if enum and scalar_kind != "string":
                    raise UnsupportedConstruct(f"an enumeration of {_xsd_label(cls)} at {where}")
                return Scalar(scalar_kind, _xsd_label(cls), enum or None, facets=facets)
        if isinstance(xsd_type, b.AnySimpleType) or type(xsd_type).__name__ == "AnySimpleType":
            return Scalar("string", "xsd:anySimpleType", enum or None, facets=facets)
        raise UnsupportedConstruct(f"type {_type_qname(xsd_type) or type(xsd_type).__name__} at {where}")

    def struct(self, xsd_type: xsd.ComplexType, where: str) -> Struct:
        key = id(xsd_type)
        if key in self._structs:
            return self._structs[key]
        if key in self._building:  # a recursive type: the struct being built is its own member's shape
            return self._building[key]
        self._stack.append(key)
        try:
            struct = Struct(self._unique_name(xsd_type))
            self._building[key] = struct
            owner = _type_qname(xsd_type)
            counters = {"choice": itertools.count(1), "group": itertools.count(1)}
            for name, element in xsd_type.elements_nested:
                # The top container of a complex type is inline unless it repeats.
                self._container_or_element(struct, name, element, owner, where, counters)
            element_names = {f.json_name for f in struct.fields}
            for name, attribute in xsd_type.attributes:
                if isinstance(attribute, xsd.AnyAttribute):
                    continue
                attr_name = attribute.name or name
                json_name = name if attr_name in element_names else attr_name
                shape = self.scalar(attribute.type, f"{where}/@{attr_name}", owner, "attribute", attr_name)
                required = bool(getattr(attribute, "required", False))
                struct.fields.append(
                    StructField(json_name, name, shape, min_occurs=1 if required else 0, attribute=True)
                )
            self._structs[key] = struct
            return struct
        finally:
            self._stack.pop()
            self._building.pop(key, None)

    def _unique_name(self, xsd_type: Any) -> str:
        qname = getattr(xsd_type, "qname", None)
        base = qname.localname if isinstance(qname, etree.QName) else (getattr(xsd_type, "name", None) or "Type")
        base = "".join(ch if ch.isalnum() else "_" for ch in str(base)) or "Type"
        count = self._names.get(base, 0) + 1
        self._names[base] = count
        return base if count == 1 else f"{base}{count}"

    def _container_or_element(
        self,
        struct: Struct,
        name: str | None,
        element: Any,
        owner: str | None,
        where: str,
        counters: dict[str, itertools.count[int]],
        optional: bool = False,
        in_choice: bool = False,
    ) -> None:
        if isinstance(element, xsd.Element):
            struct.fields.append(
                self.element_field(element, name or element.attr_name, owner, where, optional, in_choice)
            )
            return
        if isinstance(element, XsdAny):
            label = f"xsd:any at {where}"
            if element.min_occurs and not optional:
                raise UnsupportedConstruct(f"a required {label}")
            struct.dropped.append(label)
            return
        if isinstance(element, Choice | Sequence | All | Group):
            if element.accepts_multiple:
                self._repeated_container(struct, name, element, owner, where, counters)
                return
            group_optional = optional or getattr(element, "min_occurs", 1) == 0
            if isinstance(element, Choice):
                members_before = len(struct.fields)
                for sub_name, sub in element.elements_nested:
                    self._container_or_element(
                        struct, sub_name, sub, owner, where, counters, optional=True, in_choice=True
                    )
                members = tuple(f.json_name for f in struct.fields[members_before:])
                if members:
                    struct.choices.append((members, not group_optional))
                return
            children = element.child.elements_nested if isinstance(element, Group) else element.elements_nested
            for sub_name, sub in children:
                self._container_or_element(
                    struct, sub_name, sub, owner, where, counters, optional=group_optional, in_choice=in_choice
                )
            return
        raise UnsupportedConstruct(f"{type(element).__name__} at {where}")

    def _repeated_container(
        self,
        struct: Struct,
        name: str | None,
        container: Any,
        owner: str | None,
        where: str,
        counters: dict[str, itertools.count[int]],
    ) -> None:
        kind = "choice" if isinstance(container, Choice) else "group"
        json_name = f"{kind}{next(counters[kind])}"
        inner = Struct(f"{struct.name}_{json_name}")
        if isinstance(container, Choice):
            for sub_name, sub in container.elements_nested:
                self._container_or_element(inner, sub_name, sub, owner, where, counters, optional=True, in_choice=True)
            members = tuple(f.json_name for f in inner.fields)
            inner.choices.append((members, True))
        else:
            children = container.child.elements_nested if isinstance(container, Group) else container.elements_nested
            for sub_name, sub in children:
                self._container_or_element(inner, sub_name, sub, owner, where, counters)
        max_occurs = None if container.max_occurs == "unbounded" else int(container.max_occurs)
        struct.fields.append(
            StructField(
                json_name, name or json_name, inner, min_occurs=int(container.min_occurs), max_occurs=max_occurs
            )
        )

    def element_field(
        self,
        element: xsd.Element,
        zeep_name: str,
        owner: str | None,
        where: str,
        optional: bool = False,
        in_choice: bool = False,
    ) -> StructField:
        local = element.qname.localname if isinstance(element.qname, etree.QName) else element.name
        here = f"{where}/{local}"
        xsd_type = element.type
        element_qname = element.qname.text if isinstance(element.qname, etree.QName) else None
        if element_qname in self.enums.substitution_heads:
            members = ", ".join(sorted(self.enums.substitution_heads[element_qname]))
            raise UnsupportedConstruct(f"a substitution group (head {element_qname}; members {members}) at {here}")
        if _type_qname(xsd_type) in self.enums.abstract_types:
            raise UnsupportedConstruct(
                f"an element of the abstract type {_type_qname(xsd_type)} (instances name their type with xsi:type)"
                f" at {here}"
            )
        if isinstance(xsd_type, xsd.ComplexType):
            # Simple content (text plus attributes) is a struct too: {"value": ..., "attribute": ...}.
            shape: Scalar | Struct = self.struct(xsd_type, here)
        elif isinstance(xsd_type, AnyType) and not isinstance(xsd_type, b.AnySimpleType):
            shape = Scalar("any", "xsd:anyType")  # carried as JSON: its text, or its elements as an object
        else:
            shape = self.scalar(xsd_type, here, owner, "element", local)
        max_occurs = None if element.max_occurs == "unbounded" else int(element.max_occurs)
        min_occurs = 0 if optional else int(element.min_occurs)
        json_name = "value" if zeep_name == "_value_1" else zeep_name
        return StructField(
            json_name,
            zeep_name,
            shape,
            min_occurs=min_occurs,
            max_occurs=max_occurs,
            nillable=bool(element.nillable),
            in_choice=in_choice,
        )


def _xsd_label(cls: type) -> str:
    qname = getattr(cls, "_default_qname", None)
    return "xsd:" + etree.QName(qname).localname if qname else cls.__name__


@dataclass
class BodyShape:
    """The JSON view of one SOAP message body: a struct of fields (complex body) or one scalar field."""

    struct: Struct
    complex_body: bool  # False: the body is one element of a simple type, passed positionally to zeep


def body_shape(body: xsd.Element | None, walker: _Walker, where: str) -> BodyShape:
    if body is None:
        return BodyShape(Struct("Empty"), True)
    if isinstance(body.type, xsd.ComplexType):
        return BodyShape(walker.struct(body.type, where), True)
    field_ = walker.element_field(body, body.attr_name or body.name, None, where)
    return BodyShape(Struct(body.name or "Body", [field_]), False)


def new_walker(enums: EnumIndex) -> _Walker:
    return _Walker(enums)


# --- pydantic models ---------------------------------------------------------------------------------------------

_PYTHON: dict[str, Any] = {
    "string": str,
    "decimal": DecimalText,
    "boolean": StrictBool,
    "float": float,
    "date": dt.date,
    "datetime": dt.datetime,
    "time": dt.time,
    "base64": Base64,
    "year": int,
}


def _scalar_type(scalar: Scalar, enforce_facets: bool = False) -> Any:
    if scalar.enum:
        base: Any = Literal[scalar.enum]  # type: ignore[valid-type]
    elif scalar.kind == "integer":
        base = int
    elif scalar.kind == "lexical":
        base = Annotated[str, AfterValidator(_lexical_check(scalar))]
    elif scalar.kind == "any":
        base = Annotated[Any, AfterValidator(_any_check)]
    else:
        base = _PYTHON[scalar.kind]
    if enforce_facets and scalar.facets:
        base = Annotated[base, AfterValidator(_facet_check(scalar))]
    return list[base] if scalar.item_list else base  # type: ignore[valid-type]


def _any_check(value: Any) -> Any:
    # An xsd:anyType value goes to the upstream as the element's text; a structure has no one XML form to take.
    if value is not None and not isinstance(value, str | int | float | Decimal | bool):
        raise ValueError("an xsd:anyType value is sent as text: a string, number or boolean")
    return value


def any_to_json(raw: Any) -> Any:
    """What zeep read for an xsd:anyType element, as JSON: text as it is, elements as an object by local name
    (repeated names as arrays, attributes as "@name"), a value of a known xsi:type as its fields."""
    if raw is None or isinstance(raw, str | int | float | bool | Decimal):
        return raw
    if isinstance(raw, etree._Element):
        return _element_json(raw)
    if isinstance(raw, list):
        return _children_json([node for node in raw if isinstance(node, etree._Element)])
    values = getattr(raw, "__values__", None)
    if isinstance(values, Mapping):
        return {name: any_to_json(value) for name, value in values.items()}
    if isinstance(raw, dt.date | dt.time):
        return raw.isoformat()
    return str(raw)


def _element_json(node: etree._Element) -> Any:
    children = [child for child in node if isinstance(child.tag, str)]
    attributes = {f"@{etree.QName(name).localname}": value for name, value in node.attrib.items()}
    if not children and not attributes:
        return node.text
    result: dict[str, Any] = {**attributes, **_children_json(children)}
    if node.text and node.text.strip():
        result["#text"] = node.text
    return result


def _children_json(children: list[etree._Element]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for child in children:
        name = etree.QName(child).localname
        value = _element_json(child)
        if name in result:
            existing = result[name]
            result[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[name] = value
    return result


def _lexical_check(scalar: Scalar) -> Any:
    def check(value: str) -> str:
        try:
            scalar.codec.pythonvalue(value)
        except Exception:  # zeep's parsers raise what they raise; any failure means "not this type"
            raise ValueError(f"not a valid {scalar.xsd_name} value") from None
        return value

    return check


# XSD regex constructs Python's re has no equivalent for: such a pattern is left to the upstream to enforce.
_UNTRANSLATABLE = re.compile(r"\\[icIC]|\\p\{Is|\\P\{Is|-\[")


def _python_pattern(pattern: str) -> re.Pattern[str] | None:
    if _UNTRANSLATABLE.search(pattern):
        return None
    try:
        return re.compile(f"(?:{pattern})")  # XSD patterns match the whole value: used with fullmatch
    except re.error:
        return None


def _facet_check(scalar: Scalar) -> Any:
    """A validator enforcing the XSD facets pydantic has no field option for, with messages naming the facet."""
    patterns = [(text, _python_pattern(text)) for name, text in scalar.facets if name == "pattern"]
    bounds = [(name, value) for name, value in scalar.facets if name != "pattern"]

    def check(value: Any) -> Any:
        text = format(value, "f") if isinstance(value, Decimal) else str(value)
        for source, compiled in patterns:
            if compiled is not None and isinstance(value, str | int | Decimal) and not compiled.fullmatch(text):
                raise ValueError(f"does not match the pattern {source}")
        for name, limit in bounds:
            _check_bound(name, limit, value)
        return value

    return check


def _check_bound(name: str, limit: str, value: Any) -> None:
    if name in ("length", "minLength", "maxLength"):
        if not isinstance(value, str | bytes):
            return
        size, bound = len(value), int(limit)
        if (name == "length" and size != bound) or (name == "minLength" and size < bound):
            raise ValueError(f"must be {'exactly' if name == 'length' else 'at least'} {bound} characters long")
        if name == "maxLength" and size > bound:
            raise ValueError(f"must be at most {bound} characters long")
        return
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return
    number = Decimal(str(value))
    if name in ("totalDigits", "fractionDigits"):
        digits = number.normalize().as_tuple()
        fraction = max(0, -int(digits.exponent))
        total = max(len(digits.digits), fraction)
        if name == "totalDigits" and total > int(limit):
            raise ValueError(f"must have at most {limit} digits")
        if name == "fractionDigits" and fraction > int(limit):
            raise ValueError(f"must have at most {limit} digits after the point")
        return
    try:
        bound_value = Decimal(limit)
    except ArithmeticError:
        return
    failed = {
        "minInclusive": number < bound_value,
        "maxInclusive": number > bound_value,
        "minExclusive": number <= bound_value,
        "maxExclusive": number >= bound_value,
    }.get(name, False)
    if failed:
        words = {"minInclusive": ">=", "maxInclusive": "<=", "minExclusive": ">", "maxExclusive": "<"}[name]
        raise ValueError(f"must be {words} {limit} ({name})")


class ModelFactory:
    """Builds (and caches) one pydantic model per struct; names are unique within a contract. With
    `enforce_facets` (input models), values are checked against the schema's facets: a 422 names the field."""

    def __init__(self, prefix: str, *, enforce_facets: bool = False) -> None:
        self.prefix = prefix
        self.enforce_facets = enforce_facets
        self._models: dict[int, type[DerivedModel]] = {}
        self._building: set[int] = set()
        self._forward: set[str] = set()

    def model(self, struct: Struct, name: str | None = None, description: str | None = None) -> type[DerivedModel]:
        key = id(struct)
        if key in self._models and name is None:
            return self._models[key]
        if key in self._building and name is None:
            # A recursive type: a forward reference by name, resolved once the model exists (model_rebuild).
            self._forward.add(struct.name)
            return struct.name  # type: ignore[return-value]
        self._building.add(key)
        try:
            definitions: dict[str, Any] = {}
            for index, item in enumerate(struct.fields):
                definitions[f"f{index}"] = self._field(item)
        finally:
            self._building.discard(key)
        choices = tuple(struct.choices)
        extra = choice_schema(choices)
        if struct.dropped:
            extra["x-not-carried"] = struct.dropped
        base: type[DerivedModel] = DerivedModel
        if extra:
            config = ConfigDict(**{**DerivedModel.model_config, "json_schema_extra": extra})  # type: ignore[typeddict-item]
            base = type("DerivedWithSchema", (DerivedModel,), {"model_config": config, "__module__": __name__})
        model = create_model(  # type: ignore[call-overload]
            name or struct.name,
            __base__=base,
            __doc__=description,
            __module__=__name__,
            **definitions,
        )
        model._choices = choices
        if name is None:
            self._models[key] = model
        if self._forward:
            self._resolve_forward(model)
        return model

    def _resolve_forward(self, model: type[DerivedModel]) -> None:
        namespace = {m.__name__: m for m in self._models.values()}
        if not all(name in namespace for name in self._forward):
            return  # an outer model still being built; resolved when it is done
        for built in self._models.values():
            built.model_rebuild(_types_namespace=namespace)
        model.model_rebuild(_types_namespace=namespace)
        self._forward.clear()

    def _field(self, item: StructField) -> tuple[Any, Any]:
        if isinstance(item.shape, Struct):
            inner: Any = self.model(item.shape)
        else:
            inner = _scalar_type(item.shape, self.enforce_facets)
        options: dict[str, Any] = {"alias": item.json_name, "title": item.json_name}
        if item.attribute:
            options["description"] = "XML attribute"
        if isinstance(item.shape, Scalar) and item.shape.kind == "integer" and not item.shape.item_list:
            if item.shape.ge is not None and not item.shape.enum:
                options["ge"] = item.shape.ge
            if item.shape.le is not None and not item.shape.enum:
                options["le"] = item.shape.le
        if item.repeated:
            kind: Any = list[inner]  # type: ignore[valid-type]
            if item.max_occurs is not None:
                options["max_length"] = item.max_occurs
            if item.optional:
                return kind, Field(default_factory=list, **options)
            options["min_length"] = max(item.min_occurs, 1)
            return kind, Field(**options)
        if item.optional:
            return Union[inner, None], Field(default=None, **options)  # noqa: UP007 - inner is a runtime value
        return inner, Field(**options)


def model_for(factory: ModelFactory, struct: Struct, name: str, description: str) -> type[DerivedModel]:
    return factory.model(struct, name, description)


# --- values ------------------------------------------------------------------------------------------------------


def to_zeep(struct: Struct, data: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for zeep from a model dump (mode python, by alias): absent optional values left out."""
    kwargs: dict[str, Any] = {}
    for item in struct.fields:
        value = data.get(item.json_name)
        if value is None or (value == [] and item.optional):
            if value is None and item.nillable and not item.optional:
                kwargs[item.zeep_name] = xsd.Nil
            continue
        kwargs[item.zeep_name] = _value_to_zeep(item, value)
    return kwargs


def _value_to_zeep(item: StructField, value: Any) -> Any:
    if item.repeated:
        return [_one_to_zeep(item.shape, entry) for entry in value]
    return _one_to_zeep(item.shape, value)


def _one_to_zeep(shape: Scalar | Struct, value: Any) -> Any:
    if isinstance(shape, Struct):
        return to_zeep(shape, value)
    if shape.kind == "year":
        return [(entry, None) for entry in value] if shape.item_list else (value, None)
    if shape.kind == "lexical":
        parse = shape.codec.pythonvalue
        return [parse(entry) for entry in value] if shape.item_list else parse(value)
    if shape.kind == "any":
        return _any_text(value)
    return value


def _any_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _lexical_text(shape: Scalar, raw: Any) -> str:
    return str(shape.codec.xmlvalue(raw))


def _gmonth_xmlvalue(self: Any, value: Any) -> str:
    month, tzinfo = value
    return f"--{month:02d}{_unparse_timezone(tzinfo)}"


# zeep 4.3 writes May as "--5"; XSD's gMonth is "--MM" (an upstream refuses "--5"). Its reader is right.
b.gMonth.xmlvalue = _gmonth_xmlvalue  # type: ignore[method-assign]


def from_zeep(struct: Struct, value: Any) -> dict[str, Any]:
    """Plain data keyed by JSON names from what zeep parsed (a CompoundValue, or a dict for repeated containers)."""
    values = getattr(value, "__values__", value)
    result: dict[str, Any] = {}
    for item in struct.fields:
        raw = values.get(item.zeep_name) if isinstance(values, Mapping) else None
        result[item.json_name] = _value_from_zeep(item, raw)
    return result


def _value_from_zeep(item: StructField, raw: Any) -> Any:
    # zeep reads an empty element as None; for a string that is "" whenever the element must have been there
    # (a list entry, or a required, non-nillable element). An optional empty string stays indistinguishable from
    # an absent one, and comes out as null.
    empty = "" if isinstance(item.shape, Scalar) and item.shape.kind == "string" and not item.shape.item_list else None
    if item.repeated:
        if raw is None:
            return []
        entries = raw if isinstance(raw, list) else [raw]
        return [empty if entry is None else _one_from_zeep(item.shape, entry) for entry in entries]
    if raw is None:
        return empty if not item.optional else None
    return _one_from_zeep(item.shape, raw)


def _one_from_zeep(shape: Scalar | Struct, raw: Any) -> Any:
    if isinstance(shape, Struct):
        return from_zeep(shape, raw)
    if shape.kind == "year":
        return [entry[0] for entry in raw] if shape.item_list else raw[0]
    if shape.kind == "lexical":
        return [_lexical_text(shape, entry) for entry in raw] if shape.item_list else _lexical_text(shape, raw)
    if shape.kind == "any":
        return any_to_json(raw)
    if shape.kind == "decimal" and isinstance(raw, Decimal):
        return raw
    return raw
