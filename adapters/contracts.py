"""Upstream contracts (a WSDL with its imports, or an OpenAPI document with its $refs) gathered into one bundle.

A bundle holds every document the contract needs, byte for byte, keyed by absolute location. It is gathered once,
at registration (bounded in count, size and time, with no DTDs and no entities), stored in the database, and every
gateway node builds its client from the stored bytes: no node fetches anything at call time.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import yaml
from lxml import etree

from schemas.errors import MsjxError
from schemas.problems import ProblemCode

from .fetch_allow import FetchAllowlist, Resolver, resolve
from .jsondepth import MAX_JSON_DEPTH, JsonTooDeep, json_depth_exceeds, loads_bounded
from .soap_wellknown import well_known

__all__ = [
    "MAX_DOCUMENTS",
    "MAX_DOCUMENT_BYTES",
    "ContractBundle",
    "ContractError",
    "Fetcher",
    "bundle_from_files",
    "default_fetcher",
    "gather",
    "location_of",
    "parse_openapi_document",
    "parse_xml_document",
]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENTS = 64
FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 5
INLINE_BASE = "file:///bundle/"

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"


class ContractError(MsjxError, ValueError):
    """A contract cannot be registered. `code` is stable: contract_unreachable, contract_invalid, contract_unsupported.

    The message names the document and the construct, so the operator can fix the contract or ask for support.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Fetcher = Callable[[str], bytes]


@dataclass(frozen=True)
class ContractBundle:
    """Every document of one contract: `kind` wsdl or openapi, the root's key, and the documents by location."""

    kind: str
    root: str
    documents: Mapping[str, bytes]
    source: str

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256(self.kind.encode() + b"\0" + self.root.encode() + b"\0")
        for key in sorted(self.documents):
            content = self.documents[key]
            hasher.update(f"{key}\0{len(content)}\0".encode())
            hasher.update(content)
        return hasher.hexdigest()

    @property
    def size(self) -> int:
        return sum(len(content) for content in self.documents.values())

    def to_json(self) -> dict[str, Any]:
        # base64: a GBK or UTF-16 document must come back byte for byte.
        return {
            "kind": self.kind,
            "root": self.root,
            "source": self.source,
            "documents": {key: base64.b64encode(value).decode("ascii") for key, value in self.documents.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContractBundle:
        documents = {key: base64.b64decode(value) for key, value in data["documents"].items()}
        return cls(data["kind"], data["root"], documents, data.get("source", data["root"]))


def location_of(source: str, *, allow_files: bool) -> str:
    """The absolute location of what an operator named: an http(s) URL, or (CLI only) a local path."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return source
    if scheme == "file" or (len(scheme) != 1 and scheme):  # a Windows drive letter is not a scheme
        if scheme == "file" and allow_files:
            return source
        raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{source!r}: only http(s) URLs are accepted here")
    if not allow_files:
        raise ContractError(
            ProblemCode.CONTRACT_UNREACHABLE, f"{source!r}: give an http(s) URL or the documents themselves"
        )
    return Path(source).expanduser().resolve().as_uri()


def default_fetcher(
    *,
    allow_files: bool,
    allow: FetchAllowlist | None = None,
    timeout: float = FETCH_TIMEOUT,
    resolver: Resolver = resolve,
) -> Fetcher:
    """Reads file:// (when allowed) and http(s) locations the allowlist `allow` admits (none when it is empty or
    None), following at most MAX_REDIRECTS redirects, each checked again; anything over MAX_DOCUMENT_BYTES is refused.
    """
    allowlist = allow or FetchAllowlist()

    def fetch(location: str) -> bytes:
        scheme = urlsplit(location).scheme.lower()
        if scheme == "file":
            if not allow_files:
                raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{location}: local files are not accepted here")
            path = Path(urlsplit(location).path)
            try:
                with path.open("rb") as handle:
                    content = handle.read(MAX_DOCUMENT_BYTES + 1)
            except OSError as exc:
                raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{path}: {exc.strerror or exc}") from None
        elif scheme in ("http", "https"):
            content = _http_get(location, timeout, allowlist, resolver)
        else:
            raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{location}: unsupported location scheme {scheme!r}")
        if len(content) > MAX_DOCUMENT_BYTES:
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{location}: larger than {MAX_DOCUMENT_BYTES} bytes")
        return content

    return fetch


def _check_allowed(url: str, allowlist: FetchAllowlist, resolver: Resolver) -> None:
    reason = allowlist.refusal(url, resolver)
    if reason is not None:
        raise ContractError(ProblemCode.CONTRACT_FETCH_FORBIDDEN, reason)


def _http_get(url: str, timeout: float, allowlist: FetchAllowlist, resolver: Resolver) -> bytes:
    import httpx

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _check_allowed(url, allowlist, resolver)  # the first URL and every hop a redirect names
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = urljoin(url, response.headers["location"])
                        if urlsplit(target).scheme.lower() not in ("http", "https"):
                            raise ContractError(ProblemCode.CONTRACT_FETCH_FORBIDDEN, f"{url}: redirected to {target}")
                        url = target
                        continue
                    if response.status_code != 200:
                        raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{url}: HTTP {response.status_code}")
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > MAX_DOCUMENT_BYTES:
                            raise ContractError(
                                ProblemCode.CONTRACT_INVALID, f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes"
                            )
                        chunks.append(chunk)
                    return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{url}: {type(exc).__name__}: {exc}") from None
    raise ContractError(ProblemCode.CONTRACT_UNREACHABLE, f"{url}: more than {MAX_REDIRECTS} redirects")


# --- safe parsing ------------------------------------------------------------------------------------------------


def _xml_parser() -> etree.XMLParser:
    # No DTD loading, no entity expansion, no network, libxml2's default depth and size limits (huge_tree off).
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml_document(location: str, content: bytes) -> etree._Element:
    """Parse one contract document; a DTD, an entity or malformed XML is a ContractError naming the document."""
    try:
        root = etree.fromstring(content, parser=_xml_parser(), base_url=location)
    except etree.XMLSyntaxError as exc:
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"{location}: not well-formed XML ({exc.msg})") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise ContractError(
            ProblemCode.CONTRACT_UNSUPPORTED, f"{location}: a DTD (<!DOCTYPE>) is not accepted in a contract"
        )
    return root


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: an alias bomb expands a few kilobytes into gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in a contract", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_openapi_document(location: str, content: bytes) -> Any:
    """JSON or YAML, as the document is written; a parse error is a ContractError naming the document."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"{location}: an OpenAPI document must be UTF-8") from None
    try:
        if text.lstrip().startswith("{"):
            return loads_bounded(text)
        if json_depth_exceeds(text):  # YAML's flow style nests with brackets too
            raise JsonTooDeep(MAX_JSON_DEPTH)
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass without aliases
    except JsonTooDeep as exc:
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"{location}: {exc}") from None
    except RecursionError:  # PyYAML composes block-style nesting recursively too
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"{location}: nested too deeply") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ContractError(
            ProblemCode.CONTRACT_INVALID, f"{location}: not valid JSON or YAML ({_one_line(exc)})"
        ) from None


