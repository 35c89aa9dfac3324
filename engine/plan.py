"""Database vs cloud: the operations a commit would run, as `iasql_preview()` shows them.

Rows and cloud records of a table meet on the table's cloud id. A row with no matching record
is created, a record with no row is deleted, and a pair that differs in a column the user
controls is updated in place, or replaced when one of the differing columns cannot change in
place. Replacing a resource replaces the resources that reference it too, since they would
otherwise point at something about to be deleted.

A user's change to a cloud-assigned column (`UPDATE iam_role SET arn = 'dummy'`) changes
nothing in the cloud: the commit's read-back puts the cloud's value back into the row. The
plan shows it (as IaSQL's preview does) as an `update` whose changes say
`"restored_from_cloud": true`, `old` being the row's value and `new` the cloud's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from engine.ddl import quote_ident
from engine.records import References, canonical, cloud_key, row_as_record
from engine.sync import read_cloud
from modules.spec import Cloud, Column, Record, Table

CREATE, UPDATE, REPLACE, DELETE = "create", "update", "replace", "delete"


@dataclass
class Operation:
    table: Table
    action: str
    row: Record | None  # the database row; None for a delete
    current: Record | None  # the cloud's record; None for a create
    desired: Record | None  # the row in cloud form; None for a delete
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def row_id(self) -> str | None:
        if self.row is None:
            return None
        return ", ".join(str(self.row[c]) for c in self.table.primary_key)

    @property
    def description(self) -> str | None:
        """The cloud id, or for a resource not created yet the row's natural key."""
        values = self.current or self.desired or {}
        columns = self.table.cloud_id if self.current else self.table.natural_key
        shown = [str(values[c]) for c in columns if values.get(c) is not None]
        return "/".join(shown) or None

    def preview_row(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "table_name": self.table.name,
            "id": self.row_id,
            "description": self.description,
            "changes": self.changes,
        }


@dataclass
class Plan:
    operations: list[Operation]
    refs: References
    tables: list[Table]
    # Rows whose AWS-created resource (a default VPC) was deleted: restored, not deleted.
    protected: list[Operation] = field(default_factory=list)
    # Rows whose cloud-assigned values a user changed: the commit restores them from the
    # cloud; nothing is done in the cloud.
    restores: list[Operation] = field(default_factory=list)

    def preview_rows(self) -> list[dict[str, Any]]:
        return [o.preview_row() for o in [*self.operations, *self.restores]]


# table name -> primary key of a row -> its cloud-assigned columns a user wrote
Edited = dict[str, dict[tuple[Any, ...], set[str]]]


def compared_columns(table: Table) -> list[Column]:
    """The columns a user controls: not serial keys, cloud-assigned values, local settings or
    secrets."""
    return [
        c
        for c in table.columns
        if c.type != "serial" and not (c.cloud_assigned or c.local or c.secret)
    ]


def shown(value: Any) -> Any:
    """A value as the preview's JSON shows it."""
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)


def differences(table: Table, desired: Record, current: Record) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for column in compared_columns(table):
        new, old = desired.get(column.name), current.get(column.name)
        if canonical(column, new) != canonical(column, old):
            change = {"old": shown(old), "new": shown(new)}
            if column.replaces:
                change["forces_replace"] = True
            changes[column.name] = change
    return changes


def restored(table: Table, desired: Record, current: Record, edited: set[str]) -> dict[str, Any]:
    """The cloud-assigned columns among `edited` whose row value differs from the cloud's:
    the commit's read-back writes the cloud's value back."""
    changes: dict[str, Any] = {}
    for column in table.columns:
        if column.name not in edited or column.name not in current:
            continue
        new, old = current.get(column.name), desired.get(column.name)
        if canonical(column, new) != canonical(column, old):
            changes[column.name] = {
                "old": shown(old),
                "new": shown(new),
                "restored_from_cloud": True,
            }
    return changes


def _all_values(table: Table, record: Record, *, created: bool) -> dict[str, Any]:
    """The changes of a create (every value is new) or a delete (every value goes)."""
    changes = {}
    for column in compared_columns(table):
        value = shown(record.get(column.name))
        if value is not None:
            changes[column.name] = (
                {"old": None, "new": value} if created else {"old": value, "new": None}
            )
    return changes


def diff_table(
    table: Table,
    rows: list[Record],
    records: list[Record],
    refs: References,
    plan: Plan,
    edited: dict[tuple[Any, ...], set[str]] | None = None,
) -> list[tuple[Record, Record]]:
    """Adds the table's operations to the plan; returns the (row, record) pairs that match."""
    by_key: dict[tuple[Any, ...], Record] = {}
    for record in records:
        key = cloud_key(table, record)
        # A resource whose parent has no row (e.g. a rule naming another account's group) is
        # outside what this database manages, as for a sync.
        if key is not None and refs.knows_parents(table, record):
            by_key[key] = record
    unchanged: list[tuple[Record, Record]] = []
    paired: list[tuple[Record, Record, tuple[Any, ...] | None, Record | None]] = []
    for row in rows:
        desired = row_as_record(table, row, refs)
        key = cloud_key(table, desired)
        paired.append((row, desired, key, by_key.pop(key, None) if key is not None else None))
    for row, desired, key, current in paired:
        if current is None and key is not None:
            # Replaced in the cloud under the same name (a new ARN): the same row, as a sync
            # keeps it (engine.sync._same_unique), not a create beside it and a delete.
            current = _same_unique_record(table, desired, by_key)
        if current is None:
            changes = _all_values(table, desired, created=True)
            plan.operations.append(Operation(table, CREATE, row, None, desired, changes))
            continue
        changes = differences(table, desired, current)
        key_columns = (edited or {}).get(tuple(row[c] for c in table.primary_key))
        restores = restored(table, desired, current, key_columns) if key_columns else {}
        if not changes:
            unchanged.append((row, current))
            if restores:
                plan.restores.append(Operation(table, UPDATE, row, current, desired, restores))
            continue
        forced = any(change.get("forces_replace") for change in changes.values())
        action = REPLACE if forced else UPDATE
        if action == UPDATE:  # a replacement gets new cloud-assigned values anyway
            changes.update(restores)
        plan.operations.append(Operation(table, action, row, current, desired, changes))
    for record in by_key.values():
        operation = Operation(
            table, DELETE, None, record, None, _all_values(table, record, created=False)
        )
        if table.protected is not None and table.protected(record):
            plan.protected.append(operation)
        else:
            plan.operations.append(operation)
    return unchanged


