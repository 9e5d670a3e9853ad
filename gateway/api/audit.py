"""The security officer's audit API: search, record metadata, reading a payload with a reason, verify, checkpoints.

Every route is for the `officer` role only, goes through `run_exchange`, and so is itself audited: what an
officer searched for and looked at is in the log. Reading a payload needs a stated reason, which the record
of that reading carries (with the record read, in `target_id`); the decrypted answer is not stored again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.deps import ClockDep, EngineDep, KeyRingDep, SettingsDep
from gateway.api.docs import SIGNED, problem_responses
from gateway.audit.rows import chain_ids, get_record, load_checkpoints
from gateway.audit.search import AuditQuery, open_payload, search_records, subject_hashes
from gateway.audit.signer import node_trust
from gateway.audit.verify import verify_all
from gateway.http.json_bodies import parse_body
from gateway.http.problems import Problem, validation_problem
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.storage.models import AuditSigner
from schemas.audit import (
    AuditRecordOut,
    AuditSearchOut,
    AuditSearchParams,
    CheckpointsOut,
    PayloadOut,
    PayloadReadIn,
    VerifyOut,
)
from schemas.problems import ProblemCode
from security.crypto import DecryptionError
from security.keyring import KeyRing, KeyRingError, PayloadShredded

router = APIRouter(prefix="/v1/audit", tags=["audit"])
OFFICER = {"officer"}
ONLY_OFFICERS = "Security officers (role `officer`) only; every call, a refused one too, is itself audited. "
FILTERS = ("from_", "to", "caller", "department", "service", "operation", "purpose", "decision", "subject")
FILTERS += ("event", "chain", "target", "category", "code")


def _query_parameters(model: type[BaseModel], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """OpenAPI `parameters` from a model, for routes that parse their query themselves (inside the audited path)."""
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    parameters = []
    for name, definition in schema.get("properties", {}).items():
        if name in skip:
            continue
        definition = dict(definition)
        description = definition.pop("description", None)
        definition.pop("title", None)
        parameter = {"name": name, "in": "query", "required": name in required, "schema": definition}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return {"parameters": parameters}


def _parse_query(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise validation_problem(exc.errors(), prefix=("query",)) from None


def _time(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def record_out(row: dict[str, Any]) -> dict[str, Any]:
    """A record's metadata as the API shows it (never its payloads)."""
    out = {name: row.get(name) for name in AuditRecordOut.model_fields if name in row}
    out["time"] = _time(int(row["ts_ms"]))
    out["roles"] = [role for role in (row.get("roles") or "").split(",") if role]
    out["fields"] = [name for name in (row.get("fields") or "").split(",") if name]
    out["has_request_payload"] = bool(row.get("has_request_payload", row.get("request_payload") is not None))
    out["has_response_payload"] = bool(row.get("has_response_payload", row.get("response_payload") is not None))
    out.setdefault("target_id", None)
    out.setdefault("reason", None)
    out.setdefault("reason_category", None)
    out.setdefault("reason_ref", None)
    return out


# --- search ----------------------------------------------------------------------------------------------------


