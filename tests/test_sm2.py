"""SM2 (GB/T 32918, SM3, default user id): the standard's example, key formats, checkpoints of the `sm` suite, and
`sm2-sm3` caller signatures from the client through the verifier process to the audit record."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from gateway.client import GatewayClient, GatewayError, SignatureAuth
from gateway.demo.setup import key_id_for
from security import sm2
from security.checkpoints import TrustedKeys, sign_checkpoint, signer_key_id
from security.keys import (
    KeyFormatError,
    generate_ed25519,
    load_private_key_file,
    load_public_key,
    private_key_pem,
    public_key_pem,
)
from security.signatures import SignatureFailure, parse_signature_params, sign_request, verify_request
from security.sm2 import EXAMPLE, N, Sm2Error, Sm2PrivateKey, Sm2PublicKey
from security.verdicts import ED25519, SM2_SM3
from security.verifier_process import ProcessVerifier
from simulators.enterprises import DEMO_LISTED_USCC
from tests.helpers.audit import CHAIN, audit_store, rows, tamper, verify, write_chain
from tests.helpers.calls import INVOKE, assert_problem, last_record, send, signed
from tests.helpers.gateways import PURPOSE, RunningGateway

URL = "http://gw.example:8000/v1/services/credit/dishonest-debtor"


# --- the primitive, against GB/T 32918.5 (GM/T 0003.5) annex A.2 ---------------------------------------------------


def test_the_standard_example_signs_to_the_published_signature_and_verifies() -> None:
    key = Sm2PrivateKey(EXAMPLE["d"])
    public = key.public_key()
    assert public.to_bytes().hex().upper() == EXAMPLE["public"].upper()
    assert public.user_hash().hex().upper() == EXAMPLE["z"], "Z_A with the default user id 1234567812345678"
    published = bytes.fromhex(EXAMPLE["signature"])
    assert key.sign(EXAMPLE["message"], k=EXAMPLE["k"]) == published
    assert public.verify(published, EXAMPLE["message"])
    assert not public.verify(published, b"message digesT")
    assert not public.verify(published[:-1] + bytes([published[-1] ^ 1]), EXAMPLE["message"])
    assert not public.verify(published, EXAMPLE["message"], user_id=b"ALICE123@YAHOO.COM"), "the id is signed too"


def test_random_signatures_verify_and_differ() -> None:
    key = Sm2PrivateKey.generate()
    first, second = key.sign(b"checkpoint"), key.sign(b"checkpoint")
    assert first != second, "a fresh k for every signature"
    assert key.public_key().verify(first, b"checkpoint") and key.public_key().verify(second, b"checkpoint")
    assert not Sm2PrivateKey.generate().public_key().verify(first, b"checkpoint")


@pytest.mark.parametrize(
    "signature",
    [
        bytes(64),  # r = s = 0
        N.to_bytes(32, "big") + bytes.fromhex(EXAMPLE["signature"])[32:],  # r = n
        bytes.fromhex(EXAMPLE["signature"])[:32] + N.to_bytes(32, "big"),  # s = n
        bytes.fromhex(EXAMPLE["signature"])[:63],  # cut short
        bytes.fromhex(EXAMPLE["signature"]) + b"\x00",
    ],
    ids=["zero", "r=n", "s=n", "short", "long"],
)
def test_signatures_outside_the_standard_ranges_are_refused(signature: bytes) -> None:
    public = Sm2PublicKey.from_bytes(bytes.fromhex(EXAMPLE["public"]))
    assert not public.verify(signature, EXAMPLE["message"])
    assert not sm2.verifies(public.to_bytes(), signature, EXAMPLE["message"])


def test_a_library_that_misses_the_example_is_refused() -> None:
    from pysmx import SM2 as library

    class Broken:
        kG = staticmethod(library.kG)
        Verify = staticmethod(library.Verify)

        @staticmethod
        def Sign(*args: Any, **kwargs: Any) -> bytes:
            signed = library.Sign(*args, **kwargs)
            return signed[:-1] + bytes([signed[-1] ^ 1])

    with pytest.raises(Sm2Error, match=r"GB/T 32918\.5"):
        sm2._self_test(Broken)
    sm2._self_test(library)


# --- key formats ---------------------------------------------------------------------------------------------------


def test_public_keys_load_from_pem_and_hex_and_points_off_the_curve_are_refused() -> None:
    key = Sm2PrivateKey.generate().public_key()
    point = key.to_bytes().hex()
    for text in (key.pem(), point, point[2:], point.upper()):
        assert load_public_key(text) == key
    assert public_key_pem(key) == key.pem() and key.pem().startswith("-----BEGIN PUBLIC KEY-----")
    off_curve = point[:-2] + f"{(int(point[-2:], 16) ^ 1):02x}"
    with pytest.raises(KeyFormatError, match="not on the SM2 curve"):
        load_public_key(off_curve)
    with pytest.raises(KeyFormatError):
        load_public_key("04" + "00" * 64)
    ed25519 = generate_ed25519().public_key()
    assert load_public_key(public_key_pem(ed25519)) == ed25519, "Ed25519 keys load as before"


def test_private_keys_round_trip_through_pkcs8_and_a_changed_public_half_is_refused(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    path = tmp_path / "caller.pem"
    path.write_bytes(private_key_pem(key))
    loaded = load_private_key_file(path)
    assert isinstance(loaded, Sm2PrivateKey) and loaded.d == key.d
    assert "d=" not in repr(loaded) and str(key.d) not in repr(loaded)
    other = Sm2PrivateKey.generate()
    swapped = key.pem().replace(b"PRIVATE KEY", b"X")  # not a key at all
    path.write_bytes(swapped)
    with pytest.raises(KeyFormatError):
        load_private_key_file(path)
    der = base64.b64decode(b"".join(key.pem().splitlines()[1:-1]))
    mixed = der.replace(key.public_key().to_bytes(), other.public_key().to_bytes())
    path.write_text(sm2._pem("PRIVATE KEY", mixed))
    with pytest.raises(KeyFormatError, match="does not belong"):
        load_private_key_file(path)


def _openssl_with_sm2() -> str | None:
    binary = shutil.which("openssl")
    if binary is None:
        return None
    probe = subprocess.run([binary, "list", "-public-key-algorithms"], capture_output=True, text=True, check=False)
    return binary if "SM2" in probe.stdout else None


def test_keys_and_signatures_interoperate_with_openssl(tmp_path: Path) -> None:
    openssl = _openssl_with_sm2()
    if openssl is None:
        pytest.skip("no openssl command with SM2 on this machine to cross-check against")
    theirs = tmp_path / "openssl.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "SM2", "-out", str(theirs)], check=True, capture_output=True)
    public_pem = subprocess.run(
        [openssl, "pkey", "-in", str(theirs), "-pubout"], check=True, capture_output=True, text=True
    ).stdout
    key = load_private_key_file(theirs)
    assert isinstance(key, Sm2PrivateKey) and load_public_key(public_pem) == key.public_key()
    message = tmp_path / "message"
    message.write_bytes(b"msjx-audit-checkpoint/1\n{}")
    sm2_options = ["-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678"]
    der = tmp_path / "openssl.sig"
    subprocess.run(
        [openssl, "pkeyutl", "-sign", "-inkey", str(theirs), "-in", str(message), "-out", str(der), *sm2_options],
        check=True,
        capture_output=True,
    )
    r, s = decode_dss_signature(der.read_bytes())
    assert key.public_key().verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), message.read_bytes())

    ours = Sm2PrivateKey.generate()
    (tmp_path / "ours.pub.pem").write_text(ours.public_key().pem())
    signature = ours.sign(message.read_bytes())
    der.write_bytes(encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")))
    verify = ["pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "ours.pub.pem"), "-in", str(message)]
    checked = subprocess.run(
        [openssl, *verify, "-sigfile", str(der), *sm2_options], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and "Verified Successfully" in checked.stdout, checked.stderr


# --- checkpoints of the sm suite --------------------------------------------------------------------------------


def test_sm2_checkpoints_verify_only_under_a_trusted_key() -> None:
    node, stranger = Sm2PrivateKey.generate(), Sm2PrivateKey.generate()
    checkpoint = sign_checkpoint(node, "node-1", 10, "ab" * 32, 1700000000000)
    assert checkpoint.key_id == signer_key_id(node.public_key()) and checkpoint.key_id.startswith("sm2:")
    assert len(base64.b64decode(checkpoint.signature)) == 64
    trusted = TrustedKeys([node.public_key(), generate_ed25519().public_key()])
    assert trusted.check(checkpoint) is None
    assert "does not verify" in (trusted.check(replace(checkpoint, height=11)) or "")
    assert "does not verify" in (trusted.check(replace(checkpoint, signature="AAAA")) or "")
    assert "not a trusted key" in (TrustedKeys([stranger.public_key()]).check(checkpoint) or "")
    forged = replace(sign_checkpoint(stranger, "node-1", 10, "ab" * 32, 0), key_id=checkpoint.key_id)
    assert "does not verify" in (trusted.check(forged) or ""), "claiming the node's key id does not help"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    async with audit_store(request.param, tmp_path) as opened:
        yield opened


async def test_the_sm_suite_signs_its_checkpoints_with_sm2(store: Any) -> None:
    await write_chain(store, "sm", records=9, every=3)
    assert (store.settings.keys_dir / "audit-signing-sm2.key").stat().st_mode & 0o777 == 0o600
    assert not (store.settings.keys_dir / "audit-signing.key").exists(), "no Ed25519 key for an sm-only node"
    async with store.engine.connect() as connection:
        from sqlalchemy import text

        key_ids = {row[0] for row in await connection.execute(text("SELECT key_id FROM audit_checkpoints"))}
        signers = {row[0] for row in await connection.execute(text("SELECT key_id FROM audit_signers"))}
    assert len(key_ids) == 1 and next(iter(key_ids)).startswith("sm2:") and signers == key_ids
    assert {row["suite"] for row in await rows(store)} == {"sm"}
    report = (await verify(store))[CHAIN]
    assert report.ok and report.sealed_height == 9 and report.signatures_checked

    # A rewrite by someone without the SM2 key: records rehashed and checkpoints re-signed with another key.
    await tamper(store, ("UPDATE audit_checkpoints SET signature = :bad WHERE height = 6", {"bad": "A" * 88}))
    fault = (await verify(store))[CHAIN].fault
    assert fault is not None and fault.kind == "rehashed" and "height 6" in fault.detail


# --- sm2-sm3 caller signatures (RFC 9421) ----------------------------------------------------------------------------


class RecordingChecker:
    """A checker that checks here and notes what it was asked, as the verifier process would be asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def verify(self, public_key: bytes, signature: bytes, message: bytes, algorithm: str = ED25519) -> bool:
        from security.verdicts import verifies

        self.asked.append(algorithm)
        return verifies(public_key, signature, message, algorithm)

    async def close(self) -> None:
        return None


