"""Audit files: JSON Lines exports and archives of chain segments, written and verified offline.

One format for both (`msjx-audit/1`): a header line, then per chain its checkpoints and its records in
height order. Sealed payloads travel as base64 so an offline verifier hashes the very ciphertext the chain
covers; nothing in a file can be decrypted without the key ring. Archives are gzip-compressed and their
header carries the digest of the archive before them, so archives form a hash-linked list.
An export carries its signers' public keys (header `node_keys`), but only keys given by the verifier (`--pubkey`)
are trusted; a chain signed by a carried key alone is reported "carried, not pinned" and fails.
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson

from schemas.errors import MsjxError
from security.audit_chain import GENESIS_HASH, HASH_FIELD, PREV_FIELD, ChainFault, ChainReport, ChainVerifier
from security.checkpoints import Checkpoint, TrustedKeys
from security.crypto import get_suite

FORMAT = "msjx-audit/1"
BYTES_COLUMNS = ("request_payload", "response_payload")
GZIP_MAGIC = b"\x1f\x8b"


class AuditFileError(MsjxError):
    """A file is not an audit export or archive, or cannot be read; the message names the file and line."""


# --- writing -------------------------------------------------------------------------------------------------


def header_line(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": "header", "format": FORMAT, "kind": kind, **fields}) + b"\n"


def checkpoint_line(checkpoint: Checkpoint) -> bytes:
    return orjson.dumps({"type": "checkpoint", **checkpoint.to_dict()}) + b"\n"


def register_line(entry: Mapping[str, Any]) -> bytes:
    """An entry of a department's register of use, storage and destruction; verification passes over it."""
    return orjson.dumps({"type": "register", **entry}) + b"\n"


def record_line(row: Mapping[str, Any]) -> bytes:
    encoded: dict[str, Any] = {"type": "record"}
    for name, value in row.items():
        if name in BYTES_COLUMNS and value is not None:
            encoded[name] = base64.b64encode(bytes(value)).decode()
        else:
            encoded[name] = value
    return orjson.dumps(encoded) + b"\n"


class LineWriter:
    """Writes lines to a temporary file, fsyncs and renames it into place, so a crash leaves no half file."""

    def __init__(self, path: Path, *, compress: bool) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".part")
        if path.is_dir():  # found now, not at the rename after a whole export was written beside it
            raise AuditFileError(f"cannot write {path}: it is a directory; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._raw = open(self._tmp, "wb")
        except FileExistsError:  # a file where the path needs a directory
            raise AuditFileError(f"cannot write {path}: {path.parent} is not a directory") from None
        except OSError as exc:
            raise AuditFileError(f"cannot write {path}: {exc.strerror}") from None
        self._out: IO[bytes] = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0) if compress else self._raw

    def write(self, line: bytes) -> None:
        self._out.write(line)

    def close(self) -> Path:
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:  # a full disk, a file put in the way: the caller aborts, which removes the part
            raise AuditFileError(f"cannot write {self.path}: {exc.strerror}") from None
        return self.path

    def abort(self) -> None:
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading -------------------------------------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise AuditFileError(f"cannot read {path}: {exc.strerror}") from None
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    raw.seek(0)
    return raw


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line; a line that is not a JSON object is an error naming its number."""
    with _open(path) as stream:
        try:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise AuditFileError(f"{path}: line {number} is not JSON") from None
                if not isinstance(item, dict) or "type" not in item:
                    raise AuditFileError(f"{path}: line {number} is not an audit line")
                yield number, item
        except (OSError, EOFError) as exc:
            raise AuditFileError(f"{path}: unreadable ({exc})") from None


def decode_record(item: dict[str, Any]) -> dict[str, Any]:
    row = item
    row.pop("type", None)
    for name in BYTES_COLUMNS:
        value = row.get(name)
        if isinstance(value, str):
            try:
                row[name] = base64.b64decode(value, validate=True)
            except ValueError:
                row[name] = value  # left as text: the record will not verify, which is the finding
    return row


@dataclass
class FileSummary:
    header: dict[str, Any]
    chains: list[str] = field(default_factory=list)
    checkpoints: dict[str, list[Checkpoint]] = field(default_factory=dict)
    first: dict[str, dict[str, Any]] = field(default_factory=dict)


def scan(path: Path) -> FileSummary:
    """First pass: the header, which chains the file holds, their checkpoints and first records."""
    summary: FileSummary | None = None
    for number, item in iter_lines(path):
        kind = item["type"]
        if summary is None:
            if kind != "header" or item.get("format") != FORMAT:
                raise AuditFileError(f"{path}: not an {FORMAT} file (line {number} is not its header)")
            summary = FileSummary(header=item)
            continue
        if kind == "checkpoint":
            try:
                checkpoint = Checkpoint.from_dict(item)
            except (KeyError, TypeError, ValueError):
                raise AuditFileError(f"{path}: line {number} is not a checkpoint") from None
            summary.checkpoints.setdefault(checkpoint.chain_id, []).append(checkpoint)
        elif kind == "record":
            chain_id = str(item.get("chain_id"))
            if chain_id not in summary.first:
                summary.chains.append(chain_id)
                summary.first[chain_id] = decode_record(item)
    if summary is None:
        raise AuditFileError(f"{path}: empty file")
    return summary


def iter_records(path: Path, chain_id: str) -> Iterator[dict[str, Any]]:
    for _, item in iter_lines(path):
        if item["type"] == "record" and item.get("chain_id") == chain_id:
            yield decode_record(item)


def file_finder(path: Path, chain_id: str) -> Any:
    """Looks a record up by a column's value by reading the file again; used only to explain a fault."""

    def find(column: str, value: str) -> dict[str, Any] | None:
        for row in iter_records(path, chain_id):
            if row.get(column) == value:
                return row
        return None

    return find


