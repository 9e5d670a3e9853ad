"""Behind reverse proxies: the client, scheme and authority a request was made with, from the headers of trusted peers.

A proxy listed in MSJX_TRUSTED_PROXIES may tell, in `Forwarded` (RFC 7239) or `X-Forwarded-For/-Host/-Proto`, the
address of its client and the scheme and Host the client used. The gateway then rebuilds `@target-uri` (and so
`@authority` and `@scheme`) as the client signed it, and counts per-address limits against the client's address.
From any other peer those headers are ignored: anyone could write them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto")
# Scope keys the application reads (gateway.access.authenticate.target_uri): the authority and the TCP peer
# before rewriting.
AUTHORITY_KEY = "msjx.authority"
PEER_KEY = "msjx.peer"

# RFC 7239 section 4: forwarded-pair = token "=" value, value = token / quoted-string.
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class ForwardedView:
    """What trusted proxies said about a request; a None field means they said nothing about it."""

    client: str | None
    host: str | None
    scheme: str | None


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed: addresses and networks from MSJX_TRUSTED_PROXIES."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> TrustedProxies:
        """Addresses or CIDRs, comma or space separated; ValueError names the first bad entry."""
        networks = []
        for entry in re.split(r"[,\s]+", text.strip()):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                example = "such as 192.0.2.10 or 192.0.2.0/24"
                raise ValueError(f"{entry!r} is not an IP address or network ({example})") from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        if not self.networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def view(self, peer: str | None, headers: list[tuple[bytes, bytes]]) -> ForwardedView | None:
        """What the proxies in front said, walking back from `peer` through trusted hops; None if `peer` is not
        trusted or sent no forwarding header. `Forwarded` wins over the X-Forwarded-* family when both came."""
        if not self.trusts(peer):
            return None
        found: dict[bytes, list[str]] = {}
        for name, value in headers:
            if name in FORWARDED_HEADERS:
                found.setdefault(name, []).append(value.decode("latin-1"))
        if b"forwarded" in found:
            return self._from_forwarded(found[b"forwarded"])
        if found:
            return self._from_x_forwarded(found)
        return None

    def _from_forwarded(self, lines: list[str]) -> ForwardedView | None:
        elements = [_element(text) for line in lines for text in _split_elements(line)]
        if not elements or any(element is None for element in elements):
            return None  # malformed: believe none of it rather than part of it
        # The last element was written by the peer; each earlier one by the `for` of the element after it.
        index = len(elements) - 1
        while index > 0 and self.trusts(_node_address(elements[index].get("for"))):  # type: ignore[union-attr]
            index -= 1
        chosen: dict[str, str] = elements[index]  # type: ignore[assignment]
        return ForwardedView(
            client=_node_address(chosen.get("for")),
            host=_valid_host(chosen.get("host")),
            scheme=_valid_scheme(chosen.get("proto")),
        )

    def _from_x_forwarded(self, found: dict[bytes, list[str]]) -> ForwardedView:
        chain = _list(found.get(b"x-forwarded-for", []))
        hops = 1
        client = None
        if chain:
            index = len(chain) - 1
            while index > 0 and self.trusts(chain[index]):
                index -= 1
            client = _node_address(chain[index])
            hops = len(chain) - index
        # Host and proto are written by the same proxies as the addresses: take the value `hops` from the right.
        hosts = _list(found.get(b"x-forwarded-host", []))
        protos = _list(found.get(b"x-forwarded-proto", []))
        return ForwardedView(
            client=client,
            host=_valid_host(hosts[max(len(hosts) - hops, 0)]) if hosts else None,
            scheme=_valid_scheme(protos[max(len(protos) - hops, 0)]) if protos else None,
        )


def apply(proxies: TrustedProxies, scope: dict[str, Any]) -> None:
    """Rewrite an HTTP scope from a trusted peer: `client` and `scheme` as the proxies tell, the authority under
    AUTHORITY_KEY (the Host header itself stays as received), the TCP peer under PEER_KEY."""
    client = scope.get("client")
    peer = client[0] if client else None
    view = proxies.view(peer, scope["headers"])
    if view is None:
        return
    scope[PEER_KEY] = peer
    if view.client is not None:
        scope["client"] = (view.client, 0)
    if view.scheme is not None:
        scope["scheme"] = view.scheme
    if view.host is not None:
        scope[AUTHORITY_KEY] = view.host


def ignored_headers(scope: dict[str, Any]) -> list[str]:
    """Forwarding headers a request carried that were not believed (its peer is not trusted), by name."""
    if PEER_KEY in scope:
        return []
    names = {name for name, _ in scope["headers"] if name in FORWARDED_HEADERS}
    return [name.decode() for name in FORWARDED_HEADERS if name in names]


def _split_unquoted(text: str, separator: str) -> list[str]:
    """`text` cut at each `separator` outside a quoted-string (RFC 7239 values may quote a comma or semicolon)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _split_elements(line: str) -> list[str]:
    return [part for part in _split_unquoted(line, ",") if part.strip()]


def _element(text: str) -> dict[str, str] | None:
    pairs: dict[str, str] = {}
    for piece in _split_unquoted(text, ";"):
        if not piece.strip():
            continue
        match = _PAIR.fullmatch(piece)
        if match is None:
            return None
        name, value = match[1].lower(), match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in pairs:
            return None  # RFC 7239 section 4: a parameter at most once per element
        pairs[name] = value
    return pairs


def _node_address(node: str | None) -> str | None:
    """The IP of a `for` node (RFC 7239 section 6): `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`; else
    None (obfuscated identifiers such as `_hidden` and `unknown` are not addresses)."""
    if not node:
        return None
    node = node.strip()
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None


def _valid_host(host: str | None) -> str | None:
    host = (host or "").strip()
    return host if host and _HOST.fullmatch(host) else None


def _valid_scheme(proto: str | None) -> str | None:
    proto = (proto or "").strip().lower()
    return proto if proto in ("http", "https") else None


def _list(lines: list[str]) -> list[str]:
    return [item.strip() for line in lines for item in line.split(",") if item.strip()]