def _signed(key: Any, body: bytes = b'{"a":1}') -> list[tuple[str, str]]:
    request = httpx.Request("POST", URL, content=body)
    sign_request("POST", URL, request.headers, body, key_id="k1", private_key=key)
    return list(request.headers.multi_items())


async def _check(headers: list[tuple[str, str]], public: Any, body: bytes = b'{"a":1}') -> tuple[str, list[str]]:
    checker = RecordingChecker()
    try:
        await verify_request(checker, "POST", URL, headers, body, public, parse_signature_params(headers))
    except SignatureFailure as failure:
        return failure.code, checker.asked
    return "ok", checker.asked


def _with_alg(headers: list[tuple[str, str]], alg: str) -> list[tuple[str, str]]:
    return [(name, value.replace(";keyid=", f';alg="{alg}";keyid=') if name == "signature-input" else value)
            for name, value in headers]  # fmt: skip


async def test_sm2_request_signatures_verify_through_the_checker_and_tampering_fails() -> None:
    key = Sm2PrivateKey.generate()
    headers = _signed(key)
    assert await _check(headers, key.public_key()) == ("ok", [SM2_SM3])
    assert await _check(_with_alg(headers, SM2_SM3), key.public_key()) == ("signature_invalid", [SM2_SM3]), (
        "an alg the client did not sign changes the signature base: the library passes it on, the check refuses"
    )
    flipped = [
        (name, value[:10] + ("A" if value[10] != "A" else "B") + value[11:]) if name == "signature" else (name, value)
        for name, value in headers
    ]
    assert await _check(flipped, key.public_key()) == ("signature_invalid", [SM2_SM3])
    assert await _check(headers, Sm2PrivateKey.generate().public_key()) == ("signature_invalid", [SM2_SM3])
    assert (await _check(headers, key.public_key(), body=b'{"a":2}'))[0] == "digest_mismatch"
    assert await _check(_with_alg(headers, ED25519), key.public_key()) == ("signature_invalid", []), (
        "an ed25519 alg on an SM2 key is refused before any check"
    )
    ed_key = generate_ed25519()
    assert (await _check(_signed(ed_key), ed_key.public_key()))[0] == "ok"
    assert await _check(_signed(key), ed_key.public_key()) == ("signature_invalid", [ED25519])


