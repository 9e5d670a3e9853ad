"""Python client for the platform: an httpx Auth that signs every request, and a small typed client.

from gateway.client import GatewayClient
with GatewayClient.from_key_file("http://127.0.0.1:8000", "platform", "var/demo/keys/platform.pem") as gw:
    answer = gw.invoke("credit", "dishonest-debtor", purpose="XM-2025-001", uscc="91110000600037341L")

The key id is derived from the caller id and the key (`<caller>.<fingerprint>`), as `msjx-gateway call` does;
a URL of None means `MSJX_GATEWAY_URL`, else http://127.0.0.1:8000.
"""

from __future__ import annotations

import json as json_module
import os
from collections.abc import Generator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import http_sf
import httpx

from schemas.errors import MsjxError
from security.keys import PrivateKey, key_id_for, load_private_key_file
from security.signatures import sign_request

if TYPE_CHECKING:
    from gateway.batches.handle import BatchHandle

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "MSJX_GATEWAY_URL"


def gateway_url(url: str | None = None) -> str:
    """The URL given, else `MSJX_GATEWAY_URL`, else the local default."""
    return url or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def _decimal_as_string(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class SignatureAuth(httpx.Auth):
    """Signs each request (RFC 9421: `ed25519` with an Ed25519 key, `sm2-sm3` with an SM2 key) with a fresh nonce
    and, with a body, its Content-Digest."""

    requires_request_body = True

    def __init__(self, key_id: str, private_key: PrivateKey) -> None:
        self.key_id = key_id
        self._private_key = private_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sign_request(
            request.method,
            str(request.url),
            request.headers,
            request.content,
            key_id=self.key_id,
            private_key=self._private_key,
        )
        yield request


class GatewayError(MsjxError):
    """The gateway answered with problem+json; `code` is its stable code."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", f"http_{status}"))
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class GatewayClient:
    """A synchronous client of the unified API. Each method returns the decoded JSON answer."""

    def __init__(self, base_url: str | None, key_id: str, private_key: PrivateKey, *, timeout: float = 30.0) -> None:
        self.base_url = gateway_url(base_url)
        self.key_id = key_id
        self._http = httpx.Client(base_url=self.base_url, auth=SignatureAuth(key_id, private_key), timeout=timeout)

    @classmethod
    def from_key_file(
        cls, base_url: str | None, caller_id: str, key_file: str | Path, *, key_id: str | None = None, **options: Any
    ) -> GatewayClient:
        """A client signing as `caller_id` with the private key in `key_file`; the key id is derived from both
        (`<caller>.<fingerprint>`, as `callers add` registers it) unless `key_id` names another."""
        private_key = load_private_key_file(Path(key_file))
        return cls(base_url, key_id or key_id_for(caller_id, private_key.public_key()), private_key, **options)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self._answer(self._send(method, path, json, headers))

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str] | None) -> httpx.Response:
        if body is None:
            return self._http.request(method, path, headers=headers)
        # Decimals leave as JSON strings: money never becomes a float on its way to the gateway.
        content = json_module.dumps(body, ensure_ascii=False, default=_decimal_as_string).encode()
        return self._http.request(
            method, path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
        )

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise GatewayError(response.status_code, problem)
        return response.json()

    def submit_voucher(
        self, purpose: str, voucher: dict[str, Any], idempotency_key: str
    ) -> tuple[dict[str, Any], bool]:
        """Pay one voucher (treasury/submit-voucher). Returns the answer and whether it was a stored one (a repeat
        of a payment already made: nothing was paid this time). Repeat with the same key after a failure."""
        return self.call("treasury", "submit-voucher", purpose, voucher, idempotency_key=idempotency_key)

    def call(
        self, service: str, operation: str, purpose: str, params: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """One operation with params of any shape; returns the answer and whether it was a stored one (replayed
        under `idempotency_key`, so nothing was done again)."""
        headers = {"Idempotency-Key": http_sf.ser(idempotency_key)} if idempotency_key is not None else None
        response = self._send(
            "POST", f"/v1/services/{service}/{operation}", {"purpose": purpose, "params": params}, headers
        )
        answer = self._answer(response)
        return answer, response.headers.get("idempotent-replayed") == "true"

    def invoke(self, service: str, operation: str, purpose: str, **params: Any) -> dict[str, Any]:
        return self.request("POST", f"/v1/services/{service}/{operation}", {"purpose": purpose, "params": params})

    def services(self) -> dict[str, Any]:
        return self.request("GET", "/v1/services")

    @property
    def http(self) -> httpx.Client:
        """The signing HTTP client underneath, for requests the methods here do not cover."""
        return self._http

    def answer(self, response: httpx.Response) -> Any:
        return self._answer(response)

    def stream(self, method: str, path: str, cursor: int, accept: str) -> Any:
        """A streamed signed request (batch results); a problem answer raises GatewayError before any line."""
        from contextlib import contextmanager

        @contextmanager
        def opened() -> Any:
            with self._http.stream(method, path, params={"cursor": cursor}, headers={"Accept": accept}) as response:
                if response.status_code >= 400:
                    response.read()
                    self._answer(response)
                yield response

        return opened()

    def batch(
        self,
        purpose: str,
        operations: Any,
        subjects: Any = None,
        *,
        subjects_file: str | Path | None = None,
        params: dict[str, Any] | None = None,
    ) -> BatchHandle:
        """Submit a batch comparison (数据比对): every operation ("service/operation") for every subject (USCCs, or
        dicts with a uscc and per-subject params), or the subjects of a CSV/NDJSON file. Returns a handle with
        `.wait()` and `.results()` (an iterator over result lines, readable while the batch runs)."""
        from gateway.batches.handle import submit

        return submit(self, purpose, operations, subjects, subjects_file=subjects_file, params=params)