def _filters_digest(params: AuditSearchParams) -> str:
    values = {name: getattr(params, name) for name in FILTERS}
    return hashlib.sha256(orjson.dumps(values, default=str, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _encode_cursor(row: dict[str, Any], digest: str) -> str:
    position = orjson.dumps({"t": row["ts_ms"], "c": row["chain_id"], "h": row["height"], "f": digest})
    return base64.urlsafe_b64encode(position).decode().rstrip("=")


def _decode_cursor(cursor: str, digest: str) -> tuple[int, str, int]:
    try:
        position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = (_cursor_int(position["t"]), str(position["c"]), _cursor_int(position["h"]))
        filters = str(position["f"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise _query_problem("cursor", ProblemCode.INVALID_CURSOR, "not a cursor this API returned") from None
    if filters != digest:
        raise _query_problem("cursor", ProblemCode.CURSOR_MISMATCH, "the cursor belongs to a search with other filters")
    return after


def _cursor_int(value: Any) -> int:
    # A forged cursor may hold a float, a bool or an integer no database column can hold (SQLite raises
    # OverflowError binding it); a cursor this API wrote holds a non-negative 64-bit integer.
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise ValueError("not a cursor position")
    return value


def _query_problem(field: str, code: ProblemCode, message: str) -> Problem:
    return Problem(
        code,
        f"query/{field}: {message}",
        errors=[{"field": f"query/{field}", "message": message, "type": code}],
    )


async def _search(engine: AsyncEngine, keyring: KeyRing, exchange: Exchange) -> tuple[int, bytes]:
    params: AuditSearchParams = _parse_query(exchange.request, AuditSearchParams)
    digest = _filters_digest(params)
    after = _decode_cursor(params.cursor, digest) if params.cursor else None
    query = AuditQuery(
        from_ms=_ms(params.from_),
        to_ms=_ms(params.to),
        caller=params.caller,
        department=params.department,
        service=params.service,
        operation=params.operation,
        purpose=params.purpose,
        decision=params.decision,
        event=params.event,
        chain=params.chain,
        target=params.target,
        category=params.category,
        code=params.code,
        subject_hashes=subject_hashes(keyring, params.subject) if params.subject else [],
    )
    rows = await search_records(engine, query, after=after, limit=params.limit + 1)
    page, more = rows[: params.limit], len(rows) > params.limit
    body = {
        "records": [record_out(row) for row in page],
        "next_cursor": _encode_cursor(page[-1], digest) if more and page else None,
    }
    return 200, orjson.dumps(body)


@router.get(
    "/records",
    summary="Search audit records",
    description=ONLY_OFFICERS
    + "Newest first. Filters combine with AND; `subject` takes a USCC and matches its keyed hash. Pages are"
    " stable while new records arrive: pass `next_cursor` back as `cursor` with the same filters. " + SIGNED,
    response_model=AuditSearchOut,
    responses=problem_responses(401, 403, 422, 503),
    openapi_extra=_query_parameters(AuditSearchParams),
)
async def search(request: Request, engine: EngineDep, keyring: KeyRingDep) -> Response:
    return await run_exchange(request, "audit.search", partial(_search, engine, keyring), roles=OFFICER)


# --- one record, its payload ------------------------------------------------------------------------------------


async def _load(engine: AsyncEngine, record_id: str) -> dict[str, Any]:
    row = await get_record(engine, record_id)
    if row is None:
        raise Problem(
            ProblemCode.RECORD_NOT_FOUND,
            f"no audit record {record_id!r} in the database (archived records are in archive files)",
        )
    return row


@router.get(
    "/records/{record_id}",
    summary="An audit record's metadata",
    description=ONLY_OFFICERS + "Everything but the sealed payloads. " + SIGNED,
    response_model=AuditRecordOut,
    responses=problem_responses(401, 403, 404, 503),
)
async def record(request: Request, record_id: str, engine: EngineDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        exchange.event.target_id = record_id
        return 200, orjson.dumps(record_out(await _load(engine, record_id)))

    return await run_exchange(request, "audit.record", handler, roles=OFFICER)


def _shown(plaintext: bytes | None) -> Any:
    if plaintext is None:
        return None
    try:
        return orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        return {"base64": base64.b64encode(plaintext).decode()}


@router.post(
    "/records/{record_id}/payload",
    summary="Read a record's decrypted payload, stating why",
    description=ONLY_OFFICERS
    + "Needs a reason that is a reason: a `category` (complaint, inspection, incident, court_order, other), a"
    " `reference` (the case or ticket number) and a `reason` of at least 10 non-blank characters, not one character"
    " repeated. The reading is recorded before the answer leaves: officer, record (`target_id`), category,"
    " reference, reason and the parts shown; the decrypted answer itself is not stored again. Search the readings"
    " with `?event=audit.payload.read&category=…`."
    " 410 `payload_shredded` when the record's data key was destroyed at the end of retention. " + SIGNED,
    response_model=PayloadOut,
    responses={
        **problem_responses(401, 403, 404, 422, 503),
        410: {
            "description": "The payload's data key was destroyed (crypto-shredding)",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PayloadReadIn.model_json_schema()}},
        }
    },
)
async def read_payload(request: Request, record_id: str, engine: EngineDep, keyring: KeyRingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        event = exchange.event
        event.target_id = record_id
        event.store_response = False
        body: PayloadReadIn = parse_body(exchange.body, PayloadReadIn)
        event.reason = body.reason
        event.reason_category = body.category
        event.reason_ref = body.reference
        row = await _load(engine, record_id)
        shown: dict[str, Any] = {}
        try:
            for part in dict.fromkeys(body.parts):
                shown[part] = _shown(await open_payload(keyring, row, part))
        except PayloadShredded as exc:
            raise Problem(ProblemCode.PAYLOAD_SHREDDED, str(exc)) from None
        except (DecryptionError, KeyRingError) as exc:
            raise Problem(ProblemCode.PAYLOAD_UNREADABLE, f"record {record_id}: {exc}") from None
        event.fields = tuple(part for part in shown if shown[part] is not None)
        answer = {
            "record_id": record_id,
            "suite": row["suite"],
            "data_key_id": row["data_key_id"],
            "request": shown.get("request"),
            "response": shown.get("response"),
            "audit_request_id": exchange.request_id,
        }
        return 200, orjson.dumps(answer)

    return await run_exchange(request, "audit.payload.read", handler, roles=OFFICER)


# --- verification and checkpoints -------------------------------------------------------------------------------


class VerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chain: str | None = Field(default=None, max_length=64, description="verify only this chain (node id)")


@router.get(
    "/verify",
    summary="Verify the audit chains",
    description=ONLY_OFFICERS
    + "Walks every chain (or `chain`) from its archives through the database, checks each checkpoint against the"
    " node keys: this node's own and keys/trusted/ files, and every node key registered in the database (each"
    " chain's `keys` say which were pinned and which only self-registered),"
    " and names the first bad height and the kind of fault. It reads every record:"
    " for large logs prefer `msjx-gateway audit verify`. " + SIGNED,
    response_model=VerifyOut,
    responses=problem_responses(401, 403, 422, 503),
    openapi_extra=_query_parameters(VerifyParams),
)
async def verify(request: Request, engine: EngineDep, settings: SettingsDep, clock: ClockDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        params: VerifyParams = _parse_query(exchange.request, VerifyParams)
        trusted = await node_trust(engine, settings)
        reports = await verify_all(
            engine,
            trusted=trusted if len(trusted) else None,
            archive_dir=settings.archive_dir,
            witness_dir=settings.witness_dir,
            chains=[params.chain] if params.chain else None,
        )
        chains = [
            {
                "chain_id": report.chain_id,
                "ok": report.ok,
                "records": report.records,
                "head_height": report.head_height,
                "head_hash": report.head_hash,
                "sealed_height": report.sealed_height,
                "unsealed": report.unsealed,
                "archives": report.archives,
                "signatures_checked": report.signatures_checked,
                "fault": (
                    {"height": report.fault.height, "kind": report.fault.kind, "detail": report.fault.detail}
                    if report.fault
                    else None
                ),
                "notes": list(report.notes),
                "keys": [
                    {
                        "key_id": standing.key_id,
                        "standing": standing.standing,
                        "revoked": standing.revoked or None,
                        "accepted_through": standing.revoked_height if standing.revoked else None,
                    }
                    for standing in trusted.used_by(report.chain_id)
                ],
            }
            for report in reports
        ]
        body = {
            "ok": all(report.ok for report in reports),
            "checked_at": clock.now().isoformat(timespec="milliseconds"),
            "trusted_keys": trusted.key_ids,
            "chains": chains,
        }
        return 200, orjson.dumps(body)

    return await run_exchange(request, "audit.verify", handler, roles=OFFICER)


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chain: str | None = Field(default=None, max_length=64, description="node id of the chain")
    after: int = Field(default=0, ge=0, lt=1 << 63, description="only checkpoints above this height")
    limit: int = Field(default=100, ge=1, le=1000)


@router.get(
    "/checkpoints",
    summary="Signed checkpoints and the node keys that signed them",
    description=ONLY_OFFICERS
    + "Checkpoints in height order after `after` (per chain), and each node's public key as the node registered it;"
    " verify a key against the fingerprint the operator published before trusting it. " + SIGNED,
    response_model=CheckpointsOut,
    responses=problem_responses(401, 403, 422, 503),
    openapi_extra=_query_parameters(CheckpointParams),
)
async def checkpoints(request: Request, engine: EngineDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        params: CheckpointParams = _parse_query(exchange.request, CheckpointParams)
        chains = [params.chain] if params.chain else await chain_ids(engine)
        found = []
        for chain_id in chains:
            found += await load_checkpoints(engine, chain_id, after=params.after, limit=params.limit)
        async with engine.connect() as connection:
            signers = [
                {
                    "key_id": row.key_id,
                    "chain_id": row.chain_id,
                    "algorithm": row.algorithm,
                    "status": row.status,
                    "public_key": row.public_key,
                }
                for row in await connection.execute(select(AuditSigner.__table__).order_by(AuditSigner.created_ms))
            ]
        body = {
            "checkpoints": [{**cp.to_dict(), "time": _time(cp.ts_ms)} for cp in found[: params.limit]],
            "signers": signers,
        }
        return 200, orjson.dumps(body)

    return await run_exchange(request, "audit.checkpoints", handler, roles=OFFICER)
