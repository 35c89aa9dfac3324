"""One environment database as the engine sees it: a connection pool (as the engine's role),
the platform schema, the installed modules and the AWS account behind it."""

from __future__ import annotations

import dataclasses
import json
import secrets

import asyncpg

from engine import platform
from engine.cloud import AwsCloud, Credentials, load_credentials
from engine.contract import FunctionSpec
from modules import account_module, available_modules
from modules.spec import ModuleSpec, Table, dependency_order

IDLE_CONNECTION_SECONDS = 30.0  # an environment's pool closes connections idle this long


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class Database:
    def __init__(self, name: str, pool: asyncpg.Pool, engine_user: str) -> None:
        self.name = name
        self.pool = pool
        # The role the engine writes as: its audit rows are not user changes.
        self.engine_user = engine_user
        self._cloud: AwsCloud | None = None
        # (the server's default endpoint, this database's own account id there): see cloud()
        self.sandbox: tuple[str, str] | None = None

    @classmethod
    async def open(
        cls,
        dsn: str,
        name: str,
        functions: list[FunctionSpec],
        default_endpoint: str | None,
    ) -> Database:
        # min_size 0: no floor for asyncpg to restore in the background, which, while the
        # backing Postgres is down, it retries with a traceback in the log each time. A
        # connection lost with a restart is replaced when next acquired.
        # A fixed search path: nothing a user may create is on it (see platform.secure).
        pool = await asyncpg.create_pool(
            dsn,
            database=name,
            min_size=0,
            max_size=8,
            # An environment in use holds connections; one left alone gives them back soon,
            # so that many environments used in turn don't exhaust the backing Postgres.
            max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
            init=_init_connection,
            server_settings={"search_path": platform.ENGINE_SEARCH_PATH},
        )
        async with pool.acquire() as conn:
            engine_user = await conn.fetchval("SELECT session_user")
            await platform.ensure(conn, functions)
            await platform.secure(conn, name)  # the environment's role has its name
            if default_endpoint is None:
                await conn.execute("DELETE FROM iasql_settings WHERE key = 'default_endpoint_url'")
            else:
                await conn.execute(
                    "INSERT INTO iasql_settings VALUES ('default_endpoint_url', $1)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    default_endpoint,
                )
            # Made once, kept for the life of the database (see in_sandbox_account).
            account = await conn.fetchval(
                "INSERT INTO iasql_settings VALUES ('sandbox_account_id', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = iasql_settings.value RETURNING value",
                str(10**11 + secrets.randbelow(9 * 10**11)),
            )
        db = cls(name, pool, engine_user)
        if default_endpoint is not None:
            db.sandbox = (default_endpoint, account)
        return db

    async def close(self) -> None:
        if self._cloud is not None:
            await self._cloud.close()
        await self.pool.close()

    async def cloud(self) -> AwsCloud:
        """The account's AWS clients, rebuilt when the credentials row changes."""
        async with self.pool.acquire() as conn:
            credentials = in_sandbox_account(await load_credentials(conn), self.sandbox)
        if self._cloud is None or self._cloud.credentials != credentials:
            if self._cloud is not None:
                await self._cloud.close()
            self._cloud = AwsCloud(credentials)
        return self._cloud

    async def installed(self, conn: asyncpg.Connection | None = None) -> dict[str, ModuleSpec]:
        """Installed modules that this server knows, in install (dependency) order."""
        source = self.pool if conn is None else conn
        rows = await source.fetch("SELECT name FROM iasql_module ORDER BY installed_at, name")
        names = [r["name"] for r in rows]
        known = available_modules()
        return {n: known[n] for n in names if n in known}

    async def installed_tables(self, conn: asyncpg.Connection | None = None) -> list[Table]:
        """Every installed table, parents before the tables that reference them."""
        tables = [t for m in (await self.installed(conn)).values() for t in m.tables]
        return dependency_order(tables)

    async def enabled_regions(self, conn: asyncpg.Connection) -> list[str]:
        table = account_module()[1].regions.name
        if not await conn.fetchval(f"SELECT to_regclass('{table}') IS NOT NULL"):
            return []
        return [
            r["region"]
            for r in await conn.fetch(
                f"SELECT region FROM {table} WHERE is_enabled ORDER BY region"
            )
        ]


def in_sandbox_account(credentials: Credentials, sandbox: tuple[str, str] | None) -> Credentials:
    """Against the server's default endpoint (the local sandbox), each environment database
    is its own AWS account: the sandbox, like LocalStack, takes a 12-digit access key id as
    the account id, so the database's account id is sent as the key. A key of 12 digits in
    the credentials table names the account itself (to share one between databases)."""
    if sandbox is None or credentials.endpoint_url is None:
        return credentials
    endpoint, account = sandbox
    key = credentials.access_key_id
    if credentials.endpoint_url.rstrip("/") != endpoint.rstrip("/") or (
        len(key) == 12 and key.isdigit()
    ):
        return credentials
    return dataclasses.replace(credentials, access_key_id=account)
