"""Bodies of the officer's audit API: search parameters, record metadata, payload reading, verification, checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from schemas.times import BeijingDatetime
from schemas.uscc import USCC

Decision = Literal["allowed", "refused", "failed"]
Part = Literal["request", "response"]
# Why an officer opens a sealed payload; searchable, so the openings themselves can be reviewed.
ReasonCategory = Literal["complaint", "inspection", "incident", "court_order", "other"]
MIN_REASON_CHARACTERS = 10


def _a_reason(text: str) -> str:
    """At least 10 non-blank characters, and not one character repeated ("aaaaaaaaaa" says nothing)."""
    visible = "".join(text.split())
    if len(visible) < MIN_REASON_CHARACTERS:
        raise PydanticCustomError(
            "reason_too_short",
            "the reason needs at least {minimum} characters that are not blank; it has {count}",
            {"minimum": MIN_REASON_CHARACTERS, "count": len(visible)},
        )
    if len(set(visible)) == 1:
        raise PydanticCustomError(
            "reason_repeated", "the reason is one character repeated; say why the payload is read"
        )
    return text.strip()


def _a_reference(text: str) -> str:
    text = text.strip()
    if not any(char.isalnum() for char in text):
        raise PydanticCustomError(
            "reference_missing", "give the case or ticket number this reading serves, e.g. 投诉-2026-0412"
        )
    return text


class AuditSearchParams(BaseModel):
    """Query parameters of `GET /v1/audit/records`; every filter is optional and they combine with AND."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: BeijingDatetime | None = Field(
        default=None,
        alias="from",
        description="records at or after this time: a date (YYYY-MM-DD, from 00:00 Beijing time) or a time"
        " (RFC 3339; without an offset it is Beijing time)",
    )
    to: BeijingDatetime | None = Field(
        default=None, description="records before this time; a date or a time, read as `from` is"
    )
    caller: str | None = Field(default=None, max_length=64, description="caller id")
    department: str | None = Field(default=None, max_length=200)
    service: str | None = Field(default=None, max_length=128)
    operation: str | None = Field(default=None, max_length=128)
    purpose: str | None = Field(default=None, max_length=128, description="purpose code")
    decision: Decision | None = None
    subject: USCC | None = Field(
        default=None, description="the enterprise's USCC; the server searches by its keyed hash, never in clear"
    )
    event: str | None = Field(default=None, max_length=32, description="e.g. service.invoke, audit.payload.read")
    chain: str | None = Field(default=None, max_length=64, description="node id of the chain")
    target: str | None = Field(default=None, max_length=64, description="record id an officer action refers to")
    category: ReasonCategory | None = Field(
        default=None, description="the stated reason's category of an officer action (e.g. a payload reading)"
    )
    code: str | None = Field(default=None, max_length=64, description="a refusal's problem code, e.g. grant_missing")
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=512, description="next_cursor of the previous page")


class AuditRecordOut(BaseModel):
    """A record's metadata: everything but the sealed payloads, which need `POST …/payload` and a reason."""

    record_id: str
    chain_id: str
    height: int
    time: str = Field(description="UTC, millisecond precision")
    ts_ms: int
    event: str
    caller_id: str | None
    department: str | None
    roles: list[str]
    key_id: str | None = Field(description="key id of the request signature")
    client_addr: str | None
    request_id: str
    method: str | None
    path: str | None
    service: str | None
    operation: str | None
    purpose: str | None
    grant_id: str | None
    subject_hash: str | None = Field(description="keyed hash (HMAC) of the USCC; the USCC itself is never stored")
    decision: str
    reason_code: str | None
    fields: list[str]
    status_code: int
    upstream_status: str | None
    duration_us: int
    upstream_us: int | None
    request_size: int
    response_size: int
    request_digest: str
    response_digest: str
    has_request_payload: bool
    has_response_payload: bool
    suite: str
    data_key_id: str | None
    target_id: str | None
    reason: str | None
    reason_category: ReasonCategory | None = Field(description="category of the stated reason (officer actions)")
    reason_ref: str | None = Field(description="case or ticket number of the stated reason (officer actions)")
    prev_hash: str
    record_hash: str


class AuditSearchOut(BaseModel):
    records: list[AuditRecordOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class PayloadReadIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "category": "complaint",
                    "reference": "投诉-2026-0412",
                    "reason": "复核2025年第3批名单的信用核查依据",
                    "parts": ["response"],
                }
            ]
        },
    )

    category: ReasonCategory = Field(description="what kind of reason: recorded, and searchable as `category`")
    reference: Annotated[str, AfterValidator(_a_reference)] = Field(
        min_length=1, max_length=64, description="the case or ticket number (案件号、工单号) the reading serves"
    )
    reason: Annotated[str, AfterValidator(_a_reason)] = Field(
        min_length=MIN_REASON_CHARACTERS,
        max_length=1000,
        description="why the payload must be read: at least 10 non-blank characters, not one character repeated",
    )
    parts: list[Part] = Field(default_factory=lambda: ["request", "response"], min_length=1)


class PayloadOut(BaseModel):
    record_id: str
    suite: str
    data_key_id: str | None
    request: Any = Field(default=None, description="the decrypted request body (JSON, or {base64} if not JSON)")
    response: Any = Field(default=None, description="the decrypted response body; null if none was stored")
    audit_request_id: str = Field(description="request id of the audit record this reading wrote")


class ChainFaultOut(BaseModel):
    height: int
    kind: Literal["changed", "missing", "reordered", "inserted", "truncated", "rehashed"]
    detail: str


class ChainKeyOut(BaseModel):
    key_id: str
    standing: Literal["local", "pinned", "self-registered"] = Field(
        description="`local`: a key file of this node (its own, keys/trusted/); `pinned`: a registered node key an"
        " operator pinned, the pin signed by a trusted key; `self-registered`: registered by its node and not pinned,"
        " so it proves only as much as the database's access control"
    )
    revoked: str | None = Field(default=None, description="who revoked the key and when, if it was revoked")
    accepted_through: int | None = Field(
        default=None, description="for a revoked key: the last height whose checkpoints it may sign"
    )


class ChainStatusOut(BaseModel):
    chain_id: str
    ok: bool
    records: int = Field(description="records verified, archived ones included")
    head_height: int
    head_hash: str
    sealed_height: int = Field(description="highest height covered by a checkpoint whose signature verifies")
    unsealed: int = Field(description="verified records above the last checkpoint (not yet signed)")
    archives: int
    signatures_checked: bool
    fault: ChainFaultOut | None
    notes: list[str]
    keys: list[ChainKeyOut] = Field(description="the keys whose checkpoints of this chain verified, and their standing")


class VerifyOut(BaseModel):
    ok: bool
    checked_at: str
    trusted_keys: list[str] = Field(description="key ids whose checkpoint signatures were accepted")
    chains: list[ChainStatusOut]


class CheckpointOut(BaseModel):
    chain_id: str
    height: int
    head_hash: str
    ts_ms: int
    time: str
    key_id: str
    signature: str = Field(
        description="base64 signature over the checkpoint: Ed25519 (key id ed25519:…) or SM2 r‖s (key id sm2:…);"
        " see docs/audit.md"
    )


class SignerOut(BaseModel):
    key_id: str
    chain_id: str
    algorithm: str = Field(description="ed25519 or sm2")
    status: Literal["self-registered", "pinned", "revoked"]
    public_key: str = Field(description="PEM; compare its key id with the one the operator published")


class CheckpointsOut(BaseModel):
    checkpoints: list[CheckpointOut]
    signers: list[SignerOut]
