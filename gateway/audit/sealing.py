"""Audit rows from what an exchange recorded: payloads sealed, identifiers and bodies digested, rows chained.

Both commit paths use it: the SQLite committer process, so that this work is done off the event loop, and the
PostgreSQL committer on the loop. It imports only `security`, so the committer process stays small.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from security.audit_chain import hasher_for
from security.crypto import NonceSequence, get_suite

# What the request path sends for one record, in this order, as a plain tuple: the SQLite committer's pipe is
# `marshal`, which takes only plain types. `roles` and `fields` come joined; the bodies come whole.
ENTRY_FIELDS = (
    "record_id",
    "ts_ms",
    "event",
    "caller_id",
    "department",
    "roles",
    "key_id",
    "client_addr",
    "request_id",
    "method",
    "path",
    "service",
    "operation",
    "purpose",
    "grant_id",
    "subject",
    "decision",
    "reason_code",
    "fields",
    "status_code",
    "upstream_status",
    "duration_us",
    "upstream_us",
    "request_body",
    "request_kept",
    "response_body",
    "store_response",
    "target_id",
    "reason",
    "reason_category",
    "reason_ref",
)
Entry = tuple[Any, ...]
# Where the writer reads an entry back (what `append` returns, the months a batch needs).
RECORD_ID, TS_MS, REQUEST_ID = (ENTRY_FIELDS.index(name) for name in ("record_id", "ts_ms", "request_id"))
# Columns set only when present: empty ones stay out of the canonical bytes, as for records written before them.
OFFICER_COLUMNS = ("target_id", "reason", "reason_category", "reason_ref")
# The data key a batch is sealed under and the index key of its digests: (data key id, data secret, index key).
Keys = tuple[str, bytes, bytes]


class RowSealer:
    """Turns entries into the audit table's rows for one chain and suite, and chains them.

    `limits` are the string columns' lengths: PostgreSQL refuses a longer string, which would fail a whole batch, so
    values are cut to fit (and NUL, which PostgreSQL text cannot hold, is escaped). `columns` is the order of the
    insert's values."""

    def __init__(self, suite: str, chain_id: str, limits: Mapping[str, int], columns: Sequence[str]) -> None:
        self.suite = suite
        self.chain_id = chain_id
        self._suite = get_suite(suite)
        self._hasher = hasher_for(suite)
        self._nonces = NonceSequence()
        self._limits = dict(limits)
        # Columns a caller can fill with anything (paths, key ids, header values): checked on every record.
        self._checked = tuple(
            (name, limit)
            for name, limit in self._limits.items()
            if name in ENTRY_FIELDS and name not in OFFICER_COLUMNS and name not in ("record_id", "request_id")
        )
        self._columns = tuple(columns)
        self._values = operator.itemgetter(*columns)

    def spec(self) -> str:
        """This sealer as JSON, for `from_spec` in the committer process (no key in it: keys come with each batch)."""
        return json.dumps(
            {"suite": self.suite, "chain_id": self.chain_id, "limits": self._limits, "columns": self._columns}
        )

    @classmethod
    def from_spec(cls, spec: str) -> RowSealer:
        values = json.loads(spec)
        return cls(values["suite"], values["chain_id"], values["limits"], values["columns"])

    def row(self, entry: Entry, keys: Keys) -> dict[str, Any]:
        """Every column but height and hashes, which only `chain` assigns."""
        (
            record_id,
            ts_ms,
            event,
            caller_id,
            department,
            roles,
            key_id,
            client_addr,
            request_id,
            method,
            path,
            service,
            operation,
            purpose,
            grant_id,
            subject,
            decision,
            reason_code,
            fields,
            status_code,
            upstream_status,
            duration_us,
            upstream_us,
            request_body,
            request_kept,
            response_body,
            store_response,
            target_id,
            reason,
            reason_category,
            reason_ref,
        ) = entry
        data_key_id, data_secret, index_key = keys
        suite, nonces = self._suite, self._nonces
        aad = f"{self.chain_id}/{record_id}".encode()
        kept_body = request_body if request_kept is None else request_body[:request_kept]
        row = {
            "chain_id": self.chain_id,
            "record_id": record_id,
            "ts_ms": ts_ms,
            "event": event,
            "caller_id": caller_id,
            "department": department,
            "roles": roles,
            "key_id": key_id,
            "client_addr": client_addr,
            "request_id": request_id,
            "method": method,
            "path": path,
            "service": service,
            "operation": operation,
            "purpose": purpose,
            "grant_id": grant_id,
            "subject_hash": suite.keyed_hash(index_key, subject) if subject else None,
            "decision": decision,
            "reason_code": reason_code,
            "fields": fields,
            "status_code": status_code,
            "upstream_status": upstream_status,
            "duration_us": duration_us,
            "upstream_us": upstream_us,
            "request_size": len(request_body),
            "response_size": len(response_body),
            # Keyed: a plain hash of a small body could be reversed by guessing the USCC in it.
            "request_digest": suite.keyed_hash(index_key, request_body),
            "response_digest": suite.keyed_hash(index_key, response_body),
            "request_payload": (
                suite.seal(data_secret, kept_body, aad + b"/request", nonces.next()) if kept_body else None
            ),
            "response_payload": (
                suite.seal(data_secret, response_body, aad + b"/response", nonces.next())
                if response_body and store_response
                else None
            ),
            "suite": self.suite,
            "data_key_id": data_key_id,
        }
        for name, limit in self._checked:
            value = row[name]
            if value is not None and (len(value) > limit or "\x00" in value):
                row[name] = self.clean(value, name)
        for name, value in zip(OFFICER_COLUMNS, (target_id, reason, reason_category, reason_ref), strict=True):
            if value is not None:
                row[name] = self.clean(value, name)
        return row

    def clean(self, value: str, name: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "\\0")
        limit = self._limits.get(name)
        return value[:limit] if limit is not None and len(value) > limit else value

    def chain(
        self, entries: Sequence[Entry], keys: Keys, height: int, head: str
    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The insert's values of the entries chained on `head` at `height`, and each record's hash."""
        hasher = self._hasher
        values, hashes = [], []
        for entry in entries:
            row = self.row(entry, keys)
            height += 1
            row["height"] = height
            row["prev_hash"] = head
            head = hasher.hash_row(head, row)
            row["record_hash"] = head
            for name in OFFICER_COLUMNS:  # every column present for the insert; empty ones were left out of the hash
                row.setdefault(name, None)
            values.append(self._values(row))
            hashes.append(head)
        return values, hashes
