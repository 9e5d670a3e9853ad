"""Adapter of the treasury (国库集中支付): canonical vouchers to GBK XML over HTTP and back, never retried.

`submit-voucher` is not safe: one call is exactly one POST (the HTTP client never resends, and the operation is
marked `safe=False`, so no retry policy wraps it). Whether a lost answer means "paid" is for the gateway's payment
layer to find out with `voucher-status`, never by sending again blindly.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as StdET
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from pydantic import BaseModel

from schemas.problems import ProblemCode
from schemas.treasury import VoucherQuery, VoucherReceipt, VoucherStatus, VoucherSubmission

from .base import Adapter, Operation, UpstreamResult
from .errors import UpstreamError, UpstreamMalformed, UpstreamRejected
from .http import HttpClient
from .policy import ResiliencePolicy

__all__ = ["TreasuryAdapter", "VoucherDuplicate", "VoucherRefused", "voucher_xml"]

MAX_ANSWER = 256 * 1024
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
_OK, _DUPLICATE, _NOT_FOUND = "0000", "3001", "4004"
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding=[\"']([A-Za-z0-9_-]+)[\"'][^>]*\?>")
_STATES = {"1": "accepted", "2": "paid", "3": "returned"}

# canonical field -> 5201 element, in the order a treasury front end writes them
HEADER = (
    ("adm_div_code", "AdmDivCode"),
    ("st_year", "StYear"),
    ("vt_code", "VtCode"),
    ("vou_date", "VouDate"),
    ("voucher_no", "VoucherNo"),
    ("tre_code", "TreCode"),
    ("fin_org_code", "FinOrgCode"),
    ("fund_type", "FundType"),
    ("pay_type", "PayType"),
    ("payee_acct_no", "PayeeAcctNo"),
    ("payee_acct_name", "PayeeAcctName"),
    ("payee_acct_bank_name", "PayeeAcctBankName"),
    ("payee_acct_bank_no", "PayeeAcctBankNo"),
    ("pay_acct_no", "PayAcctNo"),
    ("pay_acct_name", "PayAcctName"),
    ("pay_acct_bank_name", "PayAcctBankName"),
    ("pay_summary_name", "PaySummaryName"),
    ("pay_amt", "PayAmt"),
)
DETAIL = (
    ("bgt_type_code", "BgtTypeCode"),
    ("pro_cat_code", "ProCatCode"),
    ("agency_code", "AgencyCode"),
    ("agency_name", "AgencyName"),
    ("exp_func_code", "ExpFuncCode"),
    ("exp_eco_code", "ExpEcoCode"),
    ("pay_amt", "PayAmt"),
)


class VoucherRefused(UpstreamRejected):
    """The treasury refused the voucher with a business code: it was not accepted, and will not be."""


class VoucherDuplicate(UpstreamError):
    """The treasury already holds a voucher with this number (its code 3001): it pays a number once."""

    def __init__(self, service: str, voucher_no: str, reason: str) -> None:
        super().__init__(
            ProblemCode.VOUCHER_DUPLICATE,
            f"{service} already accepted voucher {voucher_no}: {reason}",
            upstream_status="3001",
        )
        self.voucher_no = voucher_no


def _wire(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y%m%d%H%M%S}"
    if hasattr(value, "isoformat"):  # a date: the treasury writes YYYYMMDD
        return f"{value:%Y%m%d}"
    return str(value)  # Decimal keeps its two places as written: str(Decimal("0.30")) == "0.30"


def voucher_xml(voucher: VoucherSubmission) -> bytes:
    """The 5201 voucher as the treasury reads it: GBK-encoded XML with a declaration saying so."""
    root = StdET.Element("MOF")
    StdET.SubElement(root, "VoucherCount").text = "1"
    element = StdET.SubElement(root, "Voucher")
    for field, name in HEADER:
        StdET.SubElement(element, name).text = _wire(getattr(voucher, field))
    details = StdET.SubElement(element, "DetailList")
    for line in voucher.lines:
        detail = StdET.SubElement(details, "Detail")
        for field, name in DETAIL:
            StdET.SubElement(detail, name).text = _wire(getattr(line, field))
    return StdET.tostring(root, encoding="GBK", xml_declaration=True)


def query_xml(voucher_no: str) -> bytes:
    root = StdET.Element("MOF")
    StdET.SubElement(root, "VoucherNo").text = voucher_no
    return StdET.tostring(root, encoding="GBK", xml_declaration=True)


def parse_answer(service: str, raw: bytes, upstream_status: str) -> dict[str, str]:
    """The treasury's <MOF> answer as a flat dict of element texts; no DTD, no entities, bounded size."""
    match = _DECLARATION.match(raw)
    encoding = match.group(1).decode().lower() if match else "gbk"
    if encoding not in ("gbk", "gb2312", "gb18030"):
        raise UpstreamMalformed(service, f"answer is encoded in {encoding}, not GBK", upstream_status)
    try:
        text = raw.decode("gb18030")  # a superset of GBK: every GBK document decodes the same
    except UnicodeDecodeError:
        raise UpstreamMalformed(service, "answer is not valid GBK", upstream_status) from None
    if match:
        text = text[len(match.group(0)) :]
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException:
        raise UpstreamMalformed(service, "answer carries a DTD or entities (refused)", upstream_status) from None
    except StdET.ParseError as exc:
        raise UpstreamMalformed(service, f"answer is not XML ({exc})", upstream_status) from None
    if root.tag != "MOF":
        raise UpstreamMalformed(service, f"answer root is <{root.tag}>, not <MOF>", upstream_status)
    return {child.tag: (child.text or "").strip() for child in root}


