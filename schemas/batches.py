"""Bodies of the batch API (/v1/batches): a submission with inline subjects, and what a batch reports."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .api import PURPOSE_PATTERN


class BatchOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=128)
    operation: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict, description="parameters for every subject (e.g. year)")


class BatchIn(BaseModel):
    """A batch comparison (数据比对): every operation for every subject, under the caller's grants for `purpose`.

    Up to 1,000 subjects inline; for more, send the subjects as a CSV or NDJSON body (see the route)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "purpose": "XM-2025-001",
                    "operations": [
                        {"service": "credit", "operation": "dishonest-debtor"},
                        {"service": "golden-tax", "operation": "tax-credit-rating", "params": {"year": 2025}},
                    ],
                    "subjects": [{"uscc": "91350203MA2Y0K1X8U"}, {"uscc": "91110000600037341L", "year": 2024}],
                }
            ]
        },
    )
    purpose: str = Field(pattern=PURPOSE_PATTERN)
    operations: list[BatchOperation] = Field(min_length=1, max_length=16)
    subjects: list[Any] = Field(description="objects with a uscc and optional per-subject parameters such as year")


class BatchAccepted(BaseModel):
    batch_id: str
    state: str
    total: int
    chunks: int
