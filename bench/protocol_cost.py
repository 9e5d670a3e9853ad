"""The HTTP server layer's own CPU a request, in this process, without sockets: uvicorn's httptools protocol against
gateway/server/protocol.py's bounded one, fed the gateway's signed POST through a transport that only counts.

`python -m bench.protocol_cost [--requests N] [--rounds R] [--old PATH]` prints event-loop CPU µs a request (thread
time, median of the rounds) for each protocol, with a fixed-answer ASGI app. No syscalls and no other process take
part, so differences of a microsecond show even on a busy machine, where whole-server runs swing by a quarter.
`--old PATH` adds the protocol module at PATH (e.g. a copy of an earlier commit's) as a third contestant.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bench.ab_serve import floor_asgi

BODY = b'{"purpose":"subsidy-eligibility","params":{"uscc":"91310000MA1FL0000X"}}'
REQUEST = (
    b"POST /v1/services/credit/dishonest-debtor HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"Content-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Content-Digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\r\n"
    b'Signature-Input: msjx=("@method" "@target-uri" "content-digest" "content-type");created=1764950000;'
    b'keyid="caller-0001.k1";alg="ed25519";nonce="6a1f0c9e2b7d4a58"\r\n'
    b"Signature: msjx=:" + b"A" * 86 + b"==:\r\n\r\n" + BODY
)


class CountingTransport(asyncio.Transport):
    """Accepts writes and counts them; never closes by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def cost(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    """Event-loop CPU µs a request: each request fed in one read, answered, and the answer's task run to its end."""
    config = Config(app=floor_asgi, loop="none", http="httptools", lifespan="off", access_log=False)
    config.load()
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = CountingTransport()
    protocol.connection_made(transport)
    started = time.thread_time()
    for _ in range(requests):  # bounded
        protocol.data_received(REQUEST)
        async with asyncio.timeout(5):  # bounded: the one request's task ends after its answer
            while state.tasks:
                await asyncio.gather(*state.tasks)
    spent = time.thread_time() - started
    assert transport.written > requests * 100 and not transport.closing, "the requests were not answered"
    protocol.connection_lost(None)
    return 1e6 * spent / requests


def _load(path: Path) -> type[HttpToolsProtocol]:
    spec = importlib.util.spec_from_file_location("old_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.GuardedHttpToolsProtocol  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.protocol_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old", type=Path, help="an earlier gateway/server/protocol.py to compare")
    args = parser.parse_args(argv)
    from gateway.server.protocol import GuardedHttpToolsProtocol

    contestants: dict[str, type[HttpToolsProtocol]] = {
        "uvicorn httptools": HttpToolsProtocol,
        "bounded (gateway/server/protocol.py)": GuardedHttpToolsProtocol,
    }
    if args.old:
        contestants[f"bounded ({args.old})"] = _load(args.old)
    runs: dict[str, list[float]] = {name: [] for name in contestants}

    async def measure() -> None:
        for protocol_class in contestants.values():
            await cost(protocol_class, 500)  # warm-up
        for _ in range(args.rounds):  # rounds alternate the contestants
            for name, protocol_class in contestants.items():
                runs[name].append(await cost(protocol_class, args.requests))

    uvloop.run(measure())
    for name, values in runs.items():
        print(f"{name:<48} {statistics.median(values):6.2f} µs a request  ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
