"""The upstream error tree: what an adapter raises when an upstream gives no usable answer, each with its problem
code; the resilience layer reads `transient` and `upstream_failure`, the gateway answers `code` and `status`."""

from __future__ import annotations

from typing import ClassVar

from schemas.errors import MsjxError
from schemas.problems import ProblemCode

__all__ = [
    "UpstreamBusy",
    "UpstreamCircuitOpen",
    "UpstreamError",
    "UpstreamFault",
    "UpstreamMalformed",
    "UpstreamRejected",
    "UpstreamSubjectUnknown",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class UpstreamError(MsjxError):
    """An upstream did not give a usable answer; the gateway maps it to problem+json.

    `code` is the stable code the gateway answers with and `status` its HTTP status (502 or 504, 503 for an open
    breaker or a full queue), `upstream_status` what the upstream said (HTTP status
    or SOAP fault code), for the audit record. `headers` go out with the problem (Retry-After).

    Two class-level facts drive the resilience layer: `transient` errors may succeed on a retry (a safe
    operation is retried on them), `upstream_failure` errors say the upstream is unwell (the circuit
    breaker counts them). A business answer such as "unknown taxpayer" is neither.
    """

    transient: ClassVar[bool] = False
    upstream_failure: ClassVar[bool] = False

    def __init__(
        self,
        code: ProblemCode,
        detail: str,
        *,
        upstream_status: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = code.status
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
            ProblemCode.UPSTREAM_TIMEOUT, f"{service} did not answer within {seconds:g} s", upstream_status="timeout"
        )


class UpstreamUnavailable(UpstreamError):
    transient = True
    upstream_failure = True

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(ProblemCode.UPSTREAM_UNAVAILABLE, f"{service} could not be reached: {reason}")


class UpstreamMalformed(UpstreamError):
    # Not transient: the same question usually gets the same broken answer. It does say the upstream is unwell.
    upstream_failure = True

    def __init__(self, service: str, reason: str, upstream_status: str | None = None) -> None:
        super().__init__(
            ProblemCode.UPSTREAM_MALFORMED,
            f"{service} sent an answer that does not match its contract: {reason}",
            upstream_status=upstream_status,
        )


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error of its own (HTTP 5xx/4xx or a business code).

    An HTTP 5xx is the upstream failing (transient, counted by the breaker); anything else is an answer.
    """

    def __init__(self, service: str, upstream_status: str, reason: str) -> None:
        super().__init__(
            ProblemCode.UPSTREAM_ERROR,
            f"{service} answered {upstream_status}: {reason}",
            upstream_status=upstream_status,
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
    ) -> None:
        self.fault_code = _clean(fault_code, 64) or "unknown"
        self.fault_string = _clean(fault_string)
        self.receiver = receiver
        super().__init__(
            ProblemCode.UPSTREAM_FAULT,
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
            ProblemCode.UPSTREAM_SUBJECT_UNKNOWN,
            f"{service} does not know this enterprise; it answered {what}: {_clean(message) or 'no message'}",
            upstream_status=code,
        )


class UpstreamCircuitOpen(UpstreamError):
    """The circuit breaker of this upstream is open: 503 with Retry-After, no request was sent."""

    def __init__(self, service: str, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            ProblemCode.UPSTREAM_CIRCUIT_OPEN,
            f"{service} is failing; calls are paused for {seconds} s while it recovers",
            upstream_status="circuit_open",
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = seconds


class UpstreamBusy(UpstreamError):
    """Every connection slot of this upstream stayed taken for the queue time: 503 with Retry-After, nothing sent."""

    def __init__(self, service: str, limit: int, waited: float) -> None:
        super().__init__(
            ProblemCode.UPSTREAM_BUSY,
            f"{service} already has {limit} calls in flight; none finished within {waited:g} s",
            upstream_status="busy",
            headers={"Retry-After": "1"},
        )
