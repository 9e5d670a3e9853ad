"""Marks personal fields of a schema (a legal representative's ID number, phone, bank account) as sensitive.

Mark a field and every screen, log and listing outside a decrypted audit payload masks it:

    from schemas.sensitive import IdNumber, Phone, Sensitive

    class LegalRepresentative(BaseModel):
        name: str
        id_number: IdNumber                    # 110101********1234 when shown
        phone: Phone                           # 138****5678
        account: Annotated[str, Sensitive("bank_account"), Field(description="settlement account")]

The mark is a JSON Schema extension (`"x-sensitive": "<kind>"`), so it also shows in `/openapi.json` and in
the operation schemas `GET /v1/services` lists. `security.masking` reads it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

SENSITIVE_KEY = "x-sensitive"
SensitiveKind = Literal["id_number", "phone", "bank_account", "name", "address", "other"]
SENSITIVE_KINDS: tuple[str, ...] = get_args(SensitiveKind)


def Sensitive(kind: SensitiveKind) -> Any:
    """A field marker: `Annotated[str, Sensitive("phone")]`."""
    if kind not in SENSITIVE_KINDS:
        raise ValueError(f"unknown sensitive kind {kind!r}; known: {', '.join(SENSITIVE_KINDS)}")
    return Field(json_schema_extra={SENSITIVE_KEY: kind})


IdNumber = Annotated[str, Sensitive("id_number")]
Phone = Annotated[str, Sensitive("phone")]
BankAccount = Annotated[str, Sensitive("bank_account")]


def sensitive_kind(info: FieldInfo) -> str | None:
    extra = info.json_schema_extra
    if isinstance(extra, dict):
        kind = extra.get(SENSITIVE_KEY)
        return kind if isinstance(kind, str) else None
    return None


def sensitive_fields(model: type[BaseModel]) -> dict[str, str]:
    """Field name → kind for the model's own marked fields (nested models are found by `security.masking`)."""
    return {name: kind for name, info in model.model_fields.items() if (kind := sensitive_kind(info)) is not None}
