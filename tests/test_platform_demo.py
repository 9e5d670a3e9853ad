"""The simulated platform end to end through the gateway: the 名单类 list (validation, checks, confirmation, payment,
公示), the 条件类 policy against the real golden-tax/market services, and `msjx-gateway demo` run twice."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.settings import load_settings
from gateway.storage.models import IdempotencyKey, PaymentIntent
from simulators.enterprises import ENTERPRISES, by_uscc
from simulators.platform import (
    CONDITION_POLICY,
    LIST_POLICY,
    ListRejected,
    read_list,
    run_condition_policy,
    run_list_policy,
)
from simulators.platform.flow import NOT_OFFERED, REASON_DISHONEST, confirmation, registered_name
from simulators.runner import start_all
from tests.helpers.gateways import RunningGateway, grant_every_operation, running_gateway
from tests.helpers.payments import PayGateway
from tests.helpers.processes import CLI
from tests.helpers.treasury import treasury_listing


def platform_client(gw: RunningGateway) -> GatewayClient:
    return GatewayClient(gw.url, gw.platform.key_id, gw.platform.private_key)


def expected_list_payments() -> dict[str, Decimal]:
    entries = read_list(LIST_POLICY.list_file, registered_name=registered_name, default_amount=Decimal("100000.00"))
    return {
        entry.uscc: entry.amount
        for entry in entries
        if not by_uscc(entry.uscc).dishonest_debtor  # type: ignore[union-attr]
        and confirmation(LIST_POLICY.code, entry.uscc) == "confirmed"
    }


# -- the 名单类 list ----------------------------------------------------------------------------------------------


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def read(path: Path) -> list[Any]:
    return read_list(path, registered_name=registered_name, default_amount=Decimal("100000.00"))


def test_shipped_lists_one_valid_one_with_every_kind_of_error() -> None:
    assert len(read(LIST_POLICY.list_file)) == 30
    with pytest.raises(ListRejected) as info:
        read(LIST_POLICY.draft_file)  # GBK-encoded, as Excel exports it
    assert [(error.line, error.column) for error in info.value.errors] == [
        (4, "uscc"),
        (8, "uscc"),
        (12, "uscc"),
        (17, "name"),
        (22, "amount"),
    ]
    messages = [error.message for error in info.value.errors]
    assert "check character" in messages[0]
    assert "listed already on line 7" in messages[1]
    assert "not an enterprise in the platform's register" in messages[2]
    assert "registered name" in messages[3]
    assert "more than 2 decimal places" in messages[4]


def test_list_lines_each_refused_with_line_and_reason(tmp_path: Path) -> None:
    known = ENTERPRISES[0]
    lines = [
        "uscc,name,amount",
        f"{known.uscc},{known.name},",
        "",
        f"{known.uscc[:17]}{'I'},{known.name},1.00",
        "91350100M000100Y4Z,某公司,1.00",
        f"{ENTERPRISES[1].uscc},{ENTERPRISES[1].name},-5",
        f"{ENTERPRISES[2].uscc},{ENTERPRISES[2].name},abc",
        f"{ENTERPRISES[3].uscc},{ENTERPRISES[3].name}",
        f"{ENTERPRISES[4].uscc},{ENTERPRISES[4].name},0",
    ]
    with pytest.raises(ListRejected) as info:
        read(write(tmp_path / "bad.csv", "\n".join(lines)))
    found = {error.line: (error.column, error.message) for error in info.value.errors}
    assert set(found) == {4, 5, 6, 7, 8, 9}
    assert found[4][0] == "uscc" and "'I'" in found[4][1]
    assert found[5][0] == "uscc" and "check character should be '3'" in found[5][1]
    assert found[6] == ("amount", "'-5' must be more than 0")
    assert found[7][0] == "amount" and "not an amount" in found[7][1]
    assert found[8][0] == "line" and "2 columns" in found[8][1]
    assert found[9] == ("amount", "'0' must be more than 0")

    with pytest.raises(ListRejected, match="first line must be uscc,name,amount"):
        read(write(tmp_path / "header.csv", "code,name\n"))
    with pytest.raises(ListRejected, match="names no enterprise"):
        read(write(tmp_path / "empty.csv", "uscc,name,amount\n\n"))
    (tmp_path / "binary.csv").write_bytes(b"uscc,name,amount\n\xff\xfe\xfa\x80\x81")
    with pytest.raises(ListRejected, match="neither UTF-8 nor GBK"):
        read(tmp_path / "binary.csv")
    entries = read(write(tmp_path / "ok.csv", f"\ufeffuscc,name,amount\n{known.uscc},{known.name},1234.5\n"))
    assert [(entry.line, entry.amount) for entry in entries] == [(2, Decimal("1234.50"))]


async def test_list_policy_pays_the_confirmed_once_and_a_second_run_pays_nobody(
    pay: PayGateway,
    tmp_path: Path,
) -> None:
    expected = expected_list_payments()
    with platform_client(pay.gw) as client:
        draft = await asyncio.to_thread(run_list_policy, client, LIST_POLICY, tmp_path, LIST_POLICY.draft_file)
        assert len(draft.list_errors) == 5 and draft.compared == 0 and not draft.payments
        assert (await treasury_listing(pay.treasury_url))["submissions"] == 0, "a refused list pays nobody"
        assert await pay.count(PaymentIntent) == 0

        first = await asyncio.to_thread(run_list_policy, client, LIST_POLICY, tmp_path)
        second = await asyncio.to_thread(run_list_policy, client, LIST_POLICY, tmp_path)

    assert first.compared == 30 and first.eligible == 28
    assert first.refused[REASON_DISHONEST] == 2
    assert first.confirmed == first.paid == len(expected)
    assert {payment.uscc: payment.amount for payment in first.payments} == expected
    assert first.total == sum(expected.values())
    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == len(expected) and listing["submissions"] == len(expected)
    assert sum(Decimal(v["pay_amt"]) for v in listing["vouchers"]) == first.total

    assert second.paid == 0 and second.already_paid == len(expected)
    assert second.total == first.total
    assert (await treasury_listing(pay.treasury_url))["submissions"] == len(expected), "the treasury saw no repeat"
    assert await pay.count(IdempotencyKey, IdempotencyKey.state == "done") == len(expected)

    assert first.publicity is not None
    with first.publicity.open(encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["统一社会信用代码"]: Decimal(row["兑现金额(元)"]) for row in rows} == expected
    assert not any("6222" in value for row in rows for value in row.values()), "accounts are not published"


# -- the 条件类 policy (needs golden-tax and market, built in another branch) ----------------------------------


@pytest.fixture
async def full_gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """Every simulator this build has, and a gateway offering every adapter it has, all granted to the platform."""
    runners, urls = await start_all("127.0.0.1", {}, tmp_path / "simulators")
    settings = load_settings(
        data_dir=tmp_path, upstream_urls=urls, upstream_timeout=5.0, payment_reconcile_seconds=3600
    )
    try:
        async with running_gateway(settings) as gw:
            async with gw.runtime.sessions() as session:
                adapters = gw.runtime.adapters
                # credit/dishonest-debtor is granted by running_gateway already
                await grant_every_operation(session, adapters, adapters, skip={("credit", "dishonest-debtor")})
            gw.runtime.directory.invalidate()
            yield gw
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_condition_policy_pays_exactly_the_eligible_who_confirm(full_gateway: RunningGateway, tmp_path: Path):
    adapters = full_gateway.runtime.adapters
    if "golden-tax" not in adapters or "market" not in adapters:
        pytest.skip(NOT_OFFERED)
    eligible = [
        e
        for e in ENTERPRISES
        if e.tax_ratings[CONDITION_POLICY.year] == CONDITION_POLICY.rating and e.in_operation and not e.dishonest_debtor
    ]
    confirmed = {e.uscc for e in eligible if confirmation(CONDITION_POLICY.code, e.uscc) == "confirmed"}
    with platform_client(full_gateway) as client:
        first = await asyncio.to_thread(run_condition_policy, client, CONDITION_POLICY, tmp_path)
        second = await asyncio.to_thread(run_condition_policy, client, CONDITION_POLICY, tmp_path)
    assert first.skipped is None
    assert first.compared == len(ENTERPRISES)
    assert first.eligible == len(eligible)
    assert {payment.uscc for payment in first.payments} == confirmed
    assert first.paid == len(confirmed) and first.total == CONDITION_POLICY.amount * len(confirmed)
    assert second.paid == 0 and second.already_paid == len(confirmed)
    treasury_url = full_gateway.settings.upstream_urls["treasury"]
    assert (await treasury_listing(treasury_url))["submissions"] == len(confirmed)


# -- `msjx-gateway demo`, twice ------------------------------------------------------------------------------------


def run_demo(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env["PATH"] = f"{Path(CLI).parent}:{env['PATH']}"
    return subprocess.run(
        [CLI, "demo", "--data-dir", str(data_dir), *args], capture_output=True, text=True, env=env, timeout=240
    )


@pytest.mark.slow
def test_demo_command_twice_pays_once(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    out = first.stdout
    assert "starting `serve --demo`" in out
    assert "line 4, uscc: check character" in out, "the draft list is refused, line by line"
    paid = int(re.search(r"This run paid (\d+) enterprise", out).group(1))  # type: ignore[union-attr]
    # The list policy's payments at least; with golden-tax and market built in, the condition policy's too.
    assert paid >= len(expected_list_payments())
    assert "名单类 MD2025-01" in out and "条件类 TJ2025-01" in out
    assert "records intact" in out and "FAILED" not in out

    second = run_demo(tmp_path)
    assert second.returncode == 0, second.stderr + second.stdout
    assert "This run paid nobody" in second.stdout
    assert "nobody paid again" in second.stdout
    with sqlite3.connect(tmp_path / "simulators" / "treasury.sqlite3") as connection:
        per_voucher = dict(connection.execute("SELECT voucher_no, COUNT(*) FROM submissions GROUP BY voucher_no"))
    assert len(per_voucher) == paid and set(per_voucher.values()) == {1}, "each voucher reached the treasury once"


def test_demo_with_a_url_nobody_answers_says_so(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "no gateway is ready at http://127.0.0.1:9" in result.stderr
