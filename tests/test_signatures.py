"""The RFC 9421 profile: sign then verify, and every way a request fails, each with its code."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import signatures
from security.keys import generate, public_key_bytes
from security.signatures import (
    HeaderLines,
    SignatureFailure,
    check_created,
    parse_signature_params,
    sign_request,
    verify_request,
)
from security.verdicts import ED25519, SM2_SM3, verifies
from security.verifier_process import InlineVerifier

URL = "http://gw.example:8000/v1/services/credit/dishonest-debtor"


def make(body: bytes = b'{"a":1}', algorithm: str = ED25519, **kwargs: object) -> tuple[httpx.Request, Any]:
    key = generate(algorithm)
    request = httpx.Request("POST", URL, content=body)
    sign_request("POST", URL, request.headers, body, key_id="k1", private_key=key, **kwargs)  # type: ignore[arg-type]
    return request, key


def check(method: str, url: str, headers: list[tuple[str, str]], body: bytes, public_key: Any, params: Any) -> None:
    """`verify_request` with the signature checked on this thread, as the gateway does without its verifier process."""
    asyncio.run(verify_request(InlineVerifier(), method, url, headers, body, public_key, params))


def verify(request: httpx.Request, key: Ed25519PrivateKey, body: bytes | None = None) -> None:
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    check(
        request.method, str(request.url), headers, request.content if body is None else body, key.public_key(), params
    )


def test_round_trip_covers_method_uri_and_digest() -> None:
    request, key = make()
    params = parse_signature_params(list(request.headers.multi_items()))
    assert params.key_id == "k1"
    assert set(params.covered) == {"@method", "@target-uri", "content-digest"}
    assert len(params.nonce) >= 16
    assert abs(params.created - time.time()) < 5
    verify(request, key)


def test_no_body_covers_no_digest() -> None:
    request, key = make(body=b"")
    assert "content-digest" not in request.headers
    verify(request, key, body=b"")


def test_changed_body_is_digest_mismatch() -> None:
    request, key = make()
    with pytest.raises(SignatureFailure) as info:
        verify(request, key, body=b'{"a":2}')
    assert info.value.code == "digest_mismatch"


def test_changed_uri_does_not_verify() -> None:
    request, key = make()
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    with pytest.raises(SignatureFailure) as info:
        check("POST", URL.replace("credit", "market"), headers, request.content, key.public_key(), params)
    assert info.value.code == "signature_invalid"


def test_changed_method_does_not_verify() -> None:
    request, key = make()
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    with pytest.raises(SignatureFailure) as info:
        check("PUT", URL, headers, request.content, key.public_key(), params)
    assert info.value.code == "signature_invalid"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("signature-input", 'msjx=("@method");created=1;keyid="k1"'),
        ("signature-input", 'other=("@method");created=1;keyid="k1";nonce="abcdefgh"'),
        ("signature-input", "{{{"),
        ("signature-input", 'msjx=("@method");keyid="k1";nonce="abcdefgh"'),
    ],
)
def test_malformed_parameters(header: str, value: str) -> None:
    request, _ = make()
    request.headers[header] = value
    with pytest.raises(SignatureFailure) as info:
        parse_signature_params(list(request.headers.multi_items()))
    assert info.value.code == "signature_malformed"


def test_missing_headers() -> None:
    with pytest.raises(SignatureFailure) as info:
        parse_signature_params([("content-type", "application/json")])
    assert info.value.code == "signature_missing"


@pytest.mark.parametrize(("offset", "ok"), [(-299, True), (299, True), (-301, False), (301, False)])
def test_clock_window(offset: int, ok: bool) -> None:
    now = time.time()
    request, _ = make(created=dt.datetime.fromtimestamp(int(now) + offset, dt.UTC))
    params = parse_signature_params(list(request.headers.multi_items()))
    if ok:
        check_created(params, int(now))
    else:
        with pytest.raises(SignatureFailure) as info:
            check_created(params, int(now))
        assert info.value.code == "signature_expired"


# --- the direct path for the gateway's own profile must agree with http-message-signatures ------------------------


def _outcome(method: str, url: str, headers: list[tuple[str, str]], body: bytes, key: Ed25519PrivateKey) -> str:
    try:
        check(method, url, headers, body, key.public_key(), parse_signature_params(headers))
    except SignatureFailure as failure:
        return failure.code
    return "ok"


def _library_outcome(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    key: Ed25519PrivateKey,
) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(signatures, "_profile_signed", lambda *_args: None)
        return _outcome(method, url, headers, body, key)


def _direct_path_verifies(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes, public_key: Any, params: Any
) -> bool:
    signed = signatures._profile_signed(method, url, HeaderLines(headers), body, public_key, params)
    algorithm = SM2_SM3 if isinstance(public_key, signatures.Sm2PublicKey) else ED25519
    return signed is not None and verifies(public_key_bytes(public_key), *signed, algorithm)


@pytest.mark.parametrize("algorithm", [ED25519, SM2_SM3])
def test_profile_requests_take_the_direct_path(algorithm: str) -> None:
    for body in (b'{"a":1}', b""):
        request, key = make(body=body, algorithm=algorithm)
        headers = list(request.headers.multi_items())
        params = parse_signature_params(headers)
        assert params.profile_params is not None
        assert _direct_path_verifies("POST", URL, headers, body, key.public_key(), params)


def _resigned(body: bytes, edit: Callable[[dict[str, str]], None], **kwargs: Any) -> tuple[list, Any]:
    request, key = make(body=body, **kwargs)
    headers = dict(request.headers.multi_items())
    edit(headers)
    return list(headers.items()), key


def _params(headers: dict[str, str], old: str, new: str) -> None:
    headers["signature-input"] = headers["signature-input"].replace(old, new)


def _created_last(value: str) -> str:
    head, _, rest = value.partition(";created=")
    created, _, others = rest.partition(";")
    return f"{head};{others};created={created}"


MUTATIONS: dict[str, Callable[[dict[str, str]], None]] = {
    "untouched": lambda h: None,
    "unknown parameter": lambda h: _params(h, ";created=", ";zz="),
    "params reordered": lambda h: h.update({"signature-input": _created_last(h["signature-input"])}),
    "extra parameter": lambda h: _params(h, ";keyid=", ';alg="ed25519";keyid='),
    "token keyid": lambda h: _params(h, 'keyid="k1"', "keyid=k1"),
    "second label": lambda h: h.update({"signature-input": h["signature-input"] + ', other=("@method");created=1'}),
    "duplicate label": lambda h: h.update({"signature-input": h["signature-input"] + ", " + h["signature-input"]}),
    "signature params": lambda h: h.update({"signature": h["signature"] + ";x=1"}),
    "signature changed": lambda h: h.update({"signature": h["signature"].replace("msjx=:", "msjx=:AA", 1)}),
    "signature unpadded": lambda h: h.update({"signature": h["signature"].replace("=:", ":")}),
    "digest changed": lambda h: h.update({"content-digest": "sha-256=:" + "A" * 43 + "=:"}),
    "digest sha-512": lambda h: h.update({"content-digest": "sha-512=:" + "A" * 86 + "==:"}),
    "digest spaced": lambda h: h.update({"content-digest": "  " + h.get("content-digest", "") + " "}),
    "component params": lambda h: _params(h, '"@method"', '"@method";req'),
    "components reordered": lambda h: _params(h, '"@method" "@target-uri"', '"@target-uri" "@method"'),
}


@pytest.mark.parametrize("algorithm", [ED25519, SM2_SM3])
@pytest.mark.parametrize("body", [b'{"a":1}', b""], ids=["body", "no-body"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_direct_path_agrees_with_the_library(
    monkeypatch: pytest.MonkeyPatch, mutation: str, body: bytes, algorithm: str
) -> None:
    headers, key = _resigned(body, MUTATIONS[mutation], algorithm=algorithm)
    for method, url in (("POST", URL), ("PUT", URL), ("POST", URL + "?q=1"), ("post", URL)):
        ours = _outcome(method, url, headers, body, key)
        assert ours == _library_outcome(monkeypatch, method, url, headers, body, key), (mutation, method, url)


def _twice(name: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda lines: [*lines, *[(key, value) for key, value in lines if key == name]]


# Edits of the header lines themselves, which a dict cannot express: the direct path looks lines up by name
# (`HeaderLines`), and must take a repeated, differently cased or folded line exactly as the library does.
LINE_EDITS: dict[str, Callable[[list[tuple[str, str]]], list[tuple[str, str]]]] = {
    "names capitalized": lambda lines: [(key.title(), value) for key, value in lines],
    "signature twice": _twice("signature"),
    "signature-input twice": _twice("signature-input"),
    "content-digest twice": _twice("content-digest"),
    "signature folded": lambda lines: [(k, v + "\r\n x" if k == "signature" else v) for k, v in lines],
    "digest split in two lines": lambda lines: [
        *[(k, v) for k, v in lines if k != "content-digest"],
        *[(k, part) for k, v in lines if k == "content-digest" for part in (v[:20], v[20:])],
    ],
    "idempotency key unsigned": lambda lines: [*lines, ("Idempotency-Key", "pay-1")],
}


@pytest.mark.parametrize("body", [b'{"a":1}', b""], ids=["body", "no-body"])
@pytest.mark.parametrize("edit", list(LINE_EDITS))
def test_direct_path_reads_header_lines_as_the_library_does(
    monkeypatch: pytest.MonkeyPatch, edit: str, body: bytes
) -> None:
    request, key = make(body=body)
    headers = LINE_EDITS[edit](list(request.headers.multi_items()))
    ours = _outcome("POST", URL, headers, body, key)
    assert ours == _library_outcome(monkeypatch, "POST", URL, headers, body, key), edit


@pytest.mark.parametrize("offset", [3, 10, 200, 299])
def test_created_ahead_within_the_window_verifies_both_ways(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    # A client clock up to 300 s ahead is inside the gateway's ±300 s window (check_created); neither path refuses it.
    created = dt.datetime.fromtimestamp(int(time.time()) + offset, dt.UTC)
    headers, key = _resigned(b"{}", MUTATIONS["untouched"], created=created)
    assert _library_outcome(monkeypatch, "POST", URL, headers, b"{}", key) == "ok"
    assert _outcome("POST", URL, headers, b"{}", key) == "ok"


@pytest.mark.parametrize(
    "url",
    [
        "http://user@gw.example:8000/v1/x",  # userinfo: the library drops it from @target-uri
        "http://gw.example:8000",  # no path: the library signs "/"
        "http://[::1]:8000/v1/x",
        "http://gw.example:8000/v1/x#frag",
        "http://gw.example:8000/v1/%zz",
    ],
)
def test_urls_outside_the_plain_grammar_go_to_the_library(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    key = Ed25519PrivateKey.generate()
    request = httpx.Request("POST", "http://gw.example:8000/", content=b"{}")
    try:
        sign_request("POST", url, request.headers, b"{}", key_id="k1", private_key=key)
    except Exception:  # the library will not sign this URL: sign a plain one, then present this one
        request = httpx.Request("POST", "http://gw.example:8000/", content=b"{}")
        sign_request("POST", URL, request.headers, b"{}", key_id="k1", private_key=key)
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    assert signatures._profile_signed("POST", url, HeaderLines(headers), b"{}", key.public_key(), params) is None
    assert _outcome("POST", url, headers, b"{}", key) == _library_outcome(monkeypatch, "POST", url, headers, b"{}", key)


@pytest.mark.parametrize(
    ("order", "nonce"),
    [
        (("created", "keyid", "nonce"), "abcdefgh12345678"),
        (("nonce", "keyid", "created"), "abcdefgh12345678"),
        (("keyid", "created", "nonce"), 'quote"and\\backslash'),
    ],
)
def test_direct_path_builds_the_library_signature_base(
    monkeypatch: pytest.MonkeyPatch, order: tuple[str, ...], nonce: str
) -> None:
    """Signed by hand in a parameter order and with characters the client never uses: both paths accept."""
    import base64
    import hashlib

    key = Ed25519PrivateKey.generate()
    body = b'{"a":1}'
    digest = f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
    escaped = nonce.replace("\\", "\\\\").replace('"', '\\"')
    values = {"created": str(int(time.time())), "keyid": '"k1"', "nonce": f'"{escaped}"'}
    params = '("@method" "@target-uri" "content-digest")' + "".join(f";{name}={values[name]}" for name in order)
    base = f'"@method": POST\n"@target-uri": {URL}\n"content-digest": {digest}\n"@signature-params": {params}'
    signature = base64.b64encode(key.sign(base.encode())).decode()
    headers = [("content-digest", digest), ("signature-input", f"msjx={params}"), ("signature", f"msjx=:{signature}:")]
    assert _library_outcome(monkeypatch, "POST", URL, headers, body, key) == "ok"
    params = parse_signature_params(headers)
    if '"' in nonce or "\\" in nonce:  # not what the client writes: read and based by the library alone
        assert params.profile_params is None and _outcome("POST", URL, headers, body, key) == "ok"
    else:
        assert _direct_path_verifies("POST", URL, headers, body, key.public_key(), params)


@pytest.mark.parametrize(
    "value",
    [
        'msjx=("@method" "@target-uri" "content-digest");created=1700000000;keyid="k1";nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");nonce="abcdefgh1234";created=1700000000;keyid="k1"',
        'msjx=("@method" "@target-uri");created=01700000000;keyid="k1";nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");created=1;created=2;keyid="k1"',
        'msjx=("@method" "@target-uri");created=1;keyid="";nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");created=1;keyid="k1";nonce="short"',
        'msjx=("@method" "@target-uri");created=1;keyid="k\\\\1";nonce="abcdefgh1234"',
        'msjx=("@method"  "@target-uri");created=1;keyid="k1";nonce="abcdefgh1234"',
        ' msjx=("@method" "@target-uri");created=1;keyid="k1";nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");created=-1;keyid="k1";nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");created=1;keyid=k1;nonce="abcdefgh1234"',
        'msjx=("@method" "@target-uri");created=1;keyid="k1";nonce="abcdefgh1234", x=("@method")',
        'msjx=("@method" "@target-uri");created=1;keyid="k;1";nonce="a;bcdefgh1234"',
        'msjx=("@method" "@target-uri");created=1;keyid="k=1";nonce="abcdefgh;created=2"',
        'msjx=("@method" "@target-uri");keyid="k1";nonce="abcdefgh;keyid=x";created=0',
    ],
)
def test_quick_parse_of_signature_input_agrees_with_http_sf(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    headers = [("signature-input", value), ("signature", "msjx=:AAAA:")]

    def parsed() -> Any:
        try:  # the parameters read, not whether the quick reader also recognised the client's own profile
            return dataclasses.replace(parse_signature_params(headers), profile_params=None)
        except SignatureFailure as failure:
            return failure.code, failure.detail

    quick = parsed()
    with monkeypatch.context() as patch:
        patch.setattr(signatures, "_parse_profile_input", lambda _value: None)
        assert quick == parsed()
