"""Settings from the environment (prefix MSJX_); a wrong value stops start-up with one line naming the setting."""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from schemas.errors import MsjxError

if TYPE_CHECKING:
    from adapters.fetch_allow import FetchAllowlist
    from gateway.http.forwarded import TrustedProxies


class SettingsError(MsjxError):
    """A setting has a wrong value; the message names it and says what is expected."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSJX_", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="where the SQLite file, keys and demo files live")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite at <data_dir>/msjx.db"
    )
    redis_url: str | None = Field(default=None, description="unset: in-process state, one node only")
    node_id: str = Field(default="node-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    worker_index: int | None = Field(
        default=None,
        ge=0,
        description="set by `serve --workers N` in each worker: node_id is then `<node-id>-<i>`, with its own chain"
        " and its own checkpoint key under keys/workers/<node-id>-<i>/",
    )
    upstream_urls: dict[str, str] = Field(default_factory=dict, description='JSON: {"credit": "http://..."}')
    upstream_timeout: float = Field(default=5.0, gt=0, le=120)
    upstream_policies: dict[str, dict[str, float | int | None]] = Field(
        default_factory=dict, description='JSON: {"golden-tax": {"max_attempts": 2, "open_seconds": 30}}'
    )
    signature_max_skew: int = Field(default=300, ge=1, le=3600)
    audit_batch_max: int = Field(default=512, ge=1, le=100_000)
    grant_cache_seconds: float = Field(default=0.8, ge=0, le=1.0)
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    console_secure_cookies: bool = Field(
        default=True, description="web console cookies carry Secure; off only for the plain-HTTP demo (serve --demo)"
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="the console's OIDC identity provider (a province's unified identity platform), e.g."
        " https://idp.example/realms/gov; unset: local sign-in only",
    )
    oidc_client_id: str | None = Field(default=None, max_length=256, description="the console's client id at the IdP")
    oidc_client_secret: SecretStr | None = Field(default=None, description="its client secret (from the environment)")
    oidc_username_claim: str = Field(
        default="preferred_username",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="the ID token claim naming the local console account",
    )
    oidc_second_factor: Literal["amr", "idp"] = Field(
        default="amr",
        description="amr: a sign-in counts as two factors only when the ID token's amr or acr names one of"
        " oidc_mfa_values; idp: the IdP is configured to require two factors for this client, every sign-in counts",
    )
    oidc_mfa_values: str = Field(
        default="mfa,otp,hwk,sms,sc,face,fpt",
        description="amr (RFC 8176) or acr values that show a second factor, comma separated",
    )
    sharing_overdue_action: Literal["escalate", "approve"] = Field(
        default="escalate",
        description="what happens to a sharing request the provider left past its deadline: escalate to the"
        " coordinators (default) or approve it (silence is consent)",
    )
    sharing_sweep_seconds: float = Field(
        default=30.0, ge=0.05, le=3600, description="how often a node applies deadlines, escalations and expiry"
    )
    redis_prefix: str = Field(default="msjx", pattern=r"^[A-Za-z0-9._-]{1,64}$", description="prefix of Redis keys")
    redis_max_connections: int = Field(
        default=128,
        ge=1,
        le=10_000,
        description="connections each worker's Redis client may open; commands beyond wait for one. Keep the sum over"
        " all nodes' workers below Redis's maxclients",
    )
    idempotency_lease_seconds: float = Field(
        default=30.0, ge=1, le=3600, description="how long a request holds an Idempotency-Key before another may"
    )
    idempotency_retention_days: int = Field(default=30, ge=1, le=3650, description="finished keys kept this long")
    payment_reconcile_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="how often open payment intents are reconciled with voucher-status"
    )
    payment_fault_kill_after_accept: int = Field(
        default=0,
        ge=0,
        description="TEST ONLY: SIGKILL this process right after the treasury accepts the Nth voucher (0: never)",
    )
    crypto_suite: Literal["standard", "sm"] = Field(
        default="standard", description="suite of new audit records: standard (AES-GCM, SHA-256) or sm (SM4-GCM, SM3)"
    )
    signature_verifier: Literal["process", "inline"] = Field(
        default="process",
        description="process (default): a child process takes Ed25519 request signature checks off the event loop"
        " when it is congested, and SM2 ones always; inline: the event loop checks every signature itself",
    )
    signature_offload_above: int = Field(
        default=4,
        ge=0,
        le=100_000,
        description="with signature_verifier=process, a check goes to the child when more than this many signed"
        " requests are in progress on the worker, its loop is busy and the machine has CPU idle to give the child"
        " (0: always); otherwise the loop checks it itself, which is faster alone and cheaper on a saturated machine",
    )
    master_key: SecretStr | None = Field(default=None, description="base64 of the 32-byte master key (overrides files)")
    master_key_file: Path | None = Field(default=None, description="a mounted secret file holding the master key")
    audit_checkpoint_records: int = Field(default=1000, ge=1, le=1_000_000)
    audit_checkpoint_seconds: float = Field(default=10.0, gt=0, le=3600)
    audit_commit_deadline: float = Field(
        default=10.0,
        ge=0.1,
        le=600,
        description="seconds a batch of audit records (PostgreSQL) or a checkpoint may take to commit; past it the"
        " connection is dropped and its calls answered 503 audit_unavailable, instead of waiting on a database that"
        " no longer answers",
    )
    audit_retention_days: int = Field(
        default=1095, ge=183, le=36500, description="records stay in the database this long; refused below 6 months"
    )
    audit_key_period_days: int = Field(default=30, ge=1, le=366, description="a new data key starts every period")
    batch_result_days: int = Field(
        default=7, ge=1, le=3650, description="a batch's results are deleted this many days after it ends (数据最小化)"
    )
    batch_chunk_size: int = Field(default=500, ge=1, le=10_000, description="subjects per chunk of a batch job")
    # One chunk at a time, 4 calls in flight, 1 while single calls are under way: with two chunks, 8 and 2, single
    # calls during a 100,000-subject batch had a p99 of 1.9-2.2 x idle on SQLite and 2.2-3.0 x on PostgreSQL, against
    # 1.5-2.4 x with these (2 or less in 11 of 12 runs), for a batch about a sixth longer (docs/batches.md, "One
    # chunk at a time"). A node that serves no single calls may take more chunks at a time.
    batch_workers: int = Field(
        default=1, ge=0, le=64, description="chunks this node runs at once in its in-process batch worker (0: none)"
    )
    batch_stall_seconds: float = Field(
        default=30.0, ge=0.5, le=3600, description="a chunk whose worker gave no sign of life this long runs again"
    )
    batch_max_in_flight: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="most calls a node's batches keep in flight to one upstream (also at most half its connection"
        " slots): an interactive call meets at most this many batch requests queued at the upstream",
    )
    batch_interactive_floor: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="while signed single calls are under way on this node, its batches keep at most this many calls"
        " in flight to an upstream and pause between slices of a chunk's records (0: batches do not yield)",
    )
    batch_recheck_seconds: float = Field(
        default=60.0, ge=0.05, le=3600, description="how often paused batches are checked for quota to resume"
    )
    contract_fetch_allow: str = Field(
        default="",
        description="hosts (district.example, *.district.example) and networks (192.0.2.0/24) an upstream's"
        " WSDL/OpenAPI may be fetched from by URL, comma or space separated; empty: documents must be uploaded",
    )

    @field_validator("contract_fetch_allow")
    @classmethod
    def _contract_fetch_allow(cls, value: str) -> str:
        from adapters.fetch_allow import FetchAllowlist

        FetchAllowlist.from_setting(value)  # a malformed entry stops start-up, named
        return value

    @property
    def contract_fetch_allowlist(self) -> FetchAllowlist:
        from adapters.fetch_allow import FetchAllowlist

        return FetchAllowlist.from_setting(self.contract_fetch_allow)

    trusted_proxies: str = Field(
        default="",
        description="reverse proxies (addresses, CIDRs; comma or space separated) whose Forwarded/X-Forwarded-*"
        " headers are believed: the client address, and the scheme and Host the client signed; empty: none",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        from gateway.http.forwarded import TrustedProxies

        TrustedProxies.from_setting(value)  # a malformed entry stops start-up, named
        return value

    @property
    def trusted_proxy_networks(self) -> TrustedProxies:
        from gateway.http.forwarded import TrustedProxies

        return TrustedProxies.from_setting(self.trusted_proxies)

    client_cert_header: str = Field(
        default="",
        description="the header in which a proxy of MSJX_TRUSTED_PROXIES passes the client certificate it verified"
        " (mutual TLS at the proxy): URL-escaped PEM (nginx `$ssl_client_escaped_cert`) or its SHA-256 in hex, with"
        " `X-Client-Verify: SUCCESS`. The proxy must set both on every request (a client could send them too);"
        " empty (default): certificates are taken only from the gateway's own TLS listener",
        pattern=r"^([A-Za-z0-9-]+)?$",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the gateway's own TLS listener; unset: plain HTTP (behind a proxy)",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of MSJX_TLS_CERT (never in git)")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs whose client certificates the TLS listener verifies (mutual TLS for the"
        " SOAP façade's callers, registered with `callers add-cert`); a self-signed client certificate is its own"
        " CA. Unset: no client certificates are asked for",
    )

    max_url_bytes: int = Field(
        default=8192, ge=256, le=1 << 20, description="longest request target (path and query) served; longer: 414"
    )
    max_header_bytes: int = Field(
        default=32768, ge=1024, le=1 << 20, description="request header bytes (names, values) served; more: 431"
    )
    max_header_count: int = Field(default=100, ge=8, le=10_000, description="request headers served; more: 431")
    header_timeout: float = Field(
        default=10.0, gt=0, le=600, description="seconds a client has to send a request's line and headers; then 408"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds of silence tolerated inside a request body; then 408"
    )
    max_connections_per_client: int = Field(
        default=256, ge=1, le=100_000, description="open connections one client address may hold; more: 429"
    )
    unauthenticated_rate: str = Field(
        default="60/minute",
        description="refusals before authentication audited one by one per client address; beyond: 429, counted",
    )
    unauthenticated_total_rate: str = Field(
        default="300/minute",
        description="the same bound over all client addresses together, so that many addresses cannot flood the log",
    )

    @model_validator(mode="after")
    def _oidc(self) -> Settings:
        """OIDC is all or nothing: an issuer needs a client id and secret, and these mean nothing without one."""
        if not self.oidc_issuer:
            self.oidc_issuer = None
            if self.oidc_client_id or self.oidc_client_secret:
                raise ValueError("MSJX_OIDC_ISSUER: needed when MSJX_OIDC_CLIENT_ID or _SECRET is set")
            return self
        parts = urlsplit(self.oidc_issuer)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if (parts.scheme != "https" and not (parts.scheme == "http" and loopback)) or parts.query or parts.fragment:
            raise ValueError("MSJX_OIDC_ISSUER: must be an https:// URL without query (http only on 127.0.0.1)")
        if not self.oidc_client_id:
            raise ValueError("MSJX_OIDC_CLIENT_ID: needed when MSJX_OIDC_ISSUER is set")
        if self.oidc_client_secret is None or not self.oidc_client_secret.get_secret_value():
            raise ValueError("MSJX_OIDC_CLIENT_SECRET: needed when MSJX_OIDC_ISSUER is set")
        if self.oidc_second_factor == "amr" and not self.mfa_values:
            raise ValueError("MSJX_OIDC_MFA_VALUES: empty, so no sign-in could count as two factors")
        return self

    @property
    def mfa_values(self) -> frozenset[str]:
        return frozenset(value.strip() for value in self.oidc_mfa_values.split(",") if value.strip())

    @field_validator("unauthenticated_rate", "unauthenticated_total_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("must be a rate such as 30/minute") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme.split("+")[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("master_key")
    @classmethod
    def _master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            raw = base64.b64decode(value.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError("must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)")
        return value

    @field_validator("upstream_urls")
    @classmethod
    def _upstream_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"upstream {name!r} needs an http(s) URL")
        return value

    @field_validator("upstream_policies")
    @classmethod
    def _upstream_policies(
        cls, value: dict[str, dict[str, float | int | None]]
    ) -> dict[str, dict[str, float | int | None]]:
        from adapters.resilience import ResiliencePolicy

        for name, policy in value.items():
            try:
                ResiliencePolicy.from_mapping(policy)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @property
    def async_database_url(self) -> str:
        """The URL with the async driver SQLAlchemy needs; plain postgresql:// and sqlite:/// are accepted."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'msjx.db'}"
        scheme, _, rest = url.partition("://")
        base = scheme.split("+")[0]
        if base == "sqlite":
            return f"sqlite+aiosqlite://{rest}"
        return f"postgresql+asyncpg://{rest}"

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def signing_keys_dir(self) -> Path:
        """Where this node's checkpoint signing keys live: a worker of `serve --workers` has its own, since a
        registered key may sign only its own chain."""
        if self.worker_index is None:
            return self.keys_dir
        return self.keys_dir / "workers" / self.node_id

    @property
    def trusted_keys_dir(self) -> Path:
        """Public keys (PEM) of other nodes whose checkpoints `audit verify` accepts."""
        return self.keys_dir / "trusted"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def witness_dir(self) -> Path:
        """This node's own append-only copy of its checkpoints, outside the database."""
        return self.data_dir / "audit"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus overrides, turning validation errors into one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:
            # A rule across settings (model validator): its message names the setting itself.
            raise SettingsError(str(first["msg"]).removeprefix("Value error, ")) from None
        name = "MSJX_" + "_".join(str(part) for part in first["loc"][:1]).upper()
        raw = os.environ.get(name)
        secret = any(word in name.lower() for word in ("url", "key", "secret"))
        shown = "" if raw is None or secret else f" (got {raw!r})"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{name}: {message}{shown}") from None
    except SourceError as exc:
        # pydantic-settings fails before validation when a JSON-valued setting is not JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        name = "MSJX_" + (match.group(1).upper() if match else "SETTINGS")
        raise SettingsError(f"{name}: not valid JSON") from None
