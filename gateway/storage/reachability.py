"""Start-up checks that the data directory, the database and Redis can be used, so that a failure is one line.

Without them `serve` and `db upgrade` died in a driver's connect call with a 90–550-line traceback. The line names
the setting and host:port (or path), never the URL itself: it may carry a password.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from gateway.settings import Settings
from gateway.storage.connection_room import Need, check_connection_room, redis_room
from gateway.storage.durability import say_clock_skew, say_what_is_not_durable
from gateway.storage.redis_eviction import RISK, server_facts
from schemas.errors import MsjxError

log = logging.getLogger("msjx.storage")

# Long enough for a database on another host under load; short enough that a firewall dropping packets does not
# leave the operator staring at a silent command.
CONNECT_TIMEOUT = 5.0


class StartupFailure(MsjxError):
    """Something a setting names cannot be used at start; the message is one line naming the setting."""


class ServiceUnreachable(StartupFailure):
    """PostgreSQL or Redis did not answer at start; the message is one line naming the setting and host:port."""


class StorageUnusable(StartupFailure):
    """The data directory or the SQLite file cannot be made or opened, or Redis may drop the gateway's keys; the
    message names the setting, and the path or host:port."""


class DatabaseUnusable(StartupFailure):
    """PostgreSQL answers, but not in a way the gateway can work with; the message names the setting and the fix."""


def endpoint(url: str, default_port: int) -> str:
    """host:port of a URL, or the socket path of a unix one; never the user or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or (not parts.hostname and parts.path):
        return parts.path or "?"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or default_port
    except ValueError:  # a port that is not a number: the driver will say so; here the host is enough
        return host
    return f"{host}:{port}"


async def connect_postgres(url: str) -> Any:
    """An asyncpg connection to MSJX_DATABASE_URL `url`, or ServiceUnreachable naming the setting and host:port."""
    import asyncpg

    # asyncpg reads the libpq URL form (query options such as sslmode included) once the driver name is gone.
    dsn = "postgresql://" + url.partition("://")[2]
    try:
        return await asyncpg.connect(dsn=dsn, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # any way of not getting a connection is the same answer for the operator
        raise ServiceUnreachable(
            f"MSJX_DATABASE_URL: cannot connect to PostgreSQL at {endpoint(url, 5432)}:"
            f" {_reason(exc, urlsplit(dsn).password)}"
        ) from None


def _reason(exc: BaseException, secret: str | None) -> str:
    if isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, TimeoutError | asyncio.TimeoutError):
        text = f"no answer within {CONNECT_TIMEOUT:g} s"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # Driver messages do not quote passwords today; this keeps it so if one ever does.
    if secret:
        text = text.replace(secret, "***")
    return text


async def check_database(settings: Settings, need: Need | None = None) -> None:
    """Connect to the configured PostgreSQL and check it can serve the gateway (with `need`, also the connections a
    node opens); SQLite is a local file and needs no check."""
    if settings.is_sqlite or settings.database_url is None:
        return
    where = endpoint(settings.database_url, 5432)
    connections = []
    try:
        for _ in range(2):
            connections.append(await connect_postgres(settings.database_url))
        await _refuse_transaction_pooling(connections, where)
        facts = await _database_facts(connections[0])
        _refuse_other_encodings(facts, where)
        _refuse_read_only(facts, where)
        _refuse_roles_without_ownership(facts, where)
        if need is not None and (refusal := await check_connection_room(connections[0], need, where, own=2)):
            raise DatabaseUnusable(refusal)
        say_what_is_not_durable(facts.database, facts.fsync, facts.synchronous_commit, where)
        await say_clock_skew(connections[0], where)
    finally:
        for connection in connections:
            await connection.close()


@dataclass(frozen=True)
class _DatabaseFacts:
    role: str
    database: str
    encoding: str
    in_recovery: bool
    read_only_default: bool
    fsync: str
    synchronous_commit: str
    audit_owner: str | None  # None: not migrated yet
    may_own: bool  # the role is the owner of audit_records, or a member of it (a superuser too)
    may_create: bool  # in the schema public


