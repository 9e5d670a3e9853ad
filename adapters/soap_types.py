"""XSD types (as zeep resolved them) → JSON shapes → pydantic models, and values both ways between JSON and zeep.

A `Struct` is the JSON view of a complex type: its elements and attributes as fields, `choice` groups, repeated
and optional elements, nested types. Enumerations are read from the schema documents themselves (zeep drops
facets). Anything without a faithful JSON form is refused here, at registration, with the construct named.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from lxml import etree
from pydantic import AfterValidator, ConfigDict, Discriminator, Field, StrictBool, Tag, create_model
from zeep import xsd
from zeep.exceptions import UnexpectedElementError
from zeep.xsd.elements import Any as XsdAny
from zeep.xsd.elements import Choice, Group, Sequence
from zeep.xsd.elements.indicators import All
from zeep.xsd.types import builtins as b
from zeep.xsd.types.any import AnyType
from zeep.xsd.types.builtins import _unparse_timezone
from zeep.xsd.types.collection import ListType, UnionType
from zeep.xsd.utils import max_occurs_iter

from schemas.errors import MsjxError

from .jsontypes import Base64, DecimalText, DerivedModel, JsonFloat, JsonInteger, choice_schema

__all__ = [
    "TYPE_KEY",
    "BodyMismatch",
    "EnumIndex",
    "Poly",
    "Scalar",
    "Struct",
    "StructField",
    "UnsupportedConstruct",
    "body_shape",
    "elements_to_xml",
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
    # What zeep does not model on its own: complex types declared abstract, which types derive from which (an
    # instance names its concrete type with xsi:type), and substitution groups (head element → member elements,
    # each a global element's qname), with the global elements declared abstract (never written themselves).
    abstract_types: set[str] = field(default_factory=set)
    derived: dict[str, list[str]] = field(default_factory=dict)
    substitution_heads: dict[str, list[str]] = field(default_factory=dict)
    abstract_elements: set[str] = field(default_factory=set)
    # Complex types with mixed content (text between elements), which zeep drops: named, and anonymous ones by
    # where their element stands. Their content travels as an anyType's does.
    mixed_types: set[str] = field(default_factory=set)
    mixed_local: set[tuple[str | None, str, str]] = field(default_factory=set)
    # What each simple type restricts (named, and anonymous ones by where they stand): zeep loses it for a
    # restriction of a list type, which the walker then resolves itself.
    bases: dict[str, str] = field(default_factory=dict)
    local_bases: dict[tuple[str | None, str, str], str] = field(default_factory=dict)

    def is_mixed(self, owner: str | None, name: str, type_qname: str | None) -> bool:
        return (owner, "element", name) in self.mixed_local or (
            type_qname is not None and type_qname in self.mixed_types
        )

    def descendants(self, qname: str) -> list[str]:
        """Every complex type derived from `qname`, directly or not, in document order (each once)."""
        found: list[str] = []
        pending = list(self.derived.get(qname, ()))
        while pending:
            current = pending.pop(0)
            if current in found or current == qname:
                continue
            found.append(current)
            pending.extend(self.derived.get(current, ()))
        return found

    def members(self, head: str) -> list[str]:
        """The elements that may stand for `head`: its group's members and theirs (substitution is transitive)."""
        found: list[str] = []
        pending = list(self.substitution_heads.get(head, ()))
        while pending:
            current = pending.pop(0)
            if current in found or current == head:
                continue
            found.append(current)
            pending.extend(self.substitution_heads.get(current, ()))
        return found

    @classmethod
    def from_documents(cls, roots: Iterable[etree._Element]) -> EnumIndex:
        raw_named: dict[str, _Raw] = {}
        raw_local: dict[tuple[str | None, str, str], _Raw] = {}
        abstract: set[str] = set()
        derived: dict[str, list[str]] = {}
        heads: dict[str, list[str]] = {}
        abstract_elements: set[str] = set()
        mixed: set[str] = set()
        mixed_local: set[tuple[str | None, str, str]] = set()
        for root in roots:
            schemas = [root] if root.tag == _X + "schema" else list(root.iter(_X + "schema"))
            for schema in schemas:
                tns = schema.get("targetNamespace")
                for complex_type in schema.iter(_X + "complexType"):
                    name = complex_type.get("name")
                    content = complex_type.find(_X + "complexContent")
                    is_mixed = "true" in (
                        complex_type.get("mixed"),
                        content.get("mixed") if content is not None else None,
                    )
                    if not name:
                        holder = complex_type.getparent()
                        if is_mixed and holder is not None and holder.tag == _X + "element" and holder.get("name"):
                            mixed_local.add((_owner(holder, tns), "element", holder.get("name", "")))
                        continue
                    if is_mixed:
                        mixed.add(f"{{{tns}}}{name}" if tns else name)
                    qname = f"{{{tns}}}{name}" if tns else name
                    if complex_type.get("abstract") in ("true", "1"):
                        abstract.add(qname)
                    for content in ("complexContent", "simpleContent"):
                        for kind in ("extension", "restriction"):
                            step = complex_type.find(f"{_X}{content}/{_X}{kind}")
                            if step is not None and step.get("base"):
                                derived.setdefault(_qname(step.get("base", ""), step, tns), []).append(qname)
                for element in schema.findall(_X + "element"):  # substitution groups are of global elements only
                    qname = f"{{{tns}}}{element.get('name', '?')}" if tns else element.get("name", "?")
                    if element.get("abstract") in ("true", "1"):
                        abstract_elements.add(qname)
                    for head in (element.get("substitutionGroup") or "").split():  # XSD 1.1 allows several
                        heads.setdefault(_qname(head, element, tns), []).append(qname)
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
        index = cls(
            abstract_types=abstract,
            derived=derived,
            substitution_heads=heads,
            abstract_elements=abstract_elements,
            mixed_types=mixed,
            mixed_local=mixed_local,
        )
        index.bases = {qname: raw.base for qname, raw in raw_named.items() if raw.base}
        index.local_bases = {key: raw.base for key, raw in raw_local.items() if raw.base}
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
    "string",
    "decimal",
    "integer",
    "boolean",
    "float",
    "date",
    "datetime",
    "time",
    "base64",
    "year",
    "lexical",
    "any",
    "elements",
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
    # kind "elements" (an xsd:any wildcard): how many elements the JSON object may stand for (max None: unbounded)
    min_elements: int = 0
    max_elements: int | None = None
    list_facets: Facets = ()  # facets of a restricted list itself: length … count its items, a pattern its text