async def test_an_alg_parameter_signed_by_the_client_goes_through_the_library_and_the_checker() -> None:
    import datetime as dt

    from http_message_signatures import HTTPMessageSigner

    from security.signatures import Sm2Sm3, _Message, _SingleKey

    key = Sm2PrivateKey.generate()
    body = b'{"a":1}'
    request = httpx.Request("POST", URL, content=body)
    HTTPMessageSigner(signature_algorithm=Sm2Sm3, key_resolver=_SingleKey(private_key=key)).sign(
        _Message("POST", URL, request.headers),
        key_id="k1",
        created=dt.datetime.now(dt.UTC),
        nonce="n0nce-0123456789",
        label="msjx",
        include_alg=True,
        covered_component_ids=("@method", "@target-uri"),
        body=body,
    )
    headers = list(request.headers.multi_items())
    assert 'alg="sm2-sm3"' in request.headers["signature-input"]
    assert parse_signature_params(headers).profile_params is None, "not the client's profile: the library path"
    assert await _check(headers, key.public_key()) == ("ok", [SM2_SM3])


@pytest.mark.slow
async def test_the_verifier_process_answers_sm2_and_ed25519_checks_in_order() -> None:
    sm2_key, ed_key = Sm2PrivateKey.generate(), generate_ed25519()
    checks = []
    for index in range(8):
        message = f"request {index}".encode()
        if index % 2:
            raw, signature, algorithm = sm2_key.public_key().to_bytes(), sm2_key.sign(message), SM2_SM3
        else:
            raw, signature, algorithm = ed_key.public_key().public_bytes_raw(), ed_key.sign(message), ED25519
        good = index % 3 != 2
        if not good:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        checks.append(((raw, signature, message, algorithm), good))
    # A watchdog far shorter than loading SM2 in the child (~0.5 s): the first SM2 check extends it, so the child is
    # waited for rather than given up as stuck.
    verifier = ProcessVerifier(timeout=0.05)
    await verifier.start()
    pid = verifier.pid
    try:
        assert await verifier.verify(*checks[1][0]) and verifier.answered == 1
        verdicts = await asyncio.gather(*(verifier.verify(*check) for check, _ in checks))
        assert list(verdicts) == [good for _, good in checks]
        assert verifier.answered == 1 + len(checks), "every check, SM2 ones too, was answered by the child"
        assert verifier.pid == pid, "the child was not given up while it loaded SM2"
    finally:
        await verifier.close()


