"""Minimization as a property, through the real invoke path: for any grant and any upstream record, the fields
of the answer are a subset of the granted fields, with the upstream's values, whatever else the upstream sent."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from adapters.base import Adapter, Operation, UpstreamResult
from gateway.access import callers
from gateway.app import create_app
from gateway.client import SignatureAuth
from gateway.demo.setup import key_id_for
from gateway.settings import load_settings
from gateway.storage import db
from schemas.api import CallerIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.services import free_port

GRANTABLE = ("uscc", "name", "status", "capital", "industry", "legal_representative", "phone", "bank_account")
LEAKED = ("internal_id", "raw", "id_number", "_debug")


class RecordQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str


class AnyRecord(BaseModel):
    """Whatever the upstream sends: the property must hold even for keys no grant could name."""

    model_config = ConfigDict(extra="allow")


class EchoAdapter(Adapter):
    """An upstream that answers with the record the test set last."""

    service = "echo"
    title = "echo"
    operations: ClassVar[dict[str, Operation]] = {
        "record": Operation("record", "the record set by the test", RecordQuery, AnyRecord, fields=GRANTABLE)
    }

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        return UpstreamResult(dict(self.record))


@dataclass
class Served:
    url: str
    adapter: EchoAdapter
    platform: SignatureAuth
    admin: SignatureAuth


def new_identity(caller_id: str, roles: list[str]) -> tuple[CallerIn, SignatureAuth]:
    key = Ed25519PrivateKey.generate()
    key_id = key_id_for(caller_id, key.public_key())
    body = CallerIn(
        caller_id=caller_id,
        name=caller_id,
        department="市数据管理局",
        roles=roles,
        keys=[KeyIn(key_id=key_id, public_key=public_key_pem(key.public_key()))],
    )
    return body, SignatureAuth(key_id, key)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real app with an echo upstream, served from a thread so that hypothesis drives it synchronously."""
    settings_ = load_settings(data_dir=Path(tmp_path_factory.mktemp("property")))
    db.upgrade(settings_)
    platform_in, platform = new_identity("platform", ["platform"])
    admin_in, admin = new_identity("admin", ["admin"])

    async def seed() -> None:
        engine = db.create_engine(settings_)
        async with db.sessionmaker(engine)() as session:
            await callers.add_caller(session, platform_in)
            await callers.add_caller(session, admin_in)
        await engine.dispose()

    asyncio.run(seed())
    adapter = EchoAdapter()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings_, {"echo": adapter}), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "the gateway did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}", adapter, platform, admin)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
RECORD = st.dictionaries(
    st.sampled_from(GRANTABLE + LEAKED) | st.text(min_size=1, max_size=12), JSON_VALUE, max_size=12
)
GRANTED = st.sets(st.sampled_from(GRANTABLE), min_size=1)
_purposes = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(granted=GRANTED, record=RECORD)
def test_answer_fields_are_a_subset_of_granted_fields(served: Served, granted: set[str], record: dict) -> None:
    purpose = f"PROP-{next(_purposes)}"
    with httpx.Client(base_url=served.url, timeout=30) as client:
        grant = client.post(
            "/v1/grants",
            auth=served.admin,
            json={
                "caller_id": "platform",
                "service": "echo",
                "operation": "record",
                "purpose": purpose,
                "fields": sorted(granted),
                "valid_to": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            },
        )
        assert grant.status_code == 201, grant.text
        served.adapter.record = record
        answer = client.post(
            "/v1/services/echo/record", auth=served.platform, json={"purpose": purpose, "params": {"key": "k"}}
        )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert set(data) <= granted
    assert data == {name: record[name] for name in granted if name in record}
    assert answer.json()["meta"]["grant_id"] == grant.json()["grant_id"]
