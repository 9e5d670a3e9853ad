"""Operator (系统管理员) pages: upstreams with breaker state and latency, registering one from an uploaded WSDL or
OpenAPI file, callers and their keys, readiness and the calendar years. Never audit payloads (三员分立)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile

from gateway import metrics
from gateway.api.deps import AdaptersDep, BreakersDep
from gateway.console.twin import call_api
from gateway.console.web import HEADERS, guard, posted, render, router

OPERATOR = "operator"
MAX_CONTRACT_BYTES = 1 << 20


def as_list_of_files(value: Any) -> list[UploadFile]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, UploadFile)]


def quantile(service: str, q: float) -> float | None:
    """The q-quantile of this process's upstream latency for `service`, in ms, from the Prometheus histogram's
    buckets (the upper bound of the bucket it falls in); None before any call."""
    buckets: list[tuple[float, float]] = []
    for family in metrics.UPSTREAM.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("service") == service:
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound * 1000 if bound != float("inf") else None
    return None


@router.get("/upstreams")
async def upstreams(request: Request, adapters: AdaptersDep, breakers: BreakersDep, done: str = "") -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    registered = await call_api(request, who, "GET", "/v1/upstreams")
    by_name = {entry["name"]: entry for entry in (registered.body if registered.ok else [])}
    rows = []
    for name in sorted(adapters):
        try:
            snapshot = await breakers.snapshot(name)
            breaker = snapshot.state
        except Exception as exc:  # Redis down: the page still shows the rest
            breaker = f"unknown ({type(exc).__name__})"
        p50, p99 = quantile(name, 0.5), quantile(name, 0.99)
        rows.append(
            {
                "name": name,
                "registered": by_name.get(name),
                "breaker": breaker,
                "health": {"closed": "正常 healthy", "half_open": "试探 probing", "open": "熔断 open"}.get(
                    breaker, breaker
                ),
                "owner": (by_name.get(name) or {}).get("owner_department")
                or getattr(adapters[name], "provider_department", None)
                or "",
                "operations": len(getattr(adapters[name], "operations", {}) or {}),
                "p50": p50,
                "p99": p99,
            }
        )
    return render(
        request,
        "operator/upstreams.html",
        who,
        rows=rows,
        flash="已注册 (registered)" if done else None,
        error=None if registered.ok else registered.problem,
    )


@router.post("/upstreams")
async def register_upstream(request: Request) -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    uploads = [item for item in as_list_of_files(form.get("contract")) if item.filename]
    error = None
    body: dict[str, Any] = {}
    files: dict[str, str] = {}
    if not uploads:
        error = "请选择 WSDL 或 OpenAPI 文件 (choose a file)"
    for upload in uploads:
        data = await upload.read(MAX_CONTRACT_BYTES + 1)
        name = (upload.filename or "contract").replace("\\", "/").rsplit("/", 1)[-1]
        if len(data) > MAX_CONTRACT_BYTES:
            error = f"{name}：文件超过 1 MiB (file too large)"
            break
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            error = f"{name}：文件须为 UTF-8 文本 (the file must be UTF-8 text)"
            break
    if error is None:
        # The root document: the one named, else the WSDL or OpenAPI file among those imported by it.
        named = (form.get("root") or "").strip()
        roots = [name for name in files if name.endswith((".wsdl", ".yaml", ".yml", ".json"))]
        root = named if named in files else (roots[0] if len(roots) == 1 else next(iter(files)))
        body = {
            "name": (form.get("name") or "").strip(),
            "owner_department": (form.get("owner_department") or "").strip(),
            "kind": form.get("kind"),
            "files": files,
            "root": root,
        }
        if (form.get("endpoint") or "").strip():
            body["endpoint"] = form["endpoint"].strip()
        safe = [item.strip() for item in (form.get("safe") or "").split(",") if item.strip()]
        if safe:
            body["safe"] = safe
    if error is None:
        answer = await call_api(request, who, "POST", "/v1/upstreams", body=body)
        if answer.ok:
            return RedirectResponse("/console/upstreams?done=1", status_code=303, headers=HEADERS)
        error = f"注册未成功：{answer.problem}"
    response = await upstreams(request)
    if isinstance(response, Response) and response.status_code == 200:
        return render(request, "operator/upstreams.html", who, status=422, rows=[], error=error, form=form, failed=True)
    return response


@router.get("/callers")
async def callers(request: Request, done: str = "") -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    answer = await call_api(request, who, "GET", "/v1/callers")
    return render(
        request,
        "operator/callers.html",
        who,
        callers=answer.body if answer.ok else [],
        flash={"add": "已登记 (registered)", "key": "已添加密钥 (key added)", "revoke": "已吊销 (revoked)"}.get(done),
        error=None if answer.ok else answer.problem,
    )


async def _after(request: Request, who: Any, answer: Any, done: str) -> Response:
    if answer.ok:
        return RedirectResponse(f"/console/callers?done={done}", status_code=303, headers=HEADERS)
    listing = await call_api(request, who, "GET", "/v1/callers")
    return render(
        request,
        "operator/callers.html",
        who,
        status=answer.status,
        callers=listing.body if listing.ok else [],
        error=f"未成功：{answer.problem}",
    )


@router.post("/callers")
async def register_caller(request: Request) -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    body: dict[str, Any] = {
        "caller_id": (form.get("caller_id") or "").strip(),
        "name": (form.get("name") or "").strip(),
        "department": (form.get("department") or "").strip(),
        "roles": [form.get("role")],
    }
    if (form.get("public_key") or "").strip():
        body["keys"] = [{"key_id": (form.get("key_id") or "").strip(), "public_key": form["public_key"].strip()}]
    return await _after(request, who, await call_api(request, who, "POST", "/v1/callers", body=body), "add")


@router.post("/callers/{caller_id}/keys")
async def add_key(request: Request, caller_id: str) -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    body = {"key_id": (form.get("key_id") or "").strip(), "public_key": (form.get("public_key") or "").strip()}
    answer = await call_api(request, who, "POST", f"/v1/callers/{caller_id}/keys", body=body)
    return await _after(request, who, answer, "key")


@router.post("/callers/{caller_id}/keys/{key_id}/revoke")
async def revoke_key(request: Request, caller_id: str, key_id: str) -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    form = await posted(request, who)
    if isinstance(form, Response):
        return form
    answer = await call_api(request, who, "POST", f"/v1/callers/{caller_id}/keys/{key_id}/revoke")
    return await _after(request, who, answer, "revoke")


@router.get("/status")
async def status(request: Request) -> Response:
    who = await guard(request, OPERATOR)
    if isinstance(who, Response):
        return who
    ready = await call_api(request, who, "GET", "/readyz")
    years = await call_api(request, who, "GET", "/v1/calendar/years")
    return render(
        request,
        "operator/status.html",
        who,
        ready=ready.body if isinstance(ready.body, dict) else {},
        ready_ok=ready.ok,
        years=years.body if years.ok else None,
        error=None if years.ok else years.problem,
    )