def _time(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=CHINA).isoformat()
    except ValueError:
        raise ValueError(f"time {value!r} is not YYYYMMDDhhmmss") from None


class TreasuryAdapter(Adapter):
    """Submit a 直接支付凭证 (VtCode 5201) and ask for a voucher's status, in the treasury's GBK XML."""

    service = "treasury"
    title = "国库集中支付 treasury"
    provider_department = "市财政局"
    operations: ClassVar[dict[str, Operation]] = {
        operation.name: operation
        for operation in (
            Operation(
                "submit-voucher",
                "Submit a direct-payment voucher (直接支付凭证, 5201). Needs an Idempotency-Key; never retried.",
                input_model=VoucherSubmission,
                output_model=VoucherReceipt,
                safe=False,
            ),
            Operation(
                "voucher-status",
                "What the treasury knows of a voucher: not found, accepted, paid or returned.",
                input_model=VoucherQuery,
                output_model=VoucherStatus,
                safe=True,
            ),
        )
    }

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 20,
        policy: ResiliencePolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/tcbs/v1"
        self.timeout = timeout
        self.policy = policy or ResiliencePolicy(total_timeout=timeout, max_concurrency=max_connections)
        # One call is one request: the HTTP client never resends, so a payment is never sent twice behind the
        # gateway's back.
        self.http = HttpClient(
            self.service,
            timeout=timeout,
            max_connections=max_connections,
            max_body=MAX_ANSWER,
            headers={"Content-Type": "text/xml; charset=GBK", "Accept": "text/xml"},
        )

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        if operation.name == "submit-voucher":
            assert isinstance(params, VoucherSubmission)
            return await self._submit(params)
        assert isinstance(params, VoucherQuery)
        return await self._status(params.voucher_no)

    async def _submit(self, voucher: VoucherSubmission) -> UpstreamResult:
        http_status, answer = await self._post("/vouchers", voucher_xml(voucher))
        code = answer.get("RetCode", "")
        if not code:  # without the treasury's own code nothing is known about the voucher's fate
            raise UpstreamMalformed(self.service, "the answer has no RetCode", http_status)
        if code == _DUPLICATE:
            raise VoucherDuplicate(self.service, voucher.voucher_no, answer.get("RetMsg") or "duplicate")
        if code != _OK:
            raise VoucherRefused(self.service, code, answer.get("RetMsg") or "no message")
        if answer.get("VoucherNo") != voucher.voucher_no:
            raise UpstreamMalformed(self.service, "the answer is about a different voucher", code)
        try:
            data = {
                "voucher_no": answer["VoucherNo"],
                "status": "accepted",
                "treasury_serial": answer["TreSerialNo"],
                "pay_amt": answer["PayAmt"],  # a string: the output model reads it into a Decimal, exactly
                "accepted_at": _time(answer["AcceptTime"]),
            }
        except (KeyError, ValueError) as exc:
            raise UpstreamMalformed(self.service, _missing(exc), code) from None
        return UpstreamResult(data, upstream_status=code)

    async def _status(self, voucher_no: str) -> UpstreamResult:
        http_status, answer = await self._post("/vouchers/status", query_xml(voucher_no))
        code = answer.get("RetCode", "")
        if code == _NOT_FOUND:
            return UpstreamResult({"voucher_no": voucher_no, "found": False}, upstream_status=code)
        if code != _OK:
            raise UpstreamRejected(self.service, code or http_status, answer.get("RetMsg") or "no message")
        if answer.get("VoucherNo") != voucher_no:
            raise UpstreamMalformed(self.service, "the answer is about a different voucher", code)
        try:
            state = _STATES[answer["VoucherStatus"]]
            data = {
                "voucher_no": voucher_no,
                "found": True,
                "status": state,
                "treasury_serial": answer["TreSerialNo"],
                "pay_amt": answer["PayAmt"],
                "accepted_at": _time(answer.get("AcceptTime")),
                "paid_at": _time(answer.get("PayTime")),
            }
        except (KeyError, ValueError) as exc:
            raise UpstreamMalformed(self.service, _missing(exc), code) from None
        return UpstreamResult(data, upstream_status=code)

    async def _post(self, path: str, body: bytes) -> tuple[str, dict[str, str]]:
        response = await self.http.request("POST", self.base_url + path, data=body)
        status = str(response.status)
        if response.status >= 500:
            raise UpstreamRejected(self.service, status, "server error")
        return status, parse_answer(self.service, response.body, status)


def _missing(exc: Exception) -> str:
    return f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else str(exc)