def _one_line(exc: json.JSONDecodeError | yaml.YAMLError) -> str:
    """PyYAML's message quotes the document over several lines; a problem detail and a CLI error are one."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem}, line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


# --- gathering ---------------------------------------------------------------------------------------------------


def _xml_references(location: str, root: etree._Element) -> list[str]:
    from zeep.loader import absolute_location

    found = []
    for node in root.iter(f"{{{WSDL_NS}}}import"):
        if node.get("location"):
            found.append(node.get("location"))
    for tag in ("import", "include", "redefine"):
        for node in root.iter(f"{{{XSD_NS}}}{tag}"):
            if node.get("schemaLocation"):
                found.append(node.get("schemaLocation"))
    return [absolute_location(reference, location) for reference in found]


def _json_references(location: str, document: Any) -> list[str]:
    found: list[str] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                found.append(urldefrag(urljoin(location, ref)).url)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def gather(kind: str, source: str, fetch: Fetcher, root: str | None = None) -> ContractBundle:
    """Fetch the root document and, transitively, every document it imports or references."""
    if kind not in ("wsdl", "openapi"):
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"unknown contract kind {kind!r}")
    start = root or source
    documents: dict[str, bytes] = {}
    pending = [start]
    referrers: dict[str, str] = {}
    total = 0
    while pending:
        location = pending.pop(0)
        if location in documents:
            continue
        if len(documents) >= MAX_DOCUMENTS:
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{start}: more than {MAX_DOCUMENTS} documents")
        try:
            content = fetch(location)
        except ContractError as exc:
            if location not in referrers:
                raise
            # Name the construct: which document imports or includes the one that could not be read.
            raise ContractError(
                exc.code, f"{exc} (an import or include of {location} in {referrers[location]})"
            ) from None
        total += len(content)
        if total > MAX_BUNDLE_BYTES:
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, f"{start}: the documents exceed {MAX_BUNDLE_BYTES} bytes together"
            )
        documents[location] = content
        if kind == "wsdl":
            references = _xml_references(location, parse_xml_document(location, content))
        else:
            references = _json_references(location, parse_openapi_document(location, content))
        for ref in references:
            if kind == "wsdl" and well_known(ref) is not None:
                continue  # a schema every SOAP stack knows (xml.xsd …): read from the gateway's own copy, never fetched
            if ref not in documents:
                referrers.setdefault(ref, location)
                pending.append(ref)
    return ContractBundle(kind, start, documents, source)


def bundle_from_files(kind: str, files: Mapping[str, str | bytes], root: str) -> ContractBundle:
    """A bundle from documents given inline (the admin API): relative names, resolved among themselves only."""
    if root not in files:
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"the root document {root!r} is not among the files given")
    contents: dict[str, bytes] = {}
    for name, content in files.items():
        if "://" in name or name.startswith("/") or ".." in Path(name).parts:
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"{name!r}: inline documents are named by relative paths")
        contents[INLINE_BASE + name] = content.encode("utf-8") if isinstance(content, str) else content

    def fetch(location: str) -> bytes:
        if location not in contents:
            name = location.removeprefix(INLINE_BASE)
            raise ContractError(ProblemCode.CONTRACT_INVALID, f"the contract refers to {name!r}, which was not given")
        return contents[location]

    bundle = gather(kind, INLINE_BASE + root, fetch)
    return ContractBundle(kind, bundle.root, bundle.documents, f"inline:{root}")
