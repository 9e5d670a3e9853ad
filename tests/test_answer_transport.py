"""The answer's head leaves with its body in one write, and alone at the loop's next turn when no body follows yet
(gateway/server/protocol.py, AnswerTransport), on a real uvloop transport over a socket pair."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.server.protocol import AnswerTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


@dataclass
class Endpoint:
    """What AnswerTransport reads of the protocol: its loop, its transport, and how it lingers."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    lingered: list[bool] = field(default_factory=list)

    def close_after_answer(self) -> None:
        self.lingered.append(True)
        self.transport.close()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, socket.socket]]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    yield Endpoint(loop, transport), peer
    transport.close()
    peer.close()


def _pending(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def test_a_head_waits_for_its_body_and_both_leave_in_one_write(pair: tuple[Endpoint, socket.socket]) -> None:
    endpoint, peer = pair
    answer = AnswerTransport(endpoint)  # type: ignore[arg-type]
    answer.write(HEAD)
    assert _pending(peer) == b""  # held: nothing was sent yet
    answer.write(b"ok")
    assert _pending(peer) == HEAD + b"ok"
    answer.write(b"more")  # after the first body write, writes pass straight through
    assert _pending(peer) == b"more"


async def test_a_head_without_a_body_yet_leaves_at_the_next_turn(pair: tuple[Endpoint, socket.socket]) -> None:
    endpoint, peer = pair
    answer = AnswerTransport(endpoint)  # type: ignore[arg-type]
    answer.write(HEAD)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _pending(peer) == HEAD
    answer.write(b"ok")
    assert _pending(peer) == b"ok"


async def test_closing_sends_a_held_head_first_and_lingers_only_when_asked(
    pair: tuple[Endpoint, socket.socket],
) -> None:
    endpoint, peer = pair
    answer = AnswerTransport(endpoint)  # type: ignore[arg-type]
    answer.write(HEAD)
    answer.linger_on_close = True
    answer.close()
    await asyncio.sleep(0.05)
    assert _pending(peer) == HEAD
    assert endpoint.lingered == [True]
    assert answer.is_closing()
