"""Bodies of the gateway's own HTTP API: invoke, problems, callers, keys and grants."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from schemas.times import BeijingDatetime

PURPOSE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Role = Literal["platform", "department", "officer", "admin", "coordinator"]


class InvokeRequest(BaseModel):
    """What the platform sends to call one operation: the purpose it holds a grant for, and the operation's input."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"purpose": "XM-2025-001", "params": {"uscc": "91110000600037341L"}}]},
    )

    purpose: str = Field(pattern=PURPOSE_PATTERN, description="purpose code of the policy the data is used for")
    params: dict[str, Any] = Field(description="the operation's input; its schema is listed by GET /v1/services")


class InvokeMeta(BaseModel):
    request_id: str
    service: str
    operation: str
    grant_id: str
    source: str
    fetched_at: datetime


class InvokeResponse(BaseModel):
    data: dict[str, Any]
    meta: InvokeMeta


class ProblemField(BaseModel):
    field: str
    message: str
    type: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; `code` is stable and is what clients should match on."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[ProblemField] | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    public_key: str = Field(
        description="Ed25519 public key, PEM (SubjectPublicKeyInfo) or base64 of the raw 32 bytes; or an SM2 public"
        " key (signs sm2-sm3), PEM (SubjectPublicKeyInfo, curve 1.2.156.10197.1.301) or hex of the point: 04‖x‖y"
        " (130 digits) or x‖y (128 digits)"
    )


class CallerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caller_id: str = Field(pattern=IDENTIFIER_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    department: str = Field(min_length=1, max_length=200)
    roles: list[Role] = Field(min_length=1)
    keys: list[KeyIn] = Field(default_factory=list)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the table row, field by field

    key_id: str
    status: str
    created_at: datetime
    revoked_at: datetime | None = None


class CallerOut(BaseModel):
    caller_id: str
    name: str
    department: str
    roles: list[str]
    created_at: datetime
    keys: list[KeyOut]


class GrantIn(BaseModel):
    """A grant issued directly by an admin (departments get theirs by approval of a sharing request).

    The newer fields are optional: `department` defaults to the caller's own, and a grant without
    `daily_quota` or `rate_limit` has no such limit (only the validity, purpose and fields bound it).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "caller_id": "platform",
                    "service": "credit",
                    "operation": "dishonest-debtor",
                    "purpose": "XM-2025-001",
                    "purpose_name": "厦门市惠企政策免申即享",
                    "fields": ["uscc", "listed"],
                    "valid_to": "2026-12-31T23:59:59+08:00",
                    "daily_quota": 10000,
                    "rate_limit": "50/second",
                }
            ]
        },
    )
    caller_id: str = Field(pattern=IDENTIFIER_PATTERN)
    service: str
    operation: str
    purpose: str = Field(pattern=PURPOSE_PATTERN)
    purpose_name: str | None = Field(default=None, min_length=1, max_length=200)
    fields: list[str] = Field(min_length=1)
    valid_from: BeijingDatetime | None = None
    valid_to: BeijingDatetime
    department: str | None = Field(default=None, min_length=1, max_length=200, description="default: the caller's")
    # Strict: JSON's true is not the quota 1, nor "5000" a number (the schema says integer).
    daily_quota: StrictInt | None = Field(default=None, description="calls a day (Asia/Shanghai days); none: no quota")
    rate_limit: str | None = Field(
        default=None, max_length=64, description="`limits` notation such as `20/second`; none: no rate limit"
    )
    share_methods: list[Literal["api", "batch"]] = Field(
        default=["api"], min_length=1, description="共享方式: `api` single calls, `batch` batch jobs (/v1/batches)"
    )


class GrantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the table row, field by field

    grant_id: str
    caller_id: str
    department: str
    service: str
    operation: str
    purpose: str
    purpose_name: str | None = None
    fields: list[str]
    valid_from: datetime
    valid_to: datetime
    daily_quota: int | None = None
    rate_limit: str | None = None
    share_methods: list[str] = ["api"]
    sharing_request_id: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    status: Literal["active", "not_started", "suspended", "revoked", "expired"] = Field(
        default="active", description="as it is now; a call under a grant that is not active is refused with its code"
    )
    suspended_at: datetime | None = None
    suspended_by: str | None = None
    suspend_reason: str | None = None
    delivery_state: Literal["delivered", "pending", "overdue", "cancelled", "not_applicable"] = Field(
        default="not_applicable",
        description="a grant from a sharing request is delivered (usable) within 20 working days of approval:"
        " by the provider's `deliver`, or by the first successful call under it",
    )
    delivery_due: date | None = None
    delivery_due_provisional: bool = Field(
        default=False, description="counted over a year without a loaded holiday schedule; recounted once it is"
    )

    # A row not yet flushed (or older than the column) has no value for these: their defaults.
    @field_validator("delivery_due_provisional", mode="before")
    @classmethod
    def _unset_is_false(cls, value: object) -> bool:
        return bool(value)

    @field_validator("share_methods", mode="before")
    @classmethod
    def _unset_is_api(cls, value: object) -> object:
        return value or ["api"]

    delivered_at: datetime | None = None
    delivered_by: str | None = Field(default=None, description="the provider's caller id, or `first_use`")
    delivery_note: str | None = None
    used_today: int | None = Field(default=None, description="calls counted today against the daily quota")
