"""Persistence: the database engine and migrations, the tables, the process's one Redis client, the health
and reachability of PostgreSQL and Redis.

May import: schemas, security. Nothing else of gateway."""