async def _database_facts(connection: Any) -> _DatabaseFacts:
    """What the start-up checks need, in one round trip."""
    row = await connection.fetchrow(
        """
        SELECT current_user, current_database(), current_setting('server_encoding'), pg_is_in_recovery(),
               current_setting('default_transaction_read_only') = 'on', current_setting('fsync'),
               current_setting('synchronous_commit'), owner.name,
               owner.name IS NOT NULL AND pg_has_role(current_user, owner.name, 'USAGE'),
               has_schema_privilege('public', 'CREATE')
        FROM (SELECT (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass('audit_records'))
              AS name) AS owner
        """
    )
    return _DatabaseFacts(*row)


def _refuse_roles_without_ownership(facts: _DatabaseFacts, where: str) -> None:
    """The migrations make tables, and the audit writer makes a partition a month ahead and the archive detaches old
    ones, which only the owner of audit_records may do. PostgreSQL 15 no longer lets every role create tables in the
    schema public: `db upgrade` as such a role ended in a 608-line traceback. And a role that is not the owner ran until
    the months made ahead were used up, and then no audit record could be written."""
    role, database, owner = facts.role, facts.database, facts.audit_owner
    if owner is None:
        if not facts.may_create:
            raise DatabaseUnusable(
                f"MSJX_DATABASE_URL: the role {role} may not create tables in the schema public of the database"
                f" {database} at {where} (from PostgreSQL 15 on, by default only its owner may); the gateway's"
                f" migrations make its tables: ALTER DATABASE {database} OWNER TO {role}"
            )
        return
    if not facts.may_own:
        raise DatabaseUnusable(
            f"MSJX_DATABASE_URL: the role {role} does not own audit_records in the database {database} at {where}"
            f" ({owner} does); the gateway makes the audit log's monthly partitions and detaches archived ones, which"
            f" only the owner may: run it as {owner}, or make {role} a member of {owner}"
        )


def _refuse_read_only(facts: _DatabaseFacts, where: str) -> None:
    """A standby, or a database whose transactions are read-only by default, took the migrations' first CREATE TABLE
    with a 609-line traceback: pointing the gateway at a replica is an easy slip where there are two addresses."""
    if facts.in_recovery:
        raise DatabaseUnusable(
            f"MSJX_DATABASE_URL: PostgreSQL at {where} is a standby (in recovery) and takes no writes; give the primary"
        )
    if facts.read_only_default:
        database = facts.database
        raise DatabaseUnusable(
            f"MSJX_DATABASE_URL: transactions in the database {database} at {where} are read-only by default"
            f" (default_transaction_read_only = on); the gateway writes: ALTER DATABASE {database} RESET"
            " default_transaction_read_only, or give the gateway's role its own setting"
        )


def _refuse_other_encodings(facts: _DatabaseFacts, where: str) -> None:
    """Names, departments and purposes are Chinese. A LATIN1 database refused them in a migration (`db upgrade` ended
    in a 620-line traceback); SQL_ASCII takes the bytes, but counts each byte as a character against a column's
    length, three for most Chinese characters."""
    if facts.encoding != "UTF8":
        raise DatabaseUnusable(
            f"MSJX_DATABASE_URL: the database {facts.database} at {where} is encoded {facts.encoding}; the gateway"
            f" keeps Chinese text: make it anew with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0"
        )


async def _refuse_transaction_pooling(connections: list[Any], where: str) -> None:
    """A pooler that hands each transaction a server connection of its own choosing (PgBouncer's pool_mode =
    transaction or statement) breaks what the gateway keeps on its connection: prepared statements, LISTEN for batch
    chunks, session settings. `serve` then failed at start, at random, with a traceback. A session's backend process
    never changes, and two sessions never share one: under such a pooler they do."""
    import asyncpg

    first, second = connections
    try:
        pids = [await connection.fetchval("SELECT pg_backend_pid()") for connection in (first, second, first, second)]
    except (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError):
        pids = [0, 0, 0, 0]  # another client's statements on this server connection: shared all the same
    if pids[0] == pids[1] or pids[0] != pids[2] or pids[1] != pids[3]:
        raise DatabaseUnusable(
            f"MSJX_DATABASE_URL: {where} shares server connections between transactions (a pooler such as PgBouncer"
            " with pool_mode = transaction or statement): the gateway keeps prepared statements, LISTEN and session"
            " settings on its connections; connect to PostgreSQL directly or through pool_mode = session"
        )


