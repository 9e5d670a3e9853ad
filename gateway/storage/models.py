"""Database tables (SQLAlchemy 2), one schema for SQLite and PostgreSQL; Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A moment, stored as UTC and read back as an aware UTC datetime on SQLite and PostgreSQL alike.

    SQLite keeps the wall time it is given and drops the offset, so a Beijing time stored as such would come back
    eight hours off; here every value is turned to UTC on the way in, and a naive one is taken as UTC (as SQLite's
    come back). The column is PostgreSQL's `timestamp with time zone`, as before: no migration."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Caller(Base):
    """A system or person that calls the gateway: the platform, a department, an officer, an admin."""

    __tablename__ = "callers"

    caller_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CallerKey(Base):
    """An Ed25519 or SM2 public key of a caller, as registered (PEM, base64 or hex); the gateway never holds the
    private half."""

    __tablename__ = "caller_keys"

    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.caller_id"), index=True)
    public_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CallerCert(Base):
    """A client certificate that authenticates a caller over mutual TLS (the SOAP façade's legacy callers): one
    certificate by its SHA-256 fingerprint (`fingerprint`), or every certificate an operator-trusted CA issued,
    optionally only with one subject CN (`issuer`: the CA's fingerprint, its PEM, the subject)."""

    __tablename__ = "caller_certs"

    cert_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.caller_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    ca_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    subject_cn: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CatalogItem(Base):
    """A 资源目录 entry: what a provider department holds, how it is shared and which operation delivers it."""

    __tablename__ = "catalog_items"

    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(200), index=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    service: Mapped[str | None] = mapped_column(String(128), nullable=True)
    operation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    share_attribute: Mapped[str] = mapped_column(String(16))
    conditions: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    legal_basis: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    share_method: Mapped[str] = mapped_column(String(16))
    data_format: Mapped[str] = mapped_column(String(32))
    update_frequency: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SharingRequest(Base):
    """A 共享需求: one department asks a provider for fields of one catalog item, for one purpose, for a time."""

    __tablename__ = "sharing_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("catalog_items.item_id"), index=True)
    requester_department: Mapped[str] = mapped_column(String(200), index=True)
    provider_department: Mapped[str] = mapped_column(String(200), index=True)
    filed_by: Mapped[str] = mapped_column(String(64))
    endorsed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    callers: Mapped[list[str]] = mapped_column(JSON)
    fields: Mapped[list[str]] = mapped_column(JSON)
    purpose_code: Mapped[str] = mapped_column(String(128))
    purpose_name: Mapped[str] = mapped_column(String(200))
    basis: Mapped[str] = mapped_column(Text)
    scenario: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    share_method: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    valid_to: Mapped[datetime] = mapped_column(UTCDateTime())
    daily_volume: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    # A deadline that counted days of a year with no loaded schedule (gateway/sharing/workdays.py); importing
    # that year's schedule recomputes it.
    deadline_provisional: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    deadline_source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    extended_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    returned_items: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer)

    # Two officers deciding at once: the second flush matches no row and fails instead of overwriting.
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class SharingEvent(Base):
    """One transition of a sharing request: who, when, from which state to which, and what changed."""

    __tablename__ = "sharing_events"

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("sharing_requests.request_id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    actor_department: Mapped[str | None] = mapped_column(String(200), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class Grant(Base):
    """Permission for one caller to call one operation for one purpose, returning only the listed fields.

    A grant made by approving a sharing request names it; its daily quota and rate limit are shared by
    every grant of that request (one per caller the request named).
    """

    __tablename__ = "grants"

    grant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.caller_id"), index=True)
    department: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(128))
    purpose_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fields: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_to: Mapped[datetime] = mapped_column(UTCDateTime())
    daily_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_limit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # 共享方式 the grant allows: "api" (single calls) and/or "batch" (batch jobs, gateway/batches/).
    share_methods: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["api"], server_default='["api"]')
    sharing_request_id: Mapped[str | None] = mapped_column(
        ForeignKey("sharing_requests.request_id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Suspension for misuse: the grant is refused (`grant_suspended`) until resumed; unlike revocation it may return.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    suspended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suspend_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Delivery (条例: within 20 working days of approval); NULL due for a grant an admin issued directly.
    delivery_due: Mapped[date | None] = mapped_column(Date, nullable=True)
    # Counted over a year without a loaded holiday schedule: the sweep counts it again once one is imported.
    delivery_due_provisional: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    delivery_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the sweep found it past its due day undelivered, and recorded that (once).
    delivery_overdue_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_grants_lookup", "caller_id", "service", "operation", "purpose"),)


class DataUseEntry(Base):
    """The requesting department's register of what it did with data received under a grant: use, storage,
    destruction. Append-only; each entry is kept at least until `keep_until` (3 years), enforced by a trigger."""

    __tablename__ = "data_use_entries"

    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.grant_id"), index=True)
    sharing_request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    department: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # use | storage | destruction
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    description: Mapped[str] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(Text, nullable=True)
    volume: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    keep_until: Mapped[date] = mapped_column(Date)


class AuditRecord(Base):
    """One exchange or administrative event, hash-chained per node; payloads are stored sealed, never in clear.

    On PostgreSQL the table is partitioned by month of `ts_ms` (migration 0016, gateway/audit/partitions.py), so
    there its keys include `ts_ms`: primary key (chain_id, height, ts_ms), unique (record_id, ts_ms).
    """

    __tablename__ = "audit_records"

    chain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_id: Mapped[str] = mapped_column(String(32), unique=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    event: Mapped[str] = mapped_column(String(32))
    caller_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
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
    subject_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
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
    # Officer actions: the record acted on and the stated reason (empty for exchanges, and then left out of the hash).
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The stated reason's category (complaint, inspection, incident, court_order, other) and case or ticket number.
    reason_category: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # With the time second, a search by caller or subject, newest first, reads one page of index entries rather
    # than every record of a subject queried ten thousand times.
    # Partial: only officer actions have a target or a reason, so exchanges pay nothing for those two indexes.
    __table_args__ = (
        Index("ix_audit_records_caller_ts", "caller_id", "ts_ms"),
        Index("ix_audit_records_subject_ts", "subject_hash", "ts_ms"),
        Index(
            "ix_audit_records_target_id",
            "target_id",
            sqlite_where=text("target_id IS NOT NULL"),
            postgresql_where=text("target_id IS NOT NULL"),
        ),
        Index(
            "ix_audit_records_reason_category",
            "reason_category",
            sqlite_where=text("reason_category IS NOT NULL"),
            postgresql_where=text("reason_category IS NOT NULL"),
        ),
    )


class AuditCheckpoint(Base):
    """A signed statement of a chain's head at a height: what `audit verify` trusts, beside the chain itself."""

    __tablename__ = "audit_checkpoints"

    chain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class AuditKey(Base):
    """A data key (one per period and suite) or the index key, wrapped by the master key; NULL once destroyed."""

    __tablename__ = "audit_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    suite: Mapped[str] = mapped_column(String(16))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    master_key_id: Mapped[str] = mapped_column(String(32))
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    destroyed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditSigner(Base):
    """A node key: the public key a node signs its checkpoints with, registered by the node when it first starts
    (`self-registered`), then `pinned` or `revoked` by an operator (see gateway/audit/node_keys.py)."""

    __tablename__ = "audit_signers"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chain_id: Mapped[str] = mapped_column(String(64), index=True)
    public_key: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)  # registered_at
    algorithm: Mapped[str] = mapped_column(String(16), server_default="ed25519")
    status: Mapped[str] = mapped_column(String(16), server_default="self-registered")
    pinned_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    pinned_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pin_signer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pin_signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_height: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_head: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditArchive(Base):
    """An archive file of a chain segment (ending at a signed checkpoint), hash-linked to the one before it."""

    __tablename__ = "audit_archives"

    chain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    from_height: Mapped[int] = mapped_column(BigInteger)
    to_height: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    first_ts_ms: Mapped[int] = mapped_column(BigInteger)
    last_ts_ms: Mapped[int] = mapped_column(BigInteger)
    file_name: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(80))
    created_ms: Mapped[int] = mapped_column(BigInteger)


AUDIT_COLUMNS: tuple[str, ...] = tuple(column.name for column in AuditRecord.__table__.columns)


class RegisteredUpstream(Base):
    """An upstream added at runtime from its WSDL or OpenAPI document; every node builds it from `contract`.

    `contract` holds every document of the contract (base64, byte for byte), so no node fetches anything later.
    `revision` changes on every registration: nodes compare it to notice a change within their refresh interval.
    """

    __tablename__ = "upstreams"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(2048))
    contract: Mapped[dict] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    policy: Mapped[dict] = mapped_column(JSON)
    safe: Mapped[list[str]] = mapped_column(JSON)
    operations: Mapped[list[dict]] = mapped_column(JSON)  # as registered: name, summary, safe, fields
    revision: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # SOAP headers and WS-Security the upstream demands; secret values only by reference ("secret:NAME").
    soap_auth: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class ServiceOwner(Base):
    """The department that owns an upstream service's data (提供单位): it alone publishes catalog items over the
    service and decides requests for them. Built-in services get the department their adapter declares; a
    registered upstream gets the one named at registration; an admin may hand a service over (CLI)."""

    __tablename__ = "service_owners"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    department: Mapped[str] = mapped_column(String(200), index=True)
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime())


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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

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
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CalendarYear(Base):
    """One year's holiday schedule as an operator imported it (the State Council's notice); it overrides the library.

    `revision` changes on every import: nodes compare it to notice an import made elsewhere.
    """

    __tablename__ = "calendar_years"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(String(500))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    imported_by: Mapped[str] = mapped_column(String(128))
    revision: Mapped[str] = mapped_column(String(32))


class CalendarDay(Base):
    """A public holiday (放假) or an adjusted weekend workday (调休上班) of an imported year, with its festival."""

    __tablename__ = "calendar_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    year: Mapped[int] = mapped_column(ForeignKey("calendar_years.year"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # holiday | workday
    festival: Mapped[str] = mapped_column(String(64))
