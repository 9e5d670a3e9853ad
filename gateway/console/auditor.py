"""Security officer (审计管理员) pages: audit search with cursor paging, a record's metadata, opening a payload with a
reason (masked unless asked), per-node chain status and verify now, export of a period, and charts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy import func, select

from gateway.api.audit import record_out
from gateway.api.deps import EngineDep
from gateway.audit.rows import AUDIT_TABLE, CHECKPOINT_TABLE, chain_ids
from gateway.audit.search import AuditQuery, search_records
from gateway.batches.tables import BatchJob
from gateway.console.charts import Bar, bars, stacked_hours
from gateway.console.session import audit_event, state_of
from gateway.console.twin import call_api
from gateway.console.web import as_list, guard, is_htmx, posted, render, router
from schemas.audit import AuditSearchParams
from schemas.times import BEIJING
from security.masking import mask_bank_account, mask_id_number, mask_phone

AUDITOR = "auditor"
SEARCH_FIELDS = ("from", "to", "caller", "department", "service", "operation", "purpose", "decision", "code")
SEARCH_FIELDS += ("subject", "event")
CATEGORIES = {
    "complaint": "投诉 complaint",
    "inspection": "检查 inspection",
    "incident": "事件处置 incident",
    "court_order": "司法 court order",
    "other": "其他 other",
}
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
# ID numbers, mobile phones and bank accounts: what an officer does not see unless asking for it.
MASKS = (
    (
        re.compile(
            _EDGE_BEFORE
            + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
            + _EDGE_AFTER
        ),
        mask_id_number,
    ),
    (re.compile(_EDGE_BEFORE + r"1[3-9]\d{9}" + _EDGE_AFTER), mask_phone),
    (re.compile(_EDGE_BEFORE + r"\d{12,19}" + _EDGE_AFTER), mask_bank_account),
)


def mask_personal(value: Any) -> Any:
    """The document with ID numbers, phone numbers and bank account numbers masked wherever they appear."""
    if isinstance(value, dict):
        return {key: mask_personal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_personal(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) >= 11:
        masked = mask_personal(str(value))
        return masked if masked != str(value) else value
    if isinstance(value, str):
        for pattern, mask in MASKS:
            value = pattern.sub(lambda match, mask=mask: mask(match.group(0)), value)
    return value


def _query(params: dict[str, Any]) -> dict[str, Any]:
    query = {name: params.get(name) for name in SEARCH_FIELDS if params.get(name)}
    for name in ("from", "to"):
        if name in query and "T" in query[name] and len(query[name]) == 16:
            query[name] = query[name] + ":00"  # datetime-local gives minutes; the API reads it as Beijing time
    return query


@router.get("/audit")
async def search(request: Request) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    params = dict(request.query_params)
    searched = any(params.get(name) for name in SEARCH_FIELDS) or "go" in params
    records: list[dict[str, Any]] = []
    next_cursor = None
    error = None
    if searched:
        query = _query(params)
        query["limit"] = params.get("limit") if str(params.get("limit", "")).isdigit() else 50
        if params.get("cursor"):
            query["cursor"] = params["cursor"]
        answer = await call_api(request, who, "GET", "/v1/audit/records", query=query)
        if answer.ok:
            records, next_cursor = answer.body["records"], answer.body["next_cursor"]
        else:
            error = f"检索未成功：{answer.problem}"
    more_query = {**_query(params), "go": "1", "limit": query["limit"], "cursor": next_cursor} if next_cursor else None
    template = "auditor/rows.html" if is_htmx(request) and params.get("cursor") else "auditor/search.html"
    return render(
        request,
        template,
        who,
        params=params,
        records=records,
        searched=searched,
        more_query=more_query,
        error=error,
    )


async def _record(request: Request, who: Any, record_id: str, **extra: Any) -> Response:
    answer = await call_api(request, who, "GET", f"/v1/audit/records/{record_id}")
    if not answer.ok:
        return render(request, "forbidden.html", who, status=answer.status, message=answer.problem)
    status = extra.pop("status", 200)
    return render(request, "auditor/record.html", who, status=status, rec=answer.body, categories=CATEGORIES, **extra)


@router.get("/audit/records/{record_id}")
async def record(request: Request, record_id: str) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    return await _record(request, who, record_id)


@router.post("/audit/records/{record_id}/payload")
async def open_payload(request: Request, record_id: str) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    unmask = form.get("unmask") == "1"
    body = {
        "category": form.get("category"),
        "reference": (form.get("reference") or "").strip(),
        "reason": (form.get("reason") or "").strip(),
        "parts": as_list(form.get("parts")) or ["request", "response"],
    }
    answer = await call_api(request, who, "POST", f"/v1/audit/records/{record_id}/payload", body=body)
    if not answer.ok:
        return await _record(
            request, who, record_id, status=answer.status, error=f"未能查看：{answer.problem}", form=form
        )
    if unmask:
        # The reading itself is audited by the API; showing the personal data unmasked is a second, separate fact.
        await audit_event(
            request,
            "audit.payload.unmasked",
            username=who.account.username,
            principal=who.principal,
            allowed=True,
            status=200,
            target=record_id,
            detail={"reading": answer.body.get("audit_request_id"), "reason": body["reason"]},
        )
    shown = {part: answer.body.get(part) for part in ("request", "response") if answer.body.get(part) is not None}
    if not unmask:
        shown = mask_personal(shown)
    pretty = {part: orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() for part, value in shown.items()}
    return await _record(request, who, record_id, payload=pretty, unmasked=unmask, reading=answer.body)


# --- chains -----------------------------------------------------------------------------------------------------


async def _chain_status(engine: Any) -> list[dict[str, Any]]:
    chains = []
    async with engine.connect() as connection:
        for chain_id in await chain_ids(engine):
            height = await connection.scalar(
                select(func.max(AUDIT_TABLE.c.height)).where(AUDIT_TABLE.c.chain_id == chain_id)
            )
            last = (
                await connection.execute(
                    select(CHECKPOINT_TABLE)
                    .where(CHECKPOINT_TABLE.c.chain_id == chain_id)
                    .order_by(CHECKPOINT_TABLE.c.height.desc())
                    .limit(1)
                )
            ).first()
            chains.append(
                {
                    "chain_id": chain_id,
                    "height": height,
                    "checkpoint_height": last.height if last else None,
                    "checkpoint_time": _time(last.ts_ms) if last else None,
                    "checkpoint_key": last.key_id if last else None,
                }
            )
    return chains


def _time(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


@router.get("/audit/chains")
async def chains(request: Request, engine: EngineDep) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    status = await _chain_status(engine)
    await audit_event(
        request, "audit.chains", username=who.account.username, principal=who.principal, allowed=True, status=200
    )
    return render(request, "auditor/chains.html", who, chains=status)


@router.get("/audit/chains/verify")
async def verify_now(request: Request, engine: EngineDep, chain: str = "") -> Response:
    """Without htmx: every chain at once. With htmx: first a row per chain, each of which then asks for its own
    chain's verification, so the page fills in chain by chain as each is done (the progress)."""
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    if is_htmx(request) and not chain:
        return render(request, "auditor/verify_rows.html", who, pending=await chain_ids(engine))
    answer = await call_api(request, who, "GET", "/v1/audit/verify", query={"chain": chain or None})
    report = answer.body if answer.ok else None
    error = None if answer.ok else answer.problem
    if is_htmx(request):
        result = report["chains"][0] if report and report["chains"] else None
        return render(request, "auditor/verify_row.html", who, chain=chain, c=result, error=error)
    return render(request, "auditor/chains.html", who, report=report, error=error, chains=await _chain_status(engine))


