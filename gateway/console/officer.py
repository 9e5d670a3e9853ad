"""Department officer pages: the catalog (list, create, edit), the inbox of sharing requests with working days
left, a request's detail and history, the decisions on it, and the grants the department issued and holds.

Every read and every decision is the API's own route run as the signed-in account (gateway/console/twin.py):
the workflow's rules are never repeated here, and each action leaves the API's audit record.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from gateway.api.deps import engine_of
from gateway.console.twin import call_api
from gateway.console.web import HEADERS, as_list, guard, posted, render, router
from gateway.sharing.calendar import calendar_for
from gateway.sharing.workdays import CalendarYearUnsupported
from schemas.sharing import (
    LEGAL_BASIS_KIND_LABELS,
    LEVEL_LABELS,
    SHARE_ATTRIBUTE_LABELS,
    SHARE_METHOD_LABELS,
    STATE_LABELS,
    UPDATE_FREQUENCY_LABELS,
)
from schemas.times import china_date

DEPARTMENT = "department"
ACTIONS = {
    "approve": "同意",
    "refuse": "不予共享",
    "return": "退回补正",
    "extend": "延期",
    "revoke": "撤销",
}
DATA_TYPES = ("string", "integer", "number", "decimal", "boolean", "date", "datetime", "array", "object")
LABELS = {
    "share_attribute": SHARE_ATTRIBUTE_LABELS,
    "share_method": SHARE_METHOD_LABELS,
    "update_frequency": UPDATE_FREQUENCY_LABELS,
    "level": LEVEL_LABELS,
    "legal_basis_kind": LEGAL_BASIS_KIND_LABELS,
    "state": STATE_LABELS,
}


def working_days_left(calendar: Any, today: date, due: date | None) -> int | None:
    """Working days from today to the due day (the due day counts; negative once it has passed)."""
    if due is None:
        return None
    try:
        if due < today:
            return -sum(1 for n in range((today - due).days) if calendar.is_working_day(due + timedelta(days=n + 1)))
        return sum(1 for n in range((due - today).days) if calendar.is_working_day(today + timedelta(days=n + 1)))
    except CalendarYearUnsupported:
        return None


async def _inbox_rows(request: Request, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    calendar = await calendar_for(engine_of(request))
    today = china_date(request.app.state.sharing.now())
    for entry in entries:
        due = date.fromisoformat(entry["due_date"]) if entry.get("due_date") else None
        open_ = entry["state"] == "submitted"
        entry["days_left"] = working_days_left(calendar, today, due) if open_ else None
    return entries


@router.get("/requests")
async def inbox(request: Request, state: str = "", box: str = "incoming") -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    answer = await call_api(request, who, "GET", "/v1/sharing-requests", query={"state": state or None, "limit": 500})
    entries = answer.body if answer.ok else []
    mine = who.principal.caller.department
    key = "provider_department" if box == "incoming" else "requester_department"
    rows = await _inbox_rows(request, [entry for entry in entries if entry[key] == mine])
    template = "officer/inbox_rows.html" if request.headers.get("hx-request") == "true" else "officer/inbox.html"
    return render(
        request, template, who, rows=rows, state=state, box=box, states=STATE_LABELS, error=answer.problem or None
    )


async def _detail(request: Request, who: Any, request_id: str, **extra: Any) -> Response:
    answer = await call_api(request, who, "GET", f"/v1/sharing-requests/{request_id}")
    if not answer.ok:
        return render(request, "forbidden.html", who, status=answer.status, message=answer.problem)
    item = await call_api(request, who, "GET", f"/v1/catalog/{answer.body['item_id']}")
    out = answer.body
    rows = await _inbox_rows(request, [dict(out)])
    status = extra.pop("status", 200)
    return render(
        request,
        "officer/detail.html",
        who,
        status=status,
        r=out,
        item=item.body if item.ok else None,
        days_left=rows[0]["days_left"],
        provider=out["provider_department"] == who.principal.caller.department,
        labels=LABELS,
        **extra,
    )


@router.get("/requests/{request_id}")
async def detail(request: Request, request_id: str, done: str = "") -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    flash = f"已{ACTIONS[done]} (done: {done})" if done in ACTIONS else None
    return await _detail(request, who, request_id, flash=flash)


def _text(form: dict[str, Any], name: str) -> str | None:
    value = form.get(name)
    value = value.strip() if isinstance(value, str) else None
    return value or None


def _lines(form: dict[str, Any], name: str) -> list[str]:
    return [line.strip() for line in (_text(form, name) or "").splitlines() if line.strip()]


def _day_end(value: str | None) -> str | None:
    """A date field as the API takes it: a date alone is Beijing time (the end of that day is the API's rule)."""
    return value or None


def _whole(form: dict[str, Any], name: str) -> int | str | None:
    """A number field as the API takes it: an integer when it is one, else the text, which the API refuses naming
    the field (it takes JSON integers only)."""
    text = _text(form, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def decision_body(action: str, form: dict[str, Any]) -> dict[str, Any]:
    """The API body of a decision, from the decision form. Values are passed as typed (numbers as numbers): the API
    validates them."""
    if action == "approve":
        body: dict[str, Any] = {}
        fields = as_list(form.get("fields"))
        if fields:
            body["fields"] = fields
        if _text(form, "daily_quota"):
            body["daily_quota"] = _whole(form, "daily_quota")
        for name in ("rate_limit", "note"):
            if _text(form, name):
                body[name] = _text(form, name)
        if _text(form, "valid_to"):
            body["valid_to"] = _day_end(_text(form, "valid_to"))
        return body
    if action == "refuse":
        body = {"reasons": _lines(form, "reasons")}
        ground = _text(form, "ground")
        if ground == "legal_basis":
            body["legal_basis"] = {
                "kind": _text(form, "basis_kind"),
                "title": _text(form, "basis_title"),
                "article": _text(form, "basis_article"),
            }
        elif ground == "condition":
            body["condition_not_met"] = {
                "condition": _text(form, "condition"),
                "explanation": _text(form, "condition_explanation"),
            }
        return body
    if action == "return":
        missing = []
        for line in _lines(form, "missing"):
            item, _, reason = line.replace("：", ":").partition(":")
            missing.append({"item": item.strip(), "reason": reason.strip() or item.strip()})
        body = {"missing": missing}
        if _text(form, "note"):
            body["note"] = _text(form, "note")
        return body
    if action == "extend":
        return {"working_days": _whole(form, "working_days"), "reason": _text(form, "reason")}
    return {"reason": _text(form, "reason")}


@router.post("/requests/{request_id}/{action}")
async def decide(request: Request, request_id: str, action: str) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    if action not in ACTIONS:
        return render(request, "forbidden.html", who, status=404, message=f"未知操作 {action} (unknown action)")
    body = decision_body(action, form)
    answer = await call_api(request, who, "POST", f"/v1/sharing-requests/{request_id}/{action}", body=body)
    if answer.ok:
        return RedirectResponse(f"/console/requests/{request_id}?done={action}", status_code=303, headers=HEADERS)
    return await _detail(
        request, who, request_id, status=answer.status, error=f"{ACTIONS[action]}未成功：{answer.problem}", form=form
    )


# --- grants -----------------------------------------------------------------------------------------------------


@router.get("/grants")
async def grants(request: Request) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    answer = await call_api(request, who, "GET", "/v1/grants")
    found = answer.body if answer.ok else []
    mine = who.principal.caller.department
    return render(
        request,
        "officer/grants.html",
        who,
        held=[grant for grant in found if grant["department"] == mine],
        issued=[grant for grant in found if grant["department"] != mine],
        error=answer.problem or None,
    )


# --- catalog ----------------------------------------------------------------------------------------------------


@router.get("/catalog")
async def catalog(request: Request, done: str = "") -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    answer = await call_api(request, who, "GET", "/v1/catalog")
    items = answer.body.get("items", []) if answer.ok else []
    mine = who.principal.caller.department
    return render(
        request,
        "officer/catalog.html",
        who,
        items=items,
        mine=mine,
        labels=LABELS,
        flash="已保存 (saved)" if done else None,
        error=answer.problem or None,  # an empty list would read as "no items" while the database is away
    )


def _item_form_values(item: dict[str, Any] | None) -> dict[str, Any]:
    if item is None:
        return {"share_attribute": "conditional", "share_method": "api", "update_frequency": "daily", "data_items": ""}
    values = dict(item)
    values["data_items"] = "\n".join(
        f"{entry['name']}|{entry['title']}|{entry['type']}|{entry['level']}" for entry in item.get("data_items", [])
    )
    values.update(
        {
            "conditions_scope": (item.get("conditions") or {}).get("scope", ""),
            "conditions_purpose": (item.get("conditions") or {}).get("purpose", ""),
            "basis_kind": (item.get("legal_basis") or {}).get("kind", ""),
            "basis_title": (item.get("legal_basis") or {}).get("title", ""),
            "basis_article": (item.get("legal_basis") or {}).get("article", ""),
        }
    )
    return values


def item_body(form: dict[str, Any], *, new: bool) -> dict[str, Any]:
    """The catalog API body from the item form; data items are one a line: name|title|type|level."""
    data_items = []
    for line in _lines(form, "data_items"):
        parts = [part.strip() for part in line.split("|")]
        parts += [""] * (4 - len(parts))
        data_items.append(
            {"name": parts[0], "title": parts[1], "type": parts[2] or "string", "level": parts[3] or "general"}
        )
    body: dict[str, Any] = {
        "name": _text(form, "name"),
        "description": _text(form, "description"),
        "data_items": data_items,
        "service": _text(form, "service"),
        "operation": _text(form, "operation"),
        "share_attribute": _text(form, "share_attribute"),
        "share_method": _text(form, "share_method"),
        "update_frequency": _text(form, "update_frequency"),
    }
    if new:
        body["code"] = _text(form, "code")
    attribute = body["share_attribute"]
    body["conditions"] = (
        {"scope": _text(form, "conditions_scope"), "purpose": _text(form, "conditions_purpose")}
        if attribute == "conditional"
        else None
    )
    body["legal_basis"] = (
        {
            "kind": _text(form, "basis_kind"),
            "title": _text(form, "basis_title"),
            "article": _text(form, "basis_article"),
        }
        if attribute == "not_shared"
        else None
    )
    return {name: value for name, value in body.items() if value is not None}


def _item_page(
    request: Request, who: Any, values: dict[str, Any], new: bool, status: int = 200, error: str | None = None
) -> Response:
    return render(
        request,
        "officer/item_form.html",
        who,
        status=status,
        v=values,
        new=new,
        labels=LABELS,
        data_types=DATA_TYPES,
        error=error,
    )


@router.get("/catalog/new")
async def new_item(request: Request) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    return _item_page(request, who, _item_form_values(None), True)


@router.post("/catalog/new")
async def create_item(request: Request) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    answer = await call_api(request, who, "POST", "/v1/catalog", body=item_body(form, new=True))
    if answer.ok:
        return RedirectResponse("/console/catalog?done=1", status_code=303, headers=HEADERS)
    return _item_page(request, who, form, True, answer.status, f"未保存：{answer.problem}")


@router.get("/catalog/{item_id}/edit")
async def edit_item(request: Request, item_id: str) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    answer = await call_api(request, who, "GET", f"/v1/catalog/{item_id}")
    if not answer.ok:
        return render(request, "forbidden.html", who, status=answer.status, message=answer.problem)
    return _item_page(request, who, _item_form_values(answer.body), False)


@router.post("/catalog/{item_id}/edit")
async def update_item(request: Request, item_id: str) -> Response:
    who = await guard(request, DEPARTMENT)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    answer = await call_api(request, who, "PATCH", f"/v1/catalog/{item_id}", body=item_body(form, new=False))
    if answer.ok:
        return RedirectResponse("/console/catalog?done=1", status_code=303, headers=HEADERS)
    form["item_id"] = item_id
    return _item_page(request, who, form, False, answer.status, f"未保存：{answer.problem}")
