"""The Golden Tax III (金税三期) simulator: a real SOAP 1.1 service speaking the WSDL in schemas/contracts.

`python -m simulators.golden_tax --port 9102` runs it alone. `GET <path>?wsdl` serves its WSDL (the address pointed at
this server) and `GET <dir>/golden_tax.xsd` its types, so it can be registered by URL like a district system.
Unknown taxpayers get a soap:Client fault with the exchange's own code GT3-1001; the `soap_fault` fault mode answers
soap:Server GT3-9999 (system busy), as a loaded exchange does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree

from schemas.uscc import is_valid_uscc
from simulators import serving
from simulators.serving import start_app

from .enterprises import (
    Enterprise,
    _tax_authority,  # the population's own naming, so its tax listings name the same office
    by_uscc,
)
from .faults import current_fault, install_faults

__all__ = ["CONTRACTS", "NAMESPACE", "SERVICE_PATH", "create_app", "main", "start_with_port"]

NAMESPACE = "http://www.chinatax.gov.cn/gt3/sjjh/nsrxx/v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SERVICE_PATH = "/sjjh/services/NsrxxService"
CONTRACTS = Path(__file__).resolve().parent.parent / "schemas" / "contracts"
_XML = "text/xml"

UNKNOWN_TAXPAYER = "GT3-1001"
BAD_TAXPAYER_ID = "GT3-1002"
NO_DATA = "GT3-1004"
BAD_REQUEST = "GT3-1000"
BUSY = "GT3-9999"

# tax status from the market-registration status: code and name as 金三 writes them
_TAX_STATUS = {"存续": ("03", "正常"), "在业": ("03", "正常"), "吊销": ("05", "非正常"), "注销": ("07", "注销")}


class SoapFault(Exception):
    def __init__(self, fault_code: str, code: str, message: str) -> None:
        super().__init__(message)
        self.fault_code = fault_code
        self.code = code
        self.message = message


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _envelope(body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:gt="{NAMESPACE}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    ).encode()


def fault_xml(fault: SoapFault) -> bytes:
    return _envelope(
        f"<soap:Fault><faultcode>soap:{fault.fault_code}</faultcode><faultstring>{escape(fault.message)}</faultstring>"
        f"<detail><gt:CWXX><gt:CWDM>{fault.code}</gt:CWDM><gt:CWMS>{escape(fault.message)}</gt:CWMS></gt:CWXX></detail>"
        "</soap:Fault>"
    )


def _text(parent: etree._Element, name: str) -> str:
    node = parent.find(f"{{{NAMESPACE}}}{name}")
    if node is None or not (node.text or "").strip():
        raise SoapFault("Client", BAD_REQUEST, f"缺少参数 {name}")
    return node.text.strip()


def _taxpayer(request: etree._Element) -> Enterprise:
    nsrsbh = _text(request, "NSRSBH")
    if not is_valid_uscc(nsrsbh):
        raise SoapFault("Client", BAD_TAXPAYER_ID, "纳税人识别号格式错误")
    enterprise = by_uscc(nsrsbh)
    if enterprise is None:
        raise SoapFault("Client", UNKNOWN_TAXPAYER, "纳税人识别号不存在")
    return enterprise


def _year(request: etree._Element, name: str) -> int:
    value = _text(request, name)
    if not (len(value) == 4 and value.isdigit()):
        raise SoapFault("Client", BAD_REQUEST, f"{name} 格式错误")
    return int(value)


def registered_on(enterprise: Enterprise) -> date:
    """税务登记日期: within a month of establishment, the same for one enterprise on every run."""
    return enterprise.established_on + timedelta(days=5 + int(enterprise.uscc[-5:-1], 36) % 25)


def rating_for(enterprise: Enterprise, year: int) -> str | None:
    if year < enterprise.established_on.year or year not in enterprise.tax_ratings:
        return None
    return enterprise.tax_ratings[year]


def tax_paid_for(enterprise: Enterprise, year: int) -> Decimal | None:
    """Tax paid in `year`; 0.00 before establishment; None where the exchange has no data (outside the record)."""
    if year < enterprise.established_on.year:
        return Decimal("0.00")
    return enterprise.tax_paid.get(year)


def _registration(request: etree._Element) -> str:
    enterprise = _taxpayer(request)
    code, name = _TAX_STATUS[enterprise.status]
    authority = _tax_authority(enterprise.region)
    return (
        f"<gt:CxNsrdjxxResponse><gt:NSRSBH>{enterprise.uscc}</gt:NSRSBH><gt:NSRMC>{escape(enterprise.name)}</gt:NSRMC>"
        f"<gt:NSRZTDM>{code}</gt:NSRZTDM><gt:NSRZTMC>{name}</gt:NSRZTMC><gt:ZGSWJGMC>{escape(authority)}</gt:ZGSWJGMC>"
        f"<gt:DJRQ>{registered_on(enterprise).isoformat()}</gt:DJRQ></gt:CxNsrdjxxResponse>"
    )


_SCORES = {"A": "95.00", "B": "82.50", "M": "75.00", "C": "55.00", "D": "30.00"}


def _rating(request: etree._Element) -> str:
    enterprise = _taxpayer(request)
    year = _year(request, "PJND")
    rating = rating_for(enterprise, year)
    graded = (
        f"<gt:NSXYDJ>{rating}</gt:NSXYDJ><gt:PJFS>{_SCORES[rating]}</gt:PJFS><gt:PJRQ>{year + 1}-04-20</gt:PJRQ>"
        if rating
        else ""
    )
    return (
        f"<gt:CxNsxydjResponse><gt:NSRSBH>{enterprise.uscc}</gt:NSRSBH><gt:PJND>{year}</gt:PJND>{graded}"
        "</gt:CxNsxydjResponse>"
    )


def _tax_paid(request: etree._Element) -> str:
    enterprise = _taxpayer(request)
    year = _year(request, "ND")
    amount = tax_paid_for(enterprise, year)
    if amount is None:
        raise SoapFault("Client", NO_DATA, f"{year}年度无缴税数据")
    return (
        f"<gt:CxNdjsxxResponse><gt:NSRSBH>{enterprise.uscc}</gt:NSRSBH><gt:ND>{year}</gt:ND>"
        f"<gt:SJJE>{amount:.2f}</gt:SJJE></gt:CxNdjsxxResponse>"
    )


def _violations(request: etree._Element) -> str:
    enterprise = _taxpayer(request)
    entries = "".join(
        f"<gt:AJXX><gt:AJXZ>{escape(entry.reason)}</gt:AJXZ><gt:LRRQ>{entry.listed_on.isoformat()}</gt:LRRQ>"
        f"<gt:LRJG>{escape(entry.authority)}</gt:LRJG></gt:AJXX>"
        for entry in enterprise.major_tax_violations
    )
    listed = "Y" if enterprise.major_tax_violations else "N"
    return (
        f"<gt:CxZdsswfxxResponse><gt:NSRSBH>{enterprise.uscc}</gt:NSRSBH><gt:SFLR>{listed}</gt:SFLR>{entries}"
        "</gt:CxZdsswfxxResponse>"
    )


_OPERATIONS: dict[str, Callable[[etree._Element], str]] = {
    "CxNsrdjxxRequest": _registration,
    "CxNsxydjRequest": _rating,
    "CxNdjsxxRequest": _tax_paid,
    "CxZdsswfxxRequest": _violations,
}


def answer(raw: bytes) -> tuple[int, bytes]:
    """HTTP status and body for one SOAP request (200 with the response, or 500 with a Fault)."""
    try:
        try:
            envelope = etree.fromstring(raw, parser=_parser())
        except etree.XMLSyntaxError:
            raise SoapFault("Client", BAD_REQUEST, "请求不是合法的XML") from None
        if envelope.tag != f"{{{SOAP_ENV}}}Envelope":
            raise SoapFault("VersionMismatch", BAD_REQUEST, "只支持SOAP 1.1")
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        request = body[0] if body is not None and len(body) else None
        if request is None or etree.QName(request).namespace != NAMESPACE:
            raise SoapFault("Client", BAD_REQUEST, "未知的服务请求")
        operation = _OPERATIONS.get(etree.QName(request).localname)
        if operation is None:
            raise SoapFault("Client", BAD_REQUEST, "未知的服务请求")
        return 200, _envelope(operation(request))
    except SoapFault as fault:
        return 500, fault_xml(fault)


async def _soap(request: web.Request) -> web.Response:
    fault = current_fault()
    if fault is not None and fault.mode == "soap_fault":
        body = fault_xml(SoapFault("Server", BUSY, "系统繁忙，请稍后重试"))
        return web.Response(body=body, status=500, content_type=_XML, charset="utf-8")
    status, body = answer(await request.read())
    return web.Response(body=body, status=status, content_type=_XML, charset="utf-8")


async def _wsdl(request: web.Request) -> web.Response:
    if "wsdl" not in request.query:
        return web.Response(status=405, text="POST a SOAP 1.1 envelope, or GET ?wsdl")
    text = (CONTRACTS / "golden_tax.wsdl").read_text(encoding="utf-8")
    address = f"{request.scheme}://{request.host}{SERVICE_PATH}"
    text = text.replace("http://gt3.invalid/sjjh/services/NsrxxService", address)
    return web.Response(text=text, content_type=_XML)


async def _xsd(request: web.Request) -> web.Response:
    return web.Response(body=(CONTRACTS / "golden_tax.xsd").read_bytes(), content_type=_XML)


def create_app() -> web.Application:
    """The exchange as an aiohttp application, with the fault-injection middleware and routes."""
    app = web.Application(client_max_size=256 * 1024)
    install_faults(app)
    app.router.add_post(SERVICE_PATH, _soap)
    app.router.add_get(SERVICE_PATH, _wsdl)
    app.router.add_get(SERVICE_PATH.rsplit("/", 1)[0] + "/golden_tax.xsd", _xsd)
    return app


async def start_with_port(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve the simulator; return its runner and the port it bound (useful with port 0)."""
    return await start_app(create_app(), host, port)


def main(argv: list[str] | None = None) -> None:
    serving.main(
        argv,
        module="golden_tax",
        description=__doc__.splitlines()[0],
        default_port=9102,
        start_with_port=start_with_port,
        banner=lambda host, port: f"golden-tax simulator listening on http://{host}:{port}{SERVICE_PATH} (WSDL: ?wsdl)",
    )


if __name__ == "__main__":
    main()
