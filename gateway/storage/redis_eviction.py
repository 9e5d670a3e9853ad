"""Whether Redis may drop the gateway's keys without restarting, refused at start and watched while serving.

A Redis with `maxmemory` set and any policy but `noeviction` drops keys under memory pressure, the ones with a TTL
first under the `volatile-*` policies: seen nonces are exactly those. A captured signed request was then accepted
again inside its ±MSJX_SIGNATURE_MAX_SKEW window once its nonce was dropped (reproduced on a 4 MB Redis with
`volatile-lru`), and a dropped quota counter gives back calls already spent. With `noeviction` a full Redis refuses
writes, and the gateway answers 503 until there is room. A FLUSHALL or FLUSHDB drops them all at once; the watch
notices it by a key of its own that has gone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

log = logging.getLogger("msjx.state")

SAFE_POLICY = "noeviction"
RISK = (
    "a seen nonce it drops lets a signed request be replayed within its signature window, and a quota counter it"
    " drops gives back calls already spent; set maxmemory-policy noeviction (a full Redis then refuses writes, and"
    " the gateway answers 503 until there is room)"
)
WATCH_SECONDS = 5.0
REPEAT_SECONDS = 60.0


@dataclass(frozen=True)
class ServerFacts:
    """What one INFO says of the server that matters to the gateway's keys."""

    maxmemory: int
    policy: str
    evicted_keys: int
    run_id: str
    cluster: bool
    maxclients: int = 0  # 0: not said (INFO before Redis 7 leaves it out)
    connected_clients: int = 0

    @property
    def evicts(self) -> bool:
        """Keys may be dropped: a memory limit, and a policy other than refusing writes at it."""
        return self.maxmemory > 0 and self.policy != SAFE_POLICY

    def describe(self) -> str:
        return f"maxmemory {self.maxmemory} bytes, maxmemory-policy {self.policy}"


async def server_facts(client: Any) -> ServerFacts | None:
    """The server's memory limit, policy, evictions so far, run id and cluster mode (one INFO); None where INFO is
    refused (an ACL, a renamed command)."""
    try:
        info = await client.info()
    except ResponseError:
        return None
    return ServerFacts(
        int(info.get("maxmemory", 0)),
        str(info.get("maxmemory_policy", SAFE_POLICY)),
        int(info.get("evicted_keys", 0)),
        str(info.get("run_id", "")),
        bool(int(info.get("cluster_enabled", 0))),
        int(info.get("maxclients", 0)),
        int(info.get("connected_clients", 0)),
    )


class EvictionWatch:
    """Looks every few seconds. A policy that evicts is an ERROR (once a minute at most). Keys evicted since the last
    look, or this node's own key gone while the server kept running (a flush), move the nonce store's start to now
    (`forget`), so that requests signed before it are refused as after a Redis restart: a dropped nonce cannot be
    replayed past the next look. Each node keeps its own key: the first node to notice a flush would otherwise
    hide it from the others by making the key again."""

    def __init__(
        self,
        client: Any,
        marker_key: str,
        forget: Callable[[float], None],
        time_source: Callable[[], float] = time.time,
        repeat_seconds: float = REPEAT_SECONDS,
    ) -> None:
        self._client = client
        self._marker = marker_key
        self._forget = forget
        self._time = time_source
        self._repeat = repeat_seconds
        self._born = time_source()
        self._run_id: str | None = None
        self._evicted = 0
        self._said_policy_at: float | None = None
        self._said_loss_at: float | None = None
        self._unsaid = 0

    async def look(self) -> None:
        facts = await server_facts(self._client)
        if facts is None:
            return
        now = self._time()
        if facts.evicts and self._due(self._said_policy_at, now):
            self._said_policy_at = now
            log.error("Redis evicts keys when full (%s): %s", facts.describe(), RISK)
        elif not facts.evicts:
            self._said_policy_at = None
        # Set if missing. Without expiry, so that only a flush (or an allkeys-* eviction) takes it.
        marker_made = bool(await self._client.set(self._marker, b"1", nx=True))
        first = self._run_id is None
        same_server = facts.run_id == self._run_id
        evicted = facts.evicted_keys - self._evicted if same_server else 0
        self._run_id, self._evicted = facts.run_id, facts.evicted_keys
        if first and marker_made:
            # This node's first start on this Redis, or a flush before it started: either way nothing signed before
            # the node started can be vouched for (whole seconds: a request signed in that second still passes).
            self._forget(float(int(self._born)))
            log.info("no watch key of this node in Redis yet: requests signed before the node started are refused")
            return
        flushed = marker_made and same_server
        if evicted <= 0 and not flushed:
            return  # nothing lost; or a restarted server, which the epoch handles
        # Signatures carry whole seconds. A flush dropped the newest nonces too: the whole current second goes (its
        # later requests are refused once, "sign the request again"). Eviction drops the least recently used first,
        # so the current second stays usable: refusing it at every look would refuse a fifth of all calls while the
        # policy evicts.
        self._forget(float(math.ceil(now)) if flushed else float(int(now)))
        self._unsaid += max(evicted, 0)
        if self._due(self._said_loss_at, now):
            self._said_loss_at = now
            lost = f"it evicted {self._unsaid} keys" if self._unsaid else "its keys were flushed"
            log.warning(
                "Redis dropped state without restarting (%s): requests signed before now are refused"
                " (signature_before_restart), and today's quota counts are rebuilt from the audit records, as after a"
                " restart",
                lost,
            )
            self._unsaid = 0

    def _due(self, said_at: float | None, now: float) -> bool:
        return said_at is None or now - said_at >= self._repeat