def file_digest(path: Path, suite: str = "standard") -> str:
    """`<hash>:<hex>` of the file's bytes as stored: what the next archive links to."""
    chosen = get_suite(suite)
    hasher = chosen.new_hash()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return f"{chosen.hash_name}:{hasher.hexdigest()}"


def digest_suite(digest: str) -> str:
    return "sm" if digest.startswith("sm3:") else "standard"


def chain_ranges(header: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    ranges = header.get("chains")
    if not isinstance(ranges, list):
        return {}
    return {str(entry.get("chain_id")): entry for entry in ranges if isinstance(entry, dict)}


def verify_file(
    path: Path, trusted: TrustedKeys | None, *, start: Mapping[str, tuple[int, str]] | None = None
) -> list[ChainReport]:
    """Verify every chain in an export or archive. `start` pins a chain's first height and the hash before it.

    Without `start`, a chain starts at its first record, after that record's own prev_hash: the records are
    authentic from there up to the last checkpoint that verifies (`sealed_height`), and no further.
    """
    summary = scan(path)
    ranges = chain_ranges(summary.header)
    reports = []
    for chain_id in summary.chains or list(ranges):
        first = summary.first.get(chain_id)
        declared = ranges.get(chain_id, {})
        if start is not None and chain_id in start:
            start_height, start_hash = start[chain_id]
        elif declared.get("from_height") is not None and declared.get("start_hash"):
            start_height, start_hash = int(declared["from_height"]), str(declared["start_hash"])
        elif first is not None:
            start_height = int(first.get("height", 1))
            start_hash = str(first.get(PREV_FIELD, GENESIS_HASH)) if start_height > 1 else GENESIS_HASH
        else:
            start_height, start_hash = 1, GENESIS_HASH
        verifier = ChainVerifier(
            chain_id,
            start_height=start_height,
            start_hash=start_hash,
            checkpoints=summary.checkpoints.get(chain_id, ()),
            trusted=trusted,
        )
        rows = iter_records(path, chain_id)
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 2048:
                if not verifier.feed(batch):
                    break
                batch = []
        if batch and verifier.wants_rows:
            verifier.feed(batch)
        report = verifier.finish(file_finder(path, chain_id))
        to_height = declared.get("to_height")
        if report.ok and isinstance(to_height, int) and report.head_height < to_height:
            detail = (
                f"the file's header promises heights up to {to_height}, but its records end at {report.head_height}"
            )
            report = replace(report, fault=ChainFault(chain_id, report.head_height + 1, "truncated", detail))
        reports.append(report)
    return reports


def write_records(writer: LineWriter, rows: Iterable[Mapping[str, Any]]) -> tuple[int, str | None, int, int]:
    """Write rows; returns (count, last record hash, first ts, last ts)."""
    count, last_hash, first_ts, last_ts = 0, None, 0, 0
    for row in rows:
        writer.write(record_line(row))
        count += 1
        last_hash = str(row[HASH_FIELD])
        first_ts = first_ts or int(row["ts_ms"])
        last_ts = int(row["ts_ms"])
    return count, last_hash, first_ts, last_ts
