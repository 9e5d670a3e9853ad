"""The treasury (国库集中支付) simulator: GBK XML over HTTP, vouchers kept durably in its own SQLite file.

`python -m simulators.treasury --data-dir var/simulators` runs it alone. A VoucherNo is paid once, ever: a second
voucher with the same number is refused with the treasury's own code 3001, also after a restart. The file survives
a crash of the gateway (and of the simulator: every acceptance is committed with synchronous=FULL before answering).

Wire format (what a treasury front-end system exchanges; elements as in the 5201 voucher):
  POST /tcbs/v1/vouchers         <MOF><Voucher>AdmDivCode … PayAmt <DetailList><Detail>…</Detail>…</Voucher></MOF>
  POST /tcbs/v1/vouchers/status  <MOF><VoucherNo>…</VoucherNo></MOF>
Answers are <MOF><RetCode>0000</RetCode><RetMsg>…</RetMsg>…</MOF>, HTTP 200 for every business answer.
RetCode: 0000 ok, 1001 malformed message, 1002 a field is invalid, 2001 PayAmt is not the sum of the lines,
2002 more than one AgencyCode, 2003 budget exhausted, 3001 VoucherNo already accepted (凭证号重复),
4004 no such voucher.

Test controls (JSON): GET /_sim/treasury/vouchers lists what was accepted and counts every submission;
POST /_sim/treasury/hold {"mode": "hold"|"drop", "count": n, "seconds": s} makes the next n accepted vouchers
commit and then answer s seconds late ("hold") or lose the connection ("drop"): the answer lost after acceptance;
{"mode": "refuse", "count": n} refuses the next n valid vouchers with 2003 (预算指标不足, budget exhausted).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import xml.etree.ElementTree as StdET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import orjson
from aiohttp import web
from defusedxml import DefusedXmlException

from simulators.serving import run, run_until_signalled, start_app

from .faults import install_faults

__all__ = ["BASE_PATH", "DB_NAME", "TreasuryStore", "create_app", "main", "start", "start_with_port"]

BASE_PATH = "/tcbs/v1"
DB_NAME = "treasury.sqlite3"
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
MAX_BODY = 256 * 1024
_XML_CONTENT_TYPE = "text/xml"
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,15})\.[0-9]{2}$")
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding=[\"']([A-Za-z0-9_-]+)[\"'][^>]*\?>")

HEADER_FIELDS = (
    "AdmDivCode",
    "StYear",
    "VtCode",
    "VouDate",
    "VoucherNo",
    "TreCode",
    "FinOrgCode",
    "FundType",
    "PayType",
    "PayeeAcctNo",
    "PayeeAcctName",
    "PayeeAcctBankName",
    "PayeeAcctBankNo",
    "PayAcctNo",
    "PayAcctName",
    "PayAcctBankName",
    "PaySummaryName",
    "PayAmt",
)
DETAIL_FIELDS = ("BgtTypeCode", "ProCatCode", "AgencyCode", "AgencyName", "ExpFuncCode", "ExpEcoCode", "PayAmt")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vouchers (
    voucher_no TEXT PRIMARY KEY,
    adm_div_code TEXT NOT NULL,
    st_year TEXT NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    pay_amt TEXT NOT NULL,
    payee_acct_no TEXT NOT NULL,
    payee_acct_name TEXT NOT NULL,
    agency_code TEXT NOT NULL,
    status TEXT NOT NULL,
    accepted_at TEXT NOT NULL,
    paid_at TEXT,
    document BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    voucher_no TEXT,
    ret_code TEXT NOT NULL,
    received_at TEXT NOT NULL
);
"""


class Refusal(Exception):
    """A voucher the treasury refuses, with its own return code."""

    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Accepted:
    voucher_no: str
    serial: str
    pay_amt: str
    accepted_at: datetime


