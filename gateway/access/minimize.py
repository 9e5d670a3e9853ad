"""Minimization and the answer's envelope: only granted fields leave the gateway, with where they came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson


def minimize(data: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The granted fields the upstream sent, in the grant's order; whatever else it sent stays here."""
    return {name: data[name] for name in fields if name in data}


def answer_document(
    data: Mapping[str, Any],
    *,
    request_id: str,
    service: str,
    operation: str,
    grant_id: str,
    source: str,
    fetched_at: datetime,
) -> dict[str, Any]:
    """A successful answer to an invoke call, before any interface renders it: the (minimized) data and what it is.
    `fetched_at` is an aware datetime, from the caller's clock."""
    return {
        "data": data,
        "meta": {
            "request_id": request_id,
            "service": service,
            "operation": operation,
            "grant_id": grant_id,
            "source": source,
            "fetched_at": fetched_at.isoformat(timespec="milliseconds"),
        },
    }


def envelope(
    data: Mapping[str, Any],
    *,
    request_id: str,
    service: str,
    operation: str,
    grant_id: str,
    source: str,
    fetched_at: datetime,
) -> bytes:
    """The same answer as JSON."""
    document = answer_document(
        data,
        request_id=request_id,
        service=service,
        operation=operation,
        grant_id=grant_id,
        source=source,
        fetched_at=fetched_at,
    )
    return orjson.dumps(document)
