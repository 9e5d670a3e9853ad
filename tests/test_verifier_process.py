"""The Ed25519 verifier process: right verdicts in order, and still right when the child stops, dies or hangs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import load_settings
from security import ed25519
from security.ed25519 import verifies
from security.verifier_process import ProcessVerifier
from tests.helpers.calls import send, signed
from tests.helpers.gateways import running_gateway


def _checks(count: int) -> list[tuple[tuple[bytes, bytes, bytes], bool]]:
    """`count` checks, every third one with a signature that must fail, and what each must answer."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    checks = []
    for index in range(count):
        message = f"request {index}".encode()
        signature = key.sign(message)
        if index % 3 == 2:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        checks.append(((public, signature, message), index % 3 != 2))
    return checks


@pytest.mark.parametrize("library", ["libsodium", "openssl"])
def test_both_libraries_give_the_same_verdicts(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    if library == "openssl":
        monkeypatch.setattr(ed25519, "VerifyKey", None)
    checks = _checks(9)
    assert [verifies(*check) for check, _ in checks] == [expected for _, expected in checks]
    public, signature, message = checks[0][0]
    assert not verifies(public[:31], signature, message), "a key of the wrong length is a refusal, not an error"
    assert not verifies(public, signature[:63], message)


async def _verdicts(verifier: ProcessVerifier, checks: list[tuple[tuple[bytes, bytes, bytes], bool]]) -> list[bool]:
    return list(await asyncio.gather(*(verifier.verify(*check) for check, _ in checks)))


async def _answers_right(verifier: ProcessVerifier, count: int) -> None:
    checks = _checks(count)
    assert await _verdicts(verifier, checks) == [expected for _, expected in checks]


@pytest.fixture
async def verifier() -> AsyncIterator[ProcessVerifier]:
    started = ProcessVerifier(timeout=0.5, restart_after=0.1)
    await started.start()
    yield started
    await started.close()


def _checks_counted(where: str) -> float:
    return REGISTRY.get_sample_value("msjx_signature_checks_total", {"where": where}) or 0.0


async def _started_again(verifier: ProcessVerifier, old_pid: int) -> int:
    for _ in range(200):
        await verifier.verify(*_checks(1)[0][0])  # a check while it is down asks for a new child
        pid = verifier.pid
        if pid is not None and pid != old_pid:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("the verifier process was not started again")


async def test_verdicts_come_back_in_order_and_agree_with_a_check_here(verifier: ProcessVerifier) -> None:
    checks = _checks(300)
    assert await _verdicts(verifier, checks) == [expected for _, expected in checks]
    assert all(verifies(*check) == expected for check, expected in checks)
    assert verifier.pid is not None and verifier.pid != os.getpid()


async def test_the_child_ignores_the_terminal_signals_meant_for_the_gateway(verifier: ProcessVerifier) -> None:
    pid = verifier.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await _answers_right(verifier, 10)
    assert verifier.pid == pid


async def test_a_killed_child_costs_no_verdict_and_is_replaced(verifier: ProcessVerifier) -> None:
    restarts = REGISTRY.get_sample_value("msjx_signature_verifier_restarts_total") or 0.0
    fallbacks = _checks_counted("loop_fallback")
    pid = verifier.pid
    assert pid is not None
    checks = _checks(60)
    pending = asyncio.gather(*(verifier.verify(*check) for check, _ in checks))
    await asyncio.sleep(0)  # queued, and about to be sent
    os.kill(pid, signal.SIGKILL)
    assert list(await pending) == [expected for _, expected in checks]
    new_pid = await _started_again(verifier, pid)
    await _answers_right(verifier, 30)
    assert verifier.pid == new_pid
    assert REGISTRY.get_sample_value("msjx_signature_verifier_restarts_total") == restarts + 1
    assert _checks_counted("loop_fallback") > fallbacks, "what the killed child owed was checked here"


async def test_a_stuck_child_is_given_up_after_the_timeout(verifier: ProcessVerifier) -> None:
    pid = verifier.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(_answers_right(verifier, 20), 5)  # answered here once the child is given up
        assert verifier.pid != pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed and reaped already
            os.kill(pid, signal.SIGCONT)
    await _started_again(verifier, pid)


async def test_close_lets_the_child_answer_and_exit() -> None:
    verifier = ProcessVerifier()
    await verifier.start()
    process = verifier._process
    assert process is not None
    checks = _checks(50)
    pending = asyncio.gather(*(verifier.verify(*check) for check, _ in checks))
    await asyncio.sleep(0)
    await verifier.close()
    assert list(await pending) == [expected for _, expected in checks]
    assert process.returncode == 0
    assert verifier.pid is None


@pytest.mark.parametrize("offload_above", [0, 1000])
async def test_the_gateway_offloads_only_when_congested(tmp_path: Path, credit_url: str, offload_above: int) -> None:
    settings = load_settings(
        data_dir=tmp_path, upstream_urls={"credit": credit_url}, signature_offload_above=offload_above
    )
    async with running_gateway(settings) as gw:
        checker = gw.runtime.authenticator.offload
        assert isinstance(checker, ProcessVerifier) and checker.pid is not None
        before = {where: _checks_counted(where) for where in ("process", "loop")}
        good = [signed(gw, gw.platform) for _ in range(12)]
        forged = signed(gw, gw.platform)
        forged.headers["signature"] = "msjx=:" + base64.b64encode(bytes(64)).decode() + ":"
        responses = await asyncio.gather(*(send(request) for request in [*good, forged]))
        assert [response.status_code for response in responses] == [200] * 12 + [401]
        assert responses[-1].json()["code"] == "signature_invalid"
        if offload_above == 0:
            assert checker.answered == 13, "every check went to the child, the forged one too"
        else:
            assert checker.answered == 0, "an uncongested gateway checks on its own loop"
        async with httpx.AsyncClient(base_url=gw.url) as client:
            metrics = (await client.get("/metrics")).text
        counted = {
            sample.labels["where"]: sample.value
            for family in text_string_to_metric_families(metrics)
            if family.name == "msjx_signature_checks"
            for sample in family.samples
            if sample.name == "msjx_signature_checks_total"
        }
        where = "process" if offload_above == 0 else "loop"
        assert counted[where] - before[where] == 13
