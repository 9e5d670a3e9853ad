"""The two demo policies, and how the platform turns a policy and an enterprise into a 5201 voucher."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
DEMO_PURPOSE = "XM-2025-001"  # the purpose the demo grants name (gateway.demo.setup.DEMO_PURPOSE)


@dataclass(frozen=True)
class Payer:
    """The paying side of every voucher a policy issues: division, treasury, agency, budget classification."""

    adm_div_code: str = "350200"
    tre_code: str = "3502000000"
    fin_org_code: str = "350200000"
    agency_code: str = "350200101"
    agency_name: str = "厦门市工业和信息化局"
    pay_acct_no: str = "35001000000000000001"
    pay_acct_name: str = "厦门市财政局国库支付中心"
    pay_acct_bank_name: str = "中国人民银行厦门市中心支行"
    exp_func_code: str = "2150805"  # 支出功能分类: 中小企业发展专项
    exp_eco_code: str = "31204"  # 支出经济分类: 费用补贴


@dataclass(frozen=True)
class ConditionPolicy:
    """条件类: every condition is checked against shared data; eligible enterprises are paid a fixed amount."""

    code: str
    title: str
    year: int
    rating: str
    amount: Decimal
    pay_on: date  # the vouchers' date: fixed, so a second run builds the very same voucher (same fingerprint)
    purpose: str = DEMO_PURPOSE
    payer: Payer = Payer()
    kind: str = "条件类"


@dataclass(frozen=True)
class ListPolicy:
    """名单类: the department's list says who gets what; the platform validates it, checks, confirms and pays."""

    code: str
    title: str
    year: int
    default_amount: Decimal
    list_file: Path
    draft_file: Path
    pay_on: date
    purpose: str = DEMO_PURPOSE
    payer: Payer = Payer()
    kind: str = "名单类"


CONDITION_POLICY = ConditionPolicy(
    code="TJ2025-01",
    title="纳税信用A级、无失信记录、正常经营企业奖励 ¥50,000",
    year=2025,
    rating="A",
    amount=Decimal("50000.00"),
    pay_on=date(2025, 7, 1),
)

LIST_POLICY = ListPolicy(
    code="MD2025-01",
    title="2025年度专精特新中小企业认定奖励 (市工信局名单)",
    year=2025,
    default_amount=Decimal("100000.00"),
    list_file=DATA_DIR / "md2025-01.csv",
    draft_file=DATA_DIR / "md2025-01-draft.csv",
    pay_on=date(2025, 7, 1),
)

_BANKS = (
    ("中国工商银行厦门分行营业部", "102393000014"),
    ("中国建设银行厦门分行", "105393000019"),
    ("中国银行厦门分行", "104393000018"),
    ("兴业银行厦门分行", "309393000017"),
)


def payee_account(uscc: str) -> tuple[str, str, str]:
    """The enterprise's basic account (基本存款账户) as the platform's enterprise register holds it; simulated,
    derived from the USCC so every run pays the same account."""
    digest = hashlib.sha256(uscc.encode()).digest()
    number = "6222" + str(int.from_bytes(digest[:8], "big"))[-15:].rjust(15, "0")
    bank_name, bank_no = _BANKS[digest[8] % len(_BANKS)]
    return number, bank_name, bank_no


def voucher_no(policy_code: str, uscc: str) -> str:
    """One number per (policy, enterprise), the same on every run: the treasury pays a number once."""
    return f"{policy_code}-{uscc}"


def idempotency_key(policy_code: str, uscc: str) -> str:
    return f"{policy_code}:{uscc}:pay"


def build_voucher(policy: ConditionPolicy | ListPolicy, uscc: str, name: str, amount: Decimal) -> dict[str, Any]:
    payer = policy.payer
    account, bank_name, bank_no = payee_account(uscc)
    return {
        "uscc": uscc,
        "adm_div_code": payer.adm_div_code,
        "st_year": policy.year,
        "vou_date": policy.pay_on.isoformat(),
        "voucher_no": voucher_no(policy.code, uscc),
        "tre_code": payer.tre_code,
        "fin_org_code": payer.fin_org_code,
        "fund_type": "1",
        "pay_type": "1",
        "payee_acct_no": account,
        "payee_acct_name": name,
        "payee_acct_bank_name": bank_name,
        "payee_acct_bank_no": bank_no,
        "pay_acct_no": payer.pay_acct_no,
        "pay_acct_name": payer.pay_acct_name,
        "pay_acct_bank_name": payer.pay_acct_bank_name,
        "pay_summary_name": f"免申即享 {policy.code} {policy.kind}政策兑现",
        "lines": [
            {
                "bgt_type_code": "1",
                "pro_cat_code": "2",
                "agency_code": payer.agency_code,
                "agency_name": payer.agency_name,
                "exp_func_code": payer.exp_func_code,
                "exp_eco_code": payer.exp_eco_code,
                "pay_amt": amount,
            }
        ],
        "pay_amt": amount,
    }
