"""The SOAP fast path (pre-rendered envelope, direct reading) gives exactly zeep's bytes and values, and leaves to
zeep every answer it does not read itself, with zeep's outcome: on Golden Tax III and on operations of the corpus."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import zeep

from adapters.contracts import default_fetcher, gather
from adapters.golden_tax import contract_bundle
from adapters.http import RawResponse
from adapters.soap import SoapEngine, SoapOperation
from adapters.soap_types import Scalar, to_zeep
from schemas.uscc import make_uscc
from simulators import golden_tax as simulator
from simulators.enterprises import ENTERPRISES

CORPUS = Path(__file__).resolve().parent / "contracts" / "wsdl-corpus"
GT = "http://www.chinatax.gov.cn/gt3/sjjh/nsrxx/v1"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


@pytest.fixture(scope="module")
def tax() -> SoapEngine:
    return SoapEngine("golden-tax", contract_bundle(), endpoint="http://127.0.0.1:9")


def corpus_engine(name: str) -> SoapEngine:
    path = CORPUS / f"{name}.wsdl"
    return SoapEngine(name, gather("wsdl", path.resolve().as_uri(), default_fetcher(allow_files=True)))


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "value", call()
    except Exception as exc:  # the two paths must fail alike: same type, same words
        return type(exc).__name__, str(exc)


def both(engine: SoapEngine, operation: SoapOperation, body: bytes, status: int = 200) -> tuple[Any, Any]:
    response = RawResponse(status, "text/xml; charset=utf-8", body)
    return outcome(lambda: engine.read(operation, response)), outcome(lambda: engine.zeep_read(operation, response))


def answer(wrapper: str, inner: str, prefix: str = "gt") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{ENV}" xmlns:{prefix}="{GT}" '
        f'xmlns:xsi="{XSI}"><soap:Body><{prefix}:{wrapper}>{inner}</{prefix}:{wrapper}></soap:Body></soap:Envelope>'
    ).encode()


def test_golden_tax_operations_with_flat_messages_take_the_fast_path(tax: SoapEngine) -> None:
    fast = {name for name, operation in tax.operations.items() if operation.fast is not None}
    # 重大税收违法 answers a repeated complex element (its cases): zeep reads it.
    assert fast == {"CxNsrdjxx", "CxNsxydj", "CxNdjsxx"}


@pytest.mark.parametrize(("name", "year_field"), [("CxNsrdjxx", None), ("CxNsxydj", "PJND"), ("CxNdjsxx", "ND")])
def test_golden_tax_envelopes_are_zeeps_bytes(tax: SoapEngine, name: str, year_field: str | None) -> None:
    operation = tax.operations[name]
    assert operation.fast is not None
    for index, enterprise in enumerate(ENTERPRISES[:40]):
        data: dict[str, Any] = {"NSRSBH": enterprise.uscc}
        if year_field:
            data[year_field] = 2000 + index
        assert tax.envelope(operation, data) == tax.zeep_envelope(operation, data)
    assert operation.fast.pieces is not None, "the template was never learnt"
    assert operation.fast.envelope(data) == tax.zeep_envelope(operation, data)


def test_golden_tax_answers_of_the_simulator_read_alike(tax: SoapEngine) -> None:
    """Every answer the simulator gives for the three operations, read both ways."""
    fast_reads = 0
    for enterprise in ENTERPRISES[:60]:
        for name, wire in (
            ("CxNsrdjxx", {"NSRSBH": enterprise.uscc}),
            ("CxNsxydj", {"NSRSBH": enterprise.uscc, "PJND": 2024}),
            ("CxNdjsxx", {"NSRSBH": enterprise.uscc, "ND": 2023}),
        ):
            operation = tax.operations[name]
            status, body = simulator.answer(tax.zeep_envelope(operation, wire))
            fast, reference = both(tax, operation, body, status)
            assert fast == reference, (name, body)
            assert operation.fast is not None
            fast_reads += status == 200 and operation.fast.read(body) is not None
    assert fast_reads > 100


OK_INNER = f"<gt:NSRSBH>{make_uscc('91110000600037341')}</gt:NSRSBH><gt:PJND>2024</gt:PJND>"


@pytest.mark.parametrize(
    ("inner", "plain"),
    [
        (OK_INNER + "<gt:NSXYDJ>A</gt:NSXYDJ><gt:PJFS>91.50</gt:PJFS><gt:PJRQ>2025-04-01</gt:PJRQ>", True),
        (OK_INNER, True),  # not rated: the optional elements absent
        (OK_INNER + "<gt:PJRQ>2025-04-01</gt:PJRQ>", True),  # one optional between absent
        (OK_INNER + "<gt:NSXYDJ/>", True),  # empty: zeep reads None
        (OK_INNER + "<gt:PJFS>not a number</gt:PJFS>", False),  # refused by the type: zeep's words
        (OK_INNER + "<gt:PJRQ>2025-13-45</gt:PJRQ>", True),  # zeep logs it and reads None
        (OK_INNER.replace("<gt:PJND>2024", "<!-- c --><gt:PJND>2024") + "\n  <gt:NSXYDJ>B</gt:NSXYDJ>\n", True),
        (OK_INNER + '<gt:NSXYDJ xsi:nil="true"/>', False),
        (OK_INNER + "<gt:NSXYDJ>A</gt:NSXYDJ><gt:Extra>1</gt:Extra>", False),
        (OK_INNER + "<gt:PJFS>1</gt:PJFS><gt:NSXYDJ>A</gt:NSXYDJ>", False),  # out of order
        ("<gt:PJND>2024</gt:PJND>", False),  # a required element missing
        (OK_INNER.replace("gt:PJND", "PJND"), False),  # unqualified: zeep's leniency decides
        (OK_INNER + "<gt:NSXYDJ><b>A</b></gt:NSXYDJ>", False),
        (OK_INNER + "<?pi x?>", False),
    ],
)
def test_answers_read_alike_and_only_plain_ones_fast(tax: SoapEngine, inner: str, plain: bool) -> None:
    operation = tax.operations["CxNsxydj"]
    body = answer("CxNsxydjResponse", inner)
    fast, reference = both(tax, operation, body)
    assert fast == reference
    assert operation.fast is not None
    assert (operation.fast.read(body) is not None) is plain


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (answer("CxNsxydjResponse", OK_INNER) + b"<", 200),
        (answer("CxNsxydjResponse", OK_INNER).replace(b"soap:Envelope", b"soap:Wrapper"), 200),
        (answer("CxNsxydjResponse", OK_INNER).replace(ENV.encode(), b"http://www.w3.org/2003/05/soap-envelope"), 200),
        (answer("CxNsrdjxxResponse", OK_INNER), 200),  # another operation's answer
        (
            f'<soap:Envelope xmlns:soap="{ENV}"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode>'
            "<faultstring>down</faultstring></soap:Fault></soap:Body></soap:Envelope>".encode(),
            500,
        ),
        (answer("CxNsxydjResponse", OK_INNER), 500),
        (b'<!DOCTYPE x [<!ENTITY e "x">]>' + answer("CxNsxydjResponse", OK_INNER).split(b"?>", 1)[1], 200),
        (b"", 200),
        (b"<html>busy</html>", 503),
    ],
)
def test_what_is_not_a_plain_answer_is_zeeps_to_judge(tax: SoapEngine, body: bytes, status: int) -> None:
    fast, reference = both(tax, tax.operations["CxNsxydj"], body, status)
    assert fast == reference
    assert fast[0] != "value" or body.startswith(b"<?xml"), fast


def test_values_lxml_might_write_otherwise_are_rendered_by_zeep(tax: SoapEngine) -> None:
    operation = tax.operations["CxNsrdjxx"]
    tax.envelope(operation, {"NSRSBH": ENTERPRISES[0].uscc})
    assert operation.fast is not None and operation.fast.pieces is not None
    for value in ("a\rb", "a\nb", "tab\there", "", "\ud800"):
        assert operation.fast.envelope({"NSRSBH": value}) is None
    assert tax.envelope(operation, {"NSRSBH": "a&b<c>d\"e'f 中文"}) == tax.zeep_envelope(
        operation, {"NSRSBH": "a&b<c>d\"e'f 中文"}
    )


SAMPLES: dict[str, Any] = {
    "string": "R&D <Ltd> \"q\" 'a' 纳税人",
    "decimal": Decimal("12.50"),
    "integer": 7,
    "boolean": True,
    "float": 1.5,
    "date": dt.date(2025, 1, 2),
    "datetime": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "time": dt.time(3, 4, 5),
    "base64": b"\x00xyz",
    "year": 2025,
}


def sample(struct: Any) -> dict[str, Any]:
    values = {}
    for item in struct.fields:
        shape = item.shape
        assert isinstance(shape, Scalar)
        values[item.json_name] = shape.enum[0] if shape.enum else SAMPLES[shape.kind]
    return values


@pytest.mark.parametrize(
    ("wsdl", "operation_name"),
    [("stockquote", "GetQuote"), ("temperature", "ConvertTemp"), ("vies", "checkVat"), ("vies", "checkVatApprox")],
)
def test_corpus_operations_alike(wsdl: str, operation_name: str) -> None:
    engine = corpus_engine(wsdl)
    operation = engine.operations[operation_name]
    assert operation.fast is not None
    data = sample(operation.input.struct)
    assert engine.envelope(operation, data) == engine.zeep_envelope(operation, data)
    assert operation.fast.pieces is not None
    assert operation.fast.envelope(data) == engine.zeep_envelope(operation, data)
    # An answer as zeep writes one, every field filled, then with each optional field left out in turn.
    output = sample(operation.output.struct)
    variants = [output] + [
        {key: value for key, value in output.items() if key != item.json_name}
        for item in operation.output.struct.fields
        if item.optional
    ]
    for values in variants:
        rendered = operation.zeep_operation.output.serialize(**to_zeep(operation.output.struct, values))
        body = zeep.loader.etree.tostring(rendered.content, xml_declaration=True, encoding="utf-8")
        fast, reference = both(engine, operation, body)
        assert fast == reference
        assert fast[0] == "value", fast
        assert operation.fast.read(body) is not None
