"""The adapter interface: operations with typed input and output, one `invoke`, one error model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from .errors import UpstreamError, UpstreamMalformed

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
