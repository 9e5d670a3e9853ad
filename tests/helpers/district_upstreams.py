"""Stand-ins for district systems, for the example contracts in schemas/contracts/examples (tests only).

The SOAP one echoes: it answers each Echo with the very children (and attributes) it received, under the response
element the WSDL names, in the SOAP version it was asked in; so JSON → XML → JSON round trips are checked end to end.
The REST one serves district-openapi.yaml. Both carry the simulators' fault injection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import orjson
from aiohttp import web
from lxml import etree

from simulators.faults import current_fault, install_faults

SEEN = web.AppKey("seen", list)

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "examples"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"

# request element (namespace, local name) -> response element local name; the children are copied
_ECHO = {
    ("urn:example:district:wrapped", "EchoRequest"): "EchoResponse",
    ("urn:example:district:abstract", "EchoRequest"): "EchoResponse",
    ("urn:example:district:bare", "Record"): "RecordCopy",
    ("urn:example:district:rpc", "Echo"): "EchoResponse",
}


def _envelope(namespace: str, body: etree._Element) -> bytes:
    envelope = etree.Element(f"{{{namespace}}}Envelope", nsmap={"soap": namespace})
    etree.SubElement(envelope, f"{{{namespace}}}Body").append(body)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _fault(namespace: str) -> bytes:
    if namespace == SOAP12:
        text = (
            f'<soap:Envelope xmlns:soap="{SOAP12}"><soap:Body><soap:Fault><soap:Code><soap:Value>soap:Receiver'
            '</soap:Value></soap:Code><soap:Reason><soap:Text xml:lang="zh">district system busy</soap:Text>'
            "</soap:Reason></soap:Fault></soap:Body></soap:Envelope>"
        )
    else:
        text = (
            f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode>'
            "<faultstring>district system busy</faultstring></soap:Fault></soap:Body></soap:Envelope>"
        )
    return text.encode()


def _answer(request: etree._Element) -> etree._Element:
    qname = etree.QName(request)
    key = (qname.namespace, qname.localname)
    if key in _ECHO:
        response = etree.Element(f"{{{qname.namespace}}}{_ECHO[key]}", attrib=dict(request.attrib))
        for child in request:
            response.append(child)
        return response
    if key == ("urn:example:district:wrapped", "GetSubsidyRequest"):
        ns = qname.namespace
        response = etree.Element(f"{{{ns}}}GetSubsidyResponse")
        for name, value in (
            ("uscc", request.findtext(f"{{{ns}}}uscc")),
            ("year", request.findtext(f"{{{ns}}}year")),
            ("amount", "1234567890123456.78"),
            ("level", "gold"),
            ("paidOn", "2025-03-31"),
        ):
            etree.SubElement(response, f"{{{ns}}}{name}").text = value
        return response
    if key == ("urn:example:district:bare", "Uscc"):
        standing = etree.Element("{urn:example:district:bare}Standing")
        standing.text = "silver" if (request.text or "").startswith("91") else "bronze"
        return standing
    raise KeyError(key)


async def _soap(request: web.Request) -> web.Response:
    raw = await request.read()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    envelope = etree.fromstring(raw, parser=parser)
    namespace = etree.QName(envelope).namespace or SOAP11
    content_type = "application/soap+xml" if namespace == SOAP12 else "text/xml"
    fault = current_fault()
    if fault is not None and fault.mode == "soap_fault":
        return web.Response(body=_fault(namespace), status=500, content_type=content_type, charset="utf-8")
    body = envelope.find(f"{{{namespace}}}Body")
    request.app[SEEN].append(raw)
    return web.Response(body=_envelope(namespace, _answer(body[0])), content_type=content_type, charset="utf-8")


async def _subsidy(request: web.Request) -> web.Response:
    uscc = request.match_info["uscc"]
    year = int(request.query["year"])
    if not uscc.startswith("91"):
        return web.Response(status=404, body=b'{"error": "no such enterprise"}', content_type="application/json")
    # Written by hand so the numbers keep their exact digits (and an undeclared key that must not leak).
    body = (
        f'{{"uscc": "{uscc}", "year": {year}, "amount": 1234567890123456.78, "paid_on": "2025-03-31", '
        '"status": "paid", "items": [{"name": "研发补助", "price": 0.10}], "receipt": "aGVsbG8=", '
        '"internal_note": "not in the contract"}'
    )
    return web.Response(body=body.encode(), content_type="application/json")


async def _application(request: web.Request) -> web.Response:
    import json

    body = json.loads(await request.read(), parse_float=Decimal)
    request.app[SEEN].append(body)
    answer = {"application_id": "APP-0001", "accepted_at": "2025-05-01T09:30:00+08:00", "echo": body}
    return web.Response(
        body=orjson.dumps(answer, default=lambda v: orjson.Fragment(str(v))),
        status=201,
        content_type="application/json",
    )


async def _regions(request: web.Request) -> web.Response:
    return web.Response(body=b'["350206", "350211"]', content_type="application/json")


def soap_app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    install_faults(app)
    for path in ("/ws/district", "/ws/bare", "/ws/rpc", "/ws/soap12"):
        app.router.add_post(path, _soap)
    return app


def rest_app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    install_faults(app)
    app.router.add_get("/api/v1/subsidies/{uscc}", _subsidy)
    app.router.add_post("/api/v1/applications", _application)
    app.router.add_get("/api/v1/regions", _regions)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
