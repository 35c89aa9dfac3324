"""Environment databases: one database and one login role per environment (dev, staging, ...).

The registry lives in the server's admin database; each role can connect to its own database
only, with a generated password checked by Postgres itself (SCRAM). PUBLIC keeps no CONNECT or
TEMPORARY on any database (close_other_databases), and in its own database a role creates
objects in its own schema, never in `public` (engine.platform.secure).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

import asyncpg

from engine import platform
from engine.contract import EngineError, Row
from engine.ddl import quote_ident, quote_literal

ADMIN_DATABASE = "iasql"
RESERVED = frozenset({ADMIN_DATABASE, "postgres", "template0", "template1"})
_ALIAS = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_REGISTRY = """
CREATE TABLE IF NOT EXISTS iasql_database (
    alias text PRIMARY KEY,
    role_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class PublicAddress:
    """Where clients reach the iasql server, for the URLs handed out."""

    host: str
    port: int

    def url(self, user: str, password: str | None, database: str) -> str:
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgres://{quote(user, safe='')}{secret}@{self.host}:{self.port}/{database}"


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise EngineError(
            "22023",
            f"invalid database alias {alias!r}",
            hint="use 1 to 63 lower-case letters, digits or underscores, not starting with a digit",
        )
    if alias in RESERVED:
        raise EngineError("42939", f"the name {alias!r} is reserved")
    return alias


async def ensure_admin_database(conn: asyncpg.Connection) -> None:
    """Creates the admin database on first start; only the server's admin may connect to it."""
    exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", ADMIN_DATABASE)
    if not exists:
        await conn.execute(f"CREATE DATABASE {ADMIN_DATABASE} TEMPLATE template0")
    await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {ADMIN_DATABASE} FROM PUBLIC")


async def close_other_databases(conn: asyncpg.Connection) -> list[str]:
    """Takes from PUBLIC what it gets by default (CONNECT, TEMPORARY) on every database of
    the backing Postgres (`postgres`, `template1`, the admin database, any other), so that an
    environment's role reaches its own database only: each environment database grants its
    own role. Returns the databases where PUBLIC keeps a privilege, because the server's role
    may not change them (it neither owns them nor is a superuser)."""
    opened = await conn.fetch(
        "SELECT datname FROM pg_database WHERE datallowconn"
        " AND (has_database_privilege('public', oid, 'CONNECT')"
        " OR has_database_privilege('public', oid, 'TEMPORARY')) ORDER BY datname"
    )
    kept = []
    for row in opened:
        name = quote_ident(row["datname"])
        try:  # without a grant option this is only a warning, except on a database we can't use
            await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC")
        except asyncpg.InsufficientPrivilegeError:
            kept.append(row["datname"])
            continue
        if await conn.fetchval(
            "SELECT has_database_privilege('public', $1, 'CONNECT')"
            " OR has_database_privilege('public', $1, 'TEMPORARY')",
            row["datname"],
        ):
            kept.append(row["datname"])
    return kept


async def is_environment(admin: asyncpg.Connection, name: str) -> bool:
    """Whether `name` is one of the environment databases in the registry."""
    return bool(await admin.fetchval("SELECT 1 FROM iasql_database WHERE alias = $1", name))


async def prepare_registry(admin: asyncpg.Connection) -> None:
    await admin.execute(_REGISTRY)


async def connect_database(
    admin: asyncpg.Connection, server_dsn: str, address: PublicAddress, alias: str
) -> Row:
    """Creates database `alias` and its login role; returns the credentials once."""
    alias = check_alias(alias)
    if await admin.fetchval("SELECT 1 FROM iasql_database WHERE alias = $1", alias):
        raise EngineError(
            "42P04",
            f"database {alias!r} already exists",
            hint="list them with SELECT * FROM iasql_db_list()",
        )
    taken = await admin.fetchval(
        "SELECT (SELECT 1 FROM pg_database WHERE datname = $1) IS NOT NULL"
        " OR (SELECT 1 FROM pg_roles WHERE rolname = $1) IS NOT NULL",
        alias,
    )
    if taken:
        raise EngineError("42P04", f"a database or role named {alias!r} already exists")
    password = secrets.token_urlsafe(24)
    name = quote_ident(alias)
    # CREATE ROLE hashes the password with SCRAM before it is stored (password_encryption).
    await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD {quote_literal(password)}")
    try:
        # From template0, which no one can connect to: nothing made in template1 comes along.
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        await admin.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC")
        await admin.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO {name}")
        env = await asyncpg.connect(
            server_dsn,
            database=alias,
            server_settings={"search_path": platform.ENGINE_SEARCH_PATH},
        )
        try:
            await platform.secure(env, alias)
        finally:
            await env.close()
        await admin.execute("INSERT INTO iasql_database (alias, role_name) VALUES ($1, $1)", alias)
    except BaseException:
        await _drop(admin, alias)
        raise
    return {
        "database": alias,
        "user": alias,
        "password": password,
        "url": address.url(alias, password, alias),
    }


async def disconnect_database(admin: asyncpg.Connection, alias: str) -> Row:
    alias = check_alias(alias)
    if not await admin.fetchval("SELECT 1 FROM iasql_database WHERE alias = $1", alias):
        raise EngineError(
            "3D000",
            f"database {alias!r} does not exist",
            hint="list them with SELECT * FROM iasql_db_list()",
        )
    await _drop(admin, alias)
    return {"message": f"database {alias} and its role were dropped"}


async def list_databases(admin: asyncpg.Connection, address: PublicAddress) -> list[Row]:
    rows = await admin.fetch(
        "SELECT alias, role_name, created_at FROM iasql_database ORDER BY alias"
    )
    return [
        {
            "alias": r["alias"],
            "database": r["alias"],
            "user": r["role_name"],
            "url": address.url(r["role_name"], None, r["alias"]),
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]


async def _drop(admin: asyncpg.Connection, alias: str) -> None:
    name = quote_ident(alias)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"DROP ROLE IF EXISTS {name}")
    await admin.execute("DELETE FROM iasql_database WHERE alias = $1", alias)
