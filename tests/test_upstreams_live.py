"""Registering a district system on a running gateway: the admin API and the CLI, live on a second node within about
a second without a restart, called through the signed, audited invoke path, then removed with its grants."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from typer.testing import CliRunner

from gateway.app import create_app
from gateway.cli import app as cli
from gateway.settings import Settings
from tests.helpers.calls import last_record
from tests.helpers.district_upstreams import EXAMPLES, serving, soap_app
from tests.helpers.gateways import PURPOSE, RunningGateway
from tests.helpers.services import free_port

HULI = "湖里区数据管理局"  # the district department owning the registered systems' data

FILES = {
    name: (EXAMPLES / name).read_text()
    for name in ("district-wrapped.wsdl", "district-types.xsd", "district-common.xsd")
}


@asynccontextmanager
async def second_node(settings: Settings) -> AsyncIterator[str]:
    """Another gateway node on the same database (and Redis): its own audit chain, its own adapter catalog."""
    app = create_app(settings.model_copy(update={"node_id": "node-2"}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(250):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _services(client: httpx.AsyncClient) -> set[str]:
    response = await client.get("/v1/services")
    assert response.status_code == 200, response.text
    return {service["service"] for service in response.json()["services"]}


async def _until(predicate: Any, limit: float = 60.0) -> None:
    """Wait until the other node sees the change (it polls every 0.5 s); the limit bounds a hang on a loaded host."""
    deadline = time.monotonic() + limit
    while not await predicate():
        assert time.monotonic() < deadline, "the change never reached the other node"
        await asyncio.sleep(0.05)


async def test_register_call_and_remove_across_nodes(gateway: RunningGateway) -> None:
    upstream = soap_app()
    async with serving(upstream) as district_url, second_node(gateway.settings) as node2:
        body = {
            "name": "huli-fulfilment",
            "owner_department": HULI,
            "kind": "wsdl",
            "files": FILES,
            "root": "district-wrapped.wsdl",
            "endpoint": district_url,
            "safe": ["GetSubsidy"],
            "policy": {"total_timeout": 2, "max_attempts": 2},
        }
        platform_b = httpx.AsyncClient(base_url=node2, auth=gateway.platform.auth(), timeout=30)
        async with gateway.client(gateway.admin) as admin, platform_b:
            assert "huli-fulfilment" not in await _services(platform_b)
            registered = await admin.post("/v1/upstreams", json=body)
            assert registered.status_code == 201, registered.text
            out = registered.json()
            assert {op["operation"]: op["safe"] for op in out["operations"]} == {"Echo": False, "GetSubsidy": True}
            assert out["created_by"] == "admin" and out["policy"] == {"total_timeout": 2, "max_attempts": 2}
            assert out["owner_department"] == HULI
            record = await last_record(gateway)
            assert (record["event"], record["decision"], record["status_code"]) == (
                "admin.upstream.add",
                "allowed",
                201,
            )

            async def on_node_b() -> bool:
                return "huli-fulfilment" in await _services(platform_b)

            await _until(on_node_b)  # live on the other node without a restart
            listing = (await platform_b.get("/v1/services")).json()["services"]
            district = next(s for s in listing if s["service"] == "huli-fulfilment")
            assert district["owner_department"] == HULI
            get_subsidy = next(op for op in district["operations"] if op["operation"] == "GetSubsidy")
            assert get_subsidy["input_schema"]["properties"]["year"]["type"] == "integer"
            assert get_subsidy["output_schema"]["properties"]["amount"]["format"] == "decimal"

            grant = await admin.post(
                "/v1/grants",
                json={
                    "caller_id": "platform",
                    "service": "huli-fulfilment",
                    "operation": "GetSubsidy",
                    "purpose": PURPOSE,
                    "fields": ["uscc", "amount", "paidOn"],
                    "valid_to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                },
            )
            assert grant.status_code == 201, grant.text
            invoke = "/v1/services/huli-fulfilment/GetSubsidy"
            call = {"purpose": PURPOSE, "params": {"uscc": "91350206MA2Y0K1X8A", "year": 2025}}

            async def granted_on_b() -> bool:
                return (await platform_b.post(invoke, json=call)).status_code == 200

            await _until(granted_on_b)
            answer = (await platform_b.post(invoke, json=call)).json()
            assert answer["data"] == {
                "uscc": "91350206MA2Y0K1X8A",
                "amount": "1234567890123456.78",
                "paidOn": "2025-03-31",
            }
            bad = await platform_b.post(invoke, json={"purpose": PURPOSE, "params": {"uscc": "x", "year": "soon"}})
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "params/year"

            duplicate = await admin.post("/v1/upstreams", json=body)
            assert duplicate.status_code == 409 and duplicate.json()["code"] == "upstream_exists"
            listed = (await admin.get("/v1/upstreams")).json()
            assert [(u["name"], u["live"], u["owner_department"]) for u in listed] == [("huli-fulfilment", True, HULI)]

            removed = await admin.delete("/v1/upstreams/huli-fulfilment")
            assert removed.status_code == 200 and removed.json()["grants_revoked"] == 1

            async def gone_on_b() -> bool:
                response = await platform_b.post(invoke, json=call)
                return response.status_code == 404 and response.json()["code"] == "unknown_service"

            await _until(gone_on_b)
            grants = (await admin.get("/v1/grants")).json()
            assert all(g["revoked_at"] for g in grants if g["service"] == "huli-fulfilment")


async def test_registration_refusals_over_the_api(gateway: RunningGateway) -> None:
    encoded = {
        "name": "legacy",
        "owner_department": HULI,
        "kind": "wsdl",
        "files": {"x.wsdl": (EXAMPLES / "district-encoded.wsdl").read_text()},
    }
    async with gateway.client(gateway.admin) as admin, gateway.client() as platform:
        refused = await admin.post("/v1/upstreams", json={**encoded, "root": "x.wsdl"})
        assert refused.status_code == 422
        problem = refused.json()
        assert problem["code"] == "contract_unsupported" and "rpc/encoded" in problem["detail"]
        assert problem["errors"][0]["field"] == "files"
        record = await last_record(gateway)
        assert (record["event"], record["decision"], record["reason_code"]) == (
            "admin.upstream.add",
            "refused",
            "contract_unsupported",
        )
        no_root = await admin.post("/v1/upstreams", json=encoded)
        assert no_root.status_code == 422 and no_root.json()["code"] == "validation_failed"
        # Every upstream has an owning department (提供单位) from its registration on.
        ownerless = {key: value for key, value in encoded.items() if key != "owner_department"}
        no_owner = await admin.post("/v1/upstreams", json={**ownerless, "root": "x.wsdl"})
        assert no_owner.status_code == 422 and no_owner.json()["errors"][0]["field"] == "owner_department"
        local = await admin.post(
            "/v1/upstreams", json={"name": "x1", "owner_department": HULI, "kind": "wsdl", "url": "file:///etc/passwd"}
        )
        assert local.status_code == 422 and local.json()["errors"][0]["field"] == "url"
        builtin = await admin.post("/v1/upstreams", json={**encoded, "name": "credit", "root": "x.wsdl"})
        assert builtin.status_code == 409 and builtin.json()["code"] == "name_taken"
        forbidden = await platform.post("/v1/upstreams", json={**encoded, "root": "x.wsdl"})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "role_forbidden"
        unknown = await admin.delete("/v1/upstreams/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["code"] == "upstream_unknown"


def test_cli_add_list_remove(tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path)]
    data = [*where, "--owner", HULI]
    wsdl = str(EXAMPLES / "district-bare.wsdl")
    added = runner.invoke(cli, ["upstreams", "add", "district-bare", "--wsdl", wsdl, "--safe", "Lookup", *data])
    assert added.exit_code == 0, added.output
    assert "registered district-bare (wsdl, 2 operations)" in added.output and f"owned by {HULI}" in added.output
    ownerless = runner.invoke(cli, ["upstreams", "add", "district-x", "--wsdl", wsdl, *where])
    assert ownerless.exit_code == 2 and "--owner" in ownerless.output
    assert "district-bare/Lookup" in added.output
    again = runner.invoke(cli, ["upstreams", "add", "district-bare", "--wsdl", wsdl, *data])
    assert again.exit_code == 1 and "upstream_exists" in again.output
    api = str(EXAMPLES / "district-openapi.yaml")
    rest = runner.invoke(
        cli, ["upstreams", "add", "district-rest", "--openapi", api, "--endpoint", "http://127.0.0.1:9", *data]
    )
    assert rest.exit_code == 0, rest.output
    listing = runner.invoke(cli, ["upstreams", "list", *where])
    assert listing.exit_code == 0
    assert "district-bare/Lookup  (safe)" in listing.output and "district-rest/getSubsidy  (safe)" in listing.output
    assert f"owned by {HULI}" in listing.output
    grant = runner.invoke(
        cli,
        ["grants", "add", "nobody", "district-rest", "getSubsidy", "--purpose", PURPOSE, "--field", "amount", *where],
    )
    assert "caller_unknown" in grant.output  # the registered service and its fields were recognised first
    encoded = runner.invoke(
        cli, ["upstreams", "add", "legacy", "--wsdl", str(EXAMPLES / "district-encoded.wsdl"), *data]
    )
    assert encoded.exit_code == 1 and "contract_unsupported" in encoded.output and "rpc/encoded" in encoded.output
    removed = runner.invoke(cli, ["upstreams", "remove", "district-bare", *where])
    assert removed.exit_code == 0 and "removed district-bare; 0 grant(s) revoked" in removed.output
    both = runner.invoke(cli, ["upstreams", "add", "x2", "--wsdl", wsdl, "--openapi", api, *data])
    assert both.exit_code == 2
