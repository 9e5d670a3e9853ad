"""The adapter interface: operations with typed input and output, one `invoke`, one error model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Operation:
    """One callable operation of an upstream service.

    `safe` marks a read-only operation: only those may be retried.
    `fields` are the top-level keys of the output that a grant may list.
    """

    name: str
    summary: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    safe: bool = True
    fields: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.fields:
            object.__setattr__(self, "fields", tuple(self.output_model.model_fields))


class UpstreamError(Exception):
    """An upstream did not give a usable answer; the gateway maps it to problem+json.

    `status` is the HTTP status the gateway answers with (502 or 504, 503 for an open breaker),
    `code` a stable machine-readable code, `upstream_status` what the upstream said (HTTP status
    or SOAP fault code), for the audit record.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        upstream_status: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    def __init__(self, service: str, seconds: float) -> None:
        super().__init__(
            504, "upstream_timeout", f"{service} did not answer within {seconds:g} s", upstream_status="timeout"
        )


class UpstreamUnavailable(UpstreamError):
    def __init__(self, service: str, reason: str) -> None:
        super().__init__(502, "upstream_unavailable", f"{service} could not be reached: {reason}")


class UpstreamMalformed(UpstreamError):
    def __init__(self, service: str, reason: str, upstream_status: str | None = None) -> None:
        super().__init__(
            502,
            "upstream_malformed",
            f"{service} sent an answer that does not match its contract: {reason}",
            upstream_status=upstream_status,
        )


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error of its own (HTTP 5xx/4xx or a SOAP fault)."""

    def __init__(self, service: str, upstream_status: str, reason: str) -> None:
        super().__init__(
            502, "upstream_error", f"{service} answered {upstream_status}: {reason}", upstream_status=upstream_status
        )


@dataclass
class UpstreamResult:
    """What an adapter returns: the output as plain JSON-able data, and the upstream's status."""

    data: dict[str, Any]
    upstream_status: str = "200"


class Adapter:
    """Base class of every upstream adapter.

    Subclasses set `service` and `operations`, and implement `call`. `start` opens connection
    pools once per process; `close` releases them. The gateway never calls `call` directly:
    it calls `invoke`, which validates the output against the operation's model.
    """

    service: str = ""
    title: str = ""
    operations: ClassVar[dict[str, Operation]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        raise NotImplementedError

    async def invoke(self, operation_name: str, params: BaseModel) -> UpstreamResult:
        operation = self.operations[operation_name]
        result = await self.call(operation, params)
        try:
            validated = operation.output_model.model_validate(result.data)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"{'/'.join(str(part) for part in first['loc'])}: {first['msg']}"
            raise UpstreamMalformed(self.service, reason, result.upstream_status) from exc
        result.data = validated.model_dump(mode="json")
        return result
