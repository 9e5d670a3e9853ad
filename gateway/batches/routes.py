"""The batch API under /v1/batches: submit, status, results (streamed, resumable), cancel; each an audited exchange."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.batches.service import BatchService
from gateway.batches.subjects import parse_subjects, parse_upload
from gateway.http.json_bodies import load_body
from gateway.http.problems import Problem, validation_problem
from gateway.pipeline.exchange import Exchange, run_exchange
from schemas.batches import BatchIn
from schemas.problems import ProblemCode

router = APIRouter(prefix="/v1/batches", tags=["batches"])
PLATFORM = ("platform",)
# A million subject lines of a CSV or NDJSON upload, with room for a few columns each.
MAX_UPLOAD_BYTES = 96 << 20
# The submission's audit record keeps the start of an upload sealed (with the whole body's digest and size): the
# subjects themselves are kept sealed with the batch, until its results expire.
AUDIT_KEPT_BYTES = 64 << 10
NDJSON = "application/x-ndjson"
CSV_COLUMNS = ("line", "uscc", "service", "operation", "status", "problem", "data")


def _service(exchange: Exchange) -> BatchService:
    return exchange.request.app.state.batches


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


def _operations_from_query(request: Request) -> list[dict[str, Any]]:
    """`?operation=service/operation` (repeated) and `?params={...}`: the parameters every operation that takes them
    gets (e.g. {"year": 2025}); per-subject columns of the file override them."""
    shared: dict[str, Any] = {}
    raw = request.query_params.get("params")
    if raw is not None:
        try:
            shared = orjson.loads(raw)
        except orjson.JSONDecodeError:
            shared = None  # type: ignore[assignment]
        if not isinstance(shared, dict):
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                "params: a JSON object",
                title="Request is invalid",
                errors=[{"field": "params", "message": "a JSON object", "type": "dict_type"}],
            )
    operations = []
    for index, value in enumerate(request.query_params.getlist("operation")):
        service, _, operation = value.partition("/")
        if not service or not operation:
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                f"operation {value!r} is not service/operation",
                title="Request is invalid",
                errors=[{"field": f"operation/{index}", "message": "service/operation", "type": "operation_invalid"}],
            )
        operations.append({"service": service, "operation": operation, "params": shared, "shared": True})
    if not operations:
        raise Problem(
            ProblemCode.VALIDATION_FAILED,
            "name at least one ?operation=service/operation",
            title="Request is invalid",
            errors=[{"field": "operation", "message": "missing", "type": "missing"}],
        )
    return operations


async def _submit(exchange: Exchange) -> tuple[int, bytes]:
    service = _service(exchange)
    request = exchange.request
    media_type = _media_type(request)
    exchange.event.request_kept = AUDIT_KEPT_BYTES
    inline: list[Any] | None = None
    if media_type in ("text/csv", NDJSON):
        purpose = request.query_params.get("purpose", "")
        operations = _operations_from_query(request)
        if not purpose:
            raise Problem(
                ProblemCode.VALIDATION_FAILED,
                "purpose: the query names the purpose (?purpose=...)",
                title="Request is invalid",
                errors=[{"field": "purpose", "message": "missing", "type": "missing"}],
            )
        plain = [{"service": op["service"], "operation": op["operation"]} for op in operations]
        try:
            body = BatchIn.model_validate({"purpose": purpose, "operations": plain, "subjects": []})
        except ValidationError as exc:
            raise validation_problem(exc.errors()) from None
    elif media_type == "application/json":
        document = load_body(exchange.body)
        try:
            body = BatchIn.model_validate(document)
        except ValidationError as exc:
            raise validation_problem(exc.errors()) from None
        operations = [op.model_dump() for op in body.operations]
        inline = body.subjects
    else:
        raise Problem(
            ProblemCode.MEDIA_TYPE_UNSUPPORTED,
            f"send application/json (inline subjects), text/csv or {NDJSON}; not {media_type!r}",
        )
    exchange.event.purpose = body.purpose
    caller = exchange.principal.caller
    planned = await service.plan(caller.caller_id, body.purpose, operations)
    targets = [p.target() for p in planned]
    raw = exchange.body if inline is None else None
    if raw is not None:
        # A slice of lines at a time, other requests served in between (gateway/batches/subjects.py).
        subjects = await parse_upload(raw, media_type, targets)
    else:
        subjects = parse_subjects(inline=inline, body=raw, media_type=media_type, targets=targets)
    job = await service.create(caller.caller_id, caller.department, body.purpose, planned, subjects)
    exchange.event.target_id = job.batch_id
    exchange.response_headers["Location"] = f"/v1/batches/{job.batch_id}"
    answer = {"batch_id": job.batch_id, "state": job.state, "total": job.total, "chunks": job.chunks}
    return 202, orjson.dumps(answer)


@router.post(
    "",
    status_code=202,
    summary="Submit a batch comparison (数据比对)",
    description="Run every operation for every subject under the caller's grants for `purpose`, whose share method"
    " must allow `batch`. Subjects inline (application/json, up to 1,000), or as a body of `text/csv` (a header"
    f" line naming `uscc` and any per-subject parameters such as `year`) or `{NDJSON}` (one object a line), up to"
    " 1,000,000 lines, with `?purpose=P&operation=service/operation` (repeatable) in the query. Every line is"
    " checked before anything runs: one 422 `subjects_invalid` lists each bad line with its number. Answers 202"
    " with `Location: /v1/batches/{id}`. Role `platform`. " + SIGNED,
    responses=problem_responses(401, 403, 404, 413, 422),
    openapi_extra=json_body(BatchIn),
)
async def submit(request: Request) -> Response:
    return await run_exchange(request, "batch.submit", _submit, roles=PLATFORM, body_limit=MAX_UPLOAD_BYTES)


async def _status(batch_id: str, exchange: Exchange) -> tuple[int, bytes]:
    service = _service(exchange)
    exchange.event.target_id = batch_id
    job = await service.load(batch_id, exchange.principal.caller.caller_id)
    exchange.event.purpose = job.purpose
    return 200, orjson.dumps(await service.status(job))


@router.get(
    "/{batch_id}",
    summary="State of a batch",
    description="`queued`, `running`, `paused` (with `pause.code` `quota_exhausted` and when it resumes), `done`,"
    " `failed` (with `stopped`: the grant was revoked, suspended or expired), `cancelled`; done/total and outcomes"
    " (`ok` or a problem code) per operation, the start, rate and ETA, and how many result lines can be read. "
    + SIGNED,
    responses=problem_responses(401, 403, 404),
)
async def status(request: Request, batch_id: str) -> Response:
    return await run_exchange(request, "batch.status", partial(_status, batch_id), roles=PLATFORM)


_RANGE = re.compile(r"^lines=(\d+)-(\d*)$")


def _window(request: Request) -> tuple[int, int | None]:
    """Lines already read (`cursor`, or `Range: lines=N-M` with 1-based N) and the last wanted, if any."""
    header = request.headers.get("range")
    if header is not None:
        match = _RANGE.match(header.strip())
        if match is None or int(match[1]) < 1:
            raise Problem(ProblemCode.RANGE_INVALID, "use Range: lines=FIRST-[LAST], lines counted from 1")
        last = int(match[2]) if match[2] else None
        return int(match[1]) - 1, last
    cursor = request.query_params.get("cursor", "0")
    if not cursor.isdigit():
        raise Problem(
            ProblemCode.VALIDATION_FAILED,
            "cursor: a line number",
            title="Request is invalid",
            errors=[{"field": "cursor", "message": "a line number", "type": "int_parsing"}],
        )
    return int(cursor), None


async def _csv(lines: AsyncIterator[bytes], header: bool) -> AsyncIterator[bytes]:
    if header:
        yield (",".join(CSV_COLUMNS) + "\r\n").encode()
    async for line in lines:
        record = orjson.loads(line)
        buffer = io.StringIO()
        data = record.get("data")
        csv.writer(buffer).writerow(
            [
                record["line"],
                record["uscc"],
                record["service"],
                record["operation"],
                record["status"],
                record.get("problem", ""),
                orjson.dumps(data).decode() if data is not None else "",
            ]
        )
        yield buffer.getvalue().encode()


async def _ndjson(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield line + b"\n"


async def _results(batch_id: str, exchange: Exchange) -> tuple[int, bytes]:
    service = _service(exchange)
    request = exchange.request
    exchange.event.target_id = batch_id
    job = await service.load(batch_id, exchange.principal.caller.caller_id)
    exchange.event.purpose = job.purpose
    if job.results_expired_at is not None:
        raise Problem(
            ProblemCode.BATCH_RESULTS_EXPIRED,
            f"the results were deleted {service.settings.batch_result_days} days after the batch ended (数据最小化)",
        )
    after, last = _window(request)
    ready, chunks = await service.ready_lines(job, after)
    upto = ready if last is None else min(ready, last)
    total = job.total * len(job.operations)
    complete = upto >= total
    wants_csv = "text/csv" in request.headers.get("accept", "")
    exchange.media_type = "text/csv" if wants_csv else NDJSON
    exchange.response_headers.update(
        {
            "Batch-State": job.state,
            "Batch-Lines": str(total),
            "Batch-Next-Cursor": str(max(upto, after)),
            "Batch-Complete": "true" if complete else "false",
        }
    )
    lines = service.lines(job, chunks, after, upto)
    exchange.stream = _csv(lines, header=after == 0) if wants_csv else _ndjson(lines)
    # Not the results: what was handed out, for the audit record.
    exchange.event.store_response = True
    return 200, orjson.dumps({"batch_id": batch_id, "lines": [after + 1, upto], "of": total})


@router.get(
    "/{batch_id}/results",
    summary="Results of a batch, streamed",
    description="One line per subject and operation: the granted fields (`data`) or the subject's problem `code`"
    " (`problem`). NDJSON, or CSV with `Accept: text/csv`. Readable while the batch runs: the answer holds the lines"
    " ready without a gap, and `Batch-Next-Cursor` says where to go on (`?cursor=N`, or `Range: lines=N-`);"
    " `Batch-Complete: true` once every line was handed out. After MSJX_BATCH_RESULT_DAYS: 410. " + SIGNED,
    responses=problem_responses(401, 403, 404),
)
async def results(request: Request, batch_id: str) -> Response:
    return await run_exchange(request, "batch.results", partial(_results, batch_id), roles=PLATFORM)


async def _cancel(batch_id: str, exchange: Exchange) -> tuple[int, bytes]:
    service = _service(exchange)
    exchange.event.target_id = batch_id
    job = await service.load(batch_id, exchange.principal.caller.caller_id)
    exchange.event.purpose = job.purpose
    if not await service.cancel(job):
        raise Problem(ProblemCode.BATCH_FINISHED, f"the batch is {job.state}")
    job = await service.load(batch_id, exchange.principal.caller.caller_id)
    return 200, orjson.dumps(await service.status(job))


@router.delete(
    "/{batch_id}",
    summary="Cancel a batch",
    description="No chunk starts after this; results of chunks already done stay readable until they expire. " + SIGNED,
    responses=problem_responses(401, 403, 404, 409),
)
async def cancel(request: Request, batch_id: str) -> Response:
    return await run_exchange(request, "batch.cancel", partial(_cancel, batch_id), roles=PLATFORM)
