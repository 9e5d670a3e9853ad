"""Signature checks in a child process of their own, so the event loop's thread is free while libsodium works.

Why: an Ed25519 check is about 55 µs of CPU, and with the cache it sweeps it cost the gateway's event loop about
85 µs of a call's 490 (docs/performance.md); the child runs it on the other core. An SM2 check (pure Python) costs
milliseconds, so it always goes to the child, congested loop or not. The checks asked for in one turn of the loop go
to the child in one frame, and the verdicts come back in the same order, one byte each. If the child is gone, stuck
or answers out of turn, every check waiting on it is done in this process instead and a new child is started a
second later: a verdict is never lost, and never guessed.

The child is `python -m security.verifier_child`. Frames (`security.pipes`) carry `marshal` of
[(public key, signature, message, algorithm), ...] to it and one byte per check back (1 verified, 0 not), over a
pipe nobody else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter

from schemas.errors import MsjxError
from security.pipes import FRAME_HEADER, frame, start_child
from security.verdicts import ED25519, SM2_SM3, verifies

log = logging.getLogger("msjx.verifier")

CHECKS = Counter(
    "msjx_signature_checks_total",
    "Request signature checks (Ed25519 and SM2) by where they ran: the verifier process, the event loop as chosen (an"
    " uncongested loop, or MSJX_SIGNATURE_VERIFIER=inline), or the event loop because the verifier process was down",
    ["where"],
)
_IN_PROCESS = CHECKS.labels("process")
_ON_LOOP = CHECKS.labels("loop")
_FALLBACK = CHECKS.labels("loop_fallback")
RESTARTS = Counter("msjx_signature_verifier_restarts_total", "Verifier processes started again after one stopped")
# How long the child may take for one SM2 check before it counts as stuck: ~100 times what one costs (bench/sm2.py),
# so a batch of many SM2 checks on a busy machine is waited for rather than taken back onto the event loop.
SM2_CHECK_ALLOWANCE = 0.25
# The first SM2 check of a child also loads the library and runs its known-answer test (0.4-0.7 s on a busy host).
SM2_FIRST_USE_ALLOWANCE = 5.0
Check = tuple[bytes, bytes, bytes, str]


class InlineVerifier:
    """Checks on the event loop's own thread (MSJX_SIGNATURE_VERIFIER=inline)."""

    async def verify(self, public_key: bytes, signature: bytes, message: bytes, algorithm: str = ED25519) -> bool:
        _ON_LOOP.inc()
        return verifies(public_key, signature, message, algorithm)

    async def close(self) -> None:
        return None


class VerifierError(MsjxError):
    """The verifier process could not be started."""


@dataclass
class _Batch:
    items: list[Check]
    futures: list[asyncio.Future[bool]]
    sent: float  # when it was sent, or, if later, when the child answered the batch ahead of it
    allowance: float  # seconds the child may take for it


def _settle_here(items: list[Check], futures: list[asyncio.Future[bool]]) -> None:
    _FALLBACK.inc(len(items))
    for item, future in zip(items, futures, strict=True):
        if not future.done():  # a caller that went away no longer waits for its verdict
            future.set_result(verifies(*item))


