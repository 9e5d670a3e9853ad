"""Canonical models of Golden Tax III (金税三期) answers: registration, 纳税信用等级, annual tax paid, 重大税收违法失信.

Field names are the gateway's own; the golden-tax adapter translates the exchange's pinyin-initial wire names.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .credit import ListingEntry, Yuan
from .numbers import JsonInteger
from .uscc import USCC

__all__ = [
    "FIRST_TAX_YEAR",
    "AnnualTaxPaid",
    "MajorTaxViolation",
    "TaxCreditRating",
    "TaxRating",
    "TaxRegistration",
    "TaxpayerQuery",
    "TaxpayerYearQuery",
]

FIRST_TAX_YEAR = 1994  # the tax-sharing reform (分税制); no taxpayer record predates it
TaxRating = Literal["A", "B", "M", "C", "D"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaxpayerQuery(_Model):
    """Input of `tax-registration` and `major-tax-violation`: the enterprise asked about."""

    uscc: USCC = Field(description="统一社会信用代码, which is the enterprise's 纳税人识别号")


class TaxpayerYearQuery(_Model):
    """Input of `tax-credit-rating` and `annual-tax-paid`: the enterprise and the year."""

    uscc: USCC = Field(description="统一社会信用代码, which is the enterprise's 纳税人识别号")
    year: JsonInteger = Field(ge=FIRST_TAX_YEAR, le=2100, description="the tax year (评价年度 / 纳税年度)")


class TaxRegistration(_Model):
    """Tax registration (税务登记) of an enterprise."""

    uscc: USCC
    name: str = Field(description="纳税人名称")
    registered: bool = Field(description="true while the tax registration is in force (not 注销)")
    status: str = Field(description="纳税人状态 as the tax system names it: 正常, 停业, 非正常, 注销")
    tax_authority: str = Field(description="主管税务机关, the tax office in charge")
    registered_on: date | None = Field(description="登记日期, the date of tax registration, when known")


class TaxCreditRating(_Model):
    """纳税信用等级 for one year: A (≥90), B (70–90), M (new, or no income), C (40–70), D (<40 or rated directly)."""

    uscc: USCC
    year: int
    rating: TaxRating | None = Field(description="null: the enterprise was not rated that year")


class AnnualTaxPaid(_Model):
    """Tax actually paid (实缴税额) in one year."""

    uscc: USCC
    year: int
    amount: Yuan = Field(description="yuan, 2 decimal places, as a string")


class MajorTaxViolation(_Model):
    """Whether the enterprise is a 重大税收违法失信主体 (published major tax violation), and why."""

    uscc: USCC
    listed: bool = Field(description="true if the enterprise is currently listed")
    entries: list[ListingEntry] = Field(default_factory=list)
