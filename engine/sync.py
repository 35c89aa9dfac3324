"""Cloud → database: read what the cloud has and write it into the module tables.

Rows and records meet on the table's cloud id; foreign keys are translated by
`records.References` (a record names a referenced resource by its cloud id, a row by the
referenced row's key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from engine.contract import EngineError
from engine.ddl import quote_ident
from engine.records import (
    References,
    canonical,
    cloud_key,
    primary_key,
    row_as_record,
    update_row,
)
from modules.concurrency import gather_bounded
from modules.spec import TOKEN, Cloud, Column, ReadsSome, Record, Table

READ_CONCURRENCY = 16


async def read_cloud(cloud: Cloud, table: Table, regions: list[str]) -> list[Record]:
    """Every resource of the table, over all enabled regions at once for a regional table."""
    assert table.mapper is not None
    mapper = table.mapper
    if not table.regional:
        return await mapper.read(cloud, None)

    async def read_region(region: str) -> list[Record]:
        records = await mapper.read(cloud, region)
        for record in records:
            record["region"] = region
        return records

    found = await gather_bounded((read_region(r) for r in regions), READ_CONCURRENCY)
    return [record for records in found for record in records]


def _stored_columns(table: Table) -> list[Column]:
    """Columns a sync writes: everything but serial keys and this database's own settings."""
    return [c for c in table.columns if c.type != "serial" and not c.local]


@dataclass
class Kept:
    """What a sync must leave alone: rows a user changed after the sync's snapshot (they stay
    pending for the next commit; only their cloud-assigned columns are refreshed), and cloud
    resources it must not import as rows (a resource such a user change deleted or renamed,
    or one a failed commit could not undo)."""

    rows: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)  # table -> primary keys
    # table -> rows as they were before a user change, whose resources must not come back
    originals: dict[str, list[Record]] = field(default_factory=dict)
    # table -> records of resources left behind in the cloud (journal `after` values)
    orphans: dict[str, list[Record]] = field(default_factory=dict)

    def keep_row(self, table: Table, row: Record) -> None:
        self.rows.setdefault(table.name, set()).add(primary_key(table, row))

    def touches(self, table: Table | None, change: dict[str, Record]) -> bool:
        """Whether an audit change (its `original` or `change` row) is on a kept row."""
        if table is None or table.name not in self.rows:
            return False
        kept = self.rows[table.name]
        return any(primary_key(table, change[side]) in kept for side in change)

    def hidden_keys(self, table: Table, refs: References) -> tuple[set[Any], set[str]]:
        """Cloud keys and creation tokens of the resources not to import into `table`."""
        keys = set()
        for original in self.originals.get(table.name, []):
            keys.add(cloud_key(table, row_as_record(table, original, refs)))
        tokens = set()
        for orphan in self.orphans.get(table.name, []):
            keys.add(cloud_key(table, orphan))
            if orphan.get(TOKEN):
                tokens.add(str(orphan[TOKEN]))
        keys.discard(None)
        return keys, tokens


async def store(
    conn: asyncpg.Connection,
    table: Table,
    records: list[Record],
    kept: Kept | None = None,
) -> list[Record]:
    """Writes `records` into the table; returns the rows that have no record, for the caller
    to delete in a second pass (children before the parents they reference)."""
    kept = kept or Kept()
    refs = References()
    await refs.load(conn, table)
    rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {quote_ident(table.name)}")]
    by_key: dict[tuple[Any, ...], Record] = {}
    for row in rows:
        key = cloud_key(table, row_as_record(table, row, refs))
        if key is not None:
            by_key[key] = row
    kept_rows = kept.rows.get(table.name, set())
    hidden, tokens = kept.hidden_keys(table, refs)
    columns = _stored_columns(table)
    matched: set[int] = set()
    gone = [r for r in _vanished(table, by_key, records) if primary_key(table, r) not in kept_rows]
    for record in records:
        if not refs.knows_parents(table, record):
            continue  # its parent is not in the database (e.g. in a region not enabled)
        values = {c.name: refs.to_key(c, record.get(c.name)) for c in columns if c.name in record}
        key = cloud_key(table, record)
        match = by_key.get(key) if key is not None else None
        if match is None and key not in hidden and str(record.get(TOKEN)) not in tokens:
            match = _same_unique(table, gone, values, matched)
        if match is None:
            if key not in hidden and str(record.get(TOKEN)) not in tokens:
                await _insert(conn, table, values)
            continue
        matched.add(id(match))
        if primary_key(table, match) in kept_rows:  # a user's later change wins
            values = {n: v for n, v in values.items() if table.column(n).cloud_assigned}
        changed = {
            n: v
            for n, v in values.items()
            if canonical(table.column(n), match.get(n)) != canonical(table.column(n), v)
        }
        if changed:
            await update_row(conn, table, primary_key(table, match), changed)
    return [r for r in rows if id(r) not in matched and primary_key(table, r) not in kept_rows]


def _vanished(
    table: Table, by_key: dict[tuple[Any, ...], Record], records: list[Record]
) -> list[Record]:
    """The rows of cloud resources that no record names any more."""
    found = {cloud_key(table, r) for r in records}
    return [row for key, row in by_key.items() if key not in found]


