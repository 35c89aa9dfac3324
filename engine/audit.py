"""The audit log as the engine uses it: which user changes no commit has applied yet, events
of the transaction life cycle, and undoing row changes (rollback, revert)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.contract import EngineError
from engine.ddl import quote_ident
from modules.spec import Table

# The audit id up to which user changes have been applied (or discarded) by the engine.
APPLIED_THROUGH = "applied_through"


@dataclass(frozen=True)
class Change:
    id: int
    table_name: str
    change_type: str
    change: dict[str, Any]


async def applied_through(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT value FROM iasql_settings WHERE key = $1", APPLIED_THROUGH)
    return int(value) if value is not None else 0


async def mark_applied(conn: asyncpg.Connection, through: int) -> None:
    await conn.execute(
        "INSERT INTO iasql_settings VALUES ($1, $2)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        APPLIED_THROUGH,
        str(through),
    )


async def last_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM iasql_audit_log"))


SETTLE_TIMEOUT = "15s"


async def settled_last_id(conn: asyncpg.Connection) -> int:
    """The last audit id, taken once no transaction that could still add a lower one is open:
    ids come from a sequence at write time, but become visible only when the writer commits.
    Waits for such writers (another session's open transaction block), within a limit."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{SETTLE_TIMEOUT}'")
        try:
            await conn.execute("LOCK TABLE iasql_audit_log IN SHARE MODE")
        except asyncpg.LockNotAvailableError:
            raise EngineError(
                "55P03",
                "another session has had uncommitted changes to module tables open for"
                f" {SETTLE_TIMEOUT}",
                hint="commit or roll back that session's transaction block, then try again",
            ) from None
        return await last_id(conn)


async def pending_changes(
    conn: asyncpg.Connection, engine_user: str, *, after: int | None = None
) -> list[Change]:
    """User row changes that no commit has applied yet, oldest first."""
    since = await applied_through(conn) if after is None else after
    rows = await conn.fetch(
        "SELECT id, table_name, change_type::text, change FROM iasql_audit_log"
        " WHERE id > $1 AND change_type IN ('INSERT', 'UPDATE', 'DELETE') AND \"user\" <> $2"
        " ORDER BY id",
        since,
        engine_user,
    )
    return [Change(r["id"], r["table_name"], r["change_type"], r["change"]) for r in rows]


async def log_event(
    conn: asyncpg.Connection,
    change_type: str,
    user: str,
    transaction_id: str | None,
    message: str | None = None,
    change: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        'INSERT INTO iasql_audit_log ("user", table_name, change_type, change, message,'
        " transaction_id) VALUES ($1, '', $2, $3, $4, $5)",
        user,
        change_type,
        change or {},
        message,
        transaction_id,
    )


async def undo(conn: asyncpg.Connection, changes: list[Change], tables: dict[str, Table]) -> None:
    """Reverses row changes to cloud resources, newest first, keeping serial ids. Settings of
    this database are kept: tables with no cloud resource (credentials) and local columns (the
    default region). Run it in a transaction: foreign keys are checked at its end, so
    cascades may be undone in any order."""
    await conn.execute("SET CONSTRAINTS ALL DEFERRED")
    for change in reversed(changes):
        table = tables.get(change.table_name)
        if table is None or table.mapper is None:
            continue
        name = quote_ident(table.name)
        keys = ", ".join(quote_ident(k) for k in table.primary_key)
        record = f"jsonb_populate_record(NULL::{name}, $1::jsonb)"
        match = f"({keys}) = (SELECT {keys} FROM {record})"
        if change.change_type == "INSERT":
            await conn.execute(f"DELETE FROM {name} WHERE {match}", change.change["change"])
        elif change.change_type == "UPDATE":
            original = change.change["original"]
            local = {c.name for c in table.columns if c.local}
            if not set(original) - local:
                continue
            columns = ", ".join(quote_ident(c) for c in original if c not in local)
            await conn.execute(
                f"UPDATE {name} SET ({columns}) = (SELECT {columns} FROM {record})"
                f" WHERE ({keys}) = (SELECT {keys} FROM jsonb_populate_record(NULL::{name}, $2::jsonb))",
                original,
                change.change["change"],
            )
        else:
            await conn.execute(
                f"INSERT INTO {name} SELECT * FROM {record} ON CONFLICT DO NOTHING",
                change.change["original"],
            )