TYPE_KEY = "@type"  # the JSON key naming an instance's concrete XSD type (its xsi:type)


@dataclass
class Poly:
    """An element whose declared complex type has others derived from it: an instance may be any of them, named
    in XML by xsi:type and in JSON by "@type" (the type's local name; {namespace}name where two share it).

    `default` is the declared type's label when it is concrete (an instance without xsi:type is of it); an
    abstract declared type has none, and "@type" is then required."""

    base: str
    variants: dict[str, Struct] = field(default_factory=dict)
    zeep_types: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # type qname → label
    default: str | None = None


@dataclass
class StructField:
    json_name: str
    zeep_name: str
    shape: Scalar | Struct | Poly
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

    def __init__(self, enums: EnumIndex, schema: Any = None) -> None:
        self.enums = enums
        self.schema = schema  # zeep's Schema: the derived types and substitution members are looked up in it
        self._polys: dict[str, Poly] = {}
        self._substituted: set[int] = set()
        self._structs: dict[int, Struct] = {}
        self._stack: list[int] = []
        self._building: dict[int, Struct] = {}
        self._names: dict[str, int] = {}

    def scalar(self, xsd_type: Any, where: str, owner: str | None, kind: str, name: str) -> Scalar:
        if isinstance(xsd_type, UnionType):
            # A union's value is the lexical form of one of its members: zeep tries each when it parses.
            return Scalar("lexical", "xsd:union", codec=xsd_type)
        if isinstance(xsd_type, ListType):
            list_facets: Facets = ()
            if isinstance(xsd_type.item_type, etree.QName):
                # zeep gives a restriction of a list type its own name for an item type (and cannot write it):
                # the list it restricts is found here, and its facets (length …) count the items.
                own = xsd_type.item_type.text
                list_facets = self.enums.lookup_facets(owner, kind, name, own)
                xsd_type.item_type = self._restricted_list(owner, kind, name, own, where).item_type
                item = self.scalar(xsd_type.item_type, where, None, kind, "")
            else:
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
                list_facets=list_facets,
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

    def _restricted_list(self, owner: str | None, kind: str, name: str, own: str, where: str) -> ListType:
        base = self.enums.local_bases.get((owner, kind, name)) or self.enums.bases.get(own)
        seen: set[str] = set()
        while base and base not in seen and self.schema is not None:
            seen.add(base)
            candidate = self.schema.get_type(base, fail_silently=True)
            if isinstance(candidate, ListType) and not isinstance(candidate.item_type, etree.QName):
                return candidate
            base = self.enums.bases.get(base)
        raise UnsupportedConstruct(f"a restriction of a list type ({own}) whose list cannot be found, at {where}")

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
            self._substitute(xsd_type, where)
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

    def poly(self, xsd_type: xsd.ComplexType, where: str) -> Poly | None:
        """The shape of an element whose declared type is abstract or has derived types; None for a plain one."""
        qname = _type_qname(xsd_type)
        if qname is None:
            return None
        if qname in self._polys:
            return self._polys[qname]
        abstract = qname in self.enums.abstract_types
        family = [name for name in self.enums.descendants(qname) if name not in self.enums.abstract_types]
        if not family:
            if abstract:
                raise UnsupportedConstruct(
                    f"an element of the abstract type {qname}, from which no concrete type derives, at {where}"
                )
            return None
        if self.schema is None:
            raise UnsupportedConstruct(f"an element of the type {qname}, from which others derive, at {where}")
        concrete = ([] if abstract else [qname]) + family
        locals_ = [etree.QName(name).localname for name in concrete]
        poly = Poly(qname)
        self._polys[qname] = poly  # before its variants: a variant may hold an element of this same family
        for name, local in zip(concrete, locals_, strict=True):
            poly.labels[name] = local if locals_.count(local) == 1 else name
        poly.default = None if abstract else poly.labels[qname]
        for name, label in poly.labels.items():
            zeep_type = xsd_type if name == qname else self.schema.get_type(name)
            poly.zeep_types[label] = zeep_type
            poly.variants[label] = self.struct(zeep_type, f"{where}[@type={label}]")
        return poly

    def _substitute(self, xsd_type: xsd.ComplexType, where: str) -> None:
        """In zeep's tree of this type, each element heading a substitution group becomes a choice of the head
        (unless abstract) and its members, so zeep writes and reads whichever one an instance uses."""
        top = getattr(xsd_type, "_element", None)
        if not self.enums.substitution_heads or top is None or id(xsd_type) in self._substituted:
            return
        self._substituted.add(id(xsd_type))
        if isinstance(top, Choice | Sequence | All | Group):
            self._substitute_in(top, where)
            # Always: two zeep types may share one container, rewritten through the first one seen.
            for cached in ("elements", "elements_nested", "attributes"):
                xsd_type.__dict__.pop(cached, None)

    def _substitute_in(self, container: Any, where: str) -> bool:
        items = container.child if isinstance(container, Group) else container
        changed = False
        for index, item in enumerate(list(items)):
            if getattr(item, "substitution_head", None):  # rewritten already (a container two types share)
                continue
            if isinstance(item, Choice | Sequence | All | Group):
                changed = self._substitute_in(item, where) or changed
                continue
            qname = item.qname.text if isinstance(item, xsd.Element) and isinstance(item.qname, etree.QName) else None
            if qname is None or qname not in self.enums.substitution_heads:
                continue
            if self.schema is None:
                raise UnsupportedConstruct(f"a substitution group (head {qname}) at {where}")
            options = [] if qname in self.enums.abstract_elements else [item.clone()]
            for member in self.enums.members(qname):
                if member not in self.enums.abstract_elements:
                    options.append(self.schema.get_element(member).clone())
            if not options:
                raise UnsupportedConstruct(
                    f"a substitution group whose head {qname} and members are all abstract at {where}"
                )
            choice = Choice(options, min_occurs=item.min_occurs, max_occurs=item.max_occurs)
            choice.substitution_head = item.name
            items[index] = choice
            changed = True
        if changed:
            for holder in (container, items):
                for cached in ("elements", "elements_nested"):
                    holder.__dict__.pop(cached, None)
        return changed

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
            # A wildcard: its elements travel as a JSON object (see elements_to_xml). zeep is told not to interpret
            # them, so what comes back is the XML as sent, whatever global element or xsi:type it names.
            element.process_contents = "skip"
            taken = {f.json_name for f in struct.fields}
            json_name = next(
                n for n in itertools.chain(["any"], (f"any{i}" for i in itertools.count(2))) if n not in taken
            )
            low = 0 if optional else int(element.min_occurs)
            high = None if element.max_occurs == "unbounded" else int(element.max_occurs)
            shape = Scalar("elements", "xsd:any", min_elements=low, max_elements=high)
            struct.fields.append(
                StructField(json_name, name or "_value_1", shape, min_occurs=min(low, 1), in_choice=in_choice)
            )
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
        head = getattr(container, "substitution_head", None)  # a repeated substitution group: named by its head
        taken = {f.json_name for f in struct.fields}
        json_name = head if head and head not in taken else f"{kind}{next(counters[kind])}"
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
        shape: Scalar | Struct | Poly
        if isinstance(xsd_type, xsd.ComplexType) and self.enums.is_mixed(owner, local, _type_qname(xsd_type)):
            # Mixed content: zeep would keep the elements and drop the text between them. The element is read and
            # written whole instead, as an anyType's content is: {"#text": …, "@attribute": …, "child": …}.
            element.type = _RAW_CONTENT
            shape = Scalar("any", "mixed content")
        elif isinstance(xsd_type, xsd.ComplexType):
            # Simple content (text plus attributes) is a struct too: {"value": ..., "attribute": ...}.
            shape = self.poly(xsd_type, here) or self.struct(xsd_type, here)
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


