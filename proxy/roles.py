"""Where the proxy reads a role's stored password verifier: pg_authid, on a small pool of the
engine's own (superuser) connections to the admin database, as PgBouncer's auth_query does."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from proxy.login import UNVERIFIABLE, Role

log = logging.getLogger("iasql.proxy")

LOOKUP_TIMEOUT = 5.0
_QUERY = "SELECT rolpassword, rolcanlogin FROM pg_catalog.pg_authid WHERE rolname = $1"


class RoleDirectory:
    def __init__(self, dsn: str, database: str, *, max_size: int = 2) -> None:
        self.dsn = dsn
        self.database = database
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self.readable = True  # False once pg_authid is found out of reach (no superuser)

    async def find(self, user: str) -> Role | None:
        """The role `user` (None: there is none). UNVERIFIABLE when pg_authid cannot be read:
        the login is then relayed to the backing Postgres, as it was before. Raises what
        asyncpg raises when the backing Postgres is unreachable."""
        if not self.readable:
            return UNVERIFIABLE
        pool = await self._get_pool()
        try:
            try:
                row = await pool.fetchrow(_QUERY, user, timeout=LOOKUP_TIMEOUT)
            except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
                # A pooled connection lost with a restart of the backing Postgres: once more.
                row = await pool.fetchrow(_QUERY, user, timeout=LOOKUP_TIMEOUT)
        except asyncpg.InsufficientPrivilegeError as exc:
            log.warning(
                "cannot read password verifiers (%s): logins are relayed to the backing"
                " Postgres, and a client that does not finish its login holds a backend"
                " connection until --auth-timeout",
                exc,
            )
            self.readable = False
            return UNVERIFIABLE
        if row is None:
            return None
        return Role(row["rolpassword"], bool(row["rolcanlogin"]))

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        database=self.database,
                        min_size=0,
                        max_size=self.max_size,
                        timeout=LOOKUP_TIMEOUT,
                    )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
