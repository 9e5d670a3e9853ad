"""Upstreams registered at runtime: their registration (API and CLI share it) and the live set of adapters on a node.

A registration gathers the contract, builds the adapter once (so every refusal happens here, naming the construct),
and stores the contract's bytes in the database. Each node's `LiveAdapters` polls a tiny revision list every
REFRESH_SECONDS and builds what changed from the stored bytes, so a new upstream is callable on every node within
about a second, without a restart; a removed one disappears as fast, and its grants are revoked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.base import Adapter
from adapters.contracts import ContractBundle, ContractError, bundle_from_files, default_fetcher, gather, location_of
from adapters.fetch_allow import FetchAllowlist
from adapters.registered import NAME_PATTERN, RegisteredAdapter, UpstreamSpec, build_registered
from adapters.resilience import BreakerStore, Guarded, ResiliencePolicy
from gateway.access.grants import revoke_service_grants
from gateway.clock import Periodic, periodic
from gateway.http.problems import Problem
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.models import RegisteredUpstream, ServiceOwner
from schemas.problems import ProblemCode

__all__ = [
    "REFRESH_SECONDS",
    "LiveAdapters",
    "UpstreamIn",
    "UpstreamOut",
    "add_upstream",
    "list_upstreams",
    "prepare",
    "registered_adapters",
    "remove_upstream",
    "soap_auth",
]

log = logging.getLogger("msjx.upstreams")
REFRESH_SECONDS = 0.5
BUILT_IN = frozenset({"credit", "golden-tax", "market", "treasury"})


SECRET_REFERENCE = r"^secret:[A-Za-z0-9_]{1,64}$"  # noqa: S105 - the form of a reference
# SOAP header fields that carry a credential by their name: their value must be a secret reference, or it would be
# stored in the database and shown by GET /v1/upstreams.
CREDENTIAL_FIELD = re.compile(r"pass(word|wd)?$|pwd|secret|token|credential|(api|license|access|auth)[-_]?key", re.I)


class WsseIn(BaseModel):
    """WS-Security the upstream demands: a UsernameToken (username, password) or an X.509 signature (x509_key,
    x509_cert, PEM). The password and the private key only as secret references."""

    model_config = ConfigDict(extra="forbid")
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password: str | None = Field(default=None, pattern=SECRET_REFERENCE, description='"secret:NAME" (MSJX_SECRET_NAME)')
    x509_key: str | None = Field(default=None, pattern=SECRET_REFERENCE, description="the signing key's PEM, a secret")
    x509_cert: str | None = Field(
        default=None, min_length=1, max_length=16384, description="its certificate: PEM, or secret:NAME"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> WsseIn:
        token = self.username is not None or self.password is not None
        signature = self.x509_key is not None or self.x509_cert is not None
        if token == signature:
            raise ValueError("give a UsernameToken (username, password) or an X.509 signature (x509_key, x509_cert)")
        if token and (self.username is None or self.password is None):
            raise ValueError("a UsernameToken needs username and password")
        if signature and (self.x509_key is None or self.x509_cert is None):
            raise ValueError("an X.509 signature needs x509_key and x509_cert")
        return self


class UpstreamIn(BaseModel):
    """A district system to register: its contract by URL or inline, and how to call it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "huli-fulfilment",
                    "kind": "wsdl",
                    "url": "http://huli.district.example/ws/fulfilment?wsdl",
                    "endpoint": "http://192.0.2.10/ws/fulfilment",
                    "safe": ["GetSubsidy"],
                    "owner_department": "湖里区数据管理局",
                }
            ]
        },
    )

    name: str = Field(pattern=NAME_PATTERN, description="the service name its operations are invoked under")
    owner_department: str = Field(
        min_length=1,
        max_length=200,
        description="提供单位: the department owning the system's data; only it publishes catalog items over the"
        " service and decides requests for them",
    )
    kind: Literal["wsdl", "openapi"]
    url: str | None = Field(default=None, description="http(s) URL of the WSDL or OpenAPI document")
    files: dict[str, str] | None = Field(
        default=None, description="the documents themselves, by relative name (imports resolve among them)"
    )
    root: str | None = Field(default=None, description="with `files`: the name of the root document")
    endpoint: str | None = Field(default=None, description="where to send calls, instead of the contract's address")
    safe: list[str] = Field(default_factory=list, description="WSDL operations that only read (retried on failure)")
    policy: dict[str, float | int | None] = Field(
        default_factory=dict, description="resilience settings: total_timeout, max_attempts, max_concurrency …"
    )
    soap_headers: dict[str, dict[str, str]] | None = Field(
        default=None,
        description="values of the SOAP headers the WSDL requires, by header part and field; a value"
        ' "secret:NAME" is read from MSJX_SECRET_NAME on each node and never stored',
    )
    wsse: WsseIn | None = Field(default=None, description="WS-Security UsernameToken toward the upstream")

    @field_validator("url", "endpoint")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> UpstreamIn:
        if (self.url is None) == (self.files is None):
            raise ValueError("give exactly one of url or files")
        if self.files is not None and not self.root:
            raise ValueError("root names which of files is the root document")
        return self