class _RawContentType(AnyType):
    """An element whose content zeep cannot model (mixed content): read as the XML element itself."""

    def parse_xmlelement(
        self,
        xmlelement: etree._Element,
        schema: Any = None,
        allow_none: bool = True,
        context: Any = None,
        schema_type: Any = None,
    ) -> Any:
        return xmlelement


_RAW_CONTENT = _RawContentType()


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
    qname = body.qname.text if isinstance(body.qname, etree.QName) else None
    if qname in walker.enums.substitution_heads:
        raise UnsupportedConstruct(f"a message part whose element {qname} heads a substitution group, at {where}")
    if isinstance(body.type, xsd.ComplexType):
        return BodyShape(walker.struct(body.type, where), True)
    field_ = walker.element_field(body, body.attr_name or body.name, None, where)
    return BodyShape(Struct(body.name or "Body", [field_]), False)


def new_walker(enums: EnumIndex, schema: Any = None) -> _Walker:
    return _Walker(enums, schema)


# --- pydantic models ---------------------------------------------------------------------------------------------

_PYTHON: dict[str, Any] = {
    "string": str,
    "decimal": DecimalText,
    "boolean": StrictBool,
    "float": JsonFloat,
    "date": dt.date,
    "datetime": dt.datetime,
    "time": dt.time,
    "base64": Base64,
    "year": JsonInteger,
}


