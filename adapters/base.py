"""The adapter interface: operations with typed input and output, one `invoke`, one error model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from .errors import UpstreamError, UpstreamMalformed
from .policy import ResiliencePolicy


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


@dataclass
class UpstreamResult:
    """What an adapter returns: the output as plain JSON-able data, and the upstream's status."""

    data: dict[str, Any]
    upstream_status: str = "200"
    attempts: int = 1


class Adapter:
    """Base class of every upstream adapter: a plain client of one upstream.

    Subclasses set `service` and `operations`, and implement `call`. `start` opens connection pools once per
    process; `close` releases them. `policy` is how this upstream is called: the adapter times and sizes its client
    from it. The gateway calls `invoke`, which validates the output against the operation's model; it wraps each
    adapter in `resilience.Guarded` first, which adds the concurrency bound, circuit breaker and retries of safe
    operations around `run`.
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
    policy: ResiliencePolicy = ResiliencePolicy()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        raise NotImplementedError

    async def invoke(self, operation_name: str, params: BaseModel) -> UpstreamResult:
        return await self.run(self.operations[operation_name], params)

    async def run(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        """One call of `operation`, its output checked against the operation's model (UpstreamMalformed if not)."""
        result = await self.call(operation, params)
        try:
            validated = operation.output_model.model_validate(result.data)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"{'/'.join(str(part) for part in first['loc'])}: {first['msg']}"
            raise UpstreamMalformed(self.service, reason, result.upstream_status) from exc
        result.data = validated.model_dump(mode="json", by_alias=True)
        return result

    async def call_bulk(
        self, operation: Operation, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        """One bulk request: an answer or an error per subject, in the order asked (subclasses with bulk operations)."""
        raise NotImplementedError

    async def invoke_bulk(
        self, operation_name: str, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        """Many subjects in one request, each answer checked on its own (under the same guard as single calls, once
        wrapped in `resilience.Guarded`)."""
        operation = self.operations[operation_name]
        limit = self.bulk_operations.get(operation_name, 0)
        if not 0 < len(params) <= limit:
            raise ValueError(f"{self.service}/{operation_name} takes 1 to {limit} subjects in bulk, not {len(params)}")
        return await self.run_bulk(operation, params)

    async def run_bulk(self, operation: Operation, params: Sequence[BaseModel]) -> list[UpstreamResult | UpstreamError]:
        """One bulk request of `operation`, each answer checked against the operation's model."""
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
