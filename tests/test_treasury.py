"""The treasury voucher model (money rules), the GBK XML adapter against its simulator over HTTP, and the simulator's
durable store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from adapters.errors import UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable
from adapters.treasury import TreasuryAdapter, VoucherDuplicate, VoucherRefused, parse_answer, voucher_xml
from schemas.treasury import VoucherQuery, VoucherSubmission
from simulators import treasury as treasury_simulator
from tests.helpers.treasury import clear_hold, hold_answers, treasury_listing, voucher


def errors_of(data: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        VoucherSubmission.model_validate(data)
    return {"/".join(str(p) for p in error["loc"]): error["msg"] for error in info.value.errors()}


# -- money rules ----------------------------------------------------------------------------------------------------


def test_valid_voucher_keeps_exact_decimals() -> None:
    model = VoucherSubmission.model_validate(voucher(amounts=("0.1", "0.2"), pay_amt="0.3"))
    assert model.pay_amt == Decimal("0.30") and str(model.pay_amt) == "0.30"
    assert [str(line.pay_amt) for line in model.lines] == ["0.10", "0.20"]
    # A float sum would be 0.30000000000000004 and fail the header check; Decimal is exact.
    assert 0.1 + 0.2 != 0.3


def test_exact_json_number_beyond_float_precision_survives() -> None:
    # 16 digits before the point: a float keeps ~15.9 significant digits, so this would round.
    raw = '{"amount": 1234567890123456.78}'
    assert json.loads(raw)["amount"] == 1234567890123456.8  # what a float parser makes of it
    exact = json.loads(raw, parse_float=Decimal)["amount"]
    model = VoucherSubmission.model_validate(voucher(amounts=(exact,), pay_amt=exact))  # type: ignore[arg-type]
    assert str(model.pay_amt) == "1234567890123456.78"
    assert b"<PayAmt>1234567890123456.78</PayAmt>" in voucher_xml(model)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"pay_amt": "0"}, "pay_amt", "greater than 0"),
        ({"pay_amt": "-50000.00"}, "pay_amt", "greater than 0"),
        ({"pay_amt": "50000.001"}, "pay_amt", "2 decimal places"),
        ({"pay_amt": 50000.0}, "pay_amt", "never a float"),
        ({"pay_amt": "NaN"}, "pay_amt", "finite"),
        ({"pay_amt": "49999.99"}, "pay_amt", "must equal the sum of the lines, 50000.00"),
    ],
)
def test_bad_header_amounts_name_the_field(change: dict, field: str, message: str) -> None:
    errors = errors_of(voucher(**change))
    assert field in errors and message in errors[field], errors


def test_bad_line_amounts_name_the_line() -> None:
    data = voucher()
    data["lines"][1]["pay_amt"] = "-1.00"
    data["lines"][0]["pay_amt"] = "1.234"
    errors = errors_of(data)
    assert "greater than 0" in errors["lines/1/pay_amt"]
    assert "2 decimal places" in errors["lines/0/pay_amt"]


def test_one_agency_code_per_voucher() -> None:
    data = voucher()
    data["lines"][1]["agency_code"] = "350200999"
    errors = errors_of(data)
    assert "one AgencyCode per voucher" in errors["lines"]


def test_text_the_treasury_cannot_encode_is_refused() -> None:
    errors = errors_of(voucher(payee_acct_name="厦门𠮷野家餐饮有限公司"))  # 𠮷 is outside GBK
    assert "GBK" in errors["payee_acct_name"]


def test_wrong_vt_code_and_bad_uscc_refused() -> None:
    errors = errors_of(voucher(vt_code="5202", uscc="91350100M000100Y4Z"))
    assert "vt_code" in errors and "uscc" in errors


def test_xml_is_gbk_with_every_field() -> None:
    model = VoucherSubmission.model_validate(voucher(voucher_no="XM2025-0001"))
    raw = voucher_xml(model)
    assert raw.startswith(b"<?xml version='1.0' encoding='GBK'?>")
    assert "厦门市工业和信息化局".encode("gbk") in raw
    assert "厦门市工业和信息化局".encode() not in raw
    for element in (b"<VtCode>5201</VtCode>", b"<VouDate>20250630</VouDate>", b"<VoucherNo>XM2025-0001</VoucherNo>"):
        assert element in raw
    assert raw.count(b"<Detail>") == 2
    assert DEMO_NOT_SENT not in raw


DEMO_NOT_SENT = b"uscc"


def test_answer_parser_refuses_dtd_and_entities() -> None:
    bomb = (
        b'<?xml version="1.0" encoding="GBK"?><!DOCTYPE MOF [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<MOF><RetCode>&b;</RetCode></MOF>"
    )
    with pytest.raises(UpstreamMalformed, match="DTD"):
        parse_answer("treasury", bomb, "200")
    with pytest.raises(UpstreamMalformed, match="not GBK"):
        parse_answer("treasury", b'<?xml version="1.0" encoding="UTF-8"?><MOF/>', "200")
    with pytest.raises(UpstreamMalformed, match="not XML"):
        parse_answer("treasury", b"<MOF><RetCode>0000</Ret", "200")


# -- the adapter against the simulator, over HTTP ------------------------------------------------------------------


@pytest.fixture
async def treasury(tmp_path: Path) -> AsyncIterator[tuple[TreasuryAdapter, str, Path]]:
    runner, port = await treasury_simulator.start_with_port("127.0.0.1", 0, data_dir=tmp_path)
    url = f"http://127.0.0.1:{port}"
    adapter = TreasuryAdapter(url, timeout=1.0)
    await adapter.start()
    try:
        yield adapter, url, tmp_path
    finally:
        await adapter.close()
        await runner.cleanup()


def submission(**change: object) -> VoucherSubmission:
    return VoucherSubmission.model_validate(voucher(**change))


async def test_submit_then_status(treasury: tuple[TreasuryAdapter, str, Path]) -> None:
    adapter, url, _ = treasury
    model = submission()
    receipt = await adapter.invoke("submit-voucher", model)
    assert receipt.data["voucher_no"] == model.voucher_no
    assert receipt.data["status"] == "accepted"
    assert receipt.data["pay_amt"] == "50000.00"
    assert receipt.data["accepted_at"].endswith("+08:00")
    assert receipt.data["treasury_serial"].startswith("TRE")

    status = await adapter.invoke("voucher-status", VoucherQuery(voucher_no=model.voucher_no))
    assert status.data["found"] is True and status.data["status"] == "paid"
    assert status.data["treasury_serial"] == receipt.data["treasury_serial"]

    missing = await adapter.invoke("voucher-status", VoucherQuery(voucher_no="NEVER-SENT-1"))
    assert missing.data == {
        "voucher_no": "NEVER-SENT-1",
        "found": False,
        "status": None,
        "treasury_serial": None,
        "pay_amt": None,
        "accepted_at": None,
        "paid_at": None,
    }
    listing = await treasury_listing(url)
    assert listing["accepted"] == 1
    assert listing["vouchers"][0]["payee_acct_name"] == "厦门鑫源电子科技有限公司"


async def test_duplicate_voucher_no_refused_with_its_own_code(treasury: tuple[TreasuryAdapter, str, Path]) -> None:
    adapter, url, _ = treasury
    model = submission()
    await adapter.invoke("submit-voucher", model)
    with pytest.raises(VoucherDuplicate) as info:
        await adapter.invoke("submit-voucher", model)
    assert info.value.upstream_status == "3001" and info.value.status == 409
    listing = await treasury_listing(url)
    assert listing["accepted"] == 1
    assert listing["by_code"] == {"0000": 1, "3001": 1}


async def test_vouchers_survive_a_simulator_restart(treasury: tuple[TreasuryAdapter, str, Path]) -> None:
    adapter, _, data_dir = treasury
    model = submission()
    await adapter.invoke("submit-voucher", model)
    runner, port = await treasury_simulator.start_with_port("127.0.0.1", 0, data_dir=data_dir)
    again = TreasuryAdapter(f"http://127.0.0.1:{port}", timeout=1.0)
    await again.start()
    try:
        status = await again.invoke("voucher-status", VoucherQuery(voucher_no=model.voucher_no))
        assert status.data["found"] is True
        with pytest.raises(VoucherDuplicate):
            await again.invoke("submit-voucher", model)
    finally:
        await again.close()
        await runner.cleanup()


async def test_simulator_refuses_what_the_model_would_refuse(treasury: tuple[TreasuryAdapter, str, Path]) -> None:
    """The simulator checks on its own: a voucher that bypassed the model is refused with the treasury's codes."""
    adapter, url, _ = treasury
    good = submission()
    bad_sum = voucher_xml(good).replace(b"<PayAmt>50000.00</PayAmt>", b"<PayAmt>50000.01</PayAmt>", 1)
    two_agencies = voucher_xml(good).replace(b"<AgencyCode>350200101</AgencyCode>", b"<AgencyCode>X1</AgencyCode>", 1)
    float_amount = voucher_xml(good).replace(b"<PayAmt>30000.00</PayAmt>", b"<PayAmt>3.0e4</PayAmt>", 1)
    async with httpx.AsyncClient() as client:
        for body, code in ((bad_sum, "2001"), (two_agencies, "2002"), (float_amount, "1002"), (b"<MOF>", "1001")):
            response = await client.post(f"{url}/tcbs/v1/vouchers", content=body)
            answer = parse_answer("treasury", response.content, str(response.status_code))
            assert answer["RetCode"] == code, answer
    assert (await treasury_listing(url))["accepted"] == 0
    # The adapter maps a business refusal to VoucherRefused: the voucher was not accepted, and that is definitive.
    with pytest.raises(VoucherRefused) as info:
        await adapter._submit(good.model_copy(update={"pay_amt": Decimal("1.00")}))
    assert info.value.upstream_status == "2001"


async def test_lost_answers_are_timeouts_or_unavailable(treasury: tuple[TreasuryAdapter, str, Path]) -> None:
    adapter, url, _ = treasury
    try:
        await hold_answers(url, "hold", seconds=3)
        held = submission()
        with pytest.raises(UpstreamTimeout):
            await adapter.invoke("submit-voucher", held)
        await hold_answers(url, "drop")
        dropped = submission()
        with pytest.raises(UpstreamUnavailable):
            await adapter.invoke("submit-voucher", dropped)
    finally:
        await clear_hold(url)
    # Both were accepted before the answer was lost: only voucher-status can tell.
    for model in (held, dropped):
        status = await adapter.invoke("voucher-status", VoucherQuery(voucher_no=model.voucher_no))
        assert status.data["found"] is True
    assert (await treasury_listing(url))["submissions"] == 2, "one POST per call: nothing resent"


def test_submit_voucher_is_never_retried() -> None:
    assert TreasuryAdapter.operations["submit-voucher"].safe is False
    assert TreasuryAdapter.operations["voucher-status"].safe is True
