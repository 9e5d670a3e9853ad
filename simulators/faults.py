"""Fault injection shared by every simulator: a plan set over HTTP, applied by an aiohttp middleware.

`POST /_sim/faults` sets the plan, `DELETE /_sim/faults` clears it, `GET /_sim/stats` counts business requests
(every request outside `/_sim/`, faulted or not), so a test can inject a failure and count the retries it causes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = ["FAULT_MODES", "Fault", "FaultPlan", "current_fault", "install_faults"]

# latency: answer late; status: answer with an HTTP error; malformed: answer with a cut-off body;
# drop: close the connection without an answer; soap_fault: only recorded, a SOAP simulator answers with a Fault.
FAULT_MODES = ("latency", "status", "malformed", "drop", "soap_fault")
CONTROL_PREFIX = "/_sim/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Fault:
    mode: str
    latency_ms: int = 0
    status: int = 500

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "latency_ms": self.latency_ms, "status": self.status}


class FaultPlan:
    """The fault to inject into the next `count` business requests (all of them while `count` is None)."""

    def __init__(self) -> None:
        self.fault: Fault | None = None
        self.remaining: int | None = None
        self.requests = 0

    def set(self, fault: Fault, count: int | None = None) -> None:
        self.fault = fault
        self.remaining = count

    def clear(self) -> None:
        self.fault = None
        self.remaining = None

    def take(self) -> Fault | None:
        """Count one business request and return the fault it suffers, if any."""
        self.requests += 1
        fault = self.fault
        if fault is not None and self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.clear()
        return fault

    def as_json(self) -> dict[str, Any]:
        if self.fault is None:
            return {"mode": None, "count": None}
        return {**self.fault.as_json(), "count": self.remaining}

    @classmethod
    def parse(cls, body: Any) -> tuple[Fault, int | None]:
        """Read a `POST /_sim/faults` body; raise ValueError saying what is wrong with it."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(body) - {"mode", "latency_ms", "status", "count"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        mode = body.get("mode")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        latency_ms = _int(body, "latency_ms", 0, 0, 600_000)
        status = _int(body, "status", 500, 100, 599)
        count = body.get("count")
        if count is not None:
            count = _int(body, "count", 1, 1, 1_000_000)
        return Fault(mode, latency_ms, status), count


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high}")
    return value


_PLAN_KEY = web.AppKey("fault_plan", FaultPlan)
# A context variable rather than request storage: aiohttp serves a connection's requests one after another in
# one task, and the middleware sets it afresh for every request.
_CURRENT: ContextVar[Fault | None] = ContextVar("simulator_fault", default=None)


def current_fault() -> Fault | None:
    """The fault drawn for the request being handled; handlers act on the modes left to them (soap_fault)."""
    return _CURRENT.get()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _plan(request: web.Request) -> FaultPlan:
    return request.app[_PLAN_KEY]


async def _set_faults(request: web.Request) -> web.Response:
    try:
        fault, count = FaultPlan.parse(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _json({"error": str(exc)}, status=400)
    plan = _plan(request)
    plan.set(fault, count)
    return _json(plan.as_json())


async def _clear_faults(request: web.Request) -> web.Response:
    plan = _plan(request)
    plan.clear()
    return _json(plan.as_json())


async def _get_faults(request: web.Request) -> web.Response:
    return _json(_plan(request).as_json())


async def _stats(request: web.Request) -> web.Response:
    return _json({"requests": _plan(request).requests})


def _cut(body: bytes) -> bytes:
    # Half a document, then a byte no JSON or XML parser accepts there: truncated and corrupt at once.
    return body[: len(body) // 2] + b"\x00<<"


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    fault = _plan(request).take()
    _CURRENT.set(fault)
    if fault is None:
        return await handler(request)
    if fault.mode == "latency":
        await asyncio.sleep(fault.latency_ms / 1000)
    elif fault.mode == "status":
        return _json({"error": "injected fault", "status": fault.status}, status=fault.status)
    elif fault.mode == "drop":
        # Abort (RST) without a byte of answer, as a crashed upstream or a cut network would.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    response = await handler(request)
    if fault.mode == "malformed" and isinstance(response, web.Response) and response.body is not None:
        response.body = _cut(bytes(response.body))  # type: ignore[arg-type]
    return response


def install_faults(app: web.Application) -> FaultPlan:
    """Add the fault middleware and the `/_sim/` control routes to `app`; return its plan.

    Call before the application starts; the middleware goes first, so it sees every request.
    """
    plan = FaultPlan()
    app[_PLAN_KEY] = plan
    app.middlewares.insert(0, _fault_middleware)
    app.router.add_post("/_sim/faults", _set_faults)
    app.router.add_delete("/_sim/faults", _clear_faults)
    app.router.add_get("/_sim/faults", _get_faults)
    app.router.add_get("/_sim/stats", _stats)
    return plan
