"""Upstreams registered at runtime from their contract: each WSDL or OpenAPI operation becomes `NAME/operation`.

`build_registered` turns a stored `UpstreamSpec` into an Adapter; building it is the whole check, so a contract that
would fail is refused at registration, never at call time. SOAP operations are unsafe (never retried) unless the
operator names them safe; OpenAPI GET/HEAD operations are safe.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas.problems import ProblemCode

from .base import Adapter, Operation, UpstreamResult
from .contracts import ContractBundle, ContractError
from .http import DEFAULT_MAX_BODY, HttpClient
from .openapi import RestEngine
from .policy import ResiliencePolicy
from .soap import SoapEngine

__all__ = ["NAME_PATTERN", "RegisteredAdapter", "UpstreamSpec", "build_registered", "check_name"]

NAME_PATTERN = r"^[a-z][a-z0-9-]{1,62}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ContractError(
            ProblemCode.NAME_INVALID,
            f"{name!r}: an upstream name is 2-63 characters of a-z, 0-9 and '-', starting with a letter",
        )


@dataclass(frozen=True)
class UpstreamSpec:
    """Everything needed to build a registered upstream on any node: the stored row, as data."""

    name: str
    bundle: ContractBundle
    endpoint: str | None = None
    policy: ResiliencePolicy = field(default_factory=ResiliencePolicy)
    safe: frozenset[str] = frozenset()  # SOAP operations the operator declares read-only (so retried)
    title: str = ""
    # What a SOAP upstream demands besides the body: {"headers": {part: {field: value}}, "wsse": {"username",
    # "password"}}. A value "secret:NAME" is read from MSJX_SECRET_NAME on each node, never stored or logged.
    soap_auth: Mapping[str, Any] | None = None


class RegisteredAdapter(Adapter):
    """An adapter whose operations come from a contract; `call` hands the validated input to its engine."""

    def __init__(self, spec: UpstreamSpec, engine: SoapEngine | RestEngine, http: HttpClient) -> None:
        self.service = spec.name
        self.spec = spec
        self.engine = engine
        self.http = http
        self.kind = spec.bundle.kind
        self.title = spec.title or f"{spec.name} ({'WSDL' if self.kind == 'wsdl' else 'OpenAPI'}: {spec.bundle.source})"
        self.operations = {  # type: ignore[misc]  # per instance: every registered upstream has its own
            name: Operation(
                name,
                operation.summary,
                input_model=operation.input_model,
                output_model=operation.output_model,
                safe=operation.safe if isinstance(engine, RestEngine) else name in spec.safe,  # type: ignore[union-attr]
            )
            for name, operation in engine.operations.items()
        }
        self.policy = spec.policy

    async def start(self) -> None:
        policy = self.policy
        self.http.set_timeouts(policy.total_timeout, policy.connect, policy.read_timeout, policy.max_concurrency)
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        # exclude_unset: an optional value the caller left out is left out upstream too (not sent as null).
        data = params.model_dump(mode="python", by_alias=True, exclude_unset=True)
        output, status = await self.engine.call(operation.name, data)
        return UpstreamResult(output, upstream_status=status)

    def describe(self) -> list[dict[str, Any]]:
        """The operations as `upstreams list` and the admin API show them."""
        return [
            {
                "operation": operation.name,
                "summary": operation.summary,
                "safe": operation.safe,
                "fields": list(operation.fields),
            }
            for operation in self.operations.values()
        ]


def build_registered(spec: UpstreamSpec, max_body: int = DEFAULT_MAX_BODY) -> RegisteredAdapter:
    """Parse the contract and derive every operation's models; raises ContractError naming what is refused."""
    check_name(spec.name)
    http = HttpClient(spec.name, timeout=spec.policy.total_timeout, max_body=max_body)
    engine: SoapEngine | RestEngine
    if spec.bundle.kind == "wsdl":
        headers, wsse = _soap_auth(spec.soap_auth or {})
        engine = SoapEngine(spec.name, spec.bundle, endpoint=spec.endpoint, http=http, soap_headers=headers, wsse=wsse)
        unknown = sorted(set(spec.safe) - set(engine.operations))
        if unknown:
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, f"--safe names operations the WSDL does not have: {unknown}"
            )
    elif spec.bundle.kind == "openapi":
        if spec.soap_auth:
            raise ContractError(ProblemCode.CONTRACT_INVALID, "SOAP headers and WS-Security are for WSDL upstreams")
        if spec.safe:
            raise ContractError(
                ProblemCode.CONTRACT_INVALID, "--safe is for WSDL operations; OpenAPI GET/HEAD are safe already"
            )
        http = HttpClient(
            spec.name, timeout=spec.policy.total_timeout, max_body=max_body, headers={"Accept": "application/json"}
        )
        engine = RestEngine(spec.name, spec.bundle, endpoint=spec.endpoint, http=http)
    else:
        raise ContractError(ProblemCode.CONTRACT_INVALID, f"unknown contract kind {spec.bundle.kind!r}")
    return RegisteredAdapter(spec, engine, http)


SECRET_PREFIX = "secret:"  # noqa: S105 - the prefix of a reference, not a secret
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def secret_variable(name: str) -> str:
    return "MSJX_SECRET_" + name.upper()


def resolve_secret(value: str) -> str:
    """A registered value: itself, or for "secret:NAME" the value of MSJX_SECRET_NAME on this node."""
    if not value.startswith(SECRET_PREFIX):
        return value
    name = value.removeprefix(SECRET_PREFIX)
    if not _SECRET_NAME.match(name):
        raise ContractError(ProblemCode.SECRET_INVALID, f"{value!r}: a secret is named by letters, digits and _")
    found = os.environ.get(secret_variable(name))
    if found is None:
        raise ContractError(
            ProblemCode.SECRET_MISSING, f"the secret {name} is not set on this node ({secret_variable(name)})"
        )
    return found


def _soap_auth(auth: Mapping[str, Any]) -> tuple[dict[str, dict[str, str]], Any]:
    headers = {
        str(part): {str(field): resolve_secret(str(value)) for field, value in fields.items()}
        for part, fields in (auth.get("headers") or {}).items()
    }
    wsse = None
    token = auth.get("wsse") or {}
    if token.get("x509_key"):
        # An X.509 signature over the Body and Timestamp (WS-Security, through xmlsec), key and certificate in PEM.
        from zeep.wsse.signature import MemorySignature

        wsse = MemorySignature(
            resolve_secret(str(token["x509_key"])).encode(), resolve_secret(str(token["x509_cert"])).encode()
        )
    elif token.get("username"):
        from zeep.wsse.username import UsernameToken

        wsse = UsernameToken(resolve_secret(str(token["username"])), resolve_secret(str(token["password"])))
    return headers, wsse
