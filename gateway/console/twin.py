"""A console action runs as its API twin: the same route, rules and audit record, as the signed-in account.

The console builds the API request in process and hands it to the application with the account's principal in the
ASGI scope (`PREAUTHENTICATED`), which `run_exchange` takes instead of checking a signature. So the role gate, the
workflow's rules and the audit record are the API's own; the record's key id names the console account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from gateway.console.session import SignedIn
from gateway.pipeline.exchange import PREAUTHENTICATED


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def problem(self) -> str:
        """A refusal as one line for the page: the problem's detail, and each field's message."""
        if self.ok or not isinstance(self.body, dict):
            return "" if self.ok else f"HTTP {self.status}"
        parts = [str(self.body.get("detail") or self.body.get("title") or self.status)]
        for error in self.body.get("errors") or []:
            if isinstance(error, dict):
                parts.append(f"{error.get('field', '')}: {error.get('message', '')}")
        return "；".join(part for part in parts if part)

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


async def call_api(
    request: Request,
    who: SignedIn,
    method: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
) -> Answer:
    """Run `method path` through the application as `who`; the JSON answer (a problem on refusal)."""
    payload = b"" if body is None else orjson.dumps(body)
    params = {name: value for name, value in (query or {}).items() if value not in (None, "")}
    headers = [(b"host", (request.headers.get("host") or "localhost").encode("latin-1"))]
    if body is not None:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": request.url.scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(params, doseq=True).encode(),
        "headers": headers,
        "client": request.scope.get("client"),
        "server": request.scope.get("server"),
        "state": dict(request.scope.get("state") or {}),
        PREAUTHENTICATED: who.principal,
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    status = 500
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                response_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    raw = b"".join(chunks)
    content_type = response_headers.get("content-type", "")
    parsed: Any = orjson.loads(raw) if raw and "json" in content_type else raw
    return Answer(status, parsed, response_headers)