async def check_redis(settings: Settings, workers: int = 1) -> None:
    """PING the configured Redis once, and check it can serve the gateway: keeps its keys, is standalone, and has
    room for the clients of the node's `workers`."""
    if not settings.redis_url:
        return
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    where = endpoint(settings.redis_url, 6379)
    try:
        try:
            await client.ping()
        except Exception as exc:  # refused, timed out, wrong password, not Redis: the operator needs the same line
            cause = exc.__cause__ or exc.__context__
            reason = cause if isinstance(cause, OSError) else exc
            raise ServiceUnreachable(
                f"MSJX_REDIS_URL: cannot connect to Redis at {where}: "
                f"{_reason(reason, urlsplit(settings.redis_url).password)}"
            ) from None
        facts = await server_facts(client)
        if facts is not None and facts.cluster:
            raise StorageUnusable(
                f"MSJX_REDIS_URL: Redis at {where} runs in cluster mode, and the gateway's client does not route"
                " commands by hash slot; use a standalone Redis"
            )
        if facts is not None and facts.evicts:
            raise StorageUnusable(
                f"MSJX_REDIS_URL: Redis at {where} evicts keys when full ({facts.describe()}): {RISK}"
            )
        await _refuse_missing_permissions(client, settings.redis_prefix, where)
        if facts is not None and (
            refusal := redis_room(
                facts.maxclients, facts.connected_clients, workers, settings.redis_max_connections, where
            )
        ):
            raise StorageUnusable(refusal)
    finally:
        await client.aclose()


# What the gateway does with its keys: SET NX with a time to live (nonces, locks), scripts run by EVAL (quotas) and by
# EVALSHA after SCRIPT LOAD (breakers, through redis-py's Script), DEL. The breakers' script reads the server's TIME,
# a command outside @read and @write.
_PROBE_SCRIPT = "redis.call('time') return redis.call('incr', KEYS[1])"
REDIS_ACL = "+@read +@write +@scripting +@connection +info +time"


async def _refuse_missing_permissions(client: Any, prefix: str, where: str) -> None:
    """A Redis ACL that forbids the gateway's keys or scripts let a node start, then answered every call 503
    `state_store_unavailable` ("could not be reached", while Redis answered NOPERM). One try of each kind of
    command on a key of the gateway's own says so at start instead."""
    from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

    key = f"{prefix}:check:{secrets.token_hex(8)}"
    try:
        await client.set(key, b"0", nx=True, ex=60)
        await client.eval(_PROBE_SCRIPT, 1, key)
        await client.register_script(_PROBE_SCRIPT)(keys=[key])
        await client.delete(key)
    except OutOfMemoryError:  # full, with noeviction: writes wait for room (503 meanwhile); the rights are unknown
        log.warning("Redis at %s is full (maxmemory reached): calls are answered 503 until there is room", where)
    except ReadOnlyError:
        raise StorageUnusable(
            f"MSJX_REDIS_URL: Redis at {where} is a read-only replica, and the gateway writes: give the primary"
        ) from None
    except ResponseError as exc:  # NOPERM, or a command a script calls refused by the ACL, or renamed away
        raise StorageUnusable(
            f"MSJX_REDIS_URL: the Redis user at {where} may not use the gateway's keys ({prefix}:*) as it does ({exc});"
            f" allow it, e.g. ACL SETUSER <user> ~{prefix}:* {REDIS_ACL}"
        ) from None


def prepare_data_dir(settings: Settings) -> None:
    """Make the data directory (keys, the SQLite file, the serve lock live there) or say why it cannot be."""
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageUnusable(f"MSJX_DATA_DIR: {data_dir} is not a directory") from None
    except OSError as exc:
        raise StorageUnusable(f"MSJX_DATA_DIR: cannot create {data_dir}: {_reason(exc, None)}") from None


def check_sqlite(settings: Settings) -> None:
    """Open the SQLite file once (made if missing), so that a wrong path is one line, not an Alembic traceback."""
    if not settings.is_sqlite:
        return
    database = make_url(settings.async_database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or a URI form: SQLite's own message will do
    path = Path(database)
    # The default file lives in the data directory; a URL names its own.
    setting = "MSJX_DATABASE_URL" if settings.database_url else "MSJX_DATA_DIR"
    try:
        connection = sqlite3.connect(path)
        try:
            connection.execute("PRAGMA user_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        if not path.parent.is_dir():
            reason = f"the directory {path.parent} does not exist"
        elif path.is_dir():
            reason = "it is a directory"
        elif isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            reason = "the file is not a SQLite database"
        else:
            reason = str(exc)
        raise StorageUnusable(f"{setting}: cannot open the SQLite database {path}: {reason}") from None