def _same_unique(
    table: Table, gone: list[Record], values: Record, matched: set[int]
) -> Record | None:
    """A row of a vanished resource that holds the record's values of one of the table's
    other unique keys (its name): the resource was replaced in the cloud under the same name
    (a new ARN), and the row, with its id that other rows reference, stands for the new one.
    Inserting instead would break that unique key until the old row is deleted."""
    for unique in table.unique:
        # NULLs never clash in a unique constraint, so they name nothing here either.
        if unique == table.cloud_id or not all(values.get(c) is not None for c in unique):
            continue
        for row in gone:
            if id(row) not in matched and all(row.get(c) == values[c] for c in unique):
                return row
    return None


async def _insert(conn: asyncpg.Connection, table: Table, values: Record) -> None:
    names = list(values)
    await conn.execute(
        f"INSERT INTO {quote_ident(table.name)} ({', '.join(map(quote_ident, names))})"
        f" VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})",
        *values.values(),
    )


async def delete_rows(conn: asyncpg.Connection, table: Table, rows: list[Record]) -> None:
    where = " AND ".join(f"{quote_ident(c)} = ${i + 1}" for i, c in enumerate(table.primary_key))
    for row in rows:
        await conn.execute(
            f"DELETE FROM {quote_ident(table.name)} WHERE {where}", *primary_key(table, row)
        )


async def read_back(cloud: Cloud, table: Table, wanted: list[Record]) -> list[Record]:
    """The resources named by `wanted` (records with their region), read by the mapper's
    `read_some` one region at a time."""
    reader = table.mapper
    assert isinstance(reader, ReadsSome)
    if not table.regional:
        return await reader.read_some(cloud, None, wanted)
    by_region: dict[str, list[Record]] = {}
    for record in wanted:
        by_region.setdefault(record["region"], []).append(record)

    async def read_region(region: str, some: list[Record]) -> list[Record]:
        records = await reader.read_some(cloud, region, some)
        for record in records:
            record["region"] = region
        return records

    found = await asyncio.gather(*(read_region(r, some) for r, some in by_region.items()))
    return [record for records in found for record in records]


async def sync_tables(
    conn: asyncpg.Connection,
    cloud: Cloud,
    tables: list[Table],
    regions: list[str],
    *,
    kept: Callable[[asyncpg.Connection], Awaitable[Kept]] | None = None,
    notify: Callable[[str], None] | None = None,
    only: dict[str, list[Record]] | None = None,
) -> dict[str, int]:
    """Makes the tables equal to the cloud: upserts parents first, deletes children first.
    Tables without a mapper are left alone. Returns records written per table.

    The cloud is read first; then, in one database transaction, the tables are locked against
    writes (waiting for writers in flight), `kept` says which rows and resources to leave
    alone as of that moment, and the rows are written. A user's write that lands during the
    sync therefore either is seen by `kept` or waits until the sync is done.

    For a table in `only` whose mapper can read some resources (ReadsSome), just the
    resources named there are read and stored; its other rows are left as they are."""
    with_mapper = [t for t in tables if t.mapper is not None]
    if not with_mapper:
        return {}
    say = notify or (lambda _text: None)
    names = ", ".join(t.name for t in with_mapper)
    read = 0

    partial = {
        t.name for t in with_mapper if only and t.name in only and isinstance(t.mapper, ReadsSome)
    }

    async def read_table(table: Table) -> list[Record]:
        nonlocal read
        if table.name in partial:
            records = await read_back(cloud, table, (only or {})[table.name])
        else:
            records = await read_cloud(cloud, table, regions)
        read += 1
        say(f"read {len(records)} {table.name} from the cloud ({read}/{len(with_mapper)} tables)")
        return records

    reads = await asyncio.gather(*(read_table(t) for t in with_mapper))
    counts: dict[str, int] = {}
    leftovers: list[tuple[Table, list[Record]]] = []
    async with conn.transaction():
        await _lock_against_writes(conn, with_mapper)
        keep = await kept(conn) if kept is not None else Kept()
        for table, records in zip(with_mapper, reads, strict=True):
            missing = await store(conn, table, records, keep)
            leftovers.append((table, [] if table.name in partial else missing))
            counts[table.name] = len(records)
        for table, missing in reversed(leftovers):
            await delete_rows(conn, table, missing)
    say(f"stored {sum(counts.values())} cloud resources into {names}")
    return counts


LOCK_TIMEOUT = "15s"  # how long a sync waits for another session's open write transaction


async def _lock_against_writes(conn: asyncpg.Connection, tables: list[Table]) -> None:
    """Blocks writes to `tables` until the current transaction ends (reads go on)."""
    names = ", ".join(quote_ident(t.name) for t in tables)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        await conn.execute(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
    except asyncpg.LockNotAvailableError:
        raise SyncBlocked(
            f"another session has kept uncommitted changes to {', '.join(t.name for t in tables)}"
            f" open for {LOCK_TIMEOUT}"
        ) from None
    await conn.execute("SET LOCAL lock_timeout = 0")


class SyncBlocked(EngineError):
    """A sync could not lock its tables: another session holds an open write transaction."""

    def __init__(self, message: str) -> None:
        super().__init__(
            "55P03", message, hint="commit or roll back that session's transaction, then retry"
        )
