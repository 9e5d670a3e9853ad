"""The tables of batch jobs: the job, and its chunks, each holding its sealed subjects and, once run, its results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.models import Base, UTCDateTime


class BatchJob(Base):
    """One submitted batch: who asked, for which purpose, which operations (with the grant each runs under)."""

    __tablename__ = "batch_jobs"

    batch_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    caller_id: Mapped[str] = mapped_column(String(64), index=True)
    department: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(128))
    # [{"service", "operation", "params", "grant_id"}]: the order is the order of result lines per subject.
    operations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    total: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    pause_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stop_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stop_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    results_expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchChunk(Base):
    """A slice of a job's subjects; `state` goes pending -> done exactly once, with its results in the same write."""

    __tablename__ = "batch_chunks"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batch_jobs.batch_id", ondelete="CASCADE"), primary_key=True)
    chunk_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # JSON [[uscc, {params}], ...], sealed under a data key of the audit key ring (so it is crypto-shredded with it).
    subjects: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # NDJSON result lines of the chunk (subject by subject, operation by operation), sealed likewise.
    results: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    data_key_id: Mapped[str] = mapped_column(String(64))
    # Per operation: {"done": n, "outcomes": {"ok": n, "<problem code>": n}}.
    summary: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    done_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
