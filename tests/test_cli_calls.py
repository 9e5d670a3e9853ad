"""`call` as operators use it (MSJX_GATEWAY_URL, payments with nested params and an Idempotency-Key), the client's
key ids, and the officer's `audit search` and `audit open` against a running `serve --demo`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.client import DEFAULT_URL, GatewayClient
from schemas.times import BEIJING
from security.keys import generate_ed25519, key_id_for, private_key_pem, write_secret_file
from simulators.platform.policies import CONDITION_POLICY, build_voucher
from tests.helpers.processes import CLI

USCC = "91350213MAG6BDRC7A"
Demo = tuple[str, list[str], Path]


def cli(*args: str, url: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    if url is not None:
        env["MSJX_GATEWAY_URL"] = url
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)


def test_the_client_derives_the_key_id_and_reads_the_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_ed25519()
    write_secret_file(tmp_path / "platform.pem", private_key_pem(key))
    monkeypatch.delenv("MSJX_GATEWAY_URL", raising=False)
    with GatewayClient.from_key_file(None, "platform", tmp_path / "platform.pem") as client:
        assert client.base_url == DEFAULT_URL
        assert client.key_id == key_id_for("platform", key.public_key())
    monkeypatch.setenv("MSJX_GATEWAY_URL", "http://127.0.0.1:8123")
    with GatewayClient.from_key_file(None, "platform", tmp_path / "platform.pem", key_id="platform.k1") as client:
        assert (client.base_url, client.key_id) == ("http://127.0.0.1:8123", "platform.k1")


@pytest.mark.slow
def test_a_gateway_url_or_an_operation_of_the_wrong_shape_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "platform.pem"
    write_secret_file(key, private_key_pem(generate_ed25519()))
    subjects = tmp_path / "subjects.csv"
    subjects.write_text(f"uscc\n{USCC}\n")
    signed = ["--key", str(key), "--caller", "platform"]
    call = ["call", "credit", "dishonest-debtor", "--purpose", "XM-2025-001", "--param", f"uscc={USCC}", *signed]
    submit = ["batch", "submit", "--purpose", "XM-2025-001", "--subjects", str(subjects), *signed, "--no-wait"]
    for args, url, says in [
        (call, "gateway.example", "error: --url 'gateway.example': expected http(s)://host[:port]"),
        (call, "ftp://gateway.example", "error: --url 'ftp://gateway.example': expected http(s)://host[:port]"),
        ([*submit, "--op", "credit/dishonest-debtor"], "notaurl", "error: --url 'notaurl': expected"),
        ([*submit, "--op", "credit"], DEFAULT_URL, "error: --op 'credit': expected service/operation"),
    ]:
        result = cli(*args, url=url)
        assert result.returncode == 2 and result.stderr.startswith(says), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_grant_for_a_service_without_its_url_says_which_setting_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")} | {"MSJX_DATA_DIR": str(tmp_path)}
    grant = [CLI, "grants", "add", "platform", "credit", "dishonest-debtor", "--purpose", "XM-2025-001"]
    result = subprocess.run([*grant, "--field", "listed"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown_service:") and "MSJX_UPSTREAM_URLS" in line

    # With the URL set, arguments the grant cannot take are one line naming them (they were tracebacks).
    env["MSJX_UPSTREAM_URLS"] = '{"credit": "http://127.0.0.1:9"}'
    grant = grant[:-2]
    for args, says in [
        (["--purpose", "", "--field", "listed"], "error: purpose: String should match pattern"),
        (["--purpose", "XM-2025-001", "--field", "listed", "--days", "99999999"], "Invalid value for '--days'"),
    ]:
        result = subprocess.run([*grant, *args], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_call_payments_and_the_officer_commands(demo: Demo) -> None:
    url, _, data_dir = demo
    keys = data_dir / "demo" / "keys"
    platform = ["--key", str(keys / "platform.pem"), "--caller", "platform"]

    # MSJX_GATEWAY_URL instead of --url, as the tour runs on any port.
    answer = cli(
        "call", "credit", "dishonest-debtor", "--purpose", "XM-2025-001", "--param", f"uscc={USCC}", *platform, url=url
    )
    assert answer.returncode == 0, answer.stderr
    call_request_id = json.loads(answer.stdout)["meta"]["request_id"]

    # A payment: nested params from a file, the Idempotency-Key derived from the voucher number and printed.
    voucher = build_voucher(CONDITION_POLICY, USCC, "厦门测试企业有限公司", Decimal("50000.00"))
    voucher_file = data_dir / "voucher.json"
    voucher_file.write_text(json.dumps(voucher, ensure_ascii=False, default=str))
    pay = ["call", "treasury", "submit-voucher", "--purpose", "XM-2025-001", *platform]
    first = cli(*pay, "--json-params", str(voucher_file), url=url)
    assert first.returncode == 0, first.stderr + first.stdout
    assert f"Idempotency-Key: voucher-{voucher['voucher_no']}" in first.stderr
    assert "Idempotent-Replayed" not in first.stderr
    assert json.loads(first.stdout)["data"]["voucher_no"] == voucher["voucher_no"]
    again = cli(*pay, "--json-params", "-", url=url, stdin=json.dumps(voucher, default=str))  # the same, on stdin
    assert again.returncode == 0, again.stderr
    assert "Idempotent-Replayed" in again.stderr
    with sqlite3.connect(data_dir / "simulators" / "treasury.sqlite3") as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM submissions WHERE voucher_no = ?", (voucher["voucher_no"],)
        ).fetchone()
    assert count == 1, "the treasury was asked to pay once"
    other_key = cli(*pay, "--json-params", str(voucher_file), "--idempotency-key", "a-fresh-key", url=url)
    assert other_key.returncode == 1 and json.loads(other_key.stdout)["code"] == "voucher_exists", other_key.stdout
    clash = cli(*pay, "--json-params", str(voucher_file), "--param", "uscc=" + USCC, url=url)
    assert clash.returncode == 2 and "--param uscc: given twice" in clash.stderr
    not_object = cli(*pay, "--json-params", "-", url=url, stdin="[1, 2]")
    assert not_object.returncode == 2 and "expected a JSON object" in not_object.stderr

    # The officer: a thin reason is refused by the gateway, a real one opens the payload; both are searchable.
    officer = ["--key", str(keys / "officer.pem"), "--caller", "officer"]
    search = cli(
        "audit",
        "search",
        *officer,
        "--of-caller",
        "platform",
        "--from",
        datetime.now(BEIJING).date().isoformat(),
        url=url,
    )
    assert search.returncode == 0, search.stderr
    lines = [line for line in search.stdout.splitlines() if "credit/dishonest-debtor" in line]
    assert lines and all("+08:00" in line for line in lines), search.stdout
    record_id = lines[-1].split()[2]  # the oldest of today's calls: the one above
    thin = cli(
        "audit",
        "open",
        record_id,
        *officer,
        "--category",
        "other",
        "--reference",
        "T-1",
        "--reason",
        "aaaaaaaaaa",
        url=url,
    )
    assert thin.returncode == 1 and json.loads(thin.stdout)["errors"][0]["type"] == "reason_repeated"
    opened = cli(
        "audit", "open", record_id, *officer, "--category", "inspection", "--reference", "检查-2026-07",
        "--reason", "年度数据安全检查抽查调用记录", "--part", "request", url=url,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr + opened.stdout
    assert json.loads(opened.stdout)["request"]["params"]["uscc"] == USCC
    readings = cli("audit", "search", *officer, "--category", "inspection", url=url)
    assert readings.returncode == 0, readings.stderr
    (reading,) = readings.stdout.splitlines()
    assert f"on {record_id}" in reading and "[inspection 检查-2026-07] 年度数据安全检查抽查调用记录" in reading
    assert call_request_id  # the first call answered with a request id the audit record carries
