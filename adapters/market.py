"""Adapter of the market-registration system (市场监管): its REST/JSON enterprise record as the canonical profile.

Translation: pinyin keys to the gateway's names, the establishment date from yyyyMMdd, the registered capital from
万元 to yuan exactly (Decimal, never a float), the status kept as registered and `in_operation` derived from it.
The registry's code 2004 (未查询到该企业) becomes `upstream_subject_unknown`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from pydantic import BaseModel

from schemas.market import EnterpriseProfile, EnterpriseQuery

from .base import Operation, UpstreamResult
from .errors import UpstreamMalformed, UpstreamRejected, UpstreamSubjectUnknown
from .http import RestAdapter

__all__ = ["IN_OPERATION", "MarketAdapter"]

_OK, _NOT_FOUND = "0", "2004"
IN_OPERATION = frozenset({"存续", "在业", "在营", "开业", "在册"})
_TEN_THOUSAND = Decimal(10_000)
_CENT = Decimal("0.01")


def _capital(record: dict[str, Any]) -> Decimal:
    currency = record.get("zczbbz", "人民币")
    if currency != "人民币":
        raise ValueError(f"registered capital is in {currency}, not yuan")
    raw = record["zczb"]
    if not isinstance(raw, str):  # a JSON number may already have lost digits
        raise ValueError("zczb is not a decimal string")
    try:
        yuan = Decimal(raw) * _TEN_THOUSAND
    except InvalidOperation:
        raise ValueError(f"zczb {raw!r} is not a number") from None
    if yuan != yuan.quantize(_CENT):
        raise ValueError(f"zczb {raw!r} 万元 is not a whole number of fen")
    return yuan.quantize(_CENT)


def _established(record: dict[str, Any]) -> date:
    raw = record["clrq"]
    try:
        return datetime.strptime(raw, "%Y%m%d").date()
    except (TypeError, ValueError):
        raise ValueError(f"clrq {raw!r} is not a yyyyMMdd date") from None


def _profile(record: dict[str, Any]) -> dict[str, Any]:
    person = record["fddbr"]
    if not isinstance(person, dict):
        raise ValueError("fddbr is not an object")
    status = record["djzt"]
    # The registry sometimes writes the long form "存续（在营、开业、在册）"; the part before the bracket decides.
    head = str(status).split("（")[0].split("(")[0]
    return {
        "uscc": record["tyshxydm"],
        "name": record["qymc"],
        "status": status,
        "in_operation": head in IN_OPERATION,
        "established_on": _established(record),
        "registered_capital": _capital(record),
        "industry_code": record["hydm"],
        "region_code": record["xzqhdm"],
        "legal_representative": {"name": person["xm"], "id_number": person["zjhm"], "phone": person["lxdh"]},
    }


class MarketAdapter(RestAdapter):
    """The enterprise profile (登记信息) by USCC from the market-registration system."""

    service = "market"
    title = "市场监管 market registration"
    provider_department = "市市场监管局"
    operations: ClassVar[dict[str, Operation]] = {
        "enterprise-profile": Operation(
            "enterprise-profile",
            "Registered name, status, establishment date, capital, industry, region and legal representative.",
            input_model=EnterpriseQuery,
            output_model=EnterpriseProfile,
        )
    }

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        uscc: str = params.uscc  # type: ignore[attr-defined]
        response = await self.http.get_json(f"/api/market/v1/enterprises/{uscc}")
        body = response.body
        code = str(body.get("status")) if body.get("status") is not None else None
        message = str(body.get("msg") or "no message")
        if code == _NOT_FOUND:
            raise UpstreamSubjectUnknown(self.service, f"{response.status}/{code}", message)
        if code != _OK:
            raise UpstreamRejected(self.service, code or str(response.status), message)
        record = body.get("result")
        if not isinstance(record, dict):
            raise UpstreamMalformed(self.service, "'result' is not an object", str(response.status))
        try:
            profile = _profile(record)
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else str(exc)
            raise UpstreamMalformed(self.service, missing, str(response.status)) from exc
        if profile["uscc"] != uscc:
            raise UpstreamMalformed(self.service, "the answer is about a different enterprise", str(response.status))
        return UpstreamResult(profile, upstream_status=str(response.status))