class TreasuryStore:
    """The vouchers the treasury accepted, in SQLite. VoucherNo is the primary key: the one rule that matters."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection used from the event loop only; aiohttp handlers run one at a time between awaits.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def record_submission(self, voucher_no: str | None, code: str) -> None:
        self._db.execute(
            "INSERT INTO submissions (voucher_no, ret_code, received_at) VALUES (?, ?, ?)",
            (voucher_no, code, _now().isoformat()),
        )

    def accept(self, header: dict[str, str], agency_code: str, document: bytes) -> Accepted:
        now = _now()
        voucher_no = header["VoucherNo"]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            count = self._db.execute("SELECT COUNT(*) FROM vouchers").fetchone()[0]
            serial = f"TRE{now:%Y%m%d}{count + 1:08d}"
            self._db.execute(
                "INSERT INTO vouchers (voucher_no, adm_div_code, st_year, serial, pay_amt, payee_acct_no,"
                " payee_acct_name, agency_code, status, accepted_at, paid_at, document)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'paid', ?, ?, ?)",
                (
                    voucher_no,
                    header["AdmDivCode"],
                    header["StYear"],
                    serial,
                    header["PayAmt"],
                    header["PayeeAcctNo"],
                    header["PayeeAcctName"],
                    agency_code,
                    now.isoformat(),
                    now.isoformat(),
                    document,
                ),
            )
            self._db.execute(
                "INSERT INTO submissions (voucher_no, ret_code, received_at) VALUES (?, '0000', ?)",
                (voucher_no, now.isoformat()),
            )
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise Refusal("3001", f"凭证号重复: VoucherNo {voucher_no} 已接收, 不得重复支付") from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return Accepted(voucher_no, serial, header["PayAmt"], now)

    def status(self, voucher_no: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT voucher_no, serial, pay_amt, status, accepted_at, paid_at FROM vouchers WHERE voucher_no = ?",
            (voucher_no,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("voucher_no", "serial", "pay_amt", "status", "accepted_at", "paid_at"), row, strict=True))

    def listing(self) -> dict[str, Any]:
        vouchers = [
            dict(zip(("voucher_no", "pay_amt", "payee_acct_name", "serial", "status"), row, strict=True))
            for row in self._db.execute(
                "SELECT voucher_no, pay_amt, payee_acct_name, serial, status FROM vouchers ORDER BY serial"
            )
        ]
        counts = dict(self._db.execute("SELECT ret_code, COUNT(*) FROM submissions GROUP BY ret_code").fetchall())
        per_voucher = dict(
            self._db.execute(
                "SELECT voucher_no, COUNT(*) FROM submissions WHERE voucher_no IS NOT NULL GROUP BY voucher_no"
            ).fetchall()
        )
        return {
            "vouchers": vouchers,
            "accepted": len(vouchers),
            "submissions": sum(counts.values()),
            "by_code": counts,
            "submissions_per_voucher": per_voucher,
        }


def _now() -> datetime:
    return datetime.now(CHINA).replace(microsecond=0)


# -- wire format --------------------------------------------------------------------------------------------------


def parse_message(raw: bytes) -> StdET.Element:
    """GBK XML to an element, safely: bounded size, no DTD, no entities (defusedxml)."""
    if len(raw) > MAX_BODY:
        raise Refusal("1001", f"报文过大: more than {MAX_BODY} bytes", 413)
    match = _DECLARATION.match(raw)
    encoding = match.group(1).decode().lower() if match else "gbk"
    if encoding not in ("gbk", "gb2312", "gb18030"):
        raise Refusal("1001", f"报文编码应为 GBK, 收到 {encoding}", 400)
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        raise Refusal("1001", "报文不是有效的 GBK 编码", 400) from None
    if match:
        text = text[len(match.group(0).decode("ascii", "replace")) :]
    try:
        return SafeET.fromstring(text, forbid_dtd=True)
    except (StdET.ParseError, DefusedXmlException) as exc:
        raise Refusal("1001", f"报文格式错误: {type(exc).__name__}", 400) from None


def render(root: StdET.Element, status: int = 200) -> web.Response:
    body = StdET.tostring(root, encoding="GBK", xml_declaration=True)
    return web.Response(body=body, status=status, content_type=_XML_CONTENT_TYPE, charset="GBK")


def answer(code: str, message: str, status: int = 200, **fields: str) -> web.Response:
    root = StdET.Element("MOF")
    StdET.SubElement(root, "RetCode").text = code
    StdET.SubElement(root, "RetMsg").text = message
    for name, value in fields.items():
        StdET.SubElement(root, name).text = value
    return render(root, status)


def _text(parent: StdET.Element, name: str, where: str) -> str:
    element = parent.find(name)
    if element is None or element.text is None or not element.text.strip():
        raise Refusal("1002", f"{where}{name} 缺失")
    return element.text.strip()


def read_voucher(root: StdET.Element) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The header and lines of a 5201 voucher, checked the way the treasury checks them."""
    voucher = root.find("Voucher")
    if root.tag != "MOF" or voucher is None:
        raise Refusal("1001", "报文应为 <MOF><Voucher>…</Voucher></MOF>", 400)
    header = {name: _text(voucher, name, "") for name in HEADER_FIELDS}
    if header["VtCode"] != "5201":
        raise Refusal("1002", f"VtCode 应为 5201, 收到 {header['VtCode']}")
    details = voucher.find("DetailList")
    lines = [] if details is None else details.findall("Detail")
    if not lines:
        raise Refusal("1002", "DetailList 至少一条明细")
    rows = [
        {name: _text(line, name, f"Detail[{index}]/") for name in DETAIL_FIELDS} for index, line in enumerate(lines)
    ]
    for where, amount in [("PayAmt", header["PayAmt"])] + [
        (f"Detail[{index}]/PayAmt", row["PayAmt"]) for index, row in enumerate(rows)
    ]:
        if not _AMOUNT.match(amount) or Decimal(amount) <= 0:
            raise Refusal("1002", f"{where} 金额格式错误: {amount!r} (应为正数, 两位小数)")
    total = sum((Decimal(row["PayAmt"]) for row in rows), Decimal("0.00"))
    if Decimal(header["PayAmt"]) != total:
        raise Refusal("2001", f"金额不符: PayAmt {header['PayAmt']} ≠ 明细合计 {total}")
    agencies = {row["AgencyCode"] for row in rows}
    if len(agencies) != 1:
        raise Refusal("2002", f"一张凭证只能有一个预算单位, 收到 {', '.join(sorted(agencies))}")
    return header, rows


