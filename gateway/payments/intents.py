"""Exactly-once treasury payments: the intent is durable before the voucher is sent, the outcome after it is known.

A voucher whose answer was lost (timeout, dropped connection, a gateway killed mid-way) is never sent again blindly:
it is first looked up with `voucher-status`, on the next request with the same Idempotency-Key, by the reconciler
when the gateway starts, and periodically. Only a voucher the treasury does not hold, last sent long enough ago, is
sent again, with the same VoucherNo, which the treasury accepts once at most.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from adapters.base import Adapter
from adapters.errors import UpstreamError
from adapters.treasury import VoucherDuplicate, VoucherRefused
from gateway.access.directory import GrantInfo
from gateway.access.minimize import envelope, minimize
from gateway.audit.writer import AuditEvent, AuditUnavailable, AuditWriter, new_request_id
from gateway.clock import SYSTEM_CLOCK, Clock, Periodic, periodic
from gateway.http.problems import Problem
from gateway.payments.idempotency import ClaimKind, IdempotencyStore, fingerprint, missing_key
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.models import PaymentIntent, PaymentOutcome
from schemas.problems import ProblemCode
from schemas.treasury import VoucherQuery, VoucherSubmission

log = logging.getLogger("msjx.payments")

SERVICE, SUBMIT, STATUS = "treasury", "submit-voucher", "voucher-status"
PAYMENT_OPERATIONS = frozenset({(SERVICE, SUBMIT)})
SUBMIT_PATH = f"/v1/services/{SERVICE}/{SUBMIT}"
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass
class Resolution:
    """Where one attempt to settle a payment got to. `outcome` None: not known yet, ask again later."""

    outcome: str | None  # accepted | paid | returned | refused
    code: str = ""  # the treasury's code, or what went wrong
    receipt: dict[str, Any] | None = None
    problem: Problem | None = None
    calls: list[str] = field(default_factory=list)  # upstream operations made, in order
    upstream_status: str | None = None
    upstream_us: int = 0


@dataclass(frozen=True)
class VoucherCall:
    """One submit-voucher request, authenticated, granted and validated: what the payment path needs of it."""

    caller_id: str
    idempotency_key: str | None  # parsed from the header; None when the request carried none
    method: str
    path: str
    body: bytes  # the raw body: with method and path, what makes a repeat the same request
    request_id: str
    purpose: str
    grant: GrantInfo
    params: VoucherSubmission


@dataclass
class VoucherAnswer:
    """What to answer, and what the request's audit record learns from the payment path."""

    status: int
    body: bytes
    replayed: bool = False  # a stored answer to an earlier request with the same key
    upstream_status: str | None = None
    upstream_us: int = 0
    fields: tuple[str, ...] | None = None  # the receipt fields that left the gateway, when it answered one