class ProcessVerifier:
    """The gateway's side: batch the checks of a loop turn, send them to the child, hand out its verdicts."""

    def __init__(self, *, timeout: float = 1.0, restart_after: float = 1.0) -> None:
        self._timeout = timeout
        self._restart_after = restart_after
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._queued_items: list[Check] = []
        self._queued_futures: list[asyncio.Future[bool]] = []
        self._flush_scheduled = False
        self._in_flight: deque[_Batch] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._down_until = 0.0
        self._closed = False
        self._sm2_loaded = False
        self.answered = 0  # checks the child has answered, since start (for operators and tests)

    @property
    def pid(self) -> int | None:
        """The verifier process's id while it serves checks (for operators and tests), else None."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Start the child and wait until it answers; VerifierError if it does not."""
        process = await start_child("security.verifier_child")
        if process is None:
            raise VerifierError("the verifier process did not start (its errors are on the gateway's stderr)")
        self._process = process
        self._sm2_loaded = False  # this child has not yet loaded SM2
        self._reader = asyncio.create_task(self._read(process), name="signature-verifier")

    async def verify(self, public_key: bytes, signature: bytes, message: bytes, algorithm: str = ED25519) -> bool:
        if self._process is None:  # down, or never started: this process checks until a new child is up
            self._restart_when_due()
            _FALLBACK.inc()
            return verifies(public_key, signature, message, algorithm)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queued_items.append((public_key, signature, message, algorithm))
        self._queued_futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # after every request of this turn has queued its check
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, futures = self._queued_items, self._queued_futures
        self._queued_items, self._queued_futures = [], []
        process = self._process
        if process is None or process.stdin is None:  # went down since these were queued
            _settle_here(items, futures)
            return
        payload = marshal.dumps(items)
        sm2_checks = sum(item[3] == SM2_SM3 for item in items)
        allowance = self._timeout + SM2_CHECK_ALLOWANCE * sm2_checks
        if sm2_checks and not self._sm2_loaded:
            allowance += SM2_FIRST_USE_ALLOWANCE
            self._sm2_loaded = True
        self._in_flight.append(_Batch(items, futures, time.monotonic(), allowance))
        try:
            process.stdin.write(frame(payload))
        except (OSError, RuntimeError):  # its pipe is closed: the child is gone
            self._fail(process, "its pipe is closed")
            return
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(allowance, self._check_stuck)

    def _check_stuck(self) -> None:
        self._watchdog = None
        if not self._in_flight or self._process is None:
            return
        oldest = self._in_flight[0]
        waited = time.monotonic() - oldest.sent
        if waited >= oldest.allowance:
            self._fail(self._process, f"no answer in {waited:.1f} s")
            return
        self._watchdog = asyncio.get_running_loop().call_later(oldest.allowance - waited, self._check_stuck)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        stdout = process.stdout
        reason = "it exited"
        try:
            while True:
                header = await stdout.readexactly(FRAME_HEADER.size)
                verdicts = await stdout.readexactly(FRAME_HEADER.unpack(header)[0])
                if not self._in_flight or len(verdicts) != len(self._in_flight[0].futures):
                    reason = "it answered out of turn"
                    return
                batch = self._in_flight.popleft()
                if self._in_flight:  # the child starts on the next batch only now
                    self._in_flight[0].sent = max(self._in_flight[0].sent, time.monotonic())
                self.answered += len(verdicts)
                _IN_PROCESS.inc(len(verdicts))
                for future, verdict in zip(batch.futures, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict == 1)
        except asyncio.IncompleteReadError:
            pass
        except OSError as exc:
            reason = type(exc).__name__
        finally:
            self._fail(process, reason)

    def _fail(self, process: asyncio.subprocess.Process, reason: str) -> None:
        """Stop using `process`: kill it and check here what it still owed."""
        if process is not self._process:
            return  # an earlier child's last word; the current one is not concerned
        self._process = None
        if not self._closed:
            log.error("signature verifier process stopped (%s); checking in the gateway's process", reason)
        self._down_until = time.monotonic() + self._restart_after
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        with contextlib.suppress(ProcessLookupError):
            if process.returncode is None:
                process.kill()
        while self._in_flight:
            batch = self._in_flight.popleft()
            _settle_here(batch.items, batch.futures)

    def _restart_when_due(self) -> None:
        if self._closed or time.monotonic() < self._down_until:
            return
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self._restart(), name="signature-verifier-start")

    async def _restart(self) -> None:
        try:
            await self.start()
        except (VerifierError, OSError) as exc:
            self._down_until = time.monotonic() + self._restart_after
            log.error("signature verifier process could not start again: %s", exc)
        else:
            RESTARTS.inc()
            log.info("signature verifier process started again (pid %s)", self.pid)

    async def close(self) -> None:
        """Answer what is queued, let the child finish and exit, and stop."""
        self._closed = True
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        if self._queued_items:
            self._flush()
        process, self._process = self._process, None  # from here on its reader settles nothing and kills nothing
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # end of input: the child answers what it has and exits
        reader = self._reader
        try:
            if reader is not None:
                await asyncio.wait_for(asyncio.shield(reader), 10)
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        while self._in_flight:  # what it did not answer before it went
            batch = self._in_flight.popleft()
            _settle_here(batch.items, batch.futures)
