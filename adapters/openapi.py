"""The REST engine: an OpenAPI 3.0/3.1 bundle read once into typed operations, called as JSON over HTTP.

Each operation's input is its parameters (path, query, header) plus `body` (the JSON request body); its output is
the 2xx JSON response, or `{"result": ...}` when that is not an object. JSON Schema becomes pydantic: numbers are
exact decimals (strings in the gateway's JSON, `parse_float=Decimal` when reading the upstream), dates and
date-times are typed, `format: byte` is base64. What has no faithful form is refused at registration, named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Union
from urllib.parse import quote, urldefrag, urljoin, urlsplit

import orjson
from pydantic import AfterValidator, ConfigDict, Field, StrictBool, create_model
from pydantic_core import PydanticCustomError
from yarl import URL

from schemas.errors import MsjxError
from schemas.problems import ProblemCode

from .contracts import ContractBundle, ContractError, parse_openapi_document
from .errors import UpstreamMalformed, UpstreamRejected
from .http import HttpClient, phrase
from .jsondepth import loads_bounded
from .jsontypes import Base64, DecimalText, DerivedModel, JsonFloat, JsonInteger

__all__ = ["RestEngine", "RestOperation"]

_METHODS = ("get", "put", "post", "delete", "patch", "head")
_SAFE = frozenset({"get", "head"})
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class _Refused(MsjxError):
    pass


# A path parameter that is a whole dot segment would climb the upstream's path once the URL is normalised
# (RFC 3986 section 5.2.4; yarl does it): `/records/{id}` with id=".." calls `/` of the upstream.
_DOT_SEGMENTS = frozenset({".", ".."})


def _no_dot_segment(value: Any) -> Any:
    values = value if isinstance(value, list) else [value]
    if any(_text(item) in _DOT_SEGMENTS for item in values):
        raise PydanticCustomError(
            ProblemCode.PATH_DOT_SEGMENT, "a path parameter may not be '.' or '..': it would change the upstream's path"
        )
    return value


def path_segment(values: list[str]) -> str:
    """A path parameter's text as RFC 6570 simple expansion writes it: each value percent-encoded but for the
    unreserved characters (so '/', '?', '#' and '%' cannot leave the segment), a list joined by commas."""
    if any(value in _DOT_SEGMENTS for value in values):  # refused by the input model already; never sent
        raise ValueError("a path parameter may not be a dot segment")
    return ",".join(quote(value, safe="") for value in values)


class InputModel(DerivedModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)


class OutputModel(DerivedModel):
    # Keys the contract does not declare are dropped, never passed on: only what a grant can name leaves.
    model_config = ConfigDict(extra="ignore", populate_by_name=False, frozen=True)


@dataclass
class Parameter:
    name: str
    location: str  # path, query or header
    required: bool
    array: bool


@dataclass
class RestOperation:
    name: str
    summary: str
    method: str
    path: str
    parameters: list[Parameter]
    has_body: bool
    wrap_result: bool  # the response is not an object: the output is {"result": <it>}
    no_content: bool
    input_model: type[DerivedModel]
    output_model: type[DerivedModel]

    @property
    def safe(self) -> bool:
        return self.method in _SAFE


def _decimal_fragment(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))  # the exact digits, as a JSON number
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


class _Schemas:
    """JSON Schema (OpenAPI flavour) → pydantic types, resolving $refs across the bundle's documents."""

    def __init__(self, documents: Mapping[str, Any], service: str) -> None:
        self.documents = documents
        self.service = service
        self._named: dict[tuple[str, str, bool], Any] = {}
        self._resolving: set[tuple[str, str]] = set()
        self._count = 0

    def resolve(self, location: str, node: Any) -> tuple[str, Any]:
        """Follow $ref chains: the (document, node) a reference finally points at."""
        seen = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            target = urljoin(location, node["$ref"])
            if target in seen:
                raise _Refused(f"a $ref cycle at {node['$ref']}")
            seen.add(target)
            location, fragment = urldefrag(target)
            document = self.documents.get(location)
            if document is None:
                raise _Refused(f"$ref to {location}, which is not in the contract")
            node = _pointer(document, fragment, target)
        return location, node

    def python_type(self, location: str, schema: Any, where: str, output: bool, hint: str | None = None) -> Any:
        if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            key = (*urldefrag(urljoin(location, schema["$ref"])), output)
            if key in self._named:
                return self._named[key]
            if key[:2] in self._resolving:
                raise _Refused(f"recursive schema {schema['$ref']} at {where}")
            self._resolving.add(key[:2])
            try:
                target_location, target = self.resolve(location, schema)
                name = key[1].rsplit("/", 1)[-1] or "Schema"
                result = self._type(target_location, target, f"{where} ({schema['$ref']})", output, name)
            finally:
                self._resolving.discard(key[:2])
            self._named[key] = result
            return result
        return self._type(location, schema, where, output, hint)

    def _type(self, location: str, schema: Any, where: str, output: bool, name: str | None) -> Any:
        if schema is True or schema == {}:
            return Any
        if not isinstance(schema, dict):
            raise _Refused(f"a schema that is not an object at {where}")
        nullable = bool(schema.get("nullable"))
        kind = schema.get("type")
        if isinstance(kind, list):  # 3.1: ["string", "null"]
            nullable = nullable or "null" in kind
            kinds = [k for k in kind if k != "null"]
            if len(kinds) != 1:
                raise _Refused(f"a schema of several types {kind} at {where}")
            kind = kinds[0]
        result = self._non_null(location, schema, kind, where, output, name)
        return Union[result, None] if nullable else result  # noqa: UP007

    def _non_null(
        self, location: str, schema: dict[str, Any], kind: Any, where: str, output: bool, name: str | None
    ) -> Any:
        if "enum" in schema:
            values = tuple(value for value in schema["enum"] if value is not None)
            if not values or not all(isinstance(value, str | int | bool) for value in values):
                raise _Refused(f"an enumeration of non-scalar values at {where}")
            return Literal[values]  # type: ignore[valid-type]
        for combiner in ("oneOf", "anyOf"):
            if combiner in schema:
                options = [
                    self.python_type(location, option, f"{where}/{combiner}[{i}]", output)
                    for i, option in enumerate(schema[combiner])
                ]
                return Union[tuple(options)] if len(options) > 1 else options[0]  # noqa: UP007
        if "allOf" in schema:
            return self._object(location, self._merge(location, schema, where), where, output, name)
        if kind == "string":
            fmt = schema.get("format")
            if fmt == "binary":
                raise _Refused(f"binary content (format: binary) at {where}")
            if fmt == "date":
                return date
            if fmt == "date-time":
                return datetime
            if fmt == "byte":
                return Base64
            if fmt == "decimal":
                return DecimalText
            constraints = {
                key: schema[source]
                for key, source in (("pattern", "pattern"), ("min_length", "minLength"), ("max_length", "maxLength"))
                if source in schema
            }
            if constraints:
                from typing import Annotated

                return Annotated[str, Field(**constraints)]
            return str
        if kind == "integer":
            bounds = {key: schema[source] for key, source in (("ge", "minimum"), ("le", "maximum")) if source in schema}
            if bounds:
                from typing import Annotated

                return Annotated[JsonInteger, Field(**bounds)]
            return JsonInteger
        if kind == "number":
            return JsonFloat if schema.get("format") in ("float", "double") else DecimalText
        if kind == "boolean":
            return StrictBool
        if kind == "array":
            items = schema.get("items", {})
            return list[self.python_type(location, items, f"{where}[]", output, name)]  # type: ignore[misc]
        if kind == "object" or "properties" in schema:
            return self._object(location, schema, where, output, name)
        if kind is None:
            return Any
        raise _Refused(f"type {kind!r} at {where}")

    def _merge(self, location: str, schema: dict[str, Any], where: str) -> dict[str, Any]:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part_location, resolved = self.resolve(location, part)
            if "allOf" in resolved:
                resolved = self._merge(part_location, resolved, where)
            if resolved.get("type", "object") != "object":
                raise _Refused(f"allOf of a non-object schema at {where}")
            for prop, definition in (resolved.get("properties") or {}).items():
                merged["properties"][prop] = _located(part_location, definition)
            merged["required"].extend(resolved.get("required") or [])
        for prop, definition in (schema.get("properties") or {}).items():
            merged["properties"][prop] = definition
        merged["required"].extend(schema.get("required") or [])
        return merged

    def _object(self, location: str, schema: dict[str, Any], where: str, output: bool, name: str | None) -> Any:
        properties = schema.get("properties") or {}
        if not properties:
            return dict[str, Any]
        required = set(schema.get("required") or [])
        fields: dict[str, Any] = {}
        for index, (prop, definition) in enumerate(properties.items()):
            prop_location = location
            if isinstance(definition, dict) and "__location__" in definition:
                prop_location, definition = definition["__location__"], definition["schema"]
            python = self.python_type(
                prop_location, definition, f"{where}/{prop}", output, f"{name or 'Object'}_{prop}"
            )
            description = definition.get("description") if isinstance(definition, dict) else None
            options: dict[str, Any] = {"alias": prop, "title": prop}
            if description:
                options["description"] = description
            if prop in required:
                fields[f"f{index}"] = (python, Field(**options))
            else:
                fields[f"f{index}"] = (Union[python, None], Field(default=None, **options))  # noqa: UP007
        self._count += 1
        model_name = _NAME.sub("_", name or f"Object{self._count}")
        base = OutputModel if output else InputModel
        return create_model(model_name, __base__=base, __module__=__name__, **fields)  # type: ignore[call-overload]


