"""Rows and cloud records, and what translates between them, for plan, apply and sync alike.

A row is what the database holds, a record what the cloud answers: they meet on the table's
cloud id. A foreign key names a referenced row by its key in a row, and the referenced
resource by its cloud id in a record; `References` translates the one into the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.ddl import quote_ident
from modules.spec import Column, Record, Table


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


def primary_key(table: Table, row: Record) -> tuple[Any, ...]:
    """The row's primary key values, in the table's key order."""
    return tuple(row[c] for c in table.primary_key)


async def update_row(
    conn: asyncpg.Connection, table: Table, key: tuple[Any, ...], values: Record
) -> str:
    """Sets `values` (column -> value, at least one) on the row whose primary key is `key`;
    returns the command status, `UPDATE 0` when no such row is left."""
    names = list(values)
    sets = ", ".join(f"{quote_ident(n)} = ${i + 1}" for i, n in enumerate(names))
    where = " AND ".join(
        f"{quote_ident(c)} = ${len(names) + i + 1}" for i, c in enumerate(table.primary_key)
    )
    status: str = await conn.execute(
        f"UPDATE {quote_ident(table.name)} SET {sets} WHERE {where}", *values.values(), *key
    )
    return status
