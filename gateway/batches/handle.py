"""The platform's side of a batch: submit one, follow it, read its results as they come (`GatewayClient.batch`).

Only HTTP: this module is the client, it needs nothing of the server. Up to 1,000 subjects go inline; more, or a
file, go as an NDJSON or CSV body with the purpose and operations in the query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.client import GatewayClient

INLINE_MAX = 1_000
TERMINAL = ("done", "failed", "cancelled")


def _operation(entry: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(entry, dict):
        return {"service": entry["service"], "operation": entry["operation"], "params": entry.get("params", {})}
    service, _, operation = entry.partition("/")
    if not service or not operation:
        raise ValueError(f"{entry!r} is not service/operation")
    return {"service": service, "operation": operation, "params": {}}


def _subject(entry: str | dict[str, Any]) -> dict[str, Any]:
    return {"uscc": entry} if isinstance(entry, str) else dict(entry)


class BatchHandle:
    """A submitted batch: `status()`, `wait()`, `results()` (an iterator over result lines), `cancel()`."""

    def __init__(self, client: GatewayClient, batch_id: str, total: int) -> None:
        self.client = client
        self.batch_id = batch_id
        self.total = total

    def __repr__(self) -> str:
        return f"BatchHandle({self.batch_id!r}, total={self.total})"

    def status(self) -> dict[str, Any]:
        return self.client.request("GET", f"/v1/batches/{self.batch_id}")

    def cancel(self) -> dict[str, Any]:
        return self.client.request("DELETE", f"/v1/batches/{self.batch_id}")

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the batch is done, failed or cancelled (a paused batch is waited for); its last status.
        TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_progress is not None:
                on_progress(status)
            if status["state"] in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {self.batch_id} is still {status['state']} after {timeout} s")
            time.sleep(poll)

    def results(
        self, cursor: int = 0, *, follow: bool = True, poll: float = 0.5, accept: str = "application/x-ndjson"
    ) -> Iterator[Any]:
        """Every result line from `cursor` on: dicts for NDJSON, raw CSV lines (bytes) with `accept="text/csv"`.
        With `follow`, lines are read while the batch runs, until every line was handed out or it stopped."""
        while True:
            with self.client.stream("GET", f"/v1/batches/{self.batch_id}/results", cursor, accept) as response:
                for line in response.iter_lines():
                    if not line:
                        continue
                    yield orjson.loads(line) if accept != "text/csv" else line
                cursor = int(response.headers["batch-next-cursor"])
                complete = response.headers.get("batch-complete") == "true"
                state = response.headers.get("batch-state", "")
            if complete or not follow:
                return
            if state in TERMINAL:
                # Stopped before every line was run: what there is has been handed out.
                if int(self.status()["results"]["lines_ready"]) <= cursor:
                    return
            time.sleep(poll)


def submit(
    client: GatewayClient,
    purpose: str,
    operations: Iterable[str | dict[str, Any]],
    subjects: Iterable[str | dict[str, Any]] | None = None,
    *,
    subjects_file: str | Path | None = None,
    params: dict[str, Any] | None = None,
) -> BatchHandle:
    """Submit a batch; `params` apply to every operation that takes them (e.g. {"year": 2025})."""
    ops = [_operation(entry) for entry in operations]
    if subjects_file is not None:
        path = Path(subjects_file)
        media_type = "text/csv" if path.suffix.lower() == ".csv" else "application/x-ndjson"
        return _upload(client, purpose, ops, path.read_bytes(), media_type, params)
    # Shared parameters ride on each subject line: every operation takes those of them it accepts.
    lines = [{**(params or {}), **_subject(entry)} for entry in subjects or ()]
    if len(lines) > INLINE_MAX:
        body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return _upload(client, purpose, ops, body, "application/x-ndjson", None)
    answer = client.request("POST", "/v1/batches", {"purpose": purpose, "operations": ops, "subjects": lines})
    return BatchHandle(client, answer["batch_id"], answer["total"])


def _upload(
    client: GatewayClient,
    purpose: str,
    ops: list[dict[str, Any]],
    body: bytes,
    media_type: str,
    params: dict[str, Any] | None,
) -> BatchHandle:
    query: list[tuple[str, str]] = [("purpose", purpose)]
    query += [("operation", f"{op['service']}/{op['operation']}") for op in ops]
    if params:
        query.append(("params", orjson.dumps(params).decode()))
    response = client.http.post("/v1/batches", params=query, content=body, headers={"Content-Type": media_type})
    answer = client.answer(response)
    return BatchHandle(client, answer["batch_id"], answer["total"])