def _located(location: str, definition: Any) -> Any:
    # A property taken from another document keeps its document, so its own $refs resolve there.
    return {"__location__": location, "schema": definition}


def _pointer(document: Any, fragment: str, target: str) -> Any:
    node = document
    for part in [p for p in fragment.split("/") if p]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise _Refused(f"$ref {target} points at nothing")
    return node


class RestEngine:
    """One OpenAPI document (with what it references), read once: typed operations and `call` over HTTP."""

    def __init__(
        self, service: str, bundle: ContractBundle, *, endpoint: str | None = None, http: HttpClient | None = None
    ) -> None:
        if bundle.kind != "openapi":
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{bundle.source}: not an OpenAPI bundle")
        self.service = service
        self.http = http or HttpClient(service, headers={"Accept": "application/json"})
        documents = {
            location: parse_openapi_document(location, content) for location, content in bundle.documents.items()
        }
        root = documents[bundle.root]
        if not isinstance(root, dict):
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{bundle.source}: not an OpenAPI document")
        if "swagger" in root:
            raise ContractError(
                ProblemCode.CONTRACT_UNSUPPORTED,
                f"not supported: Swagger {root['swagger']} (convert it to OpenAPI 3 first)",
            )
        version = str(root.get("openapi", ""))
        if not version.startswith("3."):
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{bundle.source}: no 'openapi: 3.x' field")
        self.base_url = self._base_url(root, bundle.root, endpoint)
        self.schemas = _Schemas(documents, service)
        try:
            self.operations = self._operations(bundle.root, root)
        except _Refused as exc:
            raise ContractError(ProblemCode.CONTRACT_UNSUPPORTED, f"not supported: {exc}") from None
        if not self.operations:
            raise ContractError(ProblemCode.CONTRACT_UNSUPPORTED, f"{bundle.source}: no operations under 'paths'")

    def _base_url(self, root: dict[str, Any], location: str, endpoint: str | None) -> str:
        if endpoint:
            return endpoint.rstrip("/")
        servers = root.get("servers") or []
        url = servers[0].get("url") if servers and isinstance(servers[0], dict) else None
        if not url or "{" in url:
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, "the document names no usable servers[0].url; give an endpoint"
            )
        absolute = urljoin(location, url) if not urlsplit(url).scheme else url
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, f"servers[0].url {url!r} is not http(s); give an endpoint"
            )
        return absolute.rstrip("/")

    def _operations(self, location: str, root: dict[str, Any]) -> dict[str, RestOperation]:
        operations: dict[str, RestOperation] = {}
        for path, item in (root.get("paths") or {}).items():
            item_location, item = self.schemas.resolve(location, item)
            for method in _METHODS:
                if method not in item:
                    continue
                operation = item[method]
                name = operation.get("operationId") or f"{method}{_NAME.sub('-', path)}".rstrip("-")
                if name in operations:
                    raise _Refused(f"two operations named {name!r}")
                shared = item.get("parameters") or []
                operations[name] = self._operation(item_location, name, method, path, operation, shared)
        return operations

    def _operation(
        self, location: str, name: str, method: str, path: str, spec: dict[str, Any], shared: list[Any]
    ) -> RestOperation:
        where = f"operation {name}"
        parameters: dict[tuple[str, str], tuple[Parameter, Any, str]] = {}
        for raw in [*shared, *(spec.get("parameters") or [])]:
            raw_location, parameter = self.schemas.resolve(location, raw)
            place = parameter.get("in")
            if place == "cookie":
                raise _Refused(f"a cookie parameter {parameter.get('name')!r} in {where}")
            if "content" in parameter:
                raise _Refused(f"a parameter with 'content' ({parameter.get('name')!r}) in {where}")
            schema = parameter.get("schema") or {}
            _, resolved = self.schemas.resolve(raw_location, schema)
            is_array = isinstance(resolved, dict) and resolved.get("type") == "array"
            required = bool(parameter.get("required")) or place == "path"
            entry = Parameter(parameter["name"], place, required, is_array)
            parameters[(place, parameter["name"])] = (entry, schema, raw_location)
        fields: dict[str, Any] = {}
        ordered: list[Parameter] = []
        for index, (entry, schema, schema_location) in enumerate(parameters.values()):
            python = self.schemas.python_type(schema_location, schema, f"{where} parameter {entry.name}", False)
            if entry.location == "path":
                python = Annotated[python, AfterValidator(_no_dot_segment)]
            options = {"alias": entry.name, "title": entry.name, "description": f"{entry.location} parameter"}
            if entry.required:
                fields[f"p{index}"] = (python, Field(**options))
            else:
                fields[f"p{index}"] = (Union[python, None], Field(default=None, **options))  # noqa: UP007
            ordered.append(entry)
        has_body = False
        body_spec = spec.get("requestBody")
        if body_spec is not None:
            body_location, body_spec = self.schemas.resolve(location, body_spec)
            content = body_spec.get("content") or {}
            json_type = next((kind for kind in content if kind.split(";")[0].strip() == "application/json"), None)
            if json_type is None:
                raise _Refused(f"a request body of {', '.join(content) or 'no type'} (only JSON) in {where}")
            python = self.schemas.python_type(
                body_location, content[json_type].get("schema", {}), f"{where} body", False
            )
            options = {"alias": "body", "title": "body", "description": "the JSON request body"}
            if body_spec.get("required"):
                fields["body"] = (python, Field(**options))
            else:
                fields["body"] = (Union[python, None], Field(default=None, **options))  # noqa: UP007
            has_body = True
        prefix = _NAME.sub("_", f"{self.service}.{name}")
        input_model = create_model(f"{prefix}.input", __base__=InputModel, __module__=__name__, **fields)  # type: ignore[call-overload]
        output_model, wrap, no_content = self._output(location, spec, where, prefix)
        summary = " ".join(str(spec.get("summary") or spec.get("description") or f"{method.upper()} {path}").split())
        return RestOperation(
            name, summary, method, path, ordered, has_body, wrap, no_content, input_model, output_model
        )

    def _output(
        self, location: str, spec: dict[str, Any], where: str, prefix: str
    ) -> tuple[type[DerivedModel], bool, bool]:
        responses = {str(code): response for code, response in (spec.get("responses") or {}).items()}
        codes = sorted(code for code in responses if code.startswith("2"))
        if not codes:
            raise _Refused(f"no 2xx response in {where}")
        response_location, response = self.schemas.resolve(location, responses[codes[0]])
        content = response.get("content") or {}
        if not content:
            empty = create_model(f"{prefix}.output", __base__=OutputModel, __module__=__name__)  # type: ignore[call-overload]
            return empty, False, True
        json_type = next((kind for kind in content if kind.split(";")[0].strip() == "application/json"), None)
        if json_type is None:
            raise _Refused(f"a {codes[0]} response of {', '.join(content)} (only JSON) in {where}")
        schema = content[json_type].get("schema", {})
        python = self.schemas.python_type(response_location, schema, f"{where} response", True)
        if isinstance(python, type) and issubclass(python, OutputModel):
            return python, False, False  # an object: its properties are the fields a grant names
        field = (python, Field(alias="result", title="result", description="the upstream's answer"))
        wrapped = create_model(f"{prefix}.output", __base__=OutputModel, __module__=__name__, f0=field)  # type: ignore[call-overload]
        return wrapped, True, False

    # --- calling --------------------------------------------------------------------------------------------------

    async def call(self, operation_name: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Run one operation with input `data` (a model dump: python values by alias); (output, upstream status)."""
        operation = self.operations[operation_name]
        path = operation.path
        query: list[tuple[str, str]] = []
        headers: dict[str, str] = {}
        for parameter in operation.parameters:
            value = data.get(parameter.name)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            texts = [_text(item) for item in values]
            if parameter.location == "path":
                path = path.replace("{" + parameter.name + "}", path_segment(texts))
            elif parameter.location == "query":
                query.extend((parameter.name, text) for text in texts)
            elif parameter.location == "header":
                headers[parameter.name] = ",".join(texts)
        body = None
        if operation.has_body and data.get("body") is not None:
            body = orjson.dumps(data["body"], default=_decimal_fragment)
            headers["Content-Type"] = "application/json"
        # Encoded already: yarl would otherwise "requote" it, turning a value's %2C back into a list's comma.
        url = URL(str(URL(self.base_url)) + path, encoded=True)
        response = await self.http.request(
            operation.method.upper(), url, params=_multi(query), data=body, headers=headers or None
        )
        status = response.status
        if status >= 300:
            raise UpstreamRejected(self.service, str(status), phrase(status))
        if operation.no_content:
            return {}, str(status)
        try:
            answer = loads_bounded(response.body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamMalformed(self.service, f"body is not JSON ({exc})", str(status)) from None
        if operation.wrap_result:
            return {"result": answer}, str(status)
        if not isinstance(answer, dict):
            raise UpstreamMalformed(self.service, f"body is a JSON {type(answer).__name__}, not an object", str(status))
        return answer, str(status)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _multi(pairs: list[tuple[str, str]]) -> Any:
    if not pairs:
        return None
    from multidict import MultiDict

    return MultiDict(pairs)
