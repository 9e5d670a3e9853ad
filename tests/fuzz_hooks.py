"""Schemathesis hooks for the API fuzz run (scripts/fuzz_api.py): sign every request, and insist on problem+json.

Loaded by `schemathesis run` through SCHEMATHESIS_HOOKS=tests.fuzz_hooks. MSJX_FUZZ_CALLERS names the demo's
callers.json. Each case is signed (RFC 9421) in turn as the platform, the admin and a caller of each role the route
lets through (tests/helpers/api_access.py), so every operation is fuzzed past its role gate and in front of it.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.keys import load_private_key_file
from security.signatures import sign_request
from tests.helpers.api_access import ACCESS, UNSIGNED

# The demo caller who stands for each role (gateway/demo/setup.py DEMO_CALLERS).
ROLE_CALLERS = {
    "platform": "platform",
    "department": "data-officer",
    "officer": "officer",
    "coordinator": "coordinator",
    "admin": "admin",
}
PROBLEM = "application/problem+json"


class RequestSigner(requests.auth.AuthBase):
    """Signs the prepared request: its final URL and body bytes, exactly as they go on the wire."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self.private_key = private_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        sign_request(
            str(request.method),
            str(request.url),
            request.headers,
            body,
            key_id=self.key_id,
            private_key=self.private_key,
        )
        return request


@dataclass(frozen=True)
class Callers:
    signers: dict[str, RequestSigner]

    @classmethod
    def load(cls, path: Path) -> Callers:
        listing = json.loads(path.read_text())
        by_id = {entry["caller_id"]: entry for entry in listing}
        signers = {}
        for role, caller_id in ROLE_CALLERS.items():
            entry = by_id[caller_id]
            signers[role] = RequestSigner(entry["key_id"], load_private_key_file(Path(entry["key_file"])))
        return cls(signers)


_callers: Callers | None = None
_turns: dict[str, Iterator[str]] = {}


def _signer_for(method: str, path: str) -> RequestSigner:
    global _callers
    if _callers is None:
        _callers = Callers.load(Path(os.environ["MSJX_FUZZ_CALLERS"]))
    label = f"{method.upper()} {path}"
    if label not in _turns:
        let_through = sorted(ACCESS.get((method.upper(), path), frozenset()) - {UNSIGNED})
        _turns[label] = itertools.cycle(dict.fromkeys(["platform", "admin", *let_through]))
    return _callers.signers[next(_turns[label])]


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Sign when the case carries the security scheme's headers; a case generated without them (Schemathesis
    testing that the signature is required) goes out unsigned, as generated."""
    present = {name.lower() for name in case.headers or {}}
    if {"signature", "signature-input"} <= present:
        operation = case.operation
        kwargs["auth"] = _signer_for(operation.method, operation.path)


def _loopback(url: object) -> bool:
    host = urlsplit(str(url)).hostname if isinstance(url, str) else None
    return host in ("127.0.0.1", "localhost", "::1")


@schemathesis.hook("filter_body")
def only_loopback_contracts(context: schemathesis.HookContext, body: Any) -> bool:
    """Outside a network namespace of its own (scripts/fuzz_api.py says when), a contract URL or endpoint the fuzzer
    made up must not send the gateway anywhere but this machine."""
    if os.environ.get("MSJX_FUZZ_FILTER_URLS") != "1" or context.operation is None:
        return True
    if context.operation.path != "/v1/upstreams" or not isinstance(body, dict):
        return True
    return all(_loopback(body[name]) for name in ("url", "endpoint") if body.get(name) is not None)


@schemathesis.check
def problem_details(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every error is RFC 9457 problem+json with the answer's status and a stable `code`."""
    if response.status_code < 400:
        return True
    media_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    if media_type != PROBLEM:
        raise AssertionError(f"{response.status_code} answered as {media_type or 'no content type'}, not {PROBLEM}")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} problem body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not body["code"]:
        raise AssertionError(f"{response.status_code} problem has no `code`")
    if body.get("status") != response.status_code:
        raise AssertionError(f"problem says status {body.get('status')!r}, the answer {response.status_code}")
    return True