def _scalar_type(scalar: Scalar, enforce_facets: bool = False) -> Any:
    if scalar.enum:
        base: Any = Literal[scalar.enum]  # type: ignore[valid-type]
    elif scalar.kind == "integer":
        base = JsonInteger
    elif scalar.kind == "lexical":
        base = Annotated[str, AfterValidator(_lexical_check(scalar))]
    elif scalar.kind == "any":
        base = Annotated[Any, AfterValidator(_any_check)]
    elif scalar.kind == "elements":
        base = Annotated[dict[str, Any], AfterValidator(_elements_check(scalar))]
    else:
        base = _PYTHON[scalar.kind]
    if enforce_facets and scalar.facets:
        base = Annotated[base, AfterValidator(_facet_check(scalar))]
    if not scalar.item_list:
        return base
    if enforce_facets and scalar.list_facets:
        return Annotated[list[base], AfterValidator(_list_check(scalar.list_facets))]  # type: ignore[valid-type]
    return list[base]  # type: ignore[valid-type]


def _list_check(facets: Facets) -> Any:
    def check(value: list[Any]) -> list[Any]:
        for name, limit in facets:
            count, bound = len(value), int(limit) if name.endswith("ength") else 0
            if name == "length" and count != bound:
                raise ValueError(f"must have exactly {bound} items")
            if name == "minLength" and count < bound:
                raise ValueError(f"must have at least {bound} items")
            if name == "maxLength" and count > bound:
                raise ValueError(f"must have at most {bound} items")
            if name == "pattern":
                compiled = _python_pattern(limit)
                text = " ".join(format(v, "f") if isinstance(v, Decimal) else str(v) for v in value)
                if compiled is not None and not compiled.fullmatch(text):
                    raise ValueError(f"does not match the pattern {limit}")
        return value

    return check


