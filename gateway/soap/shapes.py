"""An operation's JSON Schema as an XML shape: the one tree behind the WSDL's XSD, the request reader and the writer.

The schemas are the operations' own (pydantic's JSON Schema of their input and output models), so the façade's
contract says exactly what /v1 accepts: types, enumerations, patterns, lengths, ranges, repetition and nulls.
Decimal money (a JSON string with `decimal_places`/`max_digits`, or format `decimal`) is xsd:decimal, never double.
What has no XML shape of its own (free-form objects, unions of types) travels as JSON text in an xsd:string.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

XSD_NS = "http://www.w3.org/2001/XMLSchema"
TYPE_KEY = "@type"  # how an upstream-derived model names the concrete XSD type of a value (adapters.soap_types)

# JSON Schema string formats with an XSD built-in of their own.
_FORMATS = {
    "date": "date",
    "date-time": "dateTime",
    "time": "time",
    "uri": "anyURI",
    "decimal": "decimal",
}
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Simple:
    """A value in one element's text. `kind` says how its text maps to JSON: string, integer, number, decimal,
    boolean or json (JSON text of a value with no XML shape)."""

    xsd_type: str  # local name of an XSD built-in
    kind: str
    facets: tuple[tuple[str, str], ...] = ()  # (facet, value) in XSD order; enumerations repeat
    description: str | None = None

    @property
    def restricted(self) -> bool:
        return bool(self.facets)


@dataclass
class Member:
    """One element of a complex type: a JSON property under an XML name."""

    json_name: str
    xml_name: str
    shape: Simple | Complex
    required: bool = True
    repeated: bool = False
    min_items: int = 0
    max_items: int | None = None
    nillable: bool = False

    @property
    def min_occurs(self) -> int:
        if self.repeated:
            return self.min_items if self.required else 0
        return 1 if self.required else 0

    @property
    def max_occurs(self) -> str:
        if not self.repeated:
            return "1"
        return "unbounded" if self.max_items is None else str(self.max_items)


@dataclass
class Complex:
    name: str
    members: list[Member] = field(default_factory=list)
    description: str | None = None
    # An upstream element whose XSD type has concrete types derived from it (JSON: "@type" names which): here an
    # xs:choice of one element per type, named by it, holding that type's members.
    variants: bool = False

    def by_xml(self) -> dict[str, Member]:
        return {member.xml_name: member for member in self.members}


def xml_name(json_name: str, taken: set[str]) -> str:
    """An NCName for a JSON property: itself when it is one, else with each other character as `_`, made unique."""
    name = json_name if _NCNAME.match(json_name) else re.sub(r"[^A-Za-z0-9_.-]", "_", json_name)
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = "_" + name
    base, count = name, 1
    while name in taken:
        count += 1
        name = f"{base}_{count}"
    taken.add(name)
    return name


@functools.lru_cache(maxsize=512)
def xsd_pattern(pattern: str) -> str | None:
    """A JSON Schema (ECMA) regex as an XSD pattern, or None when XSD's regex language cannot say it.

    XSD patterns are anchored at both ends and have no anchors, lookarounds, lazy quantifiers or \\b; a pattern
    written as ^…$ (as every pattern here is) translates by dropping the anchors. Checked by compiling it."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        return None
    body = pattern[1:-1]
    if any(token in body for token in ("(?", "\\b", "\\B", "*?", "+?", "??", "}?", "^", "$", "\\A", "\\Z", "\\z")):
        return None
    document = (
        f'<xs:schema xmlns:xs="{XSD_NS}"><xs:simpleType name="t"><xs:restriction base="xs:string">'
        f'<xs:pattern value="{_attribute(body)}"/></xs:restriction></xs:simpleType></xs:schema>'
    )
    try:
        etree.XMLSchema(etree.fromstring(document.encode()))
    except (etree.XMLSchemaParseError, etree.XMLSyntaxError):
        return None
    return body


def _attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