class UpstreamOperation(BaseModel):
    operation: str
    summary: str
    safe: bool
    fields: list[str]


class UpstreamOut(BaseModel):
    name: str
    owner_department: str | None = Field(description="提供单位; none for an upstream registered before owners existed")
    kind: str
    source: str
    endpoint: str | None
    digest: str
    safe: list[str]
    policy: dict[str, Any]
    soap_auth: dict[str, Any] | None = Field(default=None, description="SOAP headers and WS-Security, as registered")
    operations: list[UpstreamOperation]
    created_at: datetime
    created_by: str | None


def soap_auth(body: UpstreamIn) -> dict[str, Any] | None:
    """What a registration says about SOAP headers and WS-Security, as stored (secrets by reference only)."""
    auth: dict[str, Any] = {}
    if body.soap_headers:
        auth["headers"] = body.soap_headers
    if body.wsse is not None:
        auth["wsse"] = body.wsse.model_dump(exclude_none=True)
    return auth or None


def credential_in_the_clear(auth: Mapping[str, Any] | None) -> str | None:
    """Why a registration's SOAP header values may not be stored: a field named as a credential (password, token,
    API key …) given as its value instead of `secret:NAME`; None when there is none."""
    for part, fields in ((auth or {}).get("headers") or {}).items():
        for name, given in fields.items():
            if CREDENTIAL_FIELD.search(name) and not re.fullmatch(SECRET_REFERENCE, str(given)):
                return (
                    f"{part}.{name} is a credential: give it as secret:NAME (read from MSJX_SECRET_NAME on each node,"
                    " never stored), not as its value"
                )
    return None


@dataclass(frozen=True)
class Prepared:
    """A checked registration, ready to store: the spec and the adapter it builds."""

    spec: UpstreamSpec
    adapter: RegisteredAdapter
    policy_overrides: dict[str, Any]


def _problem(exc: ContractError, field: str) -> Problem:
    return Problem(
        exc.code,
        exc.message,
        errors=[{"field": field, "message": exc.message, "type": exc.code}],
    )


def prepare(
    name: str,
    kind: str,
    *,
    source: str | None = None,
    files: Mapping[str, str] | None = None,
    root: str | None = None,
    endpoint: str | None = None,
    safe: list[str] | tuple[str, ...] = (),
    policy: Mapping[str, Any] | None = None,
    allow_files: bool = False,
    reserved: frozenset[str] = BUILT_IN,
    fetch_allow: FetchAllowlist | None = None,
    soap_auth: Mapping[str, Any] | None = None,
) -> Prepared:
    """Gather the contract and build the adapter (blocking: run it in a thread). Raises Problem naming the cause.

    A contract (or a document it imports) is fetched by URL only from where `fetch_allow` admits
    (MSJX_CONTRACT_FETCH_ALLOW); with none, only uploaded documents (and, from the CLI, local files) are read."""
    if name in reserved:
        raise _problem(ContractError(ProblemCode.NAME_TAKEN, f"{name!r} is a built-in service"), "name")
    in_the_clear = credential_in_the_clear(soap_auth)
    if in_the_clear is not None:
        raise _problem(ContractError(ProblemCode.SECRET_INVALID, in_the_clear), "soap_headers")
    try:
        resilience = ResiliencePolicy.from_mapping(dict(policy or {}))
    except ValueError as exc:
        raise _problem(ContractError(ProblemCode.POLICY_INVALID, str(exc)), "policy") from None
    field = "files" if files is not None else "url"
    try:
        if files is not None:
            bundle = bundle_from_files(kind, files, root or "")
        else:
            location = location_of(source or "", allow_files=allow_files)
            bundle = gather(kind, location, default_fetcher(allow_files=allow_files, allow=fetch_allow))
            bundle = ContractBundle(bundle.kind, bundle.root, bundle.documents, source or location)
        spec = UpstreamSpec(name, bundle, endpoint, resilience, frozenset(safe), soap_auth=soap_auth or None)
        adapter = build_registered(spec)
    except ContractError as exc:
        where = {
            ProblemCode.NAME_INVALID: "name",
            ProblemCode.SECRET_MISSING: "soap_headers",
            ProblemCode.SECRET_INVALID: "soap_headers",
        }
        raise _problem(exc, where.get(exc.code, field)) from None
    return Prepared(spec, adapter, dict(policy or {}))


