"""Cloud → database: read what the cloud has and write it into the module tables.

Rows and records meet on the table's cloud id. Foreign keys are translated here: a record
names a referenced resource by its cloud id, a row by the referenced row's key.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.ddl import quote_ident
from modules.concurrency import gather_bounded
from modules.spec import Cloud, Column, Record, Table

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


@dataclass(frozen=True)
class Pending:
    """A foreign key to a row whose resource does not exist yet (it is created by the same
    commit): its cloud id is known only once that create has run."""

    table: str
    key: Any

    def __str__(self) -> str:
        return f"(new {self.table} {self.key})"


class References:
    """Translates foreign-key values between rows (keys) and records (cloud ids)."""

    def __init__(self) -> None:
        # (table, key column, cloud column) -> {key: cloud id} and its reverse
        self._to_cloud: dict[tuple[str, str, str], dict[Any, Any]] = {}
        self._to_key: dict[tuple[str, str, str], dict[Any, Any]] = {}
        self._keys: dict[tuple[str, str], set[Any]] = {}  # for keys the cloud uses as they are
        self._in_cloud: set[tuple[str, str, Any]] = set()  # (table, column, cloud id) seen

    async def load(self, conn: asyncpg.Connection, table: Table) -> None:
        for column in table.references:
            ref = column.ref
            assert ref is not None
            if ref.cloud is None:
                if (ref.table, ref.key) not in self._keys:
                    rows = await conn.fetch(
                        f"SELECT {quote_ident(ref.key)} AS key FROM {quote_ident(ref.table)}"
                    )
                    self._keys[(ref.table, ref.key)] = {r["key"] for r in rows}
                continue
            if (ref.table, ref.key, ref.cloud) in self._to_cloud:
                continue
            rows = await conn.fetch(
                f"SELECT {quote_ident(ref.key)} AS key, {quote_ident(ref.cloud)} AS cloud"
                f" FROM {quote_ident(ref.table)}"
            )
            self._to_cloud[(ref.table, ref.key, ref.cloud)] = {r["key"]: r["cloud"] for r in rows}
            self._to_key[(ref.table, ref.key, ref.cloud)] = {r["cloud"]: r["key"] for r in rows}

    def to_cloud(self, column: Column, value: Any) -> Any:
        ref = column.ref
        if ref is None or ref.cloud is None or value is None:
            return value
        cloud = self._to_cloud.get((ref.table, ref.key, ref.cloud), {}).get(value)
        return Pending(ref.table, value) if cloud is None else cloud

    def to_key(self, column: Column, value: Any) -> Any:
        ref = column.ref
        if ref is None or ref.cloud is None or value is None:
            return value
        return self._to_key.get((ref.table, ref.key, ref.cloud), {}).get(value)

    def seen_in_cloud(self, table: Table, records: list[Record]) -> None:
        """Takes note of resources that exist in the cloud, whether or not they have a row."""
        for record in records:
            for column in table.cloud_id:  # what references to this table name
                self._in_cloud.add((table.name, column, record.get(column)))

    def knows(self, column: Column, cloud_value: Any) -> bool:
        """Whether the resource a record's foreign key names has a row (or, once seen with
        `seen_in_cloud`, exists in the cloud)."""
        ref = column.ref
        if ref is None or cloud_value is None or ref.optional:
            return True
        if (ref.table, ref.cloud or ref.key, cloud_value) in self._in_cloud:
            return True
        if ref.cloud is None:
            return cloud_value in self._keys.get((ref.table, ref.key), set())
        return self.to_key(column, cloud_value) is not None

    def knows_parents(self, table: Table, record: Record) -> bool:
        return all(self.knows(c, record.get(c.name)) for c in table.references)

    def learn(self, table: Table, row: Record) -> None:
        """Takes note of a row's current cloud ids, e.g. once its resource has been created."""
        for (name, key, cloud), to_cloud in self._to_cloud.items():
            if name == table.name:
                to_cloud[row[key]] = row.get(cloud)
                self._to_key[(name, key, cloud)][row.get(cloud)] = row[key]


