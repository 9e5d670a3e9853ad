"""The services a route handler may ask for, as FastAPI dependencies: each handler names the few it uses.

Only this module knows where the running process keeps them (the Runtime and the sharing service on
`app.state`); handlers never see the whole Runtime. Code that runs for a request but is not a handler (the
console's sign-in and audit helpers) reads the same services with the plain `*_of(request)` accessors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.resilience import BreakerStore
from gateway.access.authenticate import Authenticator
from gateway.access.certificates import CertificateAuthenticator
from gateway.access.directory import Directory
from gateway.access.quotas import Quotas
from gateway.audit.writer import AuditWriter
from gateway.clock import Clock
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.sharing.service import SharingService
from gateway.upstreams.registry import LiveAdapters
from security.keyring import KeyRing


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# --- for code that is not a route handler --------------------------------------------------------------------


def sessions_of(request: Request) -> async_sessionmaker:
    return _runtime(request).sessions


def engine_of(request: Request) -> AsyncEngine:
    return _runtime(request).engine


def audit_of(request: Request) -> AuditWriter:
    return _runtime(request).audit


# --- for route handlers, as FastAPI dependencies ---------------------------------------------------------------
# Every provider is a coroutine function: FastAPI would run a plain function in a worker thread.


async def _sessions(request: Request) -> async_sessionmaker:
    return _runtime(request).sessions


async def _engine(request: Request) -> AsyncEngine:
    return _runtime(request).engine


async def _directory(request: Request) -> Directory:
    return _runtime(request).directory


async def _audit(request: Request) -> AuditWriter:
    return _runtime(request).audit


async def _adapters(request: Request) -> LiveAdapters:
    return _runtime(request).adapters


async def _breakers(request: Request) -> BreakerStore:
    return _runtime(request).breakers


async def _quotas(request: Request) -> Quotas:
    return _runtime(request).quotas


async def _keyring(request: Request) -> KeyRing:
    keyring = _runtime(request).keyring
    assert keyring is not None  # Runtime.start always opens one
    return keyring


async def _settings(request: Request) -> Settings:
    return _runtime(request).settings


async def _clock(request: Request) -> Clock:
    return _runtime(request).clock


async def _authenticator(request: Request) -> Authenticator:
    return _runtime(request).authenticator


async def _certificates(request: Request) -> CertificateAuthenticator:
    return request.app.state.certificates


async def _sharing(request: Request) -> SharingService:
    return request.app.state.sharing


async def _readiness(request: Request) -> Callable[[], Awaitable[dict[str, str]]]:
    return _runtime(request).readiness


SessionsDep = Annotated[async_sessionmaker, Depends(_sessions)]
EngineDep = Annotated[AsyncEngine, Depends(_engine)]
DirectoryDep = Annotated[Directory, Depends(_directory)]
AuditDep = Annotated[AuditWriter, Depends(_audit)]
AdaptersDep = Annotated[LiveAdapters, Depends(_adapters)]
BreakersDep = Annotated[BreakerStore, Depends(_breakers)]
QuotasDep = Annotated[Quotas, Depends(_quotas)]
KeyRingDep = Annotated[KeyRing, Depends(_keyring)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ClockDep = Annotated[Clock, Depends(_clock)]
AuthenticatorDep = Annotated[Authenticator, Depends(_authenticator)]
CertificatesDep = Annotated[CertificateAuthenticator, Depends(_certificates)]
SharingDep = Annotated[SharingService, Depends(_sharing)]
ReadinessDep = Annotated[Callable[[], Awaitable[dict[str, str]]], Depends(_readiness)]