class Payments:
    """The payment path of one gateway process: request handling, the reconciler task, the test fault hook."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker,
        adapter: Adapter,
        audit: AuditWriter,
        store: IdempotencyStore,
        resend_grace_seconds: float,
        reconcile_seconds: float,
        retention_days: int,
        kill_after_accept: int = 0,
        health: Dependency | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sessions = sessions
        self.adapter = adapter
        self._audit = audit
        self.store = store
        self.clock = clock
        self.grace_ms = int(resend_grace_seconds * 1000)
        self.interval = reconcile_seconds
        self.retention = timedelta(days=retention_days)
        self.kill_after_accept = kill_after_accept
        self.health = health  # the database's: an outage is logged once by it, not at every pass
        self._accepted = 0
        self._task: Periodic | None = None
        self.passes = 0

    @staticmethod
    def handles(service: str, operation: str) -> bool:
        return (service, operation) in PAYMENT_OPERATIONS

    async def start(self) -> None:
        released = await self.store.release_stale()
        if released:
            log.warning(
                "released %d idempotency leases left by an earlier run of node %s", released, self.store.node_id
            )
        if self.kill_after_accept:
            log.warning(
                "TEST FAULT HOOK ON: this process kills itself after the treasury accepts voucher #%d",
                self.kill_after_accept,
            )
        # The first pass runs at once: whatever a crash left open is looked up before anything is sent again.
        self._task = periodic("payment-reconciler", self.interval, self._pass, run_first=True, on_error=self._failed)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task.stop()

    async def _pass(self) -> None:
        try:
            counts = await self.reconcile()
        finally:
            self.passes += 1
        if counts["resolved"] or counts["pending"]:
            log.info("reconciled payment intents: %s", counts)

    def _failed(self, exc: Exception) -> None:
        # The next pass comes at the next interval (database or treasury down).
        if self.health is not None and is_database_outage(exc):
            self.health.failed(exc)
        else:
            log.error("payment reconciliation pass failed", exc_info=exc)

    # -- the request path -----------------------------------------------------------------------------------------

    async def submit(self, call: VoucherCall) -> VoucherAnswer:
        """Handle POST /v1/services/treasury/submit-voucher after authentication, grant and validation.

        A refusal or an outcome that is an error is raised as a Problem, after it is recorded for the key.
        """
        key = call.idempotency_key
        if key is None:
            raise missing_key(f"{SERVICE}/{SUBMIT}")
        params, grant = call.params, call.grant
        now = self.clock.now()
        intent = PaymentIntent(
            voucher_no=params.voucher_no,
            caller_id=call.caller_id,
            idem_key=key,
            uscc=params.uscc,
            pay_amt=str(params.pay_amt),
            purpose=call.purpose,
            grant_id=grant.grant_id,
            fields=list(grant.fields),
            voucher=params.model_dump_json(),
            attempts=1,  # counted before the send: an attempt that dies mid-way still counts
            last_sent_ms=self.clock.ms(),
            created_at=now,
        )

        async def add_intent(session: Any) -> None:
            session.add(intent)

        try:
            claim = await self.store.claim(
                call.caller_id,
                key,
                fingerprint(call.method, call.path, call.body),
                service=SERVICE,
                operation=SUBMIT,
                on_new=add_intent,
            )
        except IntegrityError:
            raise Problem(
                ProblemCode.VOUCHER_EXISTS,
                f"voucher {params.voucher_no} was submitted before under another Idempotency-Key; a VoucherNo is"
                " paid once: repeat that request with its own key to learn its outcome",
            ) from None
        if claim.kind is ClaimKind.REPLAY:
            assert claim.status_code is not None and claim.body is not None
            return VoucherAnswer(claim.status_code, claim.body, replayed=True)
        if claim.kind is ClaimKind.REUSED:
            raise Problem(
                ProblemCode.IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was used with a different request; use a new key for a new payment",
            )
        if claim.kind is ClaimKind.IN_FLIGHT:
            raise Problem(
                ProblemCode.IDEMPOTENCY_IN_FLIGHT,
                "a request with this Idempotency-Key is being processed; repeat it later to get its answer",
                headers={"Retry-After": "1"},
            )
        try:
            if claim.kind is ClaimKind.NEW:
                resolution = await self._send(intent, params)
            else:
                stored = await self._intent(call.caller_id, key)
                resolution = await self._settle(stored, allow_resend=True)
                intent = stored
        except BaseException:
            await self.store.release(call.caller_id, key)
            raise
        status, body, problem, fields = await self._finish(intent, resolution, "request", call.request_id)
        if problem is not None:
            # The audit record of the refusal still says what the treasury answered.
            problem.context.setdefault("upstream_status", resolution.upstream_status)
            problem.context.setdefault("upstream_us", resolution.upstream_us)
            raise problem
        return VoucherAnswer(status, body, False, resolution.upstream_status, resolution.upstream_us, fields)

    async def _intent(self, caller_id: str, key: str) -> PaymentIntent:
        async with self._sessions() as session:
            intent = await session.scalar(
                select(PaymentIntent).where(PaymentIntent.caller_id == caller_id, PaymentIntent.idem_key == key)
            )
        if intent is None:  # the key and its intent are written in one transaction
            raise RuntimeError(f"idempotency key of {caller_id} has no payment intent")
        return intent

    # -- settling one payment -------------------------------------------------------------------------------------

    async def _call(self, resolution: Resolution, operation: str, params: Any) -> dict[str, Any]:
        started = time.perf_counter()
        resolution.calls.append(operation)
        try:
            result = await self.adapter.invoke(operation, params)
        except UpstreamError as exc:
            resolution.upstream_status = exc.upstream_status
            raise
        finally:
            resolution.upstream_us += int((time.perf_counter() - started) * 1e6)
        resolution.upstream_status = result.upstream_status
        return result.data

    async def _send(
        self, intent: PaymentIntent, params: VoucherSubmission, resolution: Resolution | None = None
    ) -> Resolution:
        resolution = resolution or Resolution(outcome=None)
        try:
            receipt = await self._call(resolution, SUBMIT, params)
        except VoucherDuplicate:
            # The treasury holds this number already (an earlier attempt got through): ask what it holds.
            return await self._settle(intent, allow_resend=False, resolution=resolution)
        except VoucherRefused as exc:
            resolution.outcome, resolution.code = "refused", exc.upstream_status or ""
            resolution.problem = Problem(
                ProblemCode.VOUCHER_REFUSED, exc.detail, context={"upstream_status": exc.upstream_status}
            )
            return resolution
        except UpstreamError as exc:
            log.warning("voucher %s: %s; looking it up before anything else", intent.voucher_no, exc.detail)
            settled = await self._settle(intent, allow_resend=False, resolution=resolution)
            if settled.outcome is None:
                settled.problem = self._pending(intent, exc.detail, exc.status)
            return settled
        self._accepted += 1
        if self.kill_after_accept and self._accepted == self.kill_after_accept:
            # Test-only fault hook: die between the treasury's acceptance and the outcome's record.
            log.critical("TEST FAULT HOOK: SIGKILL after the treasury accepted voucher %s", intent.voucher_no)
            os.kill(os.getpid(), signal.SIGKILL)
        resolution.outcome, resolution.code, resolution.receipt = "accepted", resolution.upstream_status or "", receipt
        return resolution

    async def _settle(
        self, intent: PaymentIntent, *, allow_resend: bool, resolution: Resolution | None = None
    ) -> Resolution:
        """Ask the treasury what became of the voucher; send it again only if it holds none and the last send is
        older than the grace period."""
        resolution = resolution or Resolution(outcome=None)
        try:
            status = await self._call(resolution, STATUS, VoucherQuery(voucher_no=intent.voucher_no))
        except UpstreamError as exc:
            resolution.problem = self._pending(intent, f"voucher-status failed: {exc.detail}", exc.status)
            return resolution
        if status["found"]:
            if status["status"] == "returned":
                resolution.outcome, resolution.code = "returned", resolution.upstream_status or ""
                resolution.problem = Problem(
                    ProblemCode.VOUCHER_RETURNED,
                    f"the treasury accepted voucher {intent.voucher_no} and then returned it (退回); it was not paid",
                )
                return resolution
            resolution.outcome, resolution.code = status["status"], resolution.upstream_status or ""
            resolution.receipt = {
                "voucher_no": status["voucher_no"],
                "status": "accepted",
                "treasury_serial": status["treasury_serial"],
                "pay_amt": status["pay_amt"],
                "accepted_at": status["accepted_at"],
            }
            return resolution
        waited = self.clock.ms() - (intent.last_sent_ms or 0)
        if not allow_resend or waited < self.grace_ms:
            resolution.problem = self._pending(
                intent, f"the treasury holds no voucher {intent.voucher_no} yet (last sent {waited / 1000:.1f} s ago)"
            )
            return resolution
        # The treasury never got it: send the very same voucher again, counted before it leaves.
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(PaymentIntent)
                .where(PaymentIntent.voucher_no == intent.voucher_no)
                .values(attempts=PaymentIntent.attempts + 1, last_sent_ms=self.clock.ms())
            )
        log.warning(
            "voucher %s is unknown to the treasury %.1f s after it was sent: sending it again",
            intent.voucher_no,
            waited / 1000,
        )
        return await self._send(intent, VoucherSubmission.model_validate_json(intent.voucher), resolution)

    def _pending(self, intent: PaymentIntent, why: str, status: int = 503) -> Problem:
        return Problem(
            ProblemCode.PAYMENT_PENDING,
            f"voucher {intent.voucher_no}: {why}. It is reconciled with the treasury's voucher-status before anything"
            " is sent again; repeat the request with the same Idempotency-Key to learn the outcome",
            status=status if status in (502, 503, 504) else 503,
            headers={"Retry-After": str(max(1, round(self.grace_ms / 1000)))},
        )

    async def _finish(
        self,
        intent: PaymentIntent,
        resolution: Resolution,
        resolved_by: str,
        request_id: str,
    ) -> tuple[int, bytes, Problem | None, tuple[str, ...] | None]:
        """Record the outcome and the key's answer in one transaction, or give the key back when still unknown.

        The answer's status and body, its problem if it is one, and the receipt fields it carries if it is not."""
        if resolution.outcome is None:
            await self.store.release(intent.caller_id, intent.idem_key)
            assert resolution.problem is not None
            problem = resolution.problem
            return problem.status, problem.render(request_id, SUBMIT_PATH), problem, None
        fields: tuple[str, ...] | None = None
        if resolution.problem is None:
            assert resolution.receipt is not None
            data = minimize(resolution.receipt, intent.fields)
            fields = tuple(data)
            status = 200
            body = envelope(
                data,
                request_id=request_id,
                service=SERVICE,
                operation=SUBMIT,
                grant_id=intent.grant_id,
                source=self.adapter.title or SERVICE,
                fetched_at=self.clock.now(),
            )
        else:
            status, body = resolution.problem.status, resolution.problem.render(request_id, SUBMIT_PATH)
        receipt = resolution.receipt or {}
        async with self._sessions() as session, session.begin():
            session.add(
                PaymentOutcome(
                    voucher_no=intent.voucher_no,
                    outcome=resolution.outcome,
                    treasury_code=resolution.code[:16],
                    treasury_serial=receipt.get("treasury_serial"),
                    pay_amt=receipt.get("pay_amt"),
                    detail=resolution.problem.detail if resolution.problem else None,
                    resolved_by=resolved_by,
                    recorded_at=self.clock.now(),
                )
            )
            await self.store.complete(session, intent.caller_id, intent.idem_key, status, body)
        await self.store.done(intent.caller_id, intent.idem_key)
        return status, body, resolution.problem, fields

    # -- the reconciler -------------------------------------------------------------------------------------------

    async def open_intents(self, limit: int = 500) -> list[PaymentIntent]:
        async with self._sessions() as session:
            result = await session.scalars(
                select(PaymentIntent)
                .outerjoin(PaymentOutcome, PaymentOutcome.voucher_no == PaymentIntent.voucher_no)
                .where(PaymentOutcome.voucher_no.is_(None))
                .order_by(PaymentIntent.created_at)
                .limit(limit)
            )
            return list(result.all())

    async def reconcile(self) -> dict[str, int]:
        """One pass: every intent without an outcome is looked up (and, if the treasury never got it, sent again)."""
        counts = {"resolved": 0, "pending": 0, "busy": 0}
        for intent in await self.open_intents():
            if not await self.store.acquire(intent.caller_id, intent.idem_key):
                counts["busy"] += 1  # a request (here or on another node) is settling it right now
                continue
            try:
                resolution = await self._settle(intent, allow_resend=True)
            except BaseException:
                await self.store.release(intent.caller_id, intent.idem_key)
                raise
            request_id = new_request_id()
            status, body, _, _ = await self._finish(intent, resolution, "reconciler", request_id)
            counts["resolved" if resolution.outcome else "pending"] += 1
            await self._audit_reconcile(intent, resolution, request_id, status, body)
        await self.store.purge(self.clock.now() - self.retention)
        return counts

    async def _audit_reconcile(
        self, intent: PaymentIntent, resolution: Resolution, request_id: str, status: int, body: bytes
    ) -> None:
        event = AuditEvent(
            event="payment.reconcile",
            request_id=request_id,
            decision="allowed" if resolution.outcome else "failed",
            status_code=status,
            request_body=orjson.dumps({"voucher_no": intent.voucher_no, "calls": resolution.calls}),
            response_body=body,
            caller_id=intent.caller_id,
            service=SERVICE,
            operation=SUBMIT if SUBMIT in resolution.calls else STATUS,
            purpose=intent.purpose,
            grant_id=intent.grant_id,
            subject=intent.uscc,
            reason_code=None if resolution.outcome else ProblemCode.PAYMENT_PENDING.value,
            upstream_status=resolution.upstream_status,
            upstream_us=resolution.upstream_us,
        )
        try:
            await self._audit.append(event)
        except AuditUnavailable:
            log.error("the audit store is down: reconciliation of voucher %s is not recorded", intent.voucher_no)
