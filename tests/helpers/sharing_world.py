"""A gateway with the departments of the sharing workflow seeded, a pinned workflow clock, and body builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from gateway.audit.search import open_payload
from gateway.settings import load_settings
from gateway.storage.models import AuditRecord
from simulators.enterprises import DEMO_LISTED_USCC
from tests.helpers.clock import ManualClock
from tests.helpers.gateways import Identity, RunningGateway, new_identity
from tests.helpers.gateways import running_gateway as _running_gateway
from tests.helpers.services import check_redis, create_test_database, drop_database

CHINA = timezone(timedelta(hours=8))
DATA = "市数据管理局"  # the requesting department; conftest's `platform` caller belongs to it
CREDIT = "市发改委"  # owner of the credit platform (提供单位): publishes its items, decides its requests
FINANCE = "市财政局"
# Tuesday before the 2025 National Day holiday (1–8 October; Saturday 11 October is a 调休 working day).
BEFORE_NATIONAL_DAY = datetime(2025, 9, 30, 10, 0, tzinfo=CHINA)

PEOPLE = {
    "data-officer": (DATA, ["department"]),
    "data-head": (DATA, ["department"]),
    "credit-officer": (CREDIT, ["department"]),
    "credit-head": (CREDIT, ["department"]),
    "finance-officer": (FINANCE, ["department"]),
    "coordinator": (DATA, ["coordinator"]),
}


@dataclass
class World:
    gw: RunningGateway
    people: dict[str, Identity]
    # The sharing service's clock (its sweep, deadlines, calendar); the rest of the gateway keeps the real time.
    clock: ManualClock = field(default_factory=lambda: ManualClock(BEFORE_NATIONAL_DAY))

    @property
    def now(self) -> datetime:
        return self.clock.moment

    @property
    def url(self) -> str:
        return self.gw.url

    def who(self, name: str) -> Identity:
        return {"platform": self.gw.platform, "admin": self.gw.admin, "officer": self.gw.officer}.get(name) or (
            self.people[name]
        )

    def client(self, name: str) -> httpx.AsyncClient:
        return self.gw.client(self.who(name))

    def set_clock(self, moment: datetime) -> None:
        self.clock.set(moment)

    async def sweep(self) -> list[Any]:
        return await self.gw.app.state.sharing.sweep()

    async def post(self, name: str, path: str, body: Any = None) -> httpx.Response:
        async with self.client(name) as client:
            if body is None:
                return await client.post(path)
            return await client.post(path, json=body)

    async def get(self, name: str, path: str, **params: Any) -> httpx.Response:
        async with self.client(name) as client:
            return await client.get(path, params=params)

    async def audit_records(self, event: str) -> list[dict[str, Any]]:
        table = AuditRecord.__table__
        async with self.gw.runtime.engine.connect() as connection:
            rows = await connection.execute(select(table).where(table.c.event == event).order_by(table.c.ts_ms))
            return [dict(row._mapping) for row in rows]

    async def opened_response(self, record: dict[str, Any]) -> Any:
        """The sealed response payload of an audit record, opened through the node's key ring."""
        import orjson

        return orjson.loads(await open_payload(self.gw.runtime.keyring, record, "response"))


@asynccontextmanager
async def sharing_world(backend: str, tmp_path: Path, credit_url: str, **settings: Any) -> AsyncIterator[World]:
    overrides: dict[str, Any] = {
        "data_dir": tmp_path,
        "upstream_urls": {"credit": credit_url},
        "upstream_timeout": 2.0,
        # The tests drive the sweep themselves, with the pinned clock.
        "sharing_sweep_seconds": 3600,
        **settings,
    }
    if backend == "postgres_redis":
        overrides["redis_url"] = await check_redis()
        overrides["database_url"] = await create_test_database()
    config = load_settings(**overrides)
    try:
        async with _running_gateway(config) as gw:
            people = {}
            async with gw.runtime.sessions() as session:
                for name, (department, roles) in PEOPLE.items():
                    people[name] = await new_identity(session, name, roles, department)
            gw.runtime.directory.invalidate()
            world = World(gw, people)
            gw.app.state.sharing.clock = world.clock
            yield world
    finally:
        if config.database_url:
            await drop_database(config.database_url)


def real_now() -> datetime:
    return datetime.now(UTC)


def item_body(code: str, attribute: str = "conditional", operation: str = "abnormal-operation", **extra: Any) -> dict:
    fields = {"dishonest-debtor": ["uscc", "listed", "cases"]}.get(operation, ["uscc", "listed", "entries"])
    body: dict[str, Any] = {
        "code": code,
        "name": f"{operation} 信息",
        "data_items": [
            {
                "name": name,
                "title": name,
                "type": "array" if name in ("cases", "entries") else "string",
                "level": "general",
            }
            for name in fields
        ],
        "service": "credit",
        "operation": operation,
        "share_attribute": attribute,
        "update_frequency": "daily",
    }
    if attribute in ("conditional", "有条件", "有条件共享"):
        body["conditions"] = {"scope": "本市惠企政策兑现", "purpose": "免申即享资格比对"}
    if attribute in ("not_shared", "不予共享"):
        body["legal_basis"] = {"kind": "law", "title": "《中华人民共和国税收征收管理法》", "article": "第八条"}
    body.update(extra)
    return body


def request_body(item_id: str, **extra: Any) -> dict:
    body: dict[str, Any] = {
        "item_id": item_id,
        "fields": ["uscc", "listed"],
        "purpose": {"code": "XM-2025-002", "name": "企业研发费用补助"},
        "basis": "《厦门市惠企政策免申即享工作方案》",
        "scenario": "免申即享资格比对",
        "scope": "免申即享平台资格比对",
        "valid_to": (real_now() + timedelta(days=30)).isoformat(),
        "daily_volume": 1000,
        "callers": ["platform"],
    }
    body.update(extra)
    return body


async def add_item(world: World, body: dict, who: str = "credit-officer") -> dict:
    response = await world.post(who, "/v1/catalog", body)
    assert response.status_code == 201, response.text
    return response.json()


async def filed_and_submitted(world: World, item_id: str, **extra: Any) -> dict:
    filed = await world.post("data-officer", "/v1/sharing-requests", request_body(item_id, **extra))
    assert filed.status_code == 201, filed.text
    endorsed = await world.post("data-head", f"/v1/sharing-requests/{filed.json()['request_id']}/endorse")
    assert endorsed.status_code == 200, endorsed.text
    return endorsed.json()


REQUESTS = "/v1/sharing-requests"


async def state_of(world: World, request_id: str) -> dict[str, Any]:
    response = await world.get("admin", f"{REQUESTS}/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def invoke(world: World, operation: str, purpose: str, uscc: str = DEMO_LISTED_USCC) -> httpx.Response:
    async with world.gw.client() as client:
        return await client.post(
            f"/v1/services/credit/{operation}", json={"purpose": purpose, "params": {"uscc": uscc}}
        )
