"""Helpers shared by the treasury and payment tests: a valid voucher body, and the treasury simulator's counts."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from simulators.enterprises import DEMO_USCC


def voucher(voucher_no: str | None = None, amounts: tuple[str, ...] = ("30000.00", "20000.00"), **header: Any) -> dict:
    """A valid 5201 voucher as JSON-ready data, amounts as strings; override any header field by keyword."""
    lines = [
        {
            "bgt_type_code": "1",
            "pro_cat_code": "2",
            "agency_code": "350200101",
            "agency_name": "厦门市工业和信息化局",
            "exp_func_code": "2150805",
            "exp_eco_code": "31204",
            "pay_amt": amount,
        }
        for amount in amounts
    ]
    body = {
        "uscc": DEMO_USCC,
        "adm_div_code": "350200",
        "st_year": 2025,
        "vou_date": "2025-06-30",
        "voucher_no": voucher_no or f"T{secrets.token_hex(8).upper()}",
        "tre_code": "3502000000",
        "fin_org_code": "350200000",
        "fund_type": "1",
        "pay_type": "1",
        "payee_acct_no": "6222020200112233445",
        "payee_acct_name": "厦门鑫源电子科技有限公司",
        "payee_acct_bank_name": "中国工商银行厦门分行营业部",
        "payee_acct_bank_no": "102393000014",
        "pay_acct_no": "35001000000000000001",
        "pay_acct_name": "厦门市财政局国库支付中心",
        "pay_acct_bank_name": "中国人民银行厦门市中心支行",
        "pay_summary_name": "免申即享 惠企政策兑现",
        "lines": lines,
        "pay_amt": header.pop("pay_amt", None) or _sum(amounts),
    }
    body.update(header)
    return body


def _sum(amounts: tuple[str, ...]) -> str:
    from decimal import Decimal

    return str(sum((Decimal(a) for a in amounts), Decimal("0.00")))


async def treasury_listing(treasury_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{treasury_url}/_sim/treasury/vouchers")
    response.raise_for_status()
    return response.json()


async def hold_answers(treasury_url: str, mode: str, count: int = 1, seconds: float = 0) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{treasury_url}/_sim/treasury/hold", json={"mode": mode, "count": count, "seconds": seconds}
        )
    response.raise_for_status()


async def clear_hold(treasury_url: str) -> None:
    async with httpx.AsyncClient() as client:
        await client.delete(f"{treasury_url}/_sim/treasury/hold")
        await client.delete(f"{treasury_url}/_sim/faults")
