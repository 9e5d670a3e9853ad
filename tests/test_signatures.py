"""The RFC 9421 profile: sign then verify, and every way a request fails, each with its code."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.signatures import SignatureFailure, check_created, parse_signature_params, sign_request, verify_request

URL = "http://gw.example:8000/v1/services/credit/dishonest-debtor"


def make(body: bytes = b'{"a":1}', **kwargs: object) -> tuple[httpx.Request, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    request = httpx.Request("POST", URL, content=body)
    sign_request("POST", URL, request.headers, body, key_id="k1", private_key=key, **kwargs)  # type: ignore[arg-type]
    return request, key


def verify(request: httpx.Request, key: Ed25519PrivateKey, body: bytes | None = None) -> None:
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    verify_request(
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
        verify_request("POST", URL.replace("credit", "market"), headers, request.content, key.public_key(), params)
    assert info.value.code == "signature_invalid"


def test_changed_method_does_not_verify() -> None:
    request, key = make()
    headers = list(request.headers.multi_items())
    params = parse_signature_params(headers)
    with pytest.raises(SignatureFailure) as info:
        verify_request("PUT", URL, headers, request.content, key.public_key(), params)
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
