"""Which hosts a contract (WSDL, OpenAPI) may be fetched from: the operator's allowlist of names and networks.

Without it, registering an upstream by URL made the gateway fetch any address it was given, its own network's
included. An entry is a host name (`district.example`), every name under a domain (`*.district.example`), an
address or a network in CIDR form (`192.0.2.0/24`, `2001:db8::/32`). An empty list allows no fetch at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (blocking: contracts are fetched off the event loop)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (socket.gaierror, UnicodeError):
        return []


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class FetchAllowlist:
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".district.example" for "*.district.example"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> FetchAllowlist:
        """From the setting's entries; a malformed entry raises ValueError naming it."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                pass
            else:
                continue
            if "/" in entry or ":" in entry:
                raise ValueError(f"{raw!r} is not an address or a CIDR network")
            label = entry.removeprefix("*.")
            if not label or any(not part or not part.replace("-", "").isalnum() for part in label.split(".")):
                raise ValueError(f"{raw!r} is not a host name, '*.domain', address or CIDR network")
            if entry.startswith("*."):
                suffixes.append("." + label)
            else:
                names.add(label)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    @classmethod
    def from_setting(cls, value: str) -> FetchAllowlist:
        return cls.parse(value.replace(",", " ").split())

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def refusal(self, url: str, resolver: Resolver = resolve) -> str | None:
        """Why `url` may not be fetched, or None when it may.

        A name listed (or under a listed domain) is trusted as DNS answers for it. Any other name is allowed only
        when every address it resolves to lies in a listed network; an address is allowed when it does.
        """
        if not self:
            return "contract fetches by URL are off (MSJX_CONTRACT_FETCH_ALLOW is empty): upload the documents"
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
        if not host:
            return f"{url}: no host"
        address = _address(host)
        if address is None:
            if host in self.names or host.endswith(self.suffixes):
                return None
            addresses = [found for found in (_address(text) for text in resolver(host)) if found is not None]
            if not addresses:
                return f"{host} is not in MSJX_CONTRACT_FETCH_ALLOW (and does not resolve to a listed network)"
        else:
            addresses = [address]
        outside = [str(found) for found in addresses if not any(found in network for network in self.networks)]
        if outside:
            return f"{host} ({', '.join(outside)}) is not in MSJX_CONTRACT_FETCH_ALLOW"
        return None