def _out(row: RegisteredUpstream, adapter: RegisteredAdapter | None, owner: str | None) -> UpstreamOut:
    described = adapter.describe() if adapter is not None else row.operations
    operations = [UpstreamOperation(**entry) for entry in described]
    return UpstreamOut(
        name=row.name,
        owner_department=owner,
        kind=row.kind,
        source=row.source,
        endpoint=row.endpoint,
        digest=row.digest,
        safe=list(row.safe),
        policy=dict(row.policy),
        soap_auth=row.soap_auth,
        operations=operations,
        created_at=row.created_at,
        created_by=row.created_by,
    )


async def add_upstream(
    session: AsyncSession, prepared: Prepared, created_by: str | None, owner_department: str, now: datetime
) -> UpstreamOut:
    """Store the upstream and its owner in one transaction: it is never offered without an owner."""
    spec = prepared.spec
    if await session.get(RegisteredUpstream, spec.name) is not None:
        raise Problem(ProblemCode.UPSTREAM_EXISTS, f"{spec.name!r} is registered; remove it first to register it anew")
    row = RegisteredUpstream(
        name=spec.name,
        kind=spec.bundle.kind,
        source=spec.bundle.source,
        contract=spec.bundle.to_json(),
        digest=spec.bundle.digest,
        endpoint=spec.endpoint,
        policy=prepared.policy_overrides,
        soap_auth=dict(spec.soap_auth) if spec.soap_auth else None,
        safe=sorted(spec.safe),
        operations=prepared.adapter.describe(),
        revision=secrets.token_hex(8),
        created_at=now,
        created_by=created_by,
    )
    session.add(row)
    # A service of that name removed earlier may have left its owner: the new registration names its own.
    await session.execute(delete(ServiceOwner).where(ServiceOwner.service == spec.name))
    session.add(
        ServiceOwner(service=spec.name, department=owner_department, set_by=created_by or "?", set_at=row.created_at)
    )
    await session.commit()
    return _out(row, prepared.adapter, owner_department)


async def list_upstreams(session: AsyncSession) -> list[UpstreamOut]:
    rows = (await session.scalars(select(RegisteredUpstream).order_by(RegisteredUpstream.name))).all()
    pairs = await session.execute(select(ServiceOwner.service, ServiceOwner.department))
    owned = {name: owner for name, owner in pairs}
    return [_out(row, None, owned.get(row.name)) for row in rows]


async def remove_upstream(session: AsyncSession, name: str, now: datetime) -> tuple[UpstreamOut, int]:
    """Delete the registration and revoke every grant on it (a later upstream of that name starts without any)."""
    row = await session.get(RegisteredUpstream, name)
    if row is None:
        raise Problem(ProblemCode.UPSTREAM_UNKNOWN, f"no registered upstream {name!r}")
    owner = await session.get(ServiceOwner, name)
    out = _out(row, None, owner.department if owner is not None else None)
    revoked = await revoke_service_grants(session, name, now)
    await session.delete(row)
    if owner is not None:
        await session.delete(owner)
    await session.commit()
    return out, revoked


def spec_of(row: RegisteredUpstream) -> UpstreamSpec:
    return UpstreamSpec(
        name=row.name,
        bundle=ContractBundle.from_json(row.contract),
        endpoint=row.endpoint,
        policy=ResiliencePolicy.from_mapping(row.policy or {}),
        safe=frozenset(row.safe or ()),
        soap_auth=row.soap_auth,
    )


