"""Console accounts: the password policy, argon2 hashes, TOTP secrets, and the changes the CLI and the security
admin make (add, list, lock, unlock, reset TOTP)."""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.console.roles import ROLES
from gateway.console.store import ConsoleAccount, ConsoleSession
from gateway.settings import Settings
from gateway.storage.models import Caller
from schemas.errors import MsjxError
from security.keyring import load_master_key

HASHER = PasswordHasher()  # argon2id, the library's RFC 9106 defaults
MAX_FAILURES = 5
LOCK_MINUTES = 15
MIN_PASSWORD_LENGTH = 12
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{2,63}$")
ISSUER = "msjx-gateway"


class AccountError(MsjxError, ValueError):
    """A change to an account that the rules refuse; the message says why, in Chinese and English."""


SEALED = "v1:"


class SecretBox:
    """Seals TOTP secrets at rest (GB/T 22239 asks that authentication data be kept confidential): AES-256-GCM under
    a key derived from the gateway's master key, bound to the username. Every node holds the same master key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_master(cls, master_secret: bytes) -> SecretBox:
        key = HKDF(SHA256(), 32, salt=None, info=b"msjx-gateway/console-totp/1").derive(master_secret)
        return cls(key)

    @classmethod
    def for_settings(cls, settings: Settings) -> SecretBox:
        master = load_master_key(
            env_value=settings.master_key.get_secret_value() if settings.master_key else None,
            secret_file=settings.master_key_file,
            default_path=settings.keys_dir / "master.key",
        )
        return cls.from_master(master.secret)

    def seal(self, username: str, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), username.encode())
        return SEALED + base64.b64encode(nonce + sealed).decode()

    def open(self, username: str, stored: str) -> str:
        """The secret; AccountError when it was sealed under another master key or for another account."""
        if not stored.startswith(SEALED):
            return stored  # written before secrets were sealed
        try:
            raw = base64.b64decode(stored[len(SEALED) :], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], username.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise AccountError(
                f"{username} 的动态口令密钥无法解密 (the TOTP secret does not open: another master key?); reset-totp"
            ) from exc


def password_problems(password: str, username: str) -> list[str]:
    """What the password policy finds wrong (GB/T 22239 asks for complexity): empty when it is acceptable."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"至少 {MIN_PASSWORD_LENGTH} 个字符 (at least {MIN_PASSWORD_LENGTH} characters)")
    classes = [
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(classes) < 3:
        problems.append("须含大写、小写、数字、符号中的至少三类 (three of: upper, lower, digit, symbol)")
    if username and username.lower() in password.lower():
        problems.append("不得包含用户名 (must not contain the username)")
    if len(set(password)) < 6:
        problems.append("不同字符过少 (too few distinct characters)")
    return problems


def generate_password() -> str:
    """A random password the policy accepts (demo accounts, resets)."""
    alphabet = string.ascii_letters + string.digits
    while True:
        core = "".join(secrets.choice(alphabet) for _ in range(14))
        candidate = f"{core}-{secrets.randbelow(90) + 10}"
        if not password_problems(candidate, ""):
            return candidate


def hash_password(password: str) -> str:
    return HASHER.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """Compared against when the username is unknown, so a failed login takes as long either way.

    Made at the first sign-in, not at import: hashing takes argon2's 64 MiB, which every process that imports the
    console (each gateway worker, each CLI command) would otherwise carry in its peak memory.
    """
    return HASHER.hash(secrets.token_urlsafe(16))


def check_password(account: ConsoleAccount | None, password: str) -> bool:
    try:
        return HASHER.verify(account.password_hash if account else _dummy_hash(), password) and account is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_totp(account: ConsoleAccount, code: str, now: datetime, box: SecretBox) -> int | None:
    """The time step `code` belongs to (this one or the one before or after, for clock drift), if it is a valid
    code this account has not used yet; else None."""
    code = code.strip()
    if not re.fullmatch(r"\d{6}", code):
        return None
    try:
        totp = pyotp.TOTP(box.open(account.username, account.totp_secret))
    except AccountError:
        return None
    moment = int(now.timestamp())
    for offset in (0, -1, 1):
        step = moment // totp.interval + offset
        if secrets.compare_digest(totp.at(step * totp.interval), code):
            if account.totp_last_step is not None and step <= account.totp_last_step:
                return None
            return step
    return None


def provisioning_uri(username: str, secret: str) -> str:
    """The otpauth:// URI an authenticator app scans (as a QR code) or takes typed in."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def is_locked(account: ConsoleAccount, now: datetime) -> bool:
    return account.locked_until is not None and as_utc(account.locked_until) > now


def as_utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes: they were stored as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class NewAccount:
    username: str
    password: str
    totp_secret: str
    role: str


async def add_account(
    session: AsyncSession,
    *,
    username: str,
    role: str,
    display_name: str,
    caller_id: str | None,
    password: str | None,
    created_by: str,
    now: datetime,
    box: SecretBox,
) -> NewAccount:
    """Create an account with a TOTP secret (shown once); the password is generated when not given."""
    if not USERNAME.fullmatch(username):
        raise AccountError("用户名须为 3–64 个小写字母、数字或 . _ - 且以字母开头 (username: 3–64 of a-z 0-9 . _ -)")
    if role not in ROLES:
        raise AccountError(f"未知角色 {role!r} (unknown role); one of {', '.join(ROLES)}")
    if await session.get(ConsoleAccount, username) is not None:
        raise AccountError(f"用户名 {username} 已存在 (account exists)")
    api_role = ROLES[role].api_role
    if api_role is None:
        caller_id = None
    else:
        if not caller_id:
            raise AccountError(f"角色 {role} 须绑定调用方身份 (--caller): the account acts as that caller")
        caller = await session.get(Caller, caller_id)
        if caller is None:
            raise AccountError(f"调用方 {caller_id!r} 不存在 (no such caller)")
        if api_role not in (caller.roles or []):
            raise AccountError(
                f"调用方 {caller_id} 没有 {api_role} 角色 (the caller lacks the role {api_role} this account acts as)"
            )
    password = password or generate_password()
    problems = password_problems(password, username)
    if problems:
        raise AccountError("密码不符合策略 (password policy): " + "；".join(problems))
    secret = pyotp.random_base32()
    session.add(
        ConsoleAccount(
            username=username,
            display_name=display_name or username,
            role=role,
            caller_id=caller_id,
            password_hash=hash_password(password),
            password_changed_at=now,
            totp_secret=box.seal(username, secret),
            failed_logins=0,
            disabled=False,
            created_at=now,
            created_by=created_by,
        )
    )
    await session.commit()
    return NewAccount(username, password, secret, role)


async def list_accounts(session: AsyncSession) -> list[ConsoleAccount]:
    return list((await session.scalars(select(ConsoleAccount).order_by(ConsoleAccount.username))).all())


async def _get(session: AsyncSession, username: str) -> ConsoleAccount:
    account = await session.get(ConsoleAccount, username)
    if account is None:
        raise AccountError(f"账户 {username} 不存在 (no such account)")
    return account


async def end_sessions(session: AsyncSession, username: str, now: datetime, why: str) -> None:
    rows = await session.scalars(
        select(ConsoleSession).where(ConsoleSession.username == username, ConsoleSession.ended_at.is_(None))
    )
    for row in rows:
        row.ended_at = now
        row.ended_why = why


async def lock_account(session: AsyncSession, username: str, now: datetime, minutes: int | None = None) -> None:
    """Lock for `minutes`, or until unlocked (disabled) when None; its sessions end at once."""
    account = await _get(session, username)
    if minutes is None:
        account.disabled = True
    else:
        account.locked_until = now + timedelta(minutes=minutes)
    await end_sessions(session, username, now, "locked")
    await session.commit()


async def unlock_account(session: AsyncSession, username: str) -> None:
    account = await _get(session, username)
    account.disabled = False
    account.locked_until = None
    account.failed_logins = 0
    await session.commit()


async def reset_totp(session: AsyncSession, username: str, now: datetime, box: SecretBox) -> str:
    """A new TOTP secret (the old authenticator stops working); the account's sessions end."""
    account = await _get(session, username)
    secret = pyotp.random_base32()
    account.totp_secret = box.seal(username, secret)
    account.totp_last_step = None
    await end_sessions(session, username, now, "totp_reset")
    await session.commit()
    return secret


async def set_password(session: AsyncSession, username: str, password: str, now: datetime) -> None:
    account = await _get(session, username)
    problems = password_problems(password, username)
    if problems:
        raise AccountError("密码不符合策略 (password policy): " + "；".join(problems))
    account.password_hash = hash_password(password)
    account.password_changed_at = now
    await end_sessions(session, username, now, "password_reset")
    await session.commit()