# -- HTTP ---------------------------------------------------------------------------------------------------------

_STORE = web.AppKey("treasury_store", TreasuryStore)
_HOLD = web.AppKey("treasury_hold", dict)


async def submit(request: web.Request) -> web.StreamResponse:
    store = request.app[_STORE]
    raw = await request.read()
    voucher_no: str | None = None
    try:
        root = parse_message(raw)
        voucher = root.find("Voucher")
        if voucher is not None and voucher.findtext("VoucherNo"):
            voucher_no = (voucher.findtext("VoucherNo") or "").strip()
        header, rows = read_voucher(root)
        hold = request.app[_HOLD]
        if hold["mode"] == "refuse" and hold.get("count", 0) > 0:
            hold["count"] -= 1
            raise Refusal("2003", "预算指标不足: 该预算单位可用指标余额不足以支付此凭证")
        accepted = store.accept(header, rows[0]["AgencyCode"], raw)
    except Refusal as refusal:
        store.record_submission(voucher_no, refusal.code)
        return answer(
            refusal.code, refusal.message, refusal.status, **({"VoucherNo": voucher_no} if voucher_no else {})
        )
    response = answer(
        "0000",
        "接收成功",
        VoucherNo=accepted.voucher_no,
        TreSerialNo=accepted.serial,
        PayAmt=accepted.pay_amt,
        AcceptTime=f"{accepted.accepted_at:%Y%m%d%H%M%S}",
    )
    hold = request.app[_HOLD]
    if hold["mode"] in ("hold", "drop") and hold.get("count", 0) > 0:
        # The voucher is committed; the answer is what gets lost, as on a network cut after the treasury's commit.
        hold["count"] -= 1
        if hold["mode"] == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        await asyncio.sleep(hold["seconds"])
    return response


