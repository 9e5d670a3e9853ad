"""The adapter interface: operations with typed input and output, one `invoke`, one error model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from .resilience import BreakerStore, Guard, ResiliencePolicy


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
            names = tuple(f.alias or name for name, f in self.output_model.model_fields.items())
            object.__setattr__(self, "fields", names)


class UpstreamError(Exception):
    """An upstream did not give a usable answer; the gateway maps it to problem+json.

    `status` is the HTTP status the gateway answers with (502 or 504, 503 for an open breaker),
    `code` a stable machine-readable code, `upstream_status` what the upstream said (HTTP status
    or SOAP fault code), for the audit record. `headers` go out with the problem (Retry-After).

    Two class-level facts drive the resilience layer: `transient` errors may succeed on a retry (a safe
    operation is retried on them), `upstream_failure` errors say the upstream is unwell (the circuit
    breaker counts them). A business answer such as "unknown taxpayer" is neither.
    """

    transient: ClassVar[bool] = False
    upstream_failure: ClassVar[bool] = False

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        upstream_status: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.upstream_status = upstream_status
        self.headers = headers or {}
        self.attempts = 1

    def is_transient(self) -> bool:
        return self.transient

    def is_upstream_failure(self) -> bool:
        return self.upstream_failure


class UpstreamTimeout(UpstreamError):
    transient = True
    upstream_failure = True

    def __init__(self, service: str, seconds: float) -> None:
        super().__init__(
            504, "upstream_timeout", f"{service} did not answer within {seconds:g} s", upstream_status="timeout"
        )


class UpstreamUnavailable(UpstreamError):
    transient = True
    upstream_failure = True

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(502, "upstream_unavailable", f"{service} could not be reached: {reason}")


class UpstreamMalformed(UpstreamError):
    # Not transient: the same question usually gets the same broken answer. It does say the upstream is unwell.
    upstream_failure = True

    def __init__(self, service: str, reason: str, upstream_status: str | None = None) -> None:
        super().__init__(
            502,
            "upstream_malformed",
            f"{service} sent an answer that does not match its contract: {reason}",
            upstream_status=upstream_status,
        )


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error of its own (HTTP 5xx/4xx or a business code).

    An HTTP 5xx is the upstream failing (transient, counted by the breaker); anything else is an answer.
    """

    def __init__(self, service: str, upstream_status: str, reason: str) -> None:
        super().__init__(
            502, "upstream_error", f"{service} answered {upstream_status}: {reason}", upstream_status=upstream_status
        )

    def _server_error(self) -> bool:
        status = self.upstream_status or ""
        return len(status) == 3 and status.startswith("5") and status.isdigit()

    def is_transient(self) -> bool:
        return self._server_error()

    def is_upstream_failure(self) -> bool:
        return self._server_error()


_FAULT_TEXT_MAX = 300


