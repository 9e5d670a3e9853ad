"""Batch comparison jobs on both backends: submit, run, status, results streamed and resumed, upload checks, grants'
share method, per-subject minimization, quota pause and resume, revocation, cancel, the audit by subject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from simulators.enterprises import ENTERPRISES
from tests.helpers.batches import BATCH_PURPOSE, all_lines, batch_grant, submit, usccs, wait_state
from tests.helpers.gateways import RunningGateway, make_gateway


@pytest.fixture(scope="module", params=["sqlite", "postgres_redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, credit_url: str
) -> AsyncIterator[RunningGateway]:
    """One gateway per backend for the module; chunks of 10 subjects so that 30 subjects make three chunks."""
    from simulators import golden_tax

    data_dir: Path = tmp_path_factory.mktemp(f"batches-{request.param}")
    runner, port = await golden_tax.start_with_port("127.0.0.1", 0)
    async with make_gateway(
        request.param,
        data_dir=data_dir,
        upstream_urls={"credit": credit_url, "golden-tax": f"http://127.0.0.1:{port}"},
        upstream_timeout=2.0,
        batch_chunk_size=10,
        batch_recheck_seconds=0.2,
        batch_stall_seconds=2.0,
    ) as running:
        await batch_grant(running)
        await batch_grant(running, "golden-tax", "tax-credit-rating")
        yield running
    await runner.cleanup()


async def test_batch_runs_every_subject_once_with_granted_fields(gw: RunningGateway) -> None:
    subjects = usccs(30)
    async with gw.client() as client:
        answer = await submit(client, subjects)
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["batch_id"]
        assert answer.headers["location"] == f"/v1/batches/{batch_id}"
        status = await wait_state(client, batch_id, ("done",))
        lines = await all_lines(client, batch_id)
    assert status["done"] == 30 and status["chunks"] == {"done": 3, "total": 3, "size": 10}
    assert status["operations"][0]["done"] == 30
    assert sum(status["operations"][0]["outcomes"].values()) == 30
    assert [line["line"] for line in lines] == list(range(1, 31))
    assert [line["uscc"] for line in lines] == subjects
    expected = {e.uscc: e.dishonest_debtor for e in ENTERPRISES[:30]}
    assert all(line["data"]["listed"] == expected[line["uscc"]] for line in lines)


async def test_fields_are_minimized_per_subject(gw: RunningGateway) -> None:
    await batch_grant(gw, "credit", "abnormal-operation", fields=["listed"])
    async with gw.client() as client:
        answer = await submit(client, usccs(5), [{"service": "credit", "operation": "abnormal-operation"}])
        batch_id = answer.json()["batch_id"]
        await wait_state(client, batch_id, ("done",))
        lines = await all_lines(client, batch_id)
    assert {tuple(line["data"]) for line in lines} == {("listed",)}


async def test_grant_without_batch_share_method_is_refused(gw: RunningGateway) -> None:
    await batch_grant(gw, "credit", "serious-violation", share_methods=("api",))
    async with gw.client() as client:
        answer = await submit(client, usccs(3), [{"service": "credit", "operation": "serious-violation"}])
    assert answer.status_code == 403
    assert answer.json()["code"] == "share_method_not_granted"


async def test_every_bad_line_is_named_in_one_422(gw: RunningGateway) -> None:
    good = usccs(2)
    broken = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    body = "uscc\n" + "\n".join([good[0], broken + ",x", good[0], good[1], "91350100M000100Y4Z"]) + "\n"
    async with gw.client() as client:
        answer = await client.post(
            "/v1/batches",
            params={"purpose": BATCH_PURPOSE, "operation": "credit/dishonest-debtor"},
            content=body.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        listed = {(error["line"], error["type"]) for error in problem["errors"]}
        # line 3 has a column too many, 4 repeats line 2, 6 has a bad check character; 2 and 5 are fine
        assert listed == {(3, "column_count"), (4, "duplicate"), (6, "uscc_invalid")}
        assert problem["code"] == "subjects_invalid"
        ndjson = b'{"uscc": "%s"}\n{"usc": 1}\nnot json\n' % good[0].encode()
        answer = await client.post(
            "/v1/batches",
            params={"purpose": BATCH_PURPOSE, "operation": "credit/dishonest-debtor"},
            content=ndjson,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert answer.status_code == 422
        assert {(e["line"], e["type"]) for e in answer.json()["errors"]} == {(2, "missing"), (3, "line_not_json")}


async def test_csv_upload_runs_and_results_come_as_csv(gw: RunningGateway) -> None:
    subjects = usccs(12, start=40)
    body = "uscc\n" + "\n".join(subjects) + "\n"
    async with gw.client() as client:
        answer = await client.post(
            "/v1/batches",
            params={"purpose": BATCH_PURPOSE, "operation": "credit/dishonest-debtor"},
            content=body.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["batch_id"]
        await wait_state(client, batch_id, ("done",))
        csv_answer = await client.get(f"/v1/batches/{batch_id}/results", headers={"Accept": "text/csv"})
    rows = csv_answer.text.splitlines()
    assert rows[0] == "line,uscc,service,operation,status,problem,data"
    assert [row.split(",")[1] for row in rows[1:]] == subjects


async def test_results_resume_from_a_cursor_and_a_range(gw: RunningGateway) -> None:
    async with gw.client() as client:
        batch_id = (await submit(client, usccs(25, start=60))).json()["batch_id"]
        await wait_state(client, batch_id, ("done",))
        whole = await all_lines(client, batch_id)
        part = await client.get(f"/v1/batches/{batch_id}/results", params={"cursor": 17})
        ranged = await client.get(f"/v1/batches/{batch_id}/results", headers={"Range": "lines=5-8"})
    assert part.headers["batch-next-cursor"] == "25" and part.headers["batch-complete"] == "true"
    assert [orjson.loads(line) for line in part.content.splitlines()] == whole[17:]
    assert [orjson.loads(line)["line"] for line in ranged.content.splitlines()] == [5, 6, 7, 8]


async def test_audit_finds_every_batch_that_looked_at_an_enterprise(gw: RunningGateway) -> None:
    target = usccs(1, start=100)[0]
    async with gw.client() as client:
        ids = []
        for start in (99, 100):
            batch_id = (await submit(client, usccs(3, start=start))).json()["batch_id"]
            await wait_state(client, batch_id, ("done",))
            ids.append(batch_id)
    async with gw.client(gw.officer) as officer:
        found = await officer.get("/v1/audit/records", params={"subject": target, "limit": 50})
    assert found.status_code == 200, found.text
    records = [r for r in found.json()["records"] if r["event"] == "batch.subject"]
    assert {r["target_id"] for r in records} == set(ids)
    assert all(r["purpose"] == BATCH_PURPOSE and r["operation"] == "dishonest-debtor" for r in records)
    assert all(r["decision"] == "allowed" for r in records)


async def test_cancel_stops_a_batch(gw: RunningGateway) -> None:
    async with gw.client() as client:
        batch_id = (await submit(client, usccs(5, start=150))).json()["batch_id"]
        await wait_state(client, batch_id, ("done", "running", "queued"))
        answer = await client.delete(f"/v1/batches/{batch_id}")
        assert answer.status_code in (200, 409)
        if answer.status_code == 200:
            assert answer.json()["state"] == "cancelled"
        other = await client.get("/v1/batches/b-000000000000000000000000")
    assert other.status_code == 404 and other.json()["code"] == "batch_unknown"


async def test_revoked_grant_stops_the_batch_with_its_reason(gw: RunningGateway) -> None:
    grant = await batch_grant(gw, "credit", "dishonest-debtor", purpose="XM-2025-REVOKE")
    async with gw.client(gw.admin) as admin:
        revoked = await admin.post(f"/v1/grants/{grant['grant_id']}/revoke", json={"reason": "misuse found"})
        assert revoked.status_code == 200, revoked.text
    gw.runtime.directory.invalidate()
    async with gw.client() as client:
        refused = await submit(client, usccs(3), purpose="XM-2025-REVOKE")
    assert refused.status_code == 403 and refused.json()["code"] == "grant_revoked"


async def test_quota_pauses_the_batch_and_it_resumes_when_the_window_resets(gw: RunningGateway) -> None:
    await batch_grant(gw, "credit", "dishonest-debtor", purpose="XM-2025-QUOTA", daily_quota=25)
    async with gw.client() as client:
        batch_id = (await submit(client, usccs(40, start=200), purpose="XM-2025-QUOTA")).json()["batch_id"]
        paused = await wait_state(client, batch_id, ("paused",))
        assert paused["pause"]["code"] == "quota_exhausted" and paused["done"] == 20
        lines = await all_lines(client, batch_id)
        # What ran is readable while paused, up to the first chunk not run yet (chunks run two at a time).
        assert [line["line"] for line in lines] == list(range(1, len(lines) + 1)) and len(lines) <= 20
        # Midnight, Beijing time: the day's counter starts again.
        await reset_quota_windows(gw)
        done = await wait_state(client, batch_id, ("paused", "done"), timeout=30)
        while done["state"] == "paused" and done["done"] < 40:
            await reset_quota_windows(gw)
            done = await wait_state(client, batch_id, ("done",), timeout=30)
        lines = await all_lines(client, batch_id)
    assert [line["line"] for line in lines] == list(range(1, 41))


async def reset_quota_windows(gw: RunningGateway) -> None:
    quotas = gw.runtime.quotas
    if quotas.kind == "memory":
        quotas.storage.storage.clear()
        quotas.storage.expirations.clear()
        return
    client = Redis.from_url(gw.settings.redis_url)
    try:
        async for key in client.scan_iter(f"{gw.settings.redis_prefix}:limits*quota*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def test_revocation_mid_job_stops_it_with_the_reason(gw: RunningGateway) -> None:
    grant = await batch_grant(gw, "credit", "dishonest-debtor", purpose="XM-2025-MIDJOB", daily_quota=10)
    async with gw.client() as client:
        batch_id = (await submit(client, usccs(30, start=240), purpose="XM-2025-MIDJOB")).json()["batch_id"]
        await wait_state(client, batch_id, ("paused",))
        async with gw.client(gw.admin) as admin:
            revoked = await admin.post(f"/v1/grants/{grant['grant_id']}/revoke", json={"reason": "purpose ended"})
            assert revoked.status_code == 200, revoked.text
        await reset_quota_windows(gw)
        stopped = await wait_state(client, batch_id, ("failed",))
        lines = await all_lines(client, batch_id)
    assert stopped["stopped"]["code"] == "grant_revoked"
    assert grant["grant_id"] in stopped["stopped"]["detail"]
    # The chunk done before the revocation stays (readable once the lines before it are); nothing ran after it.
    assert stopped["done"] == 10
    assert len(lines) in (0, 10)


async def test_results_stream_while_the_batch_runs(gw: RunningGateway, credit_url: str, clear_faults: None) -> None:
    import httpx

    async with httpx.AsyncClient() as sim:
        await sim.post(f"{credit_url}/_sim/faults", json={"mode": "latency", "latency_ms": 150})
    async with gw.client() as client:
        batch_id = (await submit(client, usccs(50, start=120))).json()["batch_id"]
        seen: list[dict] = []
        cursor = 0
        partial_reads = 0
        while True:
            answer = await client.get(f"/v1/batches/{batch_id}/results", params={"cursor": cursor})
            assert answer.status_code == 200
            seen += [orjson.loads(line) for line in answer.content.splitlines()]
            cursor = int(answer.headers["batch-next-cursor"])
            if answer.headers["batch-complete"] == "true":
                break
            if answer.headers["batch-state"] in ("queued", "running"):
                partial_reads += 1
            await __import__("asyncio").sleep(0.1)
    assert partial_reads >= 1
    assert [line["line"] for line in seen] == list(range(1, 51))


async def test_results_are_deleted_after_the_retention_days(gw: RunningGateway) -> None:
    from datetime import UTC, datetime, timedelta

    async with gw.client() as client:
        batch_id = (await submit(client, usccs(3, start=280))).json()["batch_id"]
        await wait_state(client, batch_id, ("done",))
        service = gw.app.state.batches
        assert await service.expire_results(datetime.now(UTC) + timedelta(days=6)) == 0
        assert await service.expire_results(datetime.now(UTC) + timedelta(days=8)) >= 1
        gone = await client.get(f"/v1/batches/{batch_id}/results")
        status = (await client.get(f"/v1/batches/{batch_id}")).json()
    assert gone.status_code == 410 and gone.json()["code"] == "batch_results_expired"
    assert status["results"]["expired"] is True


async def test_python_client_batch_handle_waits_and_iterates(gw: RunningGateway) -> None:
    import asyncio

    from gateway.client import GatewayClient

    subjects = usccs(15, start=300 - 15)

    def run() -> tuple[dict, list[dict]]:
        with GatewayClient(gw.url, gw.platform.key_id, gw.platform.private_key) as client:
            handle = client.batch(BATCH_PURPOSE, ["credit/dishonest-debtor"], subjects)
            return handle.wait(timeout=60, poll=0.1), list(handle.results())

    status, lines = await asyncio.to_thread(run)
    assert status["state"] == "done"
    assert [line["uscc"] for line in lines] == subjects


async def test_cli_submits_a_csv_follows_it_and_writes_results(gw: RunningGateway, tmp_path: Path) -> None:
    import asyncio

    from cryptography.hazmat.primitives import serialization

    from tests.helpers.processes import CLI

    key = tmp_path / "platform.pem"
    key.write_bytes(
        gw.platform.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    subjects = usccs(12, start=270)
    source = tmp_path / "subjects.csv"
    source.write_text("uscc\n" + "\n".join(subjects) + "\n")
    common = ["--key", str(key), "--caller", "platform", "--url", gw.url]
    submitted = await asyncio.create_subprocess_exec(
        CLI, "batch", "submit", "--purpose", BATCH_PURPOSE, "--op", "credit/dishonest-debtor",
        "--subjects", str(source), *common, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await submitted.communicate()
    assert submitted.returncode == 0, err.decode()
    text = out.decode()
    batch_id = text.split()[1].rstrip(":")
    assert "done, 12/12 subjects" in text
    target = tmp_path / "out.csv"
    written = await asyncio.create_subprocess_exec(
        CLI, "batch", "results", batch_id, "-o", str(target), *common, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await written.communicate()
    assert written.returncode == 0
    rows = target.read_text().splitlines()
    assert rows[0].startswith("line,uscc") and [row.split(",")[1] for row in rows[1:]] == subjects


async def test_two_operations_bulk_and_per_subject_over_the_register(gw: RunningGateway) -> None:
    from simulators.enterprises import by_uscc, register_uscc

    codes = [register_uscc(index) for index in range(5000, 5025)]
    body = "uscc,year\n" + "\n".join(f"{code},{2024 if n % 2 else 2025}" for n, code in enumerate(codes)) + "\n"
    async with gw.client() as client:
        answer = await client.post(
            "/v1/batches",
            params=[
                ("purpose", BATCH_PURPOSE),
                ("operation", "credit/dishonest-debtor"),
                ("operation", "golden-tax/tax-credit-rating"),
            ],
            content=body.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["batch_id"]
        status = await wait_state(client, batch_id, ("done",))
        lines = await all_lines(client, batch_id)
    assert [op["done"] for op in status["operations"]] == [25, 25]
    assert [line["line"] for line in lines] == list(range(1, 51))
    for n, code in enumerate(codes):
        credit, tax = lines[2 * n], lines[2 * n + 1]
        enterprise = by_uscc(code)
        assert enterprise is not None
        assert (credit["uscc"], credit["operation"], tax["operation"]) == (
            code,
            "dishonest-debtor",
            "tax-credit-rating",
        )
        assert credit["data"]["listed"] == enterprise.dishonest_debtor
        assert tax["data"]["rating"] == enterprise.tax_ratings[2024 if n % 2 else 2025]


async def test_grants_add_cli_issues_a_batch_grant(gw: RunningGateway) -> None:
    import asyncio
    import json
    import os

    from tests.helpers.processes import CLI

    if not gw.settings.is_sqlite:
        pytest.skip("the CLI writes to the data dir's SQLite database")
    env = {**os.environ, "MSJX_UPSTREAM_URLS": json.dumps(gw.settings.upstream_urls)}
    added = await asyncio.create_subprocess_exec(
        CLI, "grants", "add", "platform", "credit", "abnormal-operation", "--purpose", "XM-2025-CLIGRANT",
        "--field", "listed", "--share-method", "batch", "--data-dir", str(gw.settings.data_dir),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await added.communicate()
    assert added.returncode == 0, err.decode()
    assert json.loads(out)["share_methods"] == ["batch"]
    gw.runtime.directory.invalidate()
    async with gw.client() as client:
        batch = await submit(
            client, usccs(2), [{"service": "credit", "operation": "abnormal-operation"}], purpose="XM-2025-CLIGRANT"
        )
        assert batch.status_code == 202, batch.text
        single = await client.post(
            "/v1/services/credit/abnormal-operation",
            json={"purpose": "XM-2025-CLIGRANT", "params": {"uscc": usccs(1)[0]}},
        )
    assert single.status_code == 403 and single.json()["code"] == "share_method_not_granted"
