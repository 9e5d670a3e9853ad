"""Helper child processes that take frames on stdin and answer on stdout: starting one, and reading a frame.

Used by the signature verifier (`security.verifier_process`) and the SQLite audit committer
(`gateway.audit.committer`). A frame is a 4-byte big-endian length and that many bytes. A child writes READY once
it can serve, and exits when its stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from typing import BinaryIO

FRAME_HEADER = struct.Struct(">I")
READY = b"R"
START_TIMEOUT = 30.0


async def start_child(module: str, *arguments: str) -> asyncio.subprocess.Process | None:
    """`python -m module arguments...` with pipes on its stdin and stdout, once it has said READY; None, and no
    process left behind, when it has not within START_TIMEOUT (its errors are on this process's stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *arguments, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        ready = await asyncio.wait_for(process.stdout.read(1), START_TIMEOUT)
    except TimeoutError:
        ready = b""
    if ready == READY:
        return process
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
    return None


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def say_ready(stdout: BinaryIO) -> None:
    """The child's side of start_child: it can serve now."""
    stdout.write(READY)
    stdout.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """The child's next frame; None at the end of input, or when it ends mid-frame."""
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None
    size = FRAME_HEADER.unpack(header)[0]
    payload = stream.read(size)
    return payload if len(payload) == size else None
