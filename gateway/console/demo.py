"""Demo console accounts, one per role, written to <data-dir>/demo/console-accounts.json (mode 0600).

A restart reuses them while that file still holds their password and TOTP secret; an account whose secrets are not
in the file (it was deleted) gets new ones, since only hashes are in the database.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pyotp
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.console import accounts
from gateway.console.store import ConsoleAccount
from security.keys import write_secret_file

ACCOUNTS_FILE = "console-accounts.json"
# username, role, bound caller (a demo caller of gateway/demo/setup.py), display name
DEMO_ACCOUNTS = (
    ("dept-officer", "department", "credit-officer", "发改委信用办数据专员"),
    ("auditor", "auditor", "officer", "网信办审计管理员"),
    ("operator", "operator", "admin", "大数据中心系统管理员"),
    ("secadmin", "security_admin", None, "安全管理员"),
)


def _known(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return {entry["username"]: entry for entry in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


async def seed_console_accounts(
    session: AsyncSession, demo_dir: Path, now: datetime, box: accounts.SecretBox
) -> list[dict[str, Any]]:
    """Create (or re-key) the demo accounts; write and return [{username, password, totp_secret, roles}]."""
    path = demo_dir / ACCOUNTS_FILE
    known = _known(path)
    listing = []
    for username, role, caller_id, name in DEMO_ACCOUNTS:
        account = await session.get(ConsoleAccount, username)
        entry = known.get(username)
        if account is None:
            created = await accounts.add_account(
                session,
                username=username,
                role=role,
                display_name=name,
                caller_id=caller_id,
                password=None,
                created_by="demo",
                now=now,
                box=box,
            )
            entry = {"username": username, "password": created.password, "totp_secret": created.totp_secret}
        elif entry is None or not accounts.check_password(account, entry.get("password", "")):
            password = accounts.generate_password()
            account.password_hash = accounts.hash_password(password)
            secret = pyotp.random_base32()
            account.totp_secret = box.seal(username, secret)
            account.totp_last_step = None
            await session.commit()
            entry = {"username": username, "password": password, "totp_secret": secret}
        listing.append(
            {
                "username": username,
                "password": entry["password"],
                "totp_secret": entry["totp_secret"],
                "roles": [role],
            }
        )
    write_secret_file(path, (json.dumps(listing, ensure_ascii=False, indent=2) + "\n").encode())
    return listing
