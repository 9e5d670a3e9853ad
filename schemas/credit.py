"""Canonical models of the credit platform's (信用平台) lists: 失信被执行人, 经营异常名录, 严重违法失信名单.

Field names are the gateway's own (English snake_case); adapters translate each upstream's wire format into them.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from .uscc import USCC

__all__ = [
    "AbnormalOperationRecord",
    "CreditQuery",
    "DishonestDebtorCase",
    "DishonestDebtorRecord",
    "ListingEntry",
    "SeriousViolationRecord",
    "Yuan",
    "YuanChecked",
]


def _no_float(value: Any) -> Any:
    # A float has already lost the exact amount (0.1 + 0.2 != 0.3); make the sender use a string.
    if isinstance(value, float):
        raise ValueError("an amount must be a decimal string such as '1234.50', not a float")
    return value


_CENT = Decimal("0.01")


def _to_cents(value: Decimal) -> Decimal:
    # Exact: the Field below has already refused more than 2 decimal places; this only writes "100" as "100.00".
    return value.quantize(_CENT)


# The wire's own form of an amount: no sign, no leading zero, at most 16 digits before the point and exactly 2 after.
_CANONICAL = re.compile(r"(?:0|[1-9][0-9]{0,15})\.[0-9]{2}")


def _canonical_first(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # pydantic checks max_digits and decimal_places in Python (~3.5 µs an amount); a string already in the
    # canonical form passes every check below as it is, so it skips them. Anything else takes the whole chain.
    if type(value) is str and _CANONICAL.fullmatch(value):
        return Decimal(value)
    return handler(value)


YuanChecked = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(ge=0, max_digits=18, decimal_places=2, description="amount in yuan, with 2 decimal places"),
    AfterValidator(_to_cents),
]
"""Yuan without the shortcut: the rules themselves (tests/test_credit.py holds the shortcut to them)."""

Yuan = Annotated[YuanChecked, WrapValidator(_canonical_first)]
"""A non-negative amount in yuan (元) written with 2 decimal places; serialized as a string in JSON."""


class _Model(BaseModel):
    # Outputs forbid unknown keys too: an adapter that leaks an untranslated upstream field is a bug.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreditQuery(_Model):
    """Input of every credit-platform operation: the enterprise asked about."""

    uscc: USCC = Field(description="统一社会信用代码 of the enterprise")


class DishonestDebtorCase(_Model):
    """One enforcement case behind a 失信被执行人 listing."""

    court: str = Field(description="执行法院, the enforcing court")
    case_number: str = Field(description="案号, e.g. （2024）闽0203执1234号")
    filed_on: date = Field(description="立案时间, the date the case was filed")
    amount: Yuan = Field(description="执行标的, the amount to be enforced, in yuan")
    obligation: str = Field(description="生效法律文书确定的义务, the obligation set by the judgment")
    performance: str = Field(description="履行情况, how far the obligation has been performed")


class DishonestDebtorRecord(_Model):
    """Whether an enterprise is on the list of dishonest judgment debtors (失信被执行人), and why."""

    uscc: USCC
    listed: bool = Field(description="true if the enterprise is currently listed")
    cases: list[DishonestDebtorCase] = Field(default_factory=list)


class ListingEntry(_Model):
    """One entry of a list kept by an authority: why, since when, and by whom."""

    reason: str = Field(description="列入原因, the reason for listing")
    listed_on: date = Field(description="列入日期, the date of listing")
    authority: str = Field(description="作出决定机关, the authority that decided it")


class AbnormalOperationRecord(_Model):
    """Whether an enterprise is on the list of abnormal operations (经营异常名录)."""

    uscc: USCC
    listed: bool = Field(description="true if the enterprise is currently listed")
    entries: list[ListingEntry] = Field(default_factory=list)


class SeriousViolationRecord(_Model):
    """Whether an enterprise is on the list of serious violations of law and trust (严重违法失信名单)."""

    uscc: USCC
    listed: bool = Field(description="true if the enterprise is currently listed")
    entries: list[ListingEntry] = Field(default_factory=list)
