"""Adapter of Golden Tax III (金税三期): the canonical tax models over the exchange's SOAP 1.1 service, through zeep.

The WSDL and XSD in schemas/contracts are parsed once per adapter (the SOAP engine keeps zeep's model of them);
each call is one envelope built by zeep, carried by the adapters' HTTP client, read back by zeep, then renamed
from the exchange's pinyin initials (NSRSBH, NSRMC, NSXYDJ …) to the gateway's names. A fault with the exchange's
code GT3-1001 (纳税人识别号不存在) becomes `upstream_subject_unknown`; every other fault `upstream_fault`, both 502.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from schemas.tax import (
    AnnualTaxPaid,
    MajorTaxViolation,
    TaxCreditRating,
    TaxpayerQuery,
    TaxpayerYearQuery,
    TaxRegistration,
)

from .base import Adapter, Operation, UpstreamResult
from .contracts import ContractBundle, default_fetcher, gather, location_of
from .errors import UpstreamError, UpstreamFault, UpstreamMalformed, UpstreamSubjectUnknown
from .http import HttpClient
from .policy import ResiliencePolicy
from .soap import FaultInfo, SoapEngine

__all__ = ["CONTRACT", "UNKNOWN_TAXPAYER", "GoldenTaxAdapter", "contract_bundle"]

CONTRACT = Path(__file__).resolve().parent.parent / "schemas" / "contracts" / "golden_tax.wsdl"
NAMESPACE = "http://www.chinatax.gov.cn/gt3/sjjh/nsrxx/v1"
UNKNOWN_TAXPAYER = "GT3-1001"
MAX_ANSWER = 1024 * 1024


@cache
def contract_bundle() -> ContractBundle:
    """The exchange's WSDL and XSD as shipped in schemas/contracts, read once per process."""
    return gather("wsdl", location_of(str(CONTRACT), allow_files=True), default_fetcher(allow_files=True))


def _fault(service: str) -> Callable[[FaultInfo], UpstreamError | None]:
    def mapping(info: FaultInfo) -> UpstreamError:
        code, message = "", info.string
        if info.detail is not None:
            code = (info.detail.findtext(f".//{{{NAMESPACE}}}CWDM") or "").strip()
            message = (info.detail.findtext(f".//{{{NAMESPACE}}}CWMS") or "").strip() or message
        fault_code = f"{info.code}/{code}" if code else info.code
        if code == UNKNOWN_TAXPAYER:
            return UpstreamSubjectUnknown(service, fault_code, message, soap_fault=True)
        return UpstreamFault(service, fault_code, message, receiver=info.receiver)

    return mapping


def _registration(wire: dict[str, Any]) -> dict[str, Any]:
    return {
        "uscc": wire["NSRSBH"],
        "name": wire["NSRMC"],
        "registered": wire["NSRZTDM"] != "07",  # 07 注销: the registration is closed
        "status": wire["NSRZTMC"],
        "tax_authority": wire["ZGSWJGMC"],
        "registered_on": wire["DJRQ"],
    }


def _rating(wire: dict[str, Any]) -> dict[str, Any]:
    return {"uscc": wire["NSRSBH"], "year": wire["PJND"], "rating": wire["NSXYDJ"]}


def _tax_paid(wire: dict[str, Any]) -> dict[str, Any]:
    return {"uscc": wire["NSRSBH"], "year": wire["ND"], "amount": wire["SJJE"]}


def _violations(wire: dict[str, Any]) -> dict[str, Any]:
    if wire["SFLR"] not in ("Y", "N"):
        raise ValueError(f"SFLR is {wire['SFLR']!r}, expected 'Y' or 'N'")
    return {
        "uscc": wire["NSRSBH"],
        "listed": wire["SFLR"] == "Y",
        "entries": [
            {"reason": entry["AJXZ"], "listed_on": entry["LRRQ"], "authority": entry["LRJG"]} for entry in wire["AJXX"]
        ],
    }


def _by_uscc(params: BaseModel) -> dict[str, Any]:
    return {"NSRSBH": params.uscc}  # type: ignore[attr-defined]


def _year_field(name: str) -> Callable[[BaseModel], dict[str, Any]]:
    def wire(params: BaseModel) -> dict[str, Any]:
        return {"NSRSBH": params.uscc, name: params.year}  # type: ignore[attr-defined]

    return wire


# canonical operation -> (WSDL operation, input to wire, wire to canonical)
_ROUTES: dict[str, tuple[str, Callable[[BaseModel], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "tax-registration": ("CxNsrdjxx", _by_uscc, _registration),
    "tax-credit-rating": ("CxNsxydj", _year_field("PJND"), _rating),
    "annual-tax-paid": ("CxNdjsxx", _year_field("ND"), _tax_paid),
    "major-tax-violation": ("CxZdsswfxx", _by_uscc, _violations),
}


class GoldenTaxAdapter(Adapter):
    """税务登记, 纳税信用等级, 年度缴税额 and 重大税收违法失信 by USCC, from the Golden Tax III exchange."""

    service = "golden-tax"
    title = "金税三期 Golden Tax III"
    provider_department = "市税务局"
    operations: ClassVar[dict[str, Operation]] = {
        operation.name: operation
        for operation in (
            Operation(
                "tax-registration",
                "Tax registration (税务登记) of the enterprise: name, status, tax office, registration date.",
                input_model=TaxpayerQuery,
                output_model=TaxRegistration,
            ),
            Operation(
                "tax-credit-rating",
                "纳税信用等级 (A/B/M/C/D) of the enterprise for a year; null when it was not rated.",
                input_model=TaxpayerYearQuery,
                output_model=TaxCreditRating,
            ),
            Operation(
                "annual-tax-paid",
                "Tax the enterprise actually paid in a year, in yuan.",
                input_model=TaxpayerYearQuery,
                output_model=AnnualTaxPaid,
            ),
            Operation(
                "major-tax-violation",
                "Is the enterprise a published 重大税收违法失信主体? With the cases.",
                input_model=TaxpayerQuery,
                output_model=MajorTaxViolation,
            ),
        )
    }

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 64,
        policy: ResiliencePolicy | None = None,
    ) -> None:
        self.http = HttpClient(self.service, timeout=timeout, max_connections=max_connections, max_body=MAX_ANSWER)
        self.engine = SoapEngine(
            self.service, contract_bundle(), endpoint=base_url, http=self.http, fault_mapper=_fault(self.service)
        )
        self.policy = policy or ResiliencePolicy(total_timeout=timeout, max_concurrency=max_connections)

    async def start(self) -> None:
        policy = self.policy
        self.http.set_timeouts(policy.total_timeout, policy.connect, policy.read_timeout, policy.max_concurrency)
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        wsdl_operation, to_wire, to_canonical = _ROUTES[operation.name]
        wire, status = await self.engine.call(wsdl_operation, to_wire(params))
        try:
            result = to_canonical(wire)
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else str(exc)
            raise UpstreamMalformed(self.service, missing, status) from exc
        if result["uscc"] != params.uscc:  # type: ignore[attr-defined]
            # An answer about another taxpayer must never be passed on as this one's.
            raise UpstreamMalformed(self.service, "the answer is about a different taxpayer", status)
        if "year" in result and result["year"] != params.year:  # type: ignore[attr-defined]
            raise UpstreamMalformed(self.service, "the answer is about a different year", status)
        return UpstreamResult(result, upstream_status=status)
