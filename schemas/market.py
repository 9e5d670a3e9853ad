"""Canonical model of the market-registration (市场监管) enterprise profile.

The legal representative's ID number and phone are personal information (个人信息保护法): their fields carry
the `schemas.sensitive` marks (`x-sensitive` in the JSON schema), so logs and screens mask them.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from .credit import Yuan
from .sensitive import IdNumber, Phone
from .uscc import USCC

__all__ = ["EnterpriseProfile", "EnterpriseQuery", "LegalRepresentative"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnterpriseQuery(_Model):
    """Input of `enterprise-profile`."""

    uscc: USCC = Field(description="统一社会信用代码 of the enterprise")


class LegalRepresentative(_Model):
    """法定代表人."""

    name: str = Field(description="姓名")
    id_number: IdNumber = Field(pattern=r"^\d{17}[\dX]$", description="居民身份证号码 (GB 11643), personal data")
    phone: Phone = Field(pattern=r"^\d{11}$", description="联系电话, personal data")


class EnterpriseProfile(_Model):
    """An enterprise as the market-registration system records it."""

    uscc: USCC
    name: str = Field(description="企业名称")
    status: str = Field(description="登记状态 as registered: 存续, 在业, 注销, 吊销 …")
    in_operation: bool = Field(description="true when the status is 存续 or 在业")
    established_on: date = Field(description="成立日期")
    registered_capital: Yuan = Field(description="注册资本 in yuan (the registry writes 万元; converted exactly)")
    industry_code: str = Field(pattern=r"^[A-T]\d{2,4}$", description="国民经济行业分类 GB/T 4754-2017, e.g. C3911")
    region_code: str = Field(pattern=r"^\d{6}$", description="行政区划代码 GB/T 2260 of the registered address")
    legal_representative: LegalRepresentative
