"""Canonical models of the treasury (国库集中支付) exchange: the direct-payment voucher (VtCode 5201) and its status.

Money is `Decimal` from the JSON body to the GBK XML and back: amounts are decimal yuan with exactly two places,
written as strings in JSON (exact JSON numbers are read as decimals by the gateway, never as floats).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from .numbers import JsonInteger
from .uscc import USCC

__all__ = [
    "VT_CODE_DIRECT_PAYMENT",
    "PayAmount",
    "VoucherLine",
    "VoucherQuery",
    "VoucherReceipt",
    "VoucherState",
    "VoucherStatus",
    "VoucherSubmission",
    "line_total",
]

VT_CODE_DIRECT_PAYMENT = "5201"
_CENT = Decimal("0.01")


def _no_float(value: Any) -> Any:
    # A float has already lost the exact amount (0.1 + 0.2 != 0.3): the sender must use a string or exact number.
    if isinstance(value, float):
        raise ValueError("an amount must be a decimal string such as '50000.00', never a float")
    if isinstance(value, bool):
        raise ValueError("an amount must be a decimal string such as '50000.00'")
    return value


def _cents(value: Decimal) -> Decimal:
    # Exact: the Field has refused more than 2 decimal places already; this writes 100 as 100.00.
    return value.quantize(_CENT)


PayAmount = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(gt=0, max_digits=18, decimal_places=2, description="amount in yuan, more than 0, at most 2 decimal places"),
    AfterValidator(_cents),
]
"""A payment amount in yuan: positive, at most 16 digits before the point and 2 after; a string in JSON."""

ReportedAmount = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(ge=0, max_digits=18, decimal_places=2, description="amount in yuan with 2 decimal places"),
    AfterValidator(_cents),
]


def _gbk(value: str) -> str:
    # The treasury speaks GBK: a character it cannot carry must be refused here, naming the field, not garbled later.
    try:
        value.encode("gbk")
    except UnicodeEncodeError as exc:
        raise ValueError(f"character {value[exc.start]!r} cannot be written in GBK, the treasury's encoding") from None
    return value


def _code(pattern: str, description: str, max_length: int = 32) -> Any:
    return Field(pattern=pattern, max_length=max_length, description=description)


GbkText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_gbk)]
Digits = r"^[0-9]+$"
CodeChars = r"^[0-9A-Za-z]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VoucherLine(_Model):
    """One line of the voucher's DetailList: budget, project category, agency, expenditure classification, amount."""

    bgt_type_code: str = _code(CodeChars, "BgtTypeCode 预算类型, e.g. 1 (一般公共预算)", 8)
    pro_cat_code: str = _code(CodeChars, "ProCatCode 项目类别, e.g. 2 (项目支出)", 8)
    agency_code: str = _code(CodeChars, "AgencyCode 预算单位编码 of the paying agency", 32)
    agency_name: GbkText = Field(description="AgencyName 预算单位名称")
    exp_func_code: str = _code(Digits, "ExpFuncCode 支出功能分类科目, e.g. 2150805", 16)
    exp_eco_code: str = _code(Digits, "ExpEcoCode 支出经济分类科目, e.g. 31204", 16)
    pay_amt: PayAmount = Field(description="PayAmt of this line, yuan")


