"""Start-up checks that PostgreSQL and Redis answer, so that an unreachable one is one line naming its setting.

Without them `serve` and `db upgrade` died in a driver's connect call with a 90–550-line traceback. The line names
the setting and host:port, never the URL itself: it may carry a password.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from gateway.settings import Settings
from schemas.errors import MsjxError

# Long enough for a database on another host under load; short enough that a firewall dropping packets does not
# leave the operator staring at a silent command.
CONNECT_TIMEOUT = 5.0


class ServiceUnreachable(MsjxError):
    """PostgreSQL or Redis did not answer at start; the message is one line naming the setting and host:port."""


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


async def check_database(settings: Settings) -> None:
    """Connect once to the configured PostgreSQL; SQLite is a local file and needs no check."""
    if settings.is_sqlite or settings.database_url is None:
        return
    import asyncpg

    # asyncpg reads the libpq URL form (query options such as sslmode included) once the driver name is gone.
    dsn = "postgresql://" + settings.database_url.partition("://")[2]
    where = endpoint(settings.database_url, 5432)
    try:
        connection = await asyncpg.connect(dsn=dsn, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # any way of not getting a connection is the same answer for the operator
        raise ServiceUnreachable(
            f"MSJX_DATABASE_URL: cannot connect to PostgreSQL at {where}: {_reason(exc, urlsplit(dsn).password)}"
        ) from None
    await connection.close()


async def check_redis(settings: Settings) -> None:
    """PING the configured Redis once."""
    if not settings.redis_url:
        return
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    try:
        await client.ping()
    except Exception as exc:  # refused, timed out, wrong password, not Redis: the operator needs the same line
        cause = exc.__cause__ or exc.__context__
        reason = cause if isinstance(cause, OSError) else exc
        raise ServiceUnreachable(
            f"MSJX_REDIS_URL: cannot connect to Redis at {endpoint(settings.redis_url, 6379)}: "
            f"{_reason(reason, urlsplit(settings.redis_url).password)}"
        ) from None
    finally:
        await client.aclose()