async def status(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    try:
        root = parse_message(await request.read())
        if root.tag != "MOF":
            raise Refusal("1001", "报文应为 <MOF>…</MOF>", 400)
        voucher_no = _text(root, "VoucherNo", "")
    except Refusal as refusal:
        return answer(refusal.code, refusal.message, refusal.status)
    found = store.status(voucher_no)
    if found is None:
        return answer("4004", "凭证不存在", VoucherNo=voucher_no)
    accepted_at = datetime.fromisoformat(found["accepted_at"])
    fields = {
        "VoucherNo": voucher_no,
        # 1 已接收, 2 已支付, 3 已退回
        "VoucherStatus": {"accepted": "1", "paid": "2", "returned": "3"}[found["status"]],
        "TreSerialNo": found["serial"],
        "PayAmt": found["pay_amt"],
        "AcceptTime": f"{accepted_at:%Y%m%d%H%M%S}",
    }
    if found["paid_at"]:
        fields["PayTime"] = f"{datetime.fromisoformat(found['paid_at']):%Y%m%d%H%M%S}"
    return answer("0000", "查询成功", **fields)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def vouchers(request: web.Request) -> web.Response:
    return _json(request.app[_STORE].listing())


async def set_hold(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
        mode, count, seconds = body.get("mode", "hold"), int(body.get("count", 1)), float(body.get("seconds", 0))
        if mode not in ("hold", "drop", "refuse") or not 0 < count <= 1000 or not 0 <= seconds <= 600:
            raise ValueError("mode hold|drop|refuse, count 1..1000, seconds 0..600")
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        return _json({"error": str(exc)}, 400)
    request.app[_HOLD].update(mode=mode, count=count, seconds=seconds)
    return _json(request.app[_HOLD])


async def clear_hold(request: web.Request) -> web.Response:
    request.app[_HOLD].update(mode="hold", count=0, seconds=0.0)
    return _json(request.app[_HOLD])


def create_app(data_dir: Path) -> web.Application:
    """The treasury as an aiohttp application storing vouchers in `<data_dir>/treasury.sqlite3`."""
    app = web.Application(client_max_size=MAX_BODY)
    install_faults(app)
    store = TreasuryStore(data_dir / DB_NAME)
    app[_STORE] = store
    app[_HOLD] = {"mode": "hold", "count": 0, "seconds": 0.0}
    app.router.add_post(f"{BASE_PATH}/vouchers", submit)
    app.router.add_post(f"{BASE_PATH}/vouchers/status", status)
    app.router.add_get("/_sim/treasury/vouchers", vouchers)
    app.router.add_post("/_sim/treasury/hold", set_hold)
    app.router.add_delete("/_sim/treasury/hold", clear_hold)

    async def _close(app: web.Application) -> None:
        app[_STORE].close()

    app.on_cleanup.append(_close)
    return app


def default_data_dir() -> Path:
    import os

    return Path(os.environ.get("MSJX_DATA_DIR", "var")) / "simulators"


async def start(host: str = "127.0.0.1", port: int = 0, *, data_dir: Path | None = None) -> web.AppRunner:
    """Start the simulator in the running event loop; stop it with `await runner.cleanup()`."""
    runner, _ = await start_with_port(host, port, data_dir=data_dir)
    return runner


async def start_with_port(
    host: str = "127.0.0.1", port: int = 0, *, data_dir: Path | None = None
) -> tuple[web.AppRunner, int]:
    """Serve the simulator; return its runner and the port it bound (useful with port 0)."""
    return await start_app(create_app(data_dir or default_data_dir()), host, port)


async def _serve(host: str, port: int, data_dir: Path) -> None:
    runner, bound = await start_with_port(host, port, data_dir=data_dir)
    print(f"treasury simulator listening on http://{host}:{bound}{BASE_PATH} (store {data_dir / DB_NAME})", flush=True)
    await run_until_signalled(runner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.treasury", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9104)
    parser.add_argument("--data-dir", type=Path, default=None, help="where treasury.sqlite3 lives")
    args = parser.parse_args(argv)
    run(_serve(args.host, args.port, args.data_dir or default_data_dir()))


if __name__ == "__main__":
    main()