async def registered_adapters(session: AsyncSession) -> dict[str, Adapter]:
    """Every registered upstream built (not started): for the CLI, which checks grants against them."""
    adapters: dict[str, Adapter] = {}
    for row in (await session.scalars(select(RegisteredUpstream))).all():
        try:
            adapters[row.name] = await asyncio.to_thread(build_registered, spec_of(row))
        except (ContractError, ValueError) as exc:
            log.error("registered upstream %s cannot be built: %s", row.name, exc)
    return adapters


class LiveAdapters(Mapping[str, Adapter]):
    """The adapters one node offers: the configured ones, and the registered ones as the database has them now."""

    def __init__(
        self,
        static: Mapping[str, Adapter],
        sessions: async_sessionmaker | None = None,
        store: BreakerStore | None = None,
        interval: float = REFRESH_SECONDS,
        health: Dependency | None = None,
    ) -> None:
        self.health = health
        self._static = dict(static)
        self._sessions = sessions
        self._store = store
        self._interval = interval
        self._registered: dict[str, tuple[str, Adapter]] = {}  # name -> (revision, adapter)
        self._all: dict[str, Adapter] = dict(self._static)
        self._poller: Periodic | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: set[Adapter] = set()
        self.failures: dict[str, str] = {}

    def __getitem__(self, name: str) -> Adapter:
        return self._all[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    @property
    def static_names(self) -> frozenset[str]:
        return frozenset(self._static)

    async def start(self) -> None:
        for adapter in self._static.values():
            await adapter.start()
        if self._sessions is not None:
            try:
                await self.refresh()
            except Exception as exc:  # an unreadable table must not stop the node serving the built-in upstreams
                log.error("registered upstreams not loaded yet: %s", exc)
            self._poller = periodic("upstream-catalog", self._interval, self.refresh, on_error=self._not_refreshed)

    async def close(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)  # each closes its adapter on the way out
        for adapter in list(self._all.values()):
            await adapter.close()

    def _not_refreshed(self, exc: Exception) -> None:
        # The database may be away for a moment; the current set stays in service.
        if self.health is not None and is_database_outage(exc):
            self.health.failed(exc)  # logged once for the outage, counted every time
        else:
            log.warning("registered upstreams not refreshed: %s", exc)

    async def refresh(self) -> None:
        """Bring the registered adapters in line with the database (cheap when nothing changed)."""
        assert self._sessions is not None
        async with self._lock:
            async with self._sessions() as session:
                revisions = dict(
                    (await session.execute(select(RegisteredUpstream.name, RegisteredUpstream.revision))).all()
                )
                wanted = {
                    name
                    for name, revision in revisions.items()
                    if self._registered.get(name, ("", None))[0] != revision and self.failures.get(name) != revision
                }
                rows = (
                    (await session.scalars(select(RegisteredUpstream).where(RegisteredUpstream.name.in_(wanted)))).all()
                    if wanted
                    else []
                )
            added: dict[str, tuple[str, Adapter]] = {}
            for row in rows:
                if row.name in self._static:
                    log.error("registered upstream %s is shadowed by a configured one of that name", row.name)
                    continue
                try:
                    built = await asyncio.to_thread(build_registered, spec_of(row))
                except (ContractError, ValueError) as exc:
                    self.failures[row.name] = row.revision
                    log.error("registered upstream %s cannot be built on this node: %s", row.name, exc)
                    continue
                adapter = Guarded(built, store=self._store)
                await adapter.start()
                added[row.name] = (row.revision, adapter)
            removed = [name for name in self._registered if name not in revisions or name in added]
            if not added and not removed:
                return
            old = {name: self._registered[name][1] for name in removed}
            registered = {name: entry for name, entry in self._registered.items() if name not in removed}
            registered.update(added)
            self._registered = registered
            self._all = {**self._static, **{name: adapter for name, (_, adapter) in registered.items()}}
            for name in added:
                log.info("upstream %s is live (%d operations)", name, len(added[name][1].operations))
        for name, adapter in old.items():
            # Calls already under way keep their own reference and finish; new ones no longer find it.
            self._retire(adapter)
            if name not in added:
                log.info("upstream %s removed", name)

    def _retire(self, adapter: Adapter) -> None:
        policy = adapter.policy
        delay = policy.total_timeout * policy.max_attempts + policy.backoff_max * policy.max_attempts + 1

        async def close_later() -> None:
            try:
                await asyncio.sleep(delay)
            finally:
                self._retired.discard(adapter)
                await adapter.close()

        self._retired.add(adapter)
        task = asyncio.create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
