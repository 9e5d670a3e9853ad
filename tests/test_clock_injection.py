"""Components judge time by the clock they are given, not the machine's: a signature's window and the replay
memory's start (Authenticator, MemoryNonceStore)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request

from gateway.access.authenticate import Authenticator
from gateway.access.directory import Directory
from gateway.access.nonces import MemoryNonceStore
from gateway.http.problems import Problem
from security.signatures import sign_request
from tests.helpers.clock import ManualClock

URL = "http://gw.example/v1/services/credit/lookup"
LATER = datetime(2031, 3, 1, 8, 0, tzinfo=UTC)  # far from any machine's clock in a test run


def signed(created: datetime) -> Request:
    body = b'{"purpose": "XM-1", "params": {}}'
    message = httpx.Request("POST", URL, content=body)
    key = Ed25519PrivateKey.generate()
    sign_request("POST", URL, message.headers, body, key_id="k1", private_key=key, created=created)
    headers = [(name.lower(), value) for name, value in message.headers.raw]
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/services/credit/lookup",
        "raw_path": b"/v1/services/credit/lookup",
        "query_string": b"",
        "headers": headers,
    }
    return Request(scope)


def authenticator(clock: ManualClock) -> Authenticator:
    # Both refusals below come before the directory is read: it is never asked, so it needs no database.
    directory = Directory(None, clock=clock)  # type: ignore[arg-type]
    return Authenticator(directory, MemoryNonceStore(clock), max_skew=300, clock=clock)


async def refusal(auth: Authenticator, request: Request) -> str:
    with pytest.raises(Problem) as info:
        await auth.authenticate(request, b'{"purpose": "XM-1", "params": {}}')
    return str(info.value.code)


async def test_a_signature_made_now_is_outside_the_window_of_a_clock_years_ahead() -> None:
    clock = ManualClock(LATER)
    assert await refusal(authenticator(clock), signed(datetime.now(UTC))) == "signature_expired"


async def test_a_signature_inside_the_window_is_judged_against_the_replay_memory_started_by_the_same_clock() -> None:
    clock = ManualClock(LATER)
    auth = authenticator(clock)  # its nonce store started at LATER, by the clock
    # In the window of the given clock, but made before the store's start: it may have been seen already.
    assert await refusal(auth, signed(LATER - timedelta(seconds=10))) == "signature_before_restart"