async def _register_sm2_key(gw: RunningGateway, key: Sm2PrivateKey, form: str) -> str:
    public = key.public_key()
    text = public.pem() if form == "pem" else public.to_bytes().hex()
    key_id = key_id_for("platform", public)
    async with gw.client(gw.admin) as admin:
        added = await admin.post("/v1/callers/platform/keys", json={"key_id": key_id, "public_key": text})
    assert added.status_code == 201, added.text
    return key_id


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pem", "hex"])
async def test_a_caller_with_an_sm2_key_calls_and_a_tampered_call_fails(
    gateway: RunningGateway, tmp_path: Path, form: str
) -> None:
    key = Sm2PrivateKey.generate()
    key_id = await _register_sm2_key(gateway, key, form)
    checker = gateway.runtime.authenticator.offload
    answered = getattr(checker, "answered", 0)
    async with httpx.AsyncClient(base_url=gateway.url, auth=SignatureAuth(key_id, key), timeout=30) as client:
        response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_LISTED_USCC}})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["listed"] is True
    record = await last_record(gateway)
    assert (record["key_id"], record["decision"]) == (key_id, "allowed")
    if isinstance(checker, ProcessVerifier):
        assert checker.answered == answered + 1, "an SM2 check goes to the verifier process, congested or not"

    # The Python client, from a key file as an operator keeps it (it runs in a thread: this loop serves the gateway).
    key_file = tmp_path / "platform-sm2.pem"
    key_file.write_bytes(private_key_pem(key))

    def with_client() -> dict[str, Any]:
        with GatewayClient.from_key_file(gateway.url, "platform", key_file) as client:  # the key id derived
            assert client.key_id == key_id
            return client.invoke("credit", "dishonest-debtor", purpose=PURPOSE, uscc=DEMO_LISTED_USCC)

    assert (await asyncio.to_thread(with_client))["data"]["listed"] is True

    request = signed(gateway, gateway.platform, key_id=key_id, private_key=key)  # type: ignore[arg-type]
    value = request.headers["signature"]
    request.headers["signature"] = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    assert_problem(await send(request), 401, "signature_invalid")
    assert (await last_record(gateway))["reason_code"] == "signature_invalid"
    stranger = signed(gateway, gateway.platform, key_id=key_id, private_key=Sm2PrivateKey.generate())  # type: ignore[arg-type]
    assert_problem(await send(stranger), 401, "signature_invalid")

    def refused() -> str:
        other = tmp_path / "other.pem"
        other.write_bytes(private_key_pem(Sm2PrivateKey.generate()))
        try:
            with GatewayClient.from_key_file(gateway.url, "platform", other, key_id=key_id) as client:
                client.invoke("credit", "dishonest-debtor", purpose=PURPOSE, uscc=DEMO_LISTED_USCC)
        except GatewayError as error:
            return error.code
        return "accepted"

    assert await asyncio.to_thread(refused) == "signature_invalid"


