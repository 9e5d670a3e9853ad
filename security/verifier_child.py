"""The verifier process's own side (`python -m security.verifier_child`): Ed25519 and SM2 verdicts for framed batches.

Started by `security.verifier_process.ProcessVerifier`. It imports only `security.verdicts` and `security.pipes` (and
`security.sm2` once an SM2 check comes), ignores SIGINT and SIGTERM (they are for the gateway) and exits when its
stdin closes, so it never outlives the gateway.
"""

from __future__ import annotations

import contextlib
import marshal
import signal
import sys
from typing import BinaryIO

from security.pipes import frame, read_frame, say_ready
from security.verdicts import verifies


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    say_ready(stdout)
    while (payload := read_frame(stdin)) is not None:
        items = marshal.loads(payload)  # noqa: S302 - written by our own parent, on a private pipe
        verdicts = bytes(verifies(*item) for item in items)
        stdout.write(frame(verdicts))
        stdout.flush()


def main() -> None:
    # Ctrl-C in a terminal, or SIGTERM to the whole process group, is for the gateway, which closes stdin when it
    # is done with this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):  # the gateway went away: nothing is left to answer
        serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
