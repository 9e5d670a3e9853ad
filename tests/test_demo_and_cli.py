"""The commands as a person runs them: `serve --demo` and its printed call, callers, grants and `audit verify`."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.client import GatewayClient, GatewayError
from security.keys import public_key_pem
from tests.helpers.demo import start_demo
from tests.helpers.processes import CLI, run_cli, stop
from tests.helpers.services import free_port

pytestmark = pytest.mark.slow


def test_demo_prints_a_call_that_answers_with_data(demo: tuple[str, list[str], Path]) -> None:
    url, lines, data_dir = demo
    assert lines[0].startswith(f"msjx-gateway demo on {url}")
    call = next(line.strip() for line in lines if "msjx-gateway call" in line)
    argv = shlex.split(call)
    argv[0] = CLI if argv[0] == "msjx-gateway" else argv[0]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    answer = json.loads(result.stdout)
    assert set(answer["data"]) == {"uscc", "listed", "cases"}
    assert answer["meta"]["service"] == "credit"

    listing = json.loads((data_dir / "demo" / "callers.json").read_text())
    roles = {role for entry in listing for role in entry["roles"]}
    assert {"platform", "department", "officer", "admin"} <= roles
    for entry in listing:
        key_file = Path(entry["key_file"])
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    platform = next(entry for entry in listing if "platform" in entry["roles"])
    assert platform["purposes"], "the platform caller has demo grants"

    with GatewayClient.from_key_file(url, platform["caller_id"], platform["key_file"]) as client:
        narrow = client.invoke("credit", "dishonest-debtor", "QZ-2025-007", uscc=answer["data"]["uscc"])
        assert list(narrow["data"]) == ["listed"]
        with pytest.raises(GatewayError) as info:
            client.invoke("credit", "dishonest-debtor", "NOT-GRANTED", uscc=answer["data"]["uscc"])
        assert info.value.status == 403 and info.value.code == "purpose_not_granted"

    verify = run_cli("audit", "verify", data_dir=data_dir)
    assert "intact" in verify.stdout


def test_demo_restart_reuses_callers_and_keys(tmp_path: Path) -> None:
    port = free_port()
    process, _ = start_demo(tmp_path, port)
    stop(process)
    first = json.loads((tmp_path / "demo" / "callers.json").read_text())
    process, _ = start_demo(tmp_path, port)
    stop(process)
    second = json.loads((tmp_path / "demo" / "callers.json").read_text())
    assert [entry["key_id"] for entry in first] == [entry["key_id"] for entry in second]
    grants = run_cli("grants", "list", data_dir=tmp_path).stdout.strip().splitlines()
    keys = [tuple(line.split()[1:4]) for line in grants]  # caller, service/operation, purpose
    assert len(keys) == len(set(keys)) > 0, "a restart adds no duplicate grants"


def test_callers_cli_add_list_revoke(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "district.pub.pem"
    pem.write_text(public_key_pem(key.public_key()))
    added = run_cli(
        "callers",
        "add",
        "district-siming",
        "--name",
        "思明区",
        "--department",
        "思明区政府",
        "--role",
        "department",
        "--public-key",
        str(pem),
        "--key-id",
        "siming-1",
        data_dir=tmp_path,
    )
    assert json.loads(added.stdout)["keys"][0]["key_id"] == "siming-1"
    listed = run_cli("callers", "list", data_dir=tmp_path).stdout
    assert "district-siming" in listed and "siming-1 (active)" in listed
    again = run_cli(
        "callers",
        "add",
        "district-siming",
        "--name",
        "x",
        "--department",
        "y",
        "--role",
        "department",
        data_dir=tmp_path,
        check=False,
    )
    assert again.returncode == 1 and "caller_exists" in again.stderr
    bad_role = run_cli(
        "callers", "add", "x1", "--name", "x", "--department", "y", "--role", "king", data_dir=tmp_path, check=False
    )
    assert bad_role.returncode != 0 and "roles" in bad_role.stderr
    run_cli("callers", "revoke-key", "district-siming", "siming-1", data_dir=tmp_path)
    assert "siming-1 (revoked)" in run_cli("callers", "list", data_dir=tmp_path).stdout
    missing = run_cli("callers", "revoke-key", "district-siming", "nope", data_dir=tmp_path, check=False)
    assert missing.returncode == 1 and "key_unknown" in missing.stderr

    # Key files that are not a public key, and a key id the API would refuse: one line each, naming what is wrong.
    private = tmp_path / "district.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    binary = tmp_path / "key.der"
    binary.write_bytes(b"\x30\x82\xff\xfe" * 8)
    add = ["callers", "add", "x2", "--name", "x", "--department", "y", "--role", "department", "--public-key"]
    for extra, says in [
        ([str(private)], f"--public-key: {private} holds a private key; give its public half"),
        ([str(binary)], f"--public-key: {binary} is not text (PEM, base64 or hex)"),
        ([str(tmp_path)], f"--public-key: cannot read {tmp_path}: Is a directory"),
        ([str(pem), "--key-id", "bad id"], "key_id: String should match pattern"),
    ]:
        refused = run_cli(*add, *extra, data_dir=tmp_path, check=False)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: {says}"), refused.stderr
        assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr


def test_audit_verify_fails_on_a_changed_row_and_names_it(demo: tuple[str, list[str], Path]) -> None:
    url, _, data_dir = demo
    listing = json.loads((data_dir / "demo" / "callers.json").read_text())
    platform = next(entry for entry in listing if "platform" in entry["roles"])
    with GatewayClient.from_key_file(url, platform["caller_id"], platform["key_file"]) as client:
        for _ in range(3):
            client.invoke("credit", "dishonest-debtor", "XM-2025-001", uscc="91110000600037341L")
    assert run_cli("audit", "verify", data_dir=data_dir).returncode == 0
    with sqlite3.connect(data_dir / "msjx.db") as connection:
        connection.execute("UPDATE audit_records SET caller_id = 'someone-else' WHERE height = 2")
    result = run_cli("audit", "verify", data_dir=data_dir, check=False)
    assert result.returncode == 1
    assert "height 2" in result.stderr and "changed" in result.stderr


def test_wrong_setting_stops_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MSJX_REDIS_URL": "http://nope"}
    result = subprocess.run(
        [CLI, "db", "upgrade", "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: MSJX_REDIS_URL:")