class ShapeBuilder:
    """Builds shapes for one service's operations; named complex types are shared and their names kept unique."""

    def __init__(self) -> None:
        self.types: dict[str, Complex] = {}  # XSD complexType name → shape, in definition order
        self._seen: dict[tuple[int, str], Complex] = {}
        self._signatures: dict[str, str] = {}

    def complex(self, schema: dict[str, Any], name: str, *, optional_members: bool = False) -> Complex:
        """The shape of an object schema (a model's), named `name`; $defs resolve against the schema itself."""
        defs = schema.get("$defs", {})
        return self._object(schema, defs, name, optional_members=optional_members)

    def _object(self, schema: dict[str, Any], defs: dict[str, Any], name: str, *, optional_members: bool) -> Complex:
        signature = (
            repr(sorted(schema.get("properties", {}).items())) + repr(schema.get("required")) + str(optional_members)
        )
        if TYPE_KEY in schema.get("properties", {}):
            # A concrete type standing for an upstream's declared one: the element naming it carries "@type".
            schema = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != TYPE_KEY}}
        for candidate in _names(name):
            known = self._signatures.get(candidate)
            if known is None:
                break
            if known == signature:
                return self.types[candidate]
        shape = Complex(candidate, description=schema.get("description"))
        self._signatures[candidate] = signature
        self.types[candidate] = shape  # before its members: a recursive reference finds it
        required = set(schema.get("required", ()))
        taken: set[str] = set()
        for json_name, prop in schema.get("properties", {}).items():
            shape.members.append(
                self._member(
                    json_name,
                    xml_name(json_name, taken),
                    prop,
                    defs,
                    required=json_name in required and not optional_members,
                )
            )
        return shape

    def _member(self, json_name: str, xml: str, prop: dict[str, Any], defs: dict[str, Any], required: bool) -> Member:
        prop, nullable = _strip_null(_resolve(prop, defs))
        prop = _resolve(prop, defs)  # an optional object is anyOf [$ref, null]: its $ref shows once null is gone
        if prop.get("type") == "array" and "items" in prop:
            items, _ = _strip_null(_resolve(prop["items"], defs))
            return Member(
                json_name,
                xml,
                self._value(items, defs, xml),
                required=required and not nullable,
                repeated=True,
                min_items=int(prop.get("minItems", 0)),
                max_items=prop.get("maxItems"),
                nillable=False,
            )
        return Member(json_name, xml, self._value(prop, defs, xml), required=required, nillable=nullable)

    def _value(self, prop: dict[str, Any], defs: dict[str, Any], xml: str) -> Simple | Complex:
        description = prop.get("description")
        variants = _variants(prop, defs)
        if variants:
            return self._variants(variants, defs, xml)
        if "$ref_name" in prop:
            return self._object(prop, defs, prop["$ref_name"], optional_members=False)
        if prop.get("type") == "object" and prop.get("properties") and prop.get("additionalProperties") is False:
            return self._object(prop, defs, prop.get("title") or xml, optional_members=False)
        return simple(prop, description)

    def _variants(self, variants: dict[str, dict[str, Any]], defs: dict[str, Any], xml: str) -> Complex:
        members = [
            self._object(target, defs, target["$ref_name"], optional_members=False) for target in variants.values()
        ]
        signature = "variants:" + ",".join(
            f"{label}={shape.name}" for label, shape in zip(variants, members, strict=True)
        )
        for candidate in _names(f"{xml}_types"):
            known = self._signatures.get(candidate)
            if known is None:
                break
            if known == signature:
                return self.types[candidate]
        shape = Complex(candidate, description="one of these types (xsi:type upstream)", variants=True)
        self._signatures[candidate] = signature
        self.types[candidate] = shape
        taken: set[str] = set()
        for label, member in zip(variants, members, strict=True):
            shape.members.append(Member(label, xml_name(label, taken), member))
        return shape


