"""Python client for the platform: an httpx Auth that signs every request, and a small typed client.

from gateway.client import GatewayClient
with GatewayClient.from_key_file("http://127.0.0.1:8000", "platform", "var/demo/keys/platform.pem") as gw:
    answer = gw.invoke("credit", "dishonest-debtor", purpose="XM-2025-001", uscc="91110000600037341L")
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.keys import load_private_key_file
from security.signatures import sign_request


class SignatureAuth(httpx.Auth):
    """Signs each request (RFC 9421, ed25519) with a fresh nonce and, with a body, its Content-Digest."""

    requires_request_body = True

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
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


class GatewayError(Exception):
    """The gateway answered with problem+json; `code` is its stable code."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", f"http_{status}"))
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class GatewayClient:
    """A synchronous client of the unified API. Each method returns the decoded JSON answer."""

    def __init__(self, base_url: str, key_id: str, private_key: Ed25519PrivateKey, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, auth=SignatureAuth(key_id, private_key), timeout=timeout)

    @classmethod
    def from_key_file(cls, base_url: str, key_id: str, key_file: str | Path, **options: Any) -> GatewayClient:
        return cls(base_url, key_id, load_private_key_file(Path(key_file)), **options)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, json: Any = None) -> Any:
        response = self._http.request(method, path, json=json)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise GatewayError(response.status_code, problem)
        return response.json()

    def invoke(self, service: str, operation: str, purpose: str, **params: Any) -> dict[str, Any]:
        return self.request("POST", f"/v1/services/{service}/{operation}", {"purpose": purpose, "params": params})

    def services(self) -> dict[str, Any]:
        return self.request("GET", "/v1/services")