def _clean(text: str | None, limit: int = _FAULT_TEXT_MAX) -> str:
    # The upstream's own words reach the caller: one line, no control characters, bounded.
    cleaned = " ".join((text or "").split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


class UpstreamFault(UpstreamError):
    """A SOAP Fault: 502 `upstream_fault` carrying the upstream's fault code and fault string.

    `receiver` is true for a soap:Server (1.1) / soap:Receiver (1.2) fault: the upstream failed, which is transient
    and counts against it; a Client/Sender fault is an answer about the request and is neither.
    """

    def __init__(
        self,
        service: str,
        fault_code: str,
        fault_string: str,
        *,
        receiver: bool = False,
        code: str = "upstream_fault",
    ) -> None:
        self.fault_code = _clean(fault_code, 64) or "unknown"
        self.fault_string = _clean(fault_string)
        self.receiver = receiver
        super().__init__(
            502,
            code,
            f"{service} answered SOAP Fault {self.fault_code}: {self.fault_string or 'no fault string'}",
            upstream_status=self.fault_code,
        )

    def is_transient(self) -> bool:
        return self.receiver

    def is_upstream_failure(self) -> bool:
        return self.receiver


class UpstreamSubjectUnknown(UpstreamError):
    """The upstream does not know the enterprise asked about (金三: 纳税人识别号不存在; 市场监管: 未查询到该企业).

    Still a 502 carrying the upstream's code and message, but with its own `code` (`upstream_subject_unknown`), so
    the platform can tell "no such taxpayer" from an outage without parsing text. Not transient, not a failure.
    """

    def __init__(self, service: str, upstream_code: str, message: str, *, soap_fault: bool = False) -> None:
        code = _clean(upstream_code, 64) or "unknown"
        what = f"SOAP Fault {code}" if soap_fault else code
        super().__init__(
            502,
            "upstream_subject_unknown",
            f"{service} does not know this enterprise; it answered {what}: {_clean(message) or 'no message'}",
            upstream_status=code,
        )


class UpstreamCircuitOpen(UpstreamError):
    """The circuit breaker of this upstream is open: 503 with Retry-After, no request was sent."""

    def __init__(self, service: str, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            503,
            "upstream_circuit_open",
            f"{service} is failing; calls are paused for {seconds} s while it recovers",
            upstream_status="circuit_open",
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = seconds


class UpstreamBusy(UpstreamError):
    """Every connection slot of this upstream stayed taken for the queue time: 503 with Retry-After, nothing sent."""

    def __init__(self, service: str, limit: int, waited: float) -> None:
        super().__init__(
            503,
            "upstream_busy",
            f"{service} already has {limit} calls in flight; none finished within {waited:g} s",
            upstream_status="busy",
            headers={"Retry-After": "1"},
        )


@dataclass
class UpstreamResult:
    """What an adapter returns: the output as plain JSON-able data, and the upstream's status."""

    data: dict[str, Any]
    upstream_status: str = "200"
    attempts: int = 1


class Adapter:
    """Base class of every upstream adapter.

    Subclasses set `service` and `operations`, and implement `call`. `start` opens connection
    pools once per process; `close` releases them. The gateway never calls `call` directly:
    it calls `invoke`, which runs it under the upstream's resilience guard (timeouts are the
    client's; concurrency bound, circuit breaker and retries of safe operations are the guard's)
    and validates the output against the operation's model.
    """

    service: str = ""
    title: str = ""
    # The department owning the system's data (提供单位) when the gateway first offers it; a registered
    # upstream's comes from its registration instead. Empty: no department owns it until an admin names one.
    provider_department: str = ""
    operations: ClassVar[dict[str, Operation]] = {}
    # Operations the upstream's contract also offers in bulk (one request, many subjects), with the most subjects
    # one bulk request may carry. A batch job uses them; single calls never do.
    bulk_operations: ClassVar[dict[str, int]] = {}
    _guard: Guard | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        raise NotImplementedError

    @property
    def guard(self) -> Guard:
        if self._guard is None:
            from .resilience import Guard

            self._guard = Guard(self.service)
        return self._guard

    def configure_resilience(self, policy: ResiliencePolicy | None = None, store: BreakerStore | None = None) -> None:
        """Set this upstream's policy and where its breaker state lives (before `start`)."""
        from .resilience import Guard

        current = self._guard
        self._guard = Guard(
            self.service,
            policy if policy is not None else (current.policy if current else None),
            store if store is not None else (current.store if current else None),
        )

    async def invoke(self, operation_name: str, params: BaseModel) -> UpstreamResult:
        operation = self.operations[operation_name]
        return await self.guard.run(operation.safe, lambda: self._call_checked(operation, params))

    async def call_bulk(
        self, operation: Operation, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        """One bulk request: an answer or an error per subject, in the order asked (subclasses with bulk operations)."""
        raise NotImplementedError

    async def invoke_bulk(
        self, operation_name: str, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        """Many subjects in one request, under the same guard as single calls; each answer checked on its own."""
        operation = self.operations[operation_name]
        limit = self.bulk_operations.get(operation_name, 0)
        if not 0 < len(params) <= limit:
            raise ValueError(f"{self.service}/{operation_name} takes 1 to {limit} subjects in bulk, not {len(params)}")

        async def bulk() -> UpstreamResult:
            # The guard deals in one result (it counts its attempts): the answers ride in it.
            return UpstreamResult({"answers": await self._bulk_checked(operation, params)})

        carrier = await self.guard.run(operation.safe, bulk)
        answers: list[UpstreamResult | UpstreamError] = carrier.data["answers"]
        for answer in answers:
            answer.attempts = carrier.attempts
        return answers

    async def _bulk_checked(
        self, operation: Operation, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        answers = await self.call_bulk(operation, params)
        if len(answers) != len(params):
            raise UpstreamMalformed(self.service, f"{len(answers)} answers to {len(params)} subjects")
        checked: list[UpstreamResult | UpstreamError] = []
        for answer in answers:
            if isinstance(answer, UpstreamResult):
                try:
                    answer.data = operation.output_model.model_validate(answer.data).model_dump(
                        mode="json", by_alias=True
                    )
                except ValidationError as exc:
                    first = exc.errors()[0]
                    reason = f"{'/'.join(str(part) for part in first['loc'])}: {first['msg']}"
                    checked.append(UpstreamMalformed(self.service, reason, answer.upstream_status))
                    continue
            checked.append(answer)
        return checked

    async def _call_checked(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        result = await self.call(operation, params)
        try:
            validated = operation.output_model.model_validate(result.data)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"{'/'.join(str(part) for part in first['loc'])}: {first['msg']}"
            raise UpstreamMalformed(self.service, reason, result.upstream_status) from exc
        result.data = validated.model_dump(mode="json", by_alias=True)
        return result
