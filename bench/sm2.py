"""`python -m bench.sm2`: what SM2 (the sm suite's checkpoints, `sm2-sm3` caller keys) costs, next to Ed25519.

Prints a Markdown table of CPU microseconds per operation (the best of three rounds, each the mean of many
operations, on one core): signing and checking a checkpoint, checking a signed request as the gateway does, and
the same check sent to the verifier process, where the figure that matters is what the event loop pays.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.checkpoints import TrustedKeys, sign_checkpoint
from security.ed25519 import verifies as ed25519_verifies
from security.keys import PrivateKey, public_key_bytes
from security.signatures import parse_signature_params, sign_request, verify_request
from security.sm2 import Sm2PrivateKey
from security.verdicts import ED25519, SM2_SM3
from security.verifier_process import InlineVerifier, ProcessVerifier

URL = "http://gw.example:8000/v1/services/credit/dishonest-debtor"
BODY = b'{"purpose":"XM-2025-001","params":{"uscc":"91350213MAG6BDRC7A"}}'
CHECKPOINT = b'msjx-audit-checkpoint/1\n{"chain_id":"node-1","head_hash":"' + b"ab" * 32 + b'","height":1000}'


def per_op(work: Callable[[], object], count: int) -> float:
    """CPU µs per call of `work`: the best of three rounds of `count` calls."""
    work()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            work()
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


def signed_request(key: PrivateKey) -> tuple[list[tuple[str, str]], object]:
    request = httpx.Request("POST", URL, content=BODY)
    sign_request("POST", URL, request.headers, BODY, key_id="k1", private_key=key)
    return list(request.headers.multi_items()), key.public_key()


async def whole_checks(headers: list[tuple[str, str]], public: Any, count: int) -> float:
    """µs per whole check of a signed request (parse, signature base, the check on this thread), `count` of them."""
    checker = InlineVerifier()
    started = time.perf_counter()
    for _ in range(count):
        await verify_request(checker, "POST", URL, headers, BODY, public, parse_signature_params(headers))
    return (time.perf_counter() - started) / count * 1e6


async def through_the_verifier(key: PrivateKey, algorithm: str, count: int) -> tuple[float, float]:
    """(ms from asking to the verdict, one check at a time; event-loop CPU µs per check, `count` at once)."""
    message = b"signature base " * 20
    raw, signature = public_key_bytes(key.public_key()), key.sign(message)
    verifier = ProcessVerifier(timeout=30.0)
    await verifier.start()
    try:
        await verifier.verify(raw, signature, message, algorithm)  # the child imports what the algorithm needs
        started = time.perf_counter()
        for _ in range(10):
            assert await verifier.verify(raw, signature, message, algorithm)
        latency_ms = (time.perf_counter() - started) / 10 * 1e3
        cpu = time.process_time()
        verdicts = await asyncio.gather(*(verifier.verify(raw, signature, message, algorithm) for _ in range(count)))
        loop_us = (time.process_time() - cpu) / count * 1e6
        assert all(verdicts)
    finally:
        await verifier.close()
    return latency_ms, loop_us


def first_use_ms() -> float:
    """Wall ms of a fresh interpreter's first SM2 signature: importing snowland-smx and the known-answer test."""
    code = (
        "import time; t = time.perf_counter(); from security.sm2 import Sm2PrivateKey;"
        " Sm2PrivateKey.generate().sign(b'x'); print((time.perf_counter() - t) * 1e3)"
    )
    baseline = "import time; t = time.perf_counter(); print((time.perf_counter() - t) * 1e3)"
    run = [float(subprocess.check_output([sys.executable, "-c", source], text=True)) for source in (code, baseline)]
    return run[0] - run[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100, help="SM2 operations per round (Ed25519: 20 times more)")
    count = parser.parse_args().count
    sm2_key, ed_key = Sm2PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = {SM2_SM3: sm2_key, ED25519: ed_key}
    rows: list[tuple[str, float, float]] = []

    sm2_sig, ed_sig = sm2_key.sign(CHECKPOINT), ed_key.sign(CHECKPOINT)
    sm2_public, ed_public = sm2_key.public_key(), ed_key.public_key()
    ed_raw = ed_public.public_bytes_raw()
    rows.append(("sign 100 bytes", per_op(lambda: sm2_key.sign(CHECKPOINT), count),
                 per_op(lambda: ed_key.sign(CHECKPOINT), count * 20)))  # fmt: skip
    rows.append(("verify 100 bytes (Ed25519: libsodium)", per_op(lambda: sm2_public.verify(sm2_sig, CHECKPOINT), count),
                 per_op(lambda: ed25519_verifies(ed_raw, ed_sig, CHECKPOINT), count * 20)))  # fmt: skip
    rows.append(("verify 100 bytes (Ed25519: OpenSSL)", float("nan"),
                 per_op(lambda: ed_public.verify(ed_sig, CHECKPOINT), count * 20)))  # fmt: skip

    checkpoints = {name: sign_checkpoint(key, "node-1", 1000, "ab" * 32, 1) for name, key in keys.items()}
    trusted = TrustedKeys([sm2_public, ed_public])
    rows.append(("sign a checkpoint", *(per_op(lambda k=key: sign_checkpoint(k, "node-1", 1000, "ab" * 32, 1), n)
                                        for key, n in ((sm2_key, count), (ed_key, count * 20)))))  # fmt: skip
    rows.append(("check a checkpoint", *(per_op(lambda c=checkpoints[name]: trusted.check(c), n)
                                         for name, n in ((SM2_SM3, count), (ED25519, count * 20)))))  # fmt: skip

    figures = []
    for name, n in ((SM2_SM3, count), (ED25519, count * 20)):
        headers, public = signed_request(keys[name])

        figures.append(asyncio.run(whole_checks(headers, public, n)))
    rows.append(("check a signed request, whole (RFC 9421 profile)", *figures))

    sm2_latency, sm2_loop = asyncio.run(through_the_verifier(sm2_key, SM2_SM3, count))
    ed_latency, ed_loop = asyncio.run(through_the_verifier(ed_key, ED25519, count * 5))
    rows.append(("… in the verifier process: event-loop CPU per check", sm2_loop, ed_loop))

    print("| operation | SM2 (sm2-sm3) µs | Ed25519 µs |")
    print("| --- | ---: | ---: |")
    for label, sm2_us, ed_us in rows:
        sm2_text = "—" if sm2_us != sm2_us else f"{sm2_us:,.0f}"
        print(f"| {label} | {sm2_text} | {ed_us:,.1f} |")
    print(f"| … in the verifier process: ms from asking to the verdict, one at a time | {sm2_latency:.2f} ms"
          f" | {ed_latency:.2f} ms |")  # fmt: skip
    print(f"\nfirst SM2 use in a process (import snowland-smx, known-answer test): {first_use_ms():.0f} ms")


if __name__ == "__main__":
    main()