def _same_unique_record(
    table: Table, desired: Record, by_key: dict[tuple[Any, ...], Record]
) -> Record | None:
    """The unmatched cloud record holding `desired`'s values of one of the table's other
    unique keys (taken out of `by_key`), or None. Only where the cloud names the resource
    (an ARN) and the other key is the user's (a name): where the user's own columns are the
    cloud id, a row that meets no resource was renamed by its user, which is a new resource."""
    if not all(table.column(c).cloud_assigned for c in table.cloud_id):
        return None
    for unique in table.unique:
        users = not any(table.column(c).cloud_assigned for c in unique)
        if not users or any(desired.get(c) is None for c in unique):
            continue
        for key, record in by_key.items():
            if all(record.get(c) == desired[c] for c in unique):
                return by_key.pop(key)
    return None


def _cascade_replaces(plan: Plan, unchanged: dict[str, list[tuple[Record, Record]]]) -> None:
    """A resource that references one being replaced or deleted is replaced with it."""
    while True:
        going = {
            (op.table.name, col, op.current.get(col))
            for op in plan.operations
            if op.action in (REPLACE, DELETE) and op.current is not None
            for col in op.table.cloud_id
        }
        promoted = False
        for table in plan.tables:
            keep = []
            for row, current in unchanged.get(table.name, []):
                if table.protected is not None and table.protected(current):
                    keep.append((row, current))  # AWS's own (a main route table): goes with it
                    continue
                reason = next(
                    (
                        c
                        for c in table.references
                        if c.ref is not None
                        and (c.ref.table, c.ref.cloud or c.ref.key, current.get(c.name)) in going
                    ),
                    None,
                )
                if reason is None:
                    keep.append((row, current))
                    continue
                desired = row_as_record(table, row, plan.refs)
                changes = {
                    reason.name: {
                        "old": shown(current.get(reason.name)),
                        "new": f"(replaced {reason.ref.table if reason.ref else ''})",
                        "forces_replace": True,
                    }
                }
                plan.operations.append(Operation(table, REPLACE, row, current, desired, changes))
                promoted = True
            unchanged[table.name] = keep
        if not promoted:
            return


def _protect_children(plan: Plan) -> None:
    """Deleting the row of an AWS-created resource restores it with the rows under it (a
    default security group with its rules, removed by ON DELETE CASCADE)."""
    while True:
        kept = {
            (op.table.name, column, op.current.get(column))
            for op in plan.protected
            if op.current is not None
            for column in op.table.cloud_id
        }
        moved = [
            op
            for op in plan.operations
            if op.action == DELETE
            and op.current is not None
            and any(
                (c.ref.table, c.ref.cloud or c.ref.key, op.current.get(c.name)) in kept
                for c in op.table.references
                # Only rows the cascade removed: a row that merely names it (a subnet its
                # network ACL, SET NULL) was deleted by the user, on purpose.
                if c.ref is not None and c.ref.on_delete == "CASCADE"
            )
        ]
        if not moved:
            return
        for op in moved:
            plan.operations.remove(op)
            plan.protected.append(op)


async def fetch_rows(conn: asyncpg.Connection, table: Table) -> list[Record]:
    order = ", ".join(quote_ident(c) for c in table.primary_key)
    return [
        dict(r)
        for r in await conn.fetch(f"SELECT * FROM {quote_ident(table.name)} ORDER BY {order}")
    ]


async def build_plan(
    conn: asyncpg.Connection,
    cloud: Cloud,
    tables: list[Table],
    regions: list[str],
    edited: Edited | None = None,
) -> Plan:
    """The plan for `tables` (parents before children), reading only those from the cloud.
    `edited` names the cloud-assigned columns users wrote, to be restored from the cloud."""
    tables = [t for t in tables if t.mapper is not None]
    refs = References()
    rows: dict[str, list[Record]] = {}
    for table in tables:
        await refs.load(conn, table)
        rows[table.name] = await fetch_rows(conn, table)
    reads = await asyncio.gather(*(read_cloud(cloud, t, regions) for t in tables))
    for table, records in zip(tables, reads, strict=True):
        refs.seen_in_cloud(table, records)
    plan = Plan([], refs, tables)
    unchanged = {
        table.name: diff_table(
            table, rows[table.name], records, refs, plan, (edited or {}).get(table.name)
        )
        for table, records in zip(tables, reads, strict=True)
    }
    _protect_children(plan)
    _cascade_replaces(plan, unchanged)
    return plan
