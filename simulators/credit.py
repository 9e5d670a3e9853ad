"""The credit platform (信用平台) simulator: an aiohttp REST service with the platform's own pinyin-keyed JSON.

`python -m simulators.credit --host 127.0.0.1 --port 9101` runs it alone. Answers for the population are encoded
once at start, so a request costs a dict lookup: this service is the benchmark's upstream floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from schemas.uscc import is_valid_uscc
from simulators import serving
from simulators.serving import start_app

from .enterprises import ENTERPRISES, Enterprise, Listing, by_uscc
from .faults import install_faults

__all__ = ["BASE_PATH", "create_app", "main", "start_with_port"]

BASE_PATH = "/api/credit/v1"
_JSON = "application/json"

# Wire format: {"code": "0000", "message": "成功", "data": {...}}. Keys are pinyin initials, as such systems write:
# tyshxydm 统一社会信用代码, sfsx 是否失信, ajxx 案件信息, zxfy 执行法院, ah 案号, lasj 立案时间, zxbd 执行标的,
# yw 义务, lxqk 履行情况; sflr 是否列入, jyycxx 经营异常信息, yzwfxx 严重违法信息, lryy 列入原因, lrrq 列入日期,
# jdjg 决定机关.


def _envelope(data: dict[str, Any]) -> bytes:
    return orjson.dumps({"code": "0000", "message": "成功", "data": data})


def _dishonest(uscc: str, enterprise: Enterprise | None) -> dict[str, Any]:
    cases = enterprise.dishonest_cases if enterprise else ()
    return {
        "tyshxydm": uscc,
        "sfsx": "1" if cases else "0",
        "ajxx": [
            {
                "zxfy": case.court,
                "ah": case.case_number,
                "lasj": case.filed_on.isoformat(),
                "zxbd": str(case.amount),  # a string on the wire: the platform never sends money as a number
                "yw": case.obligation,
                "lxqk": case.performance,
            }
            for case in cases
        ],
    }


def _listing(attribute: str, wire_key: str) -> Callable[[str, Enterprise | None], dict[str, Any]]:
    def encode(uscc: str, enterprise: Enterprise | None) -> dict[str, Any]:
        listed: tuple[Listing, ...] = getattr(enterprise, attribute) if enterprise else ()
        return {
            "tyshxydm": uscc,
            "sflr": "1" if listed else "0",
            wire_key: [
                {"lryy": entry.reason, "lrrq": entry.listed_on.isoformat(), "jdjg": entry.authority} for entry in listed
            ],
        }

    return encode


_ENCODERS: dict[str, Callable[[str, Enterprise | None], dict[str, Any]]] = {
    "dishonest-debtors": _dishonest,
    "abnormal-operations": _listing("abnormal_operations", "jyycxx"),
    "serious-violations": _listing("serious_violations", "yzwfxx"),
}

_MISSING = orjson.dumps({"code": "4000", "message": "缺少参数 tyshxydm"})
_BAD_USCC = orjson.dumps({"code": "4001", "message": "统一社会信用代码格式错误"})


def _endpoint(encode: Callable[[str, Enterprise | None], dict[str, Any]]) -> Callable[..., Any]:
    known = {enterprise.uscc: _envelope(encode(enterprise.uscc, enterprise)) for enterprise in ENTERPRISES}

    async def handle(request: web.Request) -> web.Response:
        uscc = request.query.get("tyshxydm")
        if not uscc:
            return web.Response(body=_MISSING, status=400, content_type=_JSON)
        body = known.get(uscc)
        if body is None:
            if not is_valid_uscc(uscc):
                return web.Response(body=_BAD_USCC, status=400, content_type=_JSON)
            # A code of the register, or a valid code the platform has no record of: that one is simply not listed
            # (the platform cannot tell it is unknown).
            body = _envelope(encode(uscc, by_uscc(uscc)))
        return web.Response(body=body, content_type=_JSON)

    return handle


_BULK_MAX = 1000
_BAD_BULK = orjson.dumps({"code": "4002", "message": f"tyshxydm 须为 1 至 {_BULK_MAX} 个统一社会信用代码的列表"})


def _bulk_endpoint(encode: Callable[[str, Enterprise | None], dict[str, Any]]) -> Callable[..., Any]:
    """POST {"tyshxydm": [...]}: up to 1,000 codes in one request, the answers in the same order."""

    async def handle(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.Response(body=_BAD_BULK, status=400, content_type=_JSON)
        codes = body.get("tyshxydm") if isinstance(body, dict) else None
        if not isinstance(codes, list) or not 0 < len(codes) <= _BULK_MAX:
            return web.Response(body=_BAD_BULK, status=400, content_type=_JSON)
        if not all(isinstance(code, str) and is_valid_uscc(code) for code in codes):
            return web.Response(body=_BAD_USCC, status=400, content_type=_JSON)
        data = [encode(code, by_uscc(code)) for code in codes]
        return web.Response(body=orjson.dumps({"code": "0000", "message": "成功", "data": data}), content_type=_JSON)

    return handle


def create_app() -> web.Application:
    """The credit platform as an aiohttp application, with the fault-injection middleware and routes."""
    app = web.Application()
    install_faults(app)
    for name, encode in _ENCODERS.items():
        app.router.add_get(f"{BASE_PATH}/{name}", _endpoint(encode))
        app.router.add_post(f"{BASE_PATH}/{name}/batch-query", _bulk_endpoint(encode))
    return app


async def start_with_port(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve the simulator; return its runner and the port it bound (useful with port 0)."""
    return await start_app(create_app(), host, port)


def main(argv: list[str] | None = None) -> None:
    serving.main(
        argv,
        module="credit",
        description=__doc__.splitlines()[0],
        default_port=9101,
        start_with_port=start_with_port,
        banner=lambda host, port: f"credit simulator listening on http://{host}:{port}{BASE_PATH}",
    )


if __name__ == "__main__":
    main()
