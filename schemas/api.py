"""Bodies of the gateway's own HTTP API: invoke, problems, callers, keys and grants."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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
    public_key: str = Field(description="Ed25519 public key, PEM (SubjectPublicKeyInfo) or base64 of the raw 32 bytes")


class CallerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caller_id: str = Field(pattern=IDENTIFIER_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    department: str = Field(min_length=1, max_length=200)
    roles: list[Role] = Field(min_length=1)
    keys: list[KeyIn] = Field(default_factory=list)


class KeyOut(BaseModel):
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
    model_config = ConfigDict(extra="forbid")
    caller_id: str = Field(pattern=IDENTIFIER_PATTERN)
    service: str
    operation: str
    purpose: str = Field(pattern=PURPOSE_PATTERN)
    fields: list[str] = Field(min_length=1)
    valid_from: AwareDatetime | None = None
    valid_to: AwareDatetime


class GrantOut(BaseModel):
    grant_id: str
    caller_id: str
    service: str
    operation: str
    purpose: str
    fields: list[str]
    valid_from: datetime
    valid_to: datetime
    created_at: datetime
    revoked_at: datetime | None = None
