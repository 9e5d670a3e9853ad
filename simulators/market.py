"""The market-registration (市场监管) simulator: an aiohttp REST service with the registry's own JSON.

`python -m simulators.market --port 9103` runs it alone. `GET /api/market/v1/enterprises/{uscc}` answers
`{"status": "0", "msg": "成功", "result": {...}}` with pinyin-initial keys; the registered capital is in 万元 as the
registry writes it, the establishment date as yyyyMMdd. An unknown enterprise is HTTP 404 with the registry's code 2004.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from schemas.uscc import is_valid_uscc
from simulators import serving
from simulators.serving import start_app

from .enterprises import ENTERPRISES, Enterprise
from .faults import install_faults

__all__ = ["BASE_PATH", "NOT_FOUND", "create_app", "main", "start_with_port", "wire_record"]

BASE_PATH = "/api/market/v1"
NOT_FOUND = "2004"
_JSON = "application/json"
_TEN_THOUSAND = Decimal(10_000)

# Wire keys: tyshxydm 统一社会信用代码, qymc 企业名称, djzt 登记状态, clrq 成立日期, zczb 注册资本 (万元),
# zczbbz 注册资本币种, hydm 行业代码, xzqhdm 行政区划代码, fddbr 法定代表人 {xm 姓名, zjlx 证件类型, zjhm 证件号码,
# lxdh 联系电话}.


def wire_record(enterprise: Enterprise) -> dict[str, Any]:
    capital_wan = enterprise.registered_capital / _TEN_THOUSAND  # exact: yuan with 2 places → 万元 with 6
    person = enterprise.legal_representative
    return {
        "tyshxydm": enterprise.uscc,
        "qymc": enterprise.name,
        "djzt": enterprise.status,
        "clrq": enterprise.established_on.strftime("%Y%m%d"),
        "zczb": f"{capital_wan:.6f}",
        "zczbbz": "人民币",
        "hydm": enterprise.industry,
        "xzqhdm": enterprise.region,
        "fddbr": {"xm": person.name, "zjlx": "居民身份证", "zjhm": person.id_number, "lxdh": person.phone},
    }


def _body(status: str, message: str, result: dict[str, Any] | None = None) -> bytes:
    answer: dict[str, Any] = {"status": status, "msg": message}
    if result is not None:
        answer["result"] = result
    return orjson.dumps(answer)


_KNOWN = {enterprise.uscc: _body("0", "成功", wire_record(enterprise)) for enterprise in ENTERPRISES}
_NOT_FOUND = _body(NOT_FOUND, "未查询到该企业")
_BAD_USCC = _body("1001", "统一社会信用代码格式错误")


async def _enterprise(request: web.Request) -> web.Response:
    uscc = request.match_info["uscc"]
    body = _KNOWN.get(uscc)
    if body is not None:
        return web.Response(body=body, content_type=_JSON)
    if not is_valid_uscc(uscc):
        return web.Response(body=_BAD_USCC, status=400, content_type=_JSON)
    return web.Response(body=_NOT_FOUND, status=404, content_type=_JSON)


def create_app() -> web.Application:
    """The registry as an aiohttp application, with the fault-injection middleware and routes."""
    app = web.Application()
    install_faults(app)
    app.router.add_get(BASE_PATH + "/enterprises/{uscc}", _enterprise)
    return app


async def start_with_port(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve the simulator; return its runner and the port it bound (useful with port 0)."""
    return await start_app(create_app(), host, port)


def main(argv: list[str] | None = None) -> None:
    serving.main(
        argv,
        module="market",
        description=__doc__.splitlines()[0],
        default_port=9103,
        start_with_port=start_with_port,
        banner=lambda host, port: f"market simulator listening on http://{host}:{port}{BASE_PATH}",
    )


if __name__ == "__main__":
    main()