# --- export -----------------------------------------------------------------------------------------------------


def _period(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    parsed = AuditSearchParams.model_validate({"from": value}).from_
    return parsed if parsed is not None else default


@router.get("/audit/export")
async def export_form(request: Request) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    return render(request, "auditor/export.html", who)


@router.post("/audit/export")
async def export(request: Request, engine: EngineDep) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    now = state_of(request).now()
    try:
        start = _period(form.get("from"), now - timedelta(days=1))
        end = _period(form.get("to"), now)
    except ValueError:
        return render(request, "auditor/export.html", who, status=422, error="时间格式有误 (a date or a time)")
    query = AuditQuery(from_ms=int(start.timestamp() * 1000), to_ms=int(end.timestamp() * 1000))
    lines: list[bytes] = []
    after = None
    while True:
        rows = await search_records(engine, query, after=after, limit=1000)
        lines += [orjson.dumps(record_out(row)) for row in rows]
        if len(rows) < 1000:
            break
        after = (rows[-1]["ts_ms"], rows[-1]["chain_id"], rows[-1]["height"])
    await audit_event(
        request,
        "audit.export",
        username=who.account.username,
        principal=who.principal,
        allowed=True,
        status=200,
        detail={"from": start.isoformat(), "to": end.isoformat(), "records": len(lines)},
    )
    name = f"audit-{start.astimezone(BEIJING):%Y%m%d%H%M}-{end.astimezone(BEIJING):%Y%m%d%H%M}.jsonl"
    return Response(
        b"\n".join(lines) + (b"\n" if lines else b""),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


# --- charts -----------------------------------------------------------------------------------------------------


@router.get("/audit/charts")
async def charts(request: Request, engine: EngineDep, hours: int = 24) -> Response:
    who = await guard(request, AUDITOR)
    if isinstance(who, Response):
        return who
    hours = max(1, min(hours, 24 * 14))
    now_ms = int(state_of(request).now().timestamp() * 1000)
    since = now_ms - hours * 3_600_000
    table = AUDIT_TABLE
    window = table.c.ts_ms >= since
    exchanges = table.c.event == "service.invoke"
    async with engine.connect() as connection:
        hour = (table.c.ts_ms // 3_600_000).label("hour")
        per_hour = await connection.execute(
            select(hour, table.c.decision, func.count()).where(window, exchanges).group_by(hour, table.c.decision)
        )
        codes = await connection.execute(
            select(table.c.reason_code, func.count())
            .where(window, table.c.decision == "refused", table.c.reason_code.is_not(None))
            .group_by(table.c.reason_code)
            .order_by(func.count().desc())
            .limit(10)
        )
        callers = await connection.execute(
            select(table.c.caller_id, func.count())
            .where(window, exchanges, table.c.caller_id.is_not(None))
            .group_by(table.c.caller_id)
            .order_by(func.count().desc())
            .limit(10)
        )
        purposes = await connection.execute(
            select(table.c.purpose, func.count())
            .where(window, exchanges, table.c.purpose.is_not(None))
            .group_by(table.c.purpose)
            .order_by(func.count().desc())
            .limit(10)
        )
        jobs = BatchJob.__table__
        batches = await connection.execute(
            select(jobs.c.state, func.count(), func.sum(jobs.c.total))
            .where(jobs.c.created_at >= datetime.fromtimestamp(since / 1000, UTC))
            .group_by(jobs.c.state)
        )
        batch_rows = batches.all()
        hour_rows, code_rows, caller_rows, purpose_rows = (
            per_hour.all(),
            codes.all(),
            callers.all(),
            purposes.all(),
        )
    first_hour = since // 3_600_000 + 1
    labels = [datetime.fromtimestamp((first_hour + i) * 3600, BEIJING).strftime("%m-%d %H时") for i in range(hours)]
    series: dict[str, list[int]] = {name: [0] * hours for name in ("allowed", "refused", "failed")}
    for bucket, decision, count in hour_rows:
        index = int(bucket) - first_hour
        if 0 <= index < hours and decision in series:
            series[decision][index] += count
    await audit_event(
        request, "audit.charts", username=who.account.username, principal=who.principal, allowed=True, status=200
    )
    # The SVG is built by charts.py, which escapes every label and title it writes.
    svg = {
        "hours": stacked_hours(f"最近 {hours} 小时每小时交换量（按决定）", labels, series),
        "codes": bars("拒绝原因代码 refusals by code", [Bar(str(c), n) for c, n in code_rows], colour="#b3261e"),
        "callers": bars("调用最多的调用方 top callers", [Bar(str(c), n) for c, n in caller_rows]),
        "batches": bars(
            "批量比对任务（按状态） batch jobs by state",
            [Bar(f"{state}（{int(subjects or 0)} 户）", count) for state, count, subjects in batch_rows],
            colour="#6a3d9a",
        ),
        "purposes": bars("调用最多的用途 top purposes", [Bar(str(p), n) for p, n in purpose_rows], colour="#2e7d4f"),
    }
    figures = {name: Markup(text) for name, text in svg.items()}  # noqa: S704
    totals = {name: sum(values) for name, values in series.items()}
    return render(request, "auditor/charts.html", who, figures=figures, hours=hours, totals=totals)