def _any_check(value: Any) -> Any:
    # An xsd:anyType value is the element's text (a string, number or boolean) or its content as an object; an
    # array has no one XML form to take.
    if isinstance(value, Mapping):
        _fill(etree.Element("check"), value)  # raises ValueError naming what has no XML form
    elif value is not None and not isinstance(value, str | int | float | Decimal | bool):
        raise ValueError("an xsd:anyType value is text (a string, number or boolean) or an object of its content")
    return value


def _elements_check(scalar: Scalar) -> Any:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        count = len(elements_to_xml(value))
        if count < scalar.min_elements:
            raise ValueError(f"xsd:any here needs at least {scalar.min_elements} element(s), got {count}")
        if scalar.max_elements is not None and count > scalar.max_elements:
            raise ValueError(f"xsd:any here holds at most {scalar.max_elements} element(s), got {count}")
        return value

    return check


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
    # Mixed content: the text before, between and after the children, joined (where it stood is not kept).
    text = (node.text or "") + "".join(child.tail or "" for child in node)
    if text.strip():
        result["#text"] = text
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

    def model(
        self, struct: Struct, name: str | None = None, description: str | None = None, tag: str | None = None
    ) -> type[DerivedModel]:
        """The model of `struct`; with `tag`, as one variant of a Poly: an optional "@type" field naming it."""
        key: Any = (id(struct), tag) if tag else id(struct)
        model_name = f"{struct.name}_typed" if tag else struct.name
        if key in self._models and name is None:
            return self._models[key]
        if key in self._building and name is None:
            # A recursive type: a forward reference by name, resolved once the model exists (model_rebuild).
            self._forward.add(model_name)
            return model_name  # type: ignore[return-value]
        self._building.add(key)
        try:
            definitions: dict[str, Any] = {}
            if tag:
                definitions["xsi_type"] = (
                    Union[Literal[tag], None],  # noqa: UP007 - tag is a runtime value
                    Field(default=None, alias=TYPE_KEY, title=TYPE_KEY, description="the concrete XSD type (xsi:type)"),
                )
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
            name or model_name,
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

    def poly(self, poly: Poly) -> Any:
        """A union of the variants' models, told apart by "@type" (the declared type's when absent)."""
        if len(poly.variants) == 1:  # an abstract type with one concrete type: "@type" may name it, or not
            ((label, struct),) = poly.variants.items()
            return self.model(struct, tag=label)
        variants = [Annotated[self.model(struct, tag=label), Tag(label)] for label, struct in poly.variants.items()]
        default = poly.default
        names = ", ".join(poly.variants)

        def pick(value: Any) -> Any:
            found = value.get(TYPE_KEY) if isinstance(value, Mapping) else getattr(value, "xsi_type", None)
            return found if found is not None else default

        missing = f'"{TYPE_KEY}" must name the concrete type, one of: {names}'
        return Annotated[
            Union[tuple(variants)],  # noqa: UP007 - a runtime tuple of types
            Discriminator(pick, custom_error_type="xsi_type", custom_error_message=missing),
        ]

    def _field(self, item: StructField) -> tuple[Any, Any]:
        if isinstance(item.shape, Poly):
            inner: Any = self.poly(item.shape)
        elif isinstance(item.shape, Struct):
            inner = self.model(item.shape)
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


