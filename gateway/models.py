"""Database tables (SQLAlchemy 2), one schema for SQLite and PostgreSQL; Alembic migrations create them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Caller(Base):
    """A system or person that calls the gateway: the platform, a department, an officer, an admin."""

    __tablename__ = "callers"

    caller_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CallerKey(Base):
    """An Ed25519 public key of a caller; the gateway never holds the private half."""

    __tablename__ = "caller_keys"

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.caller_id"), index=True)
    public_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Grant(Base):
    """Permission for one caller to call one operation for one purpose, returning only the listed fields."""

    __tablename__ = "grants"

    grant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.caller_id"), index=True)
    service: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(128))
    fields: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_to: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_grants_lookup", "caller_id", "service", "operation", "purpose"),)


class AuditRecord(Base):
    """One exchange or administrative event, hash-chained per node; payloads are stored sealed, never in clear."""

    __tablename__ = "audit_records"

    chain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_id: Mapped[str] = mapped_column(String(32), unique=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    event: Mapped[str] = mapped_column(String(32))
    caller_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    department: Mapped[str | None] = mapped_column(String(200), nullable=True)
    roles: Mapped[str | None] = mapped_column(String(200), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str] = mapped_column(String(32))
    method: Mapped[str | None] = mapped_column(String(8), nullable=True)
    path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    service: Mapped[str | None] = mapped_column(String(128), nullable=True)
    operation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(128), nullable=True)
    grant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    subject_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fields: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_code: Mapped[int] = mapped_column(Integer)
    upstream_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    duration_us: Mapped[int] = mapped_column(BigInteger)
    upstream_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_size: Mapped[int] = mapped_column(Integer)
    response_size: Mapped[int] = mapped_column(Integer)
    request_digest: Mapped[str] = mapped_column(String(64))
    response_digest: Mapped[str] = mapped_column(String(64))
    request_payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response_payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    suite: Mapped[str] = mapped_column(String(16))
    data_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    record_hash: Mapped[str] = mapped_column(String(64))


AUDIT_COLUMNS: tuple[str, ...] = tuple(column.name for column in AuditRecord.__table__.columns)


class IdempotencyKey(Base):
    """One Idempotency-Key of one caller: the request it stands for, who works on it now, and the stored answer."""

    __tablename__ = "idempotency_keys"

    caller_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idem_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | done
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PaymentIntent(Base):
    """A voucher the gateway is about to send to the treasury, written (and committed) before it is sent.

    Amounts are decimal strings: SQLite stores NUMERIC as a float, and no float may touch money.
    """

    __tablename__ = "payment_intents"

    voucher_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    caller_id: Mapped[str] = mapped_column(String(64))
    idem_key: Mapped[str] = mapped_column(String(255))
    uscc: Mapped[str] = mapped_column(String(18), index=True)
    pay_amt: Mapped[str] = mapped_column(String(24))
    purpose: Mapped[str] = mapped_column(String(128))
    grant_id: Mapped[str] = mapped_column(String(64))
    fields: Mapped[list[str]] = mapped_column(JSON)
    voucher: Mapped[str] = mapped_column(Text)  # the canonical voucher as JSON, to send the very same one again
    attempts: Mapped[int] = mapped_column(Integer)
    last_sent_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("caller_id", "idem_key"),)


class PaymentOutcome(Base):
    """What became of a payment intent, recorded once: accepted/paid/returned by the treasury, or refused by it."""

    __tablename__ = "payment_outcomes"

    voucher_no: Mapped[str] = mapped_column(ForeignKey("payment_intents.voucher_no"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    treasury_code: Mapped[str] = mapped_column(String(16))
    treasury_serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pay_amt: Mapped[str | None] = mapped_column(String(24), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(16))  # request | reconciler
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