async def test_an_sm2_key_that_is_not_a_point_is_refused_at_registration(gateway: RunningGateway) -> None:
    async with gateway.client(gateway.admin) as admin:
        answer = await admin.post(
            "/v1/callers/platform/keys", json={"key_id": "platform.bad-sm2", "public_key": "04" + "11" * 64}
        )
    problem = assert_problem(answer, 422, answer.json()["code"])
    assert problem["errors"][0]["field"] == "public_key" and "SM2 curve" in problem["errors"][0]["message"]


@pytest.mark.slow
def test_keys_new_caller_makes_an_sm2_key_pair(tmp_path: Path) -> None:
    import sys

    cli = [str(Path(sys.executable).parent / "msjx-gateway"), "keys", "new-caller", "platform-gm"]
    made = subprocess.run(
        [*cli, "--algorithm", "sm2-sm3", "--out", str(tmp_path / "gm.pem")], capture_output=True, text=True, check=True
    )
    key = load_private_key_file(tmp_path / "gm.pem")
    assert isinstance(key, Sm2PrivateKey) and (tmp_path / "gm.pem").stat().st_mode & 0o777 == 0o600
    assert load_public_key((tmp_path / "gm.pub.pem").read_text()) == key.public_key()
    assert f"key id      {key_id_for('platform-gm', key.public_key())}" in made.stdout
    bad = [*cli, "--algorithm", "rsa", "--out", str(tmp_path / "x.pem")]
    wrong = subprocess.run(bad, capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "sm2-sm3" in wrong.stderr and not (tmp_path / "x.pem").exists()