def _variants(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{label: resolved schema} when `prop` is a union of objects told apart by "@type" (a single-valued const)."""
    options = prop.get("oneOf")
    if not options or not all("$ref" in option for option in options):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for option in options:
        target = _resolve(option, defs)
        tag = target.get("properties", {}).get(TYPE_KEY, {})
        consts = [item.get("const") for item in tag.get("anyOf", [tag]) if "const" in item]
        if len(consts) != 1 or not isinstance(consts[0], str):
            return {}
        found[consts[0]] = target
    return found


def _names(name: str) -> list[str]:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "Type"
    if not (base[0].isalpha() or base[0] == "_"):
        base = "_" + base
    return [base, *(f"{base}{index}" for index in range(2, 1000))]


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref is None and len(prop.get("allOf", ())) == 1:  # pydantic wraps a $ref to add a description
        ref = prop["allOf"][0].get("$ref")
    if ref is None or not ref.startswith("#/$defs/"):
        return prop
    name = ref.removeprefix("#/$defs/")
    target = dict(defs.get(name, {}))
    target["$ref_name"] = name
    if "description" in prop:
        target["description"] = prop["description"]
    return target


def _strip_null(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the schema without its null alternative, whether null was allowed)."""
    options = prop.get("anyOf")
    if options is None:
        types = prop.get("type")
        if isinstance(types, list) and "null" in types:
            rest = [kind for kind in types if kind != "null"]
            return {**prop, "type": rest[0] if len(rest) == 1 else rest}, True
        return prop, False
    others = [option for option in options if option.get("type") != "null"]
    if len(others) == len(options):
        return prop, False
    if len(others) == 1:
        merged = {**{k: v for k, v in prop.items() if k != "anyOf"}, **others[0]}
        return merged, True
    return {**prop, "anyOf": others}, True


def simple(prop: dict[str, Any], description: str | None = None) -> Simple:
    """The XSD built-in and facets of a scalar JSON Schema."""
    kind = prop.get("type")
    facets: list[tuple[str, str]] = []
    if "const" in prop and "enum" not in prop:
        prop = {**prop, "enum": [prop["const"]]}
    if kind == "boolean":
        return Simple("boolean", "boolean", description=description)
    if kind == "integer":
        facets += _ranges(prop)
        facets += [("enumeration", str(value)) for value in prop.get("enum", ())]
        return Simple("integer", "integer", tuple(facets), description)
    if kind == "number":
        facets += _ranges(prop)
        return Simple("decimal", "number", tuple(facets), description)
    if kind == "string":
        if "decimal_places" in prop or "max_digits" in prop or prop.get("format") == "decimal":
            if "max_digits" in prop:
                facets.append(("totalDigits", str(prop["max_digits"])))
            if "decimal_places" in prop:
                facets.append(("fractionDigits", str(prop["decimal_places"])))
            facets += _ranges({"minimum": prop.get("ge"), "exclusiveMinimum": prop.get("gt")})
            facets += _ranges({"maximum": prop.get("le"), "exclusiveMaximum": prop.get("lt")})
            return Simple("decimal", "decimal", tuple(facets), description)
        if prop.get("contentEncoding") == "base64" or prop.get("format") in ("byte", "base64"):
            return Simple("base64Binary", "string", (), description)
        built_in = _FORMATS.get(prop.get("format", ""), "string")
        pattern = prop.get("pattern")
        if built_in == "string":
            if "minLength" in prop and prop.get("minLength") == prop.get("maxLength"):
                facets.append(("length", str(prop["minLength"])))
            else:
                if "minLength" in prop:
                    facets.append(("minLength", str(prop["minLength"])))
                if "maxLength" in prop:
                    facets.append(("maxLength", str(prop["maxLength"])))
            translated = xsd_pattern(pattern) if isinstance(pattern, str) else None
            if translated is not None:
                facets.append(("pattern", translated))
        facets += [("enumeration", str(value)) for value in prop.get("enum", ()) if isinstance(value, str)]
        return Simple(built_in, "string", tuple(facets), description)
    if "enum" in prop and all(isinstance(value, str) for value in prop["enum"]):
        return Simple("string", "string", tuple(("enumeration", value) for value in prop["enum"]), description)
    return Simple("string", "json", (), (description + " " if description else "") + "(JSON text)")


def _ranges(prop: dict[str, Any]) -> list[tuple[str, str]]:
    facets = []
    for key, facet in (
        ("minimum", "minInclusive"),
        ("exclusiveMinimum", "minExclusive"),
        ("maximum", "maxInclusive"),
        ("exclusiveMaximum", "maxExclusive"),
    ):
        value = prop.get(key)
        if value is not None and not isinstance(value, bool):
            facets.append((facet, str(value)))
    return facets