def _one_to_zeep(shape: Scalar | Struct | Poly, value: Any) -> Any:
    if isinstance(shape, Poly):
        label = value.get(TYPE_KEY) or shape.default or next(iter(shape.variants))
        kwargs = to_zeep(shape.variants[label], value)
        if label == shape.default:
            return kwargs  # the declared type itself: no xsi:type
        return shape.zeep_types[label](**kwargs)  # zeep writes xsi:type for a value of another type
    if isinstance(shape, Struct):
        return to_zeep(shape, value)
    if shape.kind == "elements":
        nodes = elements_to_xml(value)
        return nodes if shape.max_elements != 1 else (nodes[0] if nodes else None)
    if shape.kind == "year":
        return [(entry, None) for entry in value] if shape.item_list else (value, None)
    if shape.kind == "lexical":
        parse = shape.codec.pythonvalue
        return [parse(entry) for entry in value] if shape.item_list else parse(value)
    if shape.kind == "any":
        return _AnyContent(value) if isinstance(value, Mapping) else _any_text(value)
    return value


class _ContentWriter:
    """Stands in as a value's `_xsd_type` so zeep's Element hands the element to us to fill (see _AnyContent)."""

    def render(self, node: etree._Element, value: _AnyContent, xsd_type: Any = None, render_path: Any = None) -> None:
        _fill(node, value.content)


_CONTENT_WRITER = _ContentWriter()


class _AnyContent:
    """An xsd:anyType value given as a JSON object: zeep's Element calls `_xsd_type.render` with the element it
    created, and the object's members become its attributes, text and child elements."""

    _xsd_type = _CONTENT_WRITER

    def __init__(self, content: Mapping[str, Any]) -> None:
        self.content = content


def _xml_name(key: str) -> str:
    """A JSON key as an element or attribute name: a local name, or {namespace}local; refused if not an XML name."""
    namespace, local = None, key
    if key.startswith("{") and "}" in key:
        namespace, _, local = key[1:].partition("}")
    if not _NCNAME.fullmatch(local):
        raise ValueError(f"{key!r} is not an XML name")
    return f"{{{namespace}}}{local}" if namespace else local


_NCNAME = re.compile(r"[A-Za-z_\u00C0-\uFFFF][\w.\-\u00B7\u00C0-\uFFFF]*")


def _fill(node: etree._Element, content: Any) -> None:
    if not isinstance(content, Mapping):
        if isinstance(content, list):
            raise ValueError("an array has no XML form of its own: put it under the name of the repeated element")
        if content is not None:
            node.text = _any_text(content)
        return
    for key, value in content.items():
        if key == "#text":
            node.text = None if value is None else _any_text(value)
        elif key.startswith("@"):
            if value is None or isinstance(value, Mapping | list):
                raise ValueError(f"the attribute {key} must be a string, number or boolean")
            node.set(_xml_name(key[1:]), _any_text(value))
        else:
            for entry in value if isinstance(value, list) else [value]:
                _fill(etree.SubElement(node, _xml_name(key)), entry)


