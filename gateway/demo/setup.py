"""The demo: simulators in a child process, demo callers with keys on disk, demo grants, and a call that works."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
from sqlalchemy import select

from adapters.base import Adapter
from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.clock import SYSTEM_CLOCK
from gateway.console.accounts import SecretBox
from gateway.console.demo import seed_console_accounts
from gateway.demo.sharing import seed_sharing
from gateway.settings import Settings
from gateway.sharing.ownership import seed_owners
from gateway.storage import db
from gateway.storage.models import CallerKey, Grant
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import (
    generate_ed25519,
    key_id_for,
    load_private_key_file,
    private_key_pem,
    public_key_pem,
    write_secret_file,
)

__all__ = ["DEMO_CALLERS", "DEMO_PURPOSE", "NARROW_PURPOSE", "key_id_for", "seed", "start_simulators"]

DEMO_PURPOSE = "XM-2025-001"
NARROW_PURPOSE = "QZ-2025-007"
PURPOSE_NAMES = {DEMO_PURPOSE: "厦门市惠企政策免申即享资格比对", NARROW_PURPOSE: "泉州市惠企政策失信核查（仅失信标记）"}


@dataclass(frozen=True)
class DemoCaller:
    caller_id: str
    name: str
    department: str
    roles: tuple[str, ...]


DEMO_CALLERS = (
    DemoCaller("platform", "免申即享平台", "市数据管理局", ("platform",)),
    DemoCaller("data-officer", "数据管理局数据专员", "市数据管理局", ("department",)),
    DemoCaller("data-head", "数据管理局分管负责人", "市数据管理局", ("department",)),
    # One data officer for each department owning a simulated system (its 提供单位): only it decides requests.
    DemoCaller("credit-officer", "发改委信用办数据专员", "市发改委", ("department",)),
    DemoCaller("credit-head", "发改委信用办负责人", "市发改委", ("department",)),
    DemoCaller("dept-tax", "税务局数据专员", "市税务局", ("department",)),
    DemoCaller("dept-finance", "财政局数据专员", "市财政局", ("department",)),
    DemoCaller("dept-market", "市场监管局数据专员", "市市场监管局", ("department",)),
    DemoCaller("officer", "安全审计员", "市网信办", ("officer",)),
    DemoCaller("coordinator", "数据共享协调员", "市数据管理局", ("coordinator",)),
    DemoCaller("admin", "网关管理员", "市大数据中心", ("admin",)),
)


def start_simulators(
    host: str = "127.0.0.1", data_dir: Path | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A child process keeps the simulators off the gateway's core and event loop, as real upstreams would be.

    `data_dir` is where durable simulators (the treasury) keep their state, so a restarted demo remembers payments.
    """
    durable = ["--data-dir", str(data_dir)] if data_dir is not None else []
    # stdin is a pipe the child watches: if this process dies without cleaning up, the simulators stop too.
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "simulators", "--host", host, "--stop-on-stdin-close", *durable],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError("the simulators did not start; run `msjx-gateway simulators` to see why")
    return process, orjson.loads(line)


async def seed(settings: Settings, adapters: dict[str, Adapter]) -> list[dict[str, object]]:
    """Create demo callers, keys and grants once; on a restart reuse them. Returns the callers.json listing."""
    demo_dir = settings.data_dir / "demo"
    keys_dir = demo_dir / "keys"
    engine = db.create_engine(settings)
    sessions = db.sessionmaker(engine)
    listing = []
    try:
        async with sessions() as session:
            for demo in DEMO_CALLERS:
                key_file = keys_dir / f"{demo.caller_id}.pem"
                if key_file.exists():
                    private_key = load_private_key_file(key_file)
                else:
                    private_key = generate_ed25519()
                    write_secret_file(key_file, private_key_pem(private_key))
                public_key = private_key.public_key()
                key_id = key_id_for(demo.caller_id, public_key)
                key = KeyIn(key_id=key_id, public_key=public_key_pem(public_key))
                if await callers.session_has_caller(session, demo.caller_id):
                    if await session.get(CallerKey, key_id) is None:
                        await callers.add_key(session, demo.caller_id, key)
                else:
                    body = CallerIn(
                        caller_id=demo.caller_id,
                        name=demo.name,
                        department=demo.department,
                        roles=list(demo.roles),
                        keys=[key],
                    )
                    await callers.add_caller(session, body)
                purposes = await _demo_grants(session, demo, adapters) if "platform" in demo.roles else []
                listing.append(
                    {
                        "caller_id": demo.caller_id,
                        "key_id": key_id,
                        "roles": list(demo.roles),
                        "key_file": str(key_file),
                        "purposes": purposes,
                    }
                )
        await seed_owners(sessions, adapters)
        async with sessions() as session:
            sharing = await seed_sharing(session, adapters, SYSTEM_CLOCK.now())
        async with sessions() as session:
            await seed_console_accounts(session, demo_dir, SYSTEM_CLOCK.now(), SecretBox.for_settings(settings))
    finally:
        await engine.dispose()
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / "callers.json").write_text(json.dumps(listing, ensure_ascii=False, indent=2) + "\n")
    if sharing:
        (demo_dir / "sharing.json").write_text(json.dumps(sharing, ensure_ascii=False, indent=2) + "\n")
    # Run the finalizers of seeding's garbage now: a Ctrl-C that lands in one of them later, before the
    # server has its signal handlers, would be swallowed ("Exception ignored in ...") and never stop it.
    gc.collect()
    return listing


async def _demo_grants(session, demo: DemoCaller, adapters: dict[str, Adapter]) -> list[str]:  # type: ignore[no-untyped-def]
    """A full grant for every operation under DEMO_PURPOSE, and a narrow one (one field) to show minimization."""
    existing = {
        (row.service, row.operation, row.purpose)
        for row in (await session.scalars(select(Grant).where(Grant.caller_id == demo.caller_id))).all()
        if row.revoked_at is None
    }
    valid_to = SYSTEM_CLOCK.now() + timedelta(days=365)
    for service, adapter in adapters.items():
        for operation in adapter.operations.values():
            wanted = [(DEMO_PURPOSE, list(operation.fields))]
            if "listed" in operation.fields:
                wanted.append((NARROW_PURPOSE, ["listed"]))
            for purpose, fields in wanted:
                if (service, operation.name, purpose) in existing:
                    continue
                body = GrantIn(
                    caller_id=demo.caller_id,
                    service=service,
                    operation=operation.name,
                    purpose=purpose,
                    purpose_name=PURPOSE_NAMES[purpose],
                    fields=fields,
                    valid_to=valid_to,
                    # Read-only data may also come in batch jobs (批量交换): the 条件类 policy compares by one batch.
                    share_methods=["api", "batch"] if operation.safe else ["api"],
                )
                await grant_rows.add_grant(session, body, adapters)
    return [DEMO_PURPOSE, NARROW_PURPOSE]


def command_name() -> str:
    """How the user reaches this command: bare when it is on PATH, else the path they ran (e.g. .venv/bin/…)."""
    if shutil.which("msjx-gateway"):
        return "msjx-gateway"
    return os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith("msjx-gateway") else "msjx-gateway"


def call_line(port: int, listing: list[dict[str, object]], uscc: str, host: str = "127.0.0.1") -> str:
    platform = next(entry for entry in listing if "platform" in entry["roles"])  # type: ignore[operator]
    return (
        f"{command_name()} call credit dishonest-debtor --purpose {DEMO_PURPOSE} --param uscc={uscc}"
        f" --key {platform['key_file']} --caller {platform['caller_id']} --url http://{host}:{port}"
    )