class VoucherSubmission(_Model):
    """A 直接支付凭证 (VtCode 5201) to pay one enterprise: header, payee, payer, lines.

    `pay_amt` must equal the sum of the lines' amounts, and every line must name the same agency.
    `uscc` names the enterprise paid: the audit record's subject. It is not part of the treasury's wire format.
    """

    uscc: USCC = Field(description="统一社会信用代码 of the enterprise paid (audit subject; not sent to the treasury)")
    adm_div_code: str = _code(r"^[0-9]{6}$", "AdmDivCode 行政区划代码, 6 digits", 6)
    st_year: JsonInteger = Field(ge=2000, le=2099, description="StYear 业务年度")
    vt_code: Literal["5201"] = Field(default=VT_CODE_DIRECT_PAYMENT, description="VtCode: 5201 直接支付凭证")
    vou_date: date = Field(description="VouDate 凭证日期")
    voucher_no: str = Field(
        pattern=r"^[0-9A-Za-z][0-9A-Za-z-]{0,41}$", description="VoucherNo, unique: the treasury pays a number once"
    )
    tre_code: str = _code(CodeChars, "TreCode 国库主体代码", 16)
    fin_org_code: str = _code(CodeChars, "FinOrgCode 财政机关代码", 16)
    fund_type: str = _code(CodeChars, "FundType 资金性质, e.g. 1", 4)
    pay_type: str = _code(CodeChars, "PayType 支付方式, e.g. 1 (直接支付)", 4)
    payee_acct_no: str = _code(r"^[0-9]{8,32}$", "PayeeAcctNo 收款人账号", 32)
    payee_acct_name: GbkText = Field(description="PayeeAcctName 收款人全称")
    payee_acct_bank_name: GbkText = Field(description="PayeeAcctBankName 收款人开户银行")
    payee_acct_bank_no: str = _code(r"^[0-9]{12}$", "PayeeAcctBankNo 收款行行号 (12-digit CNAPS code)", 12)
    pay_acct_no: str = _code(r"^[0-9]{8,32}$", "PayAcctNo 付款人账号", 32)
    pay_acct_name: GbkText = Field(description="PayAcctName 付款人全称")
    pay_acct_bank_name: GbkText = Field(description="PayAcctBankName 付款人开户银行")
    pay_summary_name: GbkText = Field(description="PaySummaryName 用途")
    # Declared before pay_amt so the header check below sees validated lines.
    lines: list[VoucherLine] = Field(min_length=1, max_length=500, description="DetailList")
    pay_amt: PayAmount = Field(description="PayAmt of the voucher: the sum of the lines, yuan")

    @field_validator("lines")
    @classmethod
    def _one_agency(cls, lines: list[VoucherLine]) -> list[VoucherLine]:
        first = lines[0].agency_code
        for index, line in enumerate(lines[1:], start=1):
            if line.agency_code != first:
                raise ValueError(
                    f"line {index} has agency_code {line.agency_code!r}, line 0 has {first!r}:"
                    " one AgencyCode per voucher"
                )
        return lines

    @field_validator("pay_amt")
    @classmethod
    def _equals_lines(cls, value: Decimal, info: ValidationInfo) -> Decimal:
        lines = info.data.get("lines")
        if lines is None:  # the lines are invalid and reported on their own
            return value
        total = line_total(lines)
        if value != total:
            raise ValueError(f"must equal the sum of the lines, {total}, not {value}")
        return value


def line_total(lines: list[VoucherLine]) -> Decimal:
    return sum((line.pay_amt for line in lines), Decimal("0.00"))


class VoucherQuery(_Model):
    """Input of voucher-status: the voucher asked about."""

    voucher_no: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z-]{0,41}$", description="VoucherNo")


class VoucherReceipt(_Model):
    """The treasury's answer to an accepted voucher."""

    voucher_no: str
    status: Literal["accepted"] = Field(description="the treasury accepted the voucher and will pay it")
    treasury_serial: str = Field(description="TreSerialNo, the treasury's serial number of the acceptance")
    pay_amt: ReportedAmount = Field(description="the amount the treasury accepted, yuan")
    accepted_at: datetime = Field(description="when the treasury accepted it (Asia/Shanghai)")


VoucherState = Literal["accepted", "paid", "returned"]


class VoucherStatus(_Model):
    """What the treasury knows of a voucher: nothing (`found` false), or its state and amounts."""

    voucher_no: str
    found: bool = Field(description="false: the treasury has never accepted a voucher with this number")
    status: VoucherState | None = Field(default=None, description="accepted, paid or returned (退回)")
    treasury_serial: str | None = None
    pay_amt: ReportedAmount | None = None
    accepted_at: datetime | None = None
    paid_at: datetime | None = None