def elements_to_xml(content: Mapping[str, Any]) -> list[etree._Element]:
    """The elements a JSON object stands for in an xsd:any wildcard: each key an element (an array, the element
    repeated); inside, "@name" keys are attributes, "#text" the text, other keys child elements."""
    holder = etree.Element("holder")
    _fill(holder, content)
    if holder.text or holder.attrib:
        raise ValueError("xsd:any content is elements: text and attributes belong inside one of them")
    return list(holder)


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


def _sequence_parse(self: Sequence, xmlelements: Any, schema: Any, name: Any = None, context: Any = None) -> Any:
    # zeep 4.3's Sequence reads its *flattened* elements, so a choice inside a sequence is read as a sequence of its
    # members: any answer using the second member fails ("Unexpected element 'b', expected 'a'"; zeep issues
    # #1263, #1255). Reading the nested items instead lets each choice (and group) choose; a repeated one is named
    # by its own name, so two of them no longer overwrite each other.
    result = []
    for _unused in max_occurs_iter(self.max_occurs):
        if not xmlelements:
            break
        item: OrderedDict[str, Any] = OrderedDict()
        for item_name, element in self.elements_nested:
            try:
                value = element.parse_xmlelements(xmlelements, schema, item_name or name, context=context)
            except UnexpectedElementError:
                if schema.settings.strict:
                    raise
                value = None
            if isinstance(element, Choice | Sequence | All | Group):
                item.update(value or {})
            else:
                item[item_name] = value
            if not xmlelements:
                break
        if item:
            result.append(item)
    if not self.accepts_multiple:
        return result[0] if result else None
    return {name: result}


Sequence.parse_xmlelements = _sequence_parse  # type: ignore[method-assign]


def from_zeep(struct: Struct, value: Any) -> dict[str, Any]:
    """Plain data keyed by JSON names from what zeep parsed (a CompoundValue, or a dict for repeated containers)."""
    values = getattr(value, "__values__", value)
    result: dict[str, Any] = {}
    for item in struct.fields:
        raw = values.get(item.zeep_name) if isinstance(values, Mapping) else None
        result[item.json_name] = _value_from_zeep(item, raw)
    return result


class BodyMismatch(MsjxError, ValueError):
    """What the upstream answered does not fit its WSDL in a way zeep does not notice (an xsi:type outside the
    declared type's family, an abstract type without xsi:type)."""


def _value_from_zeep(item: StructField, raw: Any) -> Any:
    # zeep reads an empty element as None; for a string that is "" whenever the element must have been there
    # (a list entry, or a required, non-nillable element). An optional empty string stays indistinguishable from
    # an absent one, and comes out as null.
    empty = "" if isinstance(item.shape, Scalar) and item.shape.kind == "string" and not item.shape.item_list else None
    if isinstance(item.shape, Scalar) and item.shape.kind == "elements":
        return _wildcard_json(raw)
    if item.repeated:
        if raw is None:
            return []
        entries = raw if isinstance(raw, list) else [raw]
        return [empty if entry is None else _one_from_zeep(item.shape, entry) for entry in entries]
    if raw is None:
        return empty if not item.optional else None
    return _one_from_zeep(item.shape, raw)


def _wildcard_json(raw: Any) -> dict[str, Any] | None:
    nodes = [node for node in (raw if isinstance(raw, list) else [raw]) if isinstance(node, etree._Element)]
    return _children_json(nodes) if nodes else None


def _one_from_zeep(shape: Scalar | Struct | Poly, raw: Any) -> Any:
    if isinstance(shape, Poly):
        qname = _type_qname(getattr(raw, "_xsd_type", None))
        label = shape.labels.get(qname or "")
        if label is None:
            expected = ", ".join(shape.variants)
            raise BodyMismatch(
                f"an element of the type {shape.base} came as {qname or 'no type'}, not one of {expected}"
            )
        return {TYPE_KEY: label, **from_zeep(shape.variants[label], raw)}
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
