"""Grant selection and minimization: the functions alone, then one app through httpx.ASGITransport (no server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from adapters.base import Adapter, Operation, UpstreamResult
from gateway.access import callers, grants
from gateway.access.directory import Directory, GrantInfo
from gateway.access.minimize import envelope, minimize
from gateway.app import create_app
from gateway.client import SignatureAuth
from gateway.http.problems import Problem
from gateway.settings import Settings
from gateway.storage import db
from gateway.storage.models import Grant
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.clock import ManualClock

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def grant(purpose: str = "XM-1", valid_from: datetime = NOW - DAY, valid_to: datetime = NOW + DAY) -> GrantInfo:
    return GrantInfo(
        f"g-{purpose}-{valid_from.day}", "platform", "ledger", "entry", purpose, ("name",), valid_from, valid_to
    )


def refusal(grants_held: tuple[GrantInfo, ...], purpose: str = "XM-1") -> Problem:
    with pytest.raises(Problem) as caught:
        grants.select_grant(grants_held, "ledger", "entry", purpose, NOW)
    return caught.value


def test_the_grant_valid_now_for_the_purpose_is_chosen() -> None:
    later, now, other = grant(valid_from=NOW + DAY, valid_to=NOW + 2 * DAY), grant(), grant("XM-2")
    assert grants.select_grant((other, later, now), "ledger", "entry", "XM-1", NOW) is now


@pytest.mark.parametrize(
    ("held", "code"),
    [
        ((), "no_grant"),
        ((grant("XM-2"),), "purpose_not_granted"),
        ((grant(valid_from=NOW - 2 * DAY, valid_to=NOW - DAY),), "grant_expired"),
        ((grant(valid_from=NOW + DAY, valid_to=NOW + 2 * DAY),), "grant_not_valid"),
    ],
)
def test_the_most_specific_refusal(held: tuple[GrantInfo, ...], code: str) -> None:
    problem = refusal(held)
    assert (problem.status, problem.code) == (403, code)
    if held and code != "purpose_not_granted":
        assert problem.context["grant_id"] == held[0].grant_id, "the refusal names the grant for the audit record"


def test_minimize_keeps_only_granted_fields_in_the_grants_order() -> None:
    sent = {"secret": 1, "status": "ok", "name": "甲"}
    assert list(minimize(sent, ("name", "status", "absent"))) == ["name", "status"]
    answer = orjson.loads(
        envelope({"name": "甲"}, request_id="r", service="s", operation="o", grant_id="g", source="S", fetched_at=NOW)
    )
    assert answer["data"] == {"name": "甲"} and answer["meta"]["grant_id"] == "g" and answer["meta"]["source"] == "S"
    assert answer["meta"]["fetched_at"] == NOW.isoformat(timespec="milliseconds"), "the time it is given"


class EntryIn(BaseModel):
    uscc: str


class EntryOut(BaseModel):
    name: str
    status: str
    secret: str


class LedgerAdapter(Adapter):
    """An upstream inside the process: it answers more than any grant allows, so minimization has work to do."""

    service = "ledger"
    title = "Ledger"
    operations: ClassVar[dict[str, Operation]] = {"entry": Operation("entry", "One entry", EntryIn, EntryOut)}

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        return UpstreamResult({"name": "甲公司", "status": "active", "secret": "never leaves"})


@dataclass
class App:
    client: httpx.AsyncClient
    grant_id: str
    sessions: Any
    directory: Any
    clock: ManualClock


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    data_dir: Path = tmp_path_factory.mktemp("grants")
    settings = Settings(data_dir=data_dir)
    await db.upgrade_async(settings)
    # The gateway's own clock, half a minute behind the machine's: inside the signature window, after the replay
    # memory's start (a signature made by the machine's time is newer), and the time every answer carries.
    clock = ManualClock(datetime.now(UTC) - timedelta(seconds=30))
    gateway = create_app(settings, adapters={"ledger": LedgerAdapter()}, clock=clock)
    key = Ed25519PrivateKey.generate()
    async with gateway.router.lifespan_context(gateway):
        runtime = gateway.state.runtime
        async with runtime.sessions() as session:
            key_in = KeyIn(key_id="platform-1", public_key=public_key_pem(key.public_key()))
            caller = CallerIn(
                caller_id="platform", name="平台", department="市数据局", roles=["platform"], keys=[key_in]
            )
            await callers.add_caller(session, caller)
            granted = await grants.add_grant(
                session,
                GrantIn(
                    caller_id="platform",
                    service="ledger",
                    operation="entry",
                    purpose="XM-1",
                    fields=["status", "name"],
                    valid_to=clock.now() + DAY,
                ),
                runtime.adapters,
                runtime.clock,
            )
        transport = httpx.ASGITransport(app=gateway)
        auth = SignatureAuth("platform-1", key)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.example", auth=auth) as client:
            yield App(client, granted.grant_id, runtime.sessions, runtime.directory, clock)


async def invoke(app: App, purpose: str) -> httpx.Response:
    body = orjson.dumps({"purpose": purpose, "params": {"uscc": "91110000600037341L"}})
    return await app.client.post(
        "/v1/services/ledger/entry", content=body, headers={"content-type": "application/json"}
    )


async def test_only_granted_fields_leave_the_gateway(app: App) -> None:
    response = await invoke(app, "XM-1")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["data"] == {"name": "甲公司", "status": "active"}
    assert answer["meta"] | {"request_id": ""} == {
        "request_id": "",
        "service": "ledger",
        "operation": "entry",
        "grant_id": app.grant_id,
        "source": "Ledger",
        "fetched_at": app.clock.now().isoformat(timespec="milliseconds"),  # by the gateway's clock, not the machine's
    }


async def test_which_grants_are_valid_is_judged_by_the_directorys_clock(app: App) -> None:
    # The grant runs for a day from now: two days on, by the directory's clock, it has expired, though by the
    # machine's it has not. The snapshot leaves it out and the refusal finds it ended, both by that clock.
    directory = Directory(app.sessions, ttl=0, clock=ManualClock(datetime.now(UTC) + 2 * DAY))
    with pytest.raises(Problem) as info:
        await grants.grant_for(directory, "platform", "ledger", "entry", "XM-1")
    assert info.value.code == "grant_expired" and info.value.context == {"grant_id": app.grant_id}
    today = Directory(app.sessions, ttl=0, clock=ManualClock(datetime.now(UTC)))
    assert (await grants.grant_for(today, "platform", "ledger", "entry", "XM-1")).grant_id == app.grant_id


async def test_a_refusal_names_the_grant_the_caller_held(app: App) -> None:
    assert (await invoke(app, "XM-2")).json()["code"] == "purpose_not_granted"
    async with app.sessions() as session:
        row = await session.get(Grant, app.grant_id)
        grants.revoke_rows([row], "admin", "test", datetime.now(UTC))
        await session.commit()
    app.directory.invalidate()
    problem = (await invoke(app, "XM-1")).json()
    assert problem["code"] == "grant_revoked" and app.grant_id in problem["detail"]