def canonical(column: Column, value: Any) -> Any:
    """The form two values are compared in, so that what AWS normalises never shows as a
    change (policy key order, tag order, CIDR forms)."""
    if value is None or isinstance(value, Pending):
        return value
    if column.normalize is not None:
        return column.normalize(value)
    if column.type in ("cidr", "inet"):
        return str(ipaddress.ip_network(str(value), strict=False))
    return value


def cloud_key(table: Table, values: Record) -> tuple[Any, ...] | None:
    """The resource's identity in the cloud; None while part of it is not assigned yet."""
    key = tuple(values.get(c) for c in table.cloud_id)
    return None if any(v is None or isinstance(v, Pending) for v in key) else key


def row_as_record(table: Table, row: Record, refs: References) -> Record:
    return {c.name: refs.to_cloud(c, row.get(c.name)) for c in table.columns}


def _stored_columns(table: Table) -> list[Column]:
    """Columns a sync writes: everything but serial keys and this database's own settings."""
    return [c for c in table.columns if c.type != "serial" and not c.local]


async def store(
    conn: asyncpg.Connection,
    table: Table,
    records: list[Record],
) -> list[Record]:
    """Writes `records` into the table; returns the rows that have no record, for the caller
    to delete in a second pass (children before the parents they reference)."""
    refs = References()
    await refs.load(conn, table)
    rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {quote_ident(table.name)}")]
    by_key: dict[tuple[Any, ...], Record] = {}
    for row in rows:
        key = cloud_key(table, row_as_record(table, row, refs))
        if key is not None:
            by_key[key] = row
    columns = _stored_columns(table)
    matched: set[int] = set()
    for record in records:
        if not refs.knows_parents(table, record):
            continue  # its parent is not in the database (e.g. in a region not enabled)
        values = {c.name: refs.to_key(c, record.get(c.name)) for c in columns if c.name in record}
        key = cloud_key(table, record)
        match = by_key.get(key) if key is not None else None
        if match is None:
            await _insert(conn, table, values)
        else:
            matched.add(id(match))
            changed = {
                n: v
                for n, v in values.items()
                if canonical(table.column(n), match.get(n)) != canonical(table.column(n), v)
            }
            if changed:
                await _update(conn, table, match, changed)
    return [r for r in rows if id(r) not in matched]


def _primary(table: Table, row: Record) -> Any:
    return tuple(row[c] for c in table.primary_key)


async def _insert(conn: asyncpg.Connection, table: Table, values: Record) -> None:
    names = list(values)
    await conn.execute(
        f"INSERT INTO {quote_ident(table.name)} ({', '.join(map(quote_ident, names))})"
        f" VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})",
        *values.values(),
    )


async def _update(conn: asyncpg.Connection, table: Table, row: Record, values: Record) -> None:
    names = list(values)
    sets = ", ".join(f"{quote_ident(n)} = ${i + 1}" for i, n in enumerate(names))
    where = " AND ".join(
        f"{quote_ident(c)} = ${len(names) + i + 1}" for i, c in enumerate(table.primary_key)
    )
    await conn.execute(
        f"UPDATE {quote_ident(table.name)} SET {sets} WHERE {where}",
        *values.values(),
        *_primary(table, row),
    )


async def delete_rows(conn: asyncpg.Connection, table: Table, rows: list[Record]) -> None:
    where = " AND ".join(f"{quote_ident(c)} = ${i + 1}" for i, c in enumerate(table.primary_key))
    for row in rows:
        await conn.execute(
            f"DELETE FROM {quote_ident(table.name)} WHERE {where}", *_primary(table, row)
        )


async def sync_tables(
    conn: asyncpg.Connection,
    cloud: Cloud,
    tables: list[Table],
    regions: list[str],
) -> dict[str, int]:
    """Makes the tables equal to the cloud: upserts parents first, deletes children first.
    Tables without a mapper are left alone. Returns records written per table."""
    with_mapper = [t for t in tables if t.mapper is not None]
    reads = await asyncio.gather(*(read_cloud(cloud, t, regions) for t in with_mapper))
    counts: dict[str, int] = {}
    leftovers: list[tuple[Table, list[Record]]] = []
    for table, records in zip(with_mapper, reads, strict=True):
        leftovers.append((table, await store(conn, table, records)))
        counts[table.name] = len(records)
    for table, missing in reversed(leftovers):
        await delete_rows(conn, table, missing)
    return counts
