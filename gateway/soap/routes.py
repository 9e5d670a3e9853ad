"""The façade's routes: `GET /soap/{service}?wsdl` serves the generated contract; `POST /soap/{service}` runs one call.

A call is one audited exchange like /v1's (gateway/pipeline/exchange.py) and runs the same operation path
(gateway/api/services.py `Invocations.call`): authentication, grant, quota, the upstream, minimization, the audit
record committed before the answer. Only the envelope differs. The event is `soap.invoke`, so the audit record and
/metrics (`interface="soap"`) say the call came through the façade. A refusal is the problem /v1 would answer,
sent as a SOAP Fault whose detail carries its `code`; the audit record keeps that problem document.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from adapters.base import Adapter, Operation
from gateway.access.authenticate import Principal, target_uri
from gateway.api.deps import AdaptersDep, AuthenticatorDep, CertificatesDep
from gateway.api.services import InvocationsDep
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem, validation_problem
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.soap.contract import ServiceContract, build_contract, wsdl_document
from gateway.soap.messages import (
    CONTENT_TYPES,
    Envelope,
    check_headers,
    fault_status,
    operation_for,
    parse_envelope,
    read_request,
    refuse_username_token,
    write_answer,
    write_fault,
)
from schemas.api import InvokeRequest
from schemas.problems import ProblemCode

# Outside the OpenAPI document: the façade's contract is its WSDL, and its Faults are SOAP's, not problem+json.
router = APIRouter(prefix="/soap", tags=["soap"], include_in_schema=False)
EVENT = "soap.invoke"
WSDL_CONTENT_TYPE = "text/xml; charset=utf-8"
# Headers of a problem that still mean something on a Fault.
_KEPT_HEADERS = ("retry-after", "www-authenticate", "connection", "x-request-id")

_contracts: weakref.WeakKeyDictionary[Adapter, ServiceContract] = weakref.WeakKeyDictionary()


def contract_for(adapters: Mapping[str, Adapter], service: str) -> tuple[Adapter, ServiceContract]:
    adapter = adapters.get(service)
    if adapter is None:
        raise Problem(ProblemCode.UNKNOWN_SERVICE, f"no service {service!r}")
    contract = _contracts.get(adapter)
    if contract is None:
        contract = _contracts[adapter] = build_contract(service, adapter)
    return adapter, contract


@router.get(
    "/{service}",
    summary="WSDL of a service's SOAP façade",
    description="The generated WSDL 1.1 (document/literal wrapped, SOAP 1.1 and 1.2 bindings) of one service:"
    " every operation takes `purpose` and `params` and answers `data` (granted fields only) and `meta`; a refusal"
    " is a SOAP Fault whose detail `gw:problem` carries the problem `code`. Served with or without `?wsdl`;"
    " reading it needs no signature.",
    responses={200: {"content": {"text/xml": {}}}},
)
async def wsdl(request: Request, service: str, adapters: AdaptersDep) -> Response:
    adapter, contract = contract_for(adapters, service)
    address = target_uri(request).split("?", 1)[0]
    return Response(wsdl_document(contract, address, adapter.title), media_type=WSDL_CONTENT_TYPE)


@dataclass
class _Call:
    """What the exchange learns about the envelope, for the Fault an early refusal becomes."""

    version: str
    envelope: Envelope | None = None

    def parsed(self, body: bytes) -> Envelope:
        if self.envelope is None:
            self.envelope = parse_envelope(body)
            self.version = self.envelope.version
        return self.envelope


def _version_from_headers(request: Request) -> str:
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            return "1.2" if b"application/soap+xml" in value.lower() else "1.1"
    return "1.1"


@router.post(
    "/{service}",
    summary="Call a service through the SOAP façade",
    description="One SOAP 1.1 or 1.2 request (document/literal wrapped) to an operation of the service's WSDL."
    " Authenticated by an RFC 9421 signature as on /v1, or by a client certificate registered with"
    " `msjx-gateway callers add-cert` (verified by the gateway's TLS listener or a trusted proxy); WS-Security"
    " UsernameToken is refused.",
    responses={200: {"content": {"text/xml": {}, "application/soap+xml": {}}}},
)
async def call(
    request: Request,
    service: str,
    invocations: InvocationsDep,
    authenticator: AuthenticatorDep,
    certificates: CertificatesDep,
) -> Response:
    state = _Call(_version_from_headers(request))

    async def authenticate(request: Request, body: bytes, offload: bool) -> Principal:
        if not _signed(request):
            certificate = certificates.client_certificate(request)
            if certificate is not None:
                return await certificates.authenticate(certificate)
            _refuse_username_token(state, body)
        return await authenticator.authenticate(request, body, offload=offload)

    async def handle(exchange: Exchange) -> tuple[int, bytes]:
        envelope = state.parsed(exchange.body)
        exchange.media_type = CONTENT_TYPES[envelope.version]
        check_headers(envelope)
        _, contract = contract_for(invocations.adapters, service)
        shape = operation_for(contract, envelope)
        exchange.event.operation = shape.operation.name

        def read(exchange: Exchange, operation: Operation) -> InvokeRequest:
            document = read_request(contract, shape, envelope.body)
            try:
                return InvokeRequest.model_validate(document)
            except ValidationError as exc:
                raise validation_problem(exc.errors()) from None

        status, answer = await invocations.call(exchange, service, shape.operation.name, read)
        if isinstance(answer, bytes):  # the payment path renders its own answer, or a stored refusal
            document = orjson.loads(answer)
            if status >= 400:
                return fault_status(envelope.version, status), write_fault(envelope.version, document)
            answer = document
        return status, write_answer(contract, shape, envelope.version, answer)

    response = await run_exchange(request, EVENT, handle, service=service, authenticate=authenticate)
    if response.media_type != PROBLEM_CONTENT_TYPE:
        return response
    problem = orjson.loads(bytes(response.body))
    headers = {name: value for name, value in response.headers.items() if name in _KEPT_HEADERS}
    return Response(
        write_fault(state.version, problem),
        status_code=fault_status(state.version, response.status_code),
        media_type=CONTENT_TYPES[state.version],
        headers=headers,
    )


def _signed(request: Request) -> bool:
    return any(name in (b"signature", b"signature-input") for name, _ in request.scope["headers"])


def _refuse_username_token(state: _Call, body: bytes) -> None:
    """An unsigned call without a certificate that offers a UsernameToken gets the refusal that says why."""
    try:
        envelope = state.parsed(body)
    except Problem:
        return  # not readable: the authentication failure is the answer
    refuse_username_token(envelope)
