"""SQL that replays user changes in another environment's database (staging → prod).

Each user change in the audit log becomes one statement. What differs between accounts is
never written: serial ids, cloud-assigned values, secrets and this database's settings.
A foreign key becomes a sub-select on the referenced row's natural key (nested where that
key holds a foreign key itself), and UPDATE and DELETE find their row by natural key.

The referenced rows are looked up as they were at the time of the change: the whole log is
replayed in memory (row images by primary key), so a reference to a row deleted since then
still resolves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.audit import Change
from engine.contract import EngineError
from engine.database import Database
from engine.ddl import quote_ident, quote_literal
from engine.translation import translate_history
from modules.spec import Column, ModuleSpec, Record, Table

Image = dict[str, Any]


@dataclass(frozen=True)
class Check:
    """How a target tells whether a change meets the row it met in the source (for
    promotion): `sql` counts the rows in the source's state before the change, which must be
    `expected` (0 before an insert, 1 before an update or delete); `now_sql` shows the
    target's row. `before` and `after` are the values the change changes, for people."""

    table: str
    sql: str
    expected: int
    now_sql: str
    before: Image | None
    after: Image | None


def typed_literal(column: Column, value: Any) -> str:
    """A value from a row image (JSON) as SQL of the column's type: JSON as its text cast to
    the column's type, an array as ARRAY[...] of its items (see ddl.quote_literal)."""
    if value is None:
        return "NULL"
    kind = column.type.lower()
    if kind in ("json", "jsonb"):
        return f"{quote_literal(json.dumps(value, ensure_ascii=False))}::{kind}"
    if kind.endswith("[]"):
        items = ", ".join(quote_literal(v) for v in value)
        return f"ARRAY[{items}]::{column.type}"
    return quote_literal(value)


def emitted_columns(table: Table) -> list[Column]:
    """Columns whose values travel between environments."""
    return [
        c
        for c in table.columns
        if c.type != "serial" and not (c.cloud_assigned or c.secret or c.local)
    ]


def replayable(table: Table | None) -> bool:
    """Tables of cloud resources; credentials and other settings stay per environment."""
    return table is not None and table.mapper is not None


class SqlGenerator:
    def __init__(self, tables: dict[str, Table]) -> None:
        self.tables = tables
        self.images: dict[str, dict[tuple[Any, ...], Image]] = {}
        # Sub-selects already written, by (table, primary key): a long log names the same
        # parents again and again. Valid until a natural key changes.
        self.subselects: dict[tuple[str, Any], str] = {}

    def _pk(self, table: Table, image: Image) -> tuple[Any, ...]:
        return tuple(image.get(c) for c in table.primary_key)

    def remember(self, change: Change) -> None:
        """Keeps the row images current, for changes by anyone (the engine included)."""
        table = self.tables.get(change.table_name)
        if table is None:
            return
        images = self.images.setdefault(table.name, {})
        if change.change_type == "DELETE":
            return  # keep the image: later references to it must still resolve
        new = change.change.get("change") or {}
        images[self._pk(table, new)] = new
        original = change.change.get("original") or {}
        if any(original.get(c) != new.get(c) for c in table.natural_key if original):
            self.subselects.clear()

    def statement(self, change: Change) -> str | None:
        """The SQL for one user change (None when nothing of it travels)."""
        table = self.tables.get(change.table_name)
        if table is None or not replayable(table):
            return None
        name = quote_ident(table.name)
        written = change.change.get("json_text") or {}
        if change.change_type == "INSERT":
            new = change.change["change"]
            values = {c.name: new.get(c.name) for c in emitted_columns(table)}
            values = {k: v for k, v in values.items() if v is not None}
            columns = ", ".join(quote_ident(k) for k in values)
            exprs = ", ".join(self._new(table.column(k), v, written) for k, v in values.items())
            return f"INSERT INTO {name} ({columns}) VALUES ({exprs});"
        original = change.change["original"]
        where = self._where(table, original)
        if change.change_type == "DELETE":
            return f"DELETE FROM {name} WHERE {where};"
        new = change.change["change"]
        changed = [c for c in emitted_columns(table) if new.get(c.name) != original.get(c.name)]
        if not changed:
            return None
        sets = ", ".join(
            f"{quote_ident(c.name)} = {self._new(c, new.get(c.name), written)}" for c in changed
        )
        return f"UPDATE {name} SET {sets} WHERE {where};"

    def check(self, change: Change) -> Check | None:
        """The promotion check of a user change (None when nothing of it travels)."""
        table = self.tables.get(change.table_name)
        if table is None or not replayable(table):
            return None
        name = quote_ident(table.name)
        original = change.change.get("original") or {}
        new = change.change.get("change") or {}
        emitted = emitted_columns(table)
        before: Image | None
        after: Image | None
        if change.change_type == "INSERT":
            key, guard, expected = self._where(table, new), "", 0
            shown_key = key
            before, after = None, self._shown(table, new, emitted)
        elif change.change_type == "DELETE":
            key, guard, expected = self._where(table, original), "", 1
            shown_key = key
            before, after = self._shown(table, original, emitted), None
        else:
            changed = [c for c in emitted if new.get(c.name) != original.get(c.name)]
            if not changed:
                return None
            key, expected = self._where(table, original), 1
            guard = " AND " + self._where(table, original, [c.name for c in changed])
            before, after = self._shown(table, original, changed), self._shown(table, new, changed)
            # To show a row changed by hand in a column of its natural key, too.
            kept = [k for k in table.natural_key if k not in {c.name for c in changed}]
            shown_key = self._where(table, original, kept) if kept else key
        return Check(
            table=table.name,
            sql=f"SELECT count(*) FROM {name} WHERE {key}{guard};",
            expected=expected,
            now_sql=f"SELECT to_jsonb({name}) FROM {name} WHERE {shown_key} LIMIT 1;",
            before=before,
            after=after,
        )

    def _shown(self, table: Table, image: Image, columns: list[Column]) -> Image:
        """Values as people read them: a reference as its row's natural key."""
        shown = {}
        for column in columns:
            value = image.get(column.name)
            ref = column.ref
            parent = self.tables.get(ref.table) if ref is not None else None
            if (
                value is not None
                and ref is not None
                and parent is not None
                and parent.column(ref.key).type == "serial"
            ):
                found = self.images.get(parent.name, {}).get((value,), {})
                value = {k: found.get(k) for k in parent.natural_key if k not in parent.primary_key}
            if value is not None:
                shown[column.name] = value
        return shown

    def _new(self, column: Column, value: Any, written: dict[str, str]) -> str:
        """A value a change writes: a json object as the user wrote it (key order kept)."""
        text = written.get(column.name)
        if column.type.lower() == "json" and isinstance(value, dict) and text is not None:
            return f"{quote_literal(text)}::json"
        return self._value(column, value)

    def _value(self, column: Column, value: Any) -> str:
        ref = column.ref
        if value is not None and column.cloud_ref is not None:
            return self._cloud_ids(column, value)
        if value is None or ref is None:
            return typed_literal(column, value)
        parent = self.tables.get(ref.table)
        if parent is None or parent.column(ref.key).type != "serial":
            return typed_literal(column, value)  # a natural value already (a bucket name)
        known = self.subselects.get((parent.name, value))
        if known is not None:
            return known
        image = self.images.get(parent.name, {}).get((value,))
        if image is None:
            raise LookupError(f"{parent.name} row {value} is not in the audit log")
        text = self._subselect(parent, ref.key, image)
        self.subselects[(parent.name, value)] = text
        return text

    def _subselect(self, table: Table, column: str, image: Image) -> str:
        """`column` of the row `image` describes, found by its natural key."""
        where = self._where(table, image)
        return f"(SELECT {quote_ident(column)} FROM {quote_ident(table.name)} WHERE {where})"

    def _cloud_ids(self, column: Column, value: Any) -> str:
        """Cloud ids (a subnet's subnet-0abc) as sub-selects of the cloud column by natural
        key; an id of no row here (not managed by iasql) stays as written."""
        ref = column.cloud_ref
        assert ref is not None
        parent = self.tables.get(ref.table)
        if parent is None:
            return typed_literal(column, value)

        def one(cloud_id: Any) -> str:
            images = self.images.get(parent.name, {}).values()
            image = next((i for i in images if i.get(ref.key) == cloud_id), None)
            if image is None:
                return quote_literal(cloud_id)
            return self._subselect(parent, ref.key, image)

        if isinstance(value, list):
            return f"ARRAY[{', '.join(one(v) for v in value)}]::{column.type}"
        return one(value)

    def _where(self, table: Table, image: Record, columns: list[str] | None = None) -> str:
        """The row by its natural key (or by `columns`), as a WHERE condition."""
        parts = []
        for name in table.natural_key if columns is None else columns:
            column = table.column(name)
            value = image.get(name)
            target = quote_ident(name)
            if value is None:
                parts.append(f"{target} IS NULL")
            elif column.type.lower() in ("json", "jsonb"):
                parts.append(f"{target}::jsonb = {quote_literal(json.dumps(value))}::jsonb")
            else:
                parts.append(f"{target} = {self._value(column, value)}")
        return " AND ".join(parts)


def generate_checked(
    tables: dict[str, Table], history: list[Change], wanted: set[int]
) -> list[tuple[str, Check]]:
    """Statements for the changes whose ids are `wanted`, in order, each with its promotion
    check; `history` is every row change of the log, oldest first (the engine's too, for
    the row images)."""
    checked = _statements(tables, history, wanted, checks=True)
    return [(statement, check) for statement, check in checked if check is not None]


def generate(tables: dict[str, Table], history: list[Change], wanted: set[int]) -> list[str]:
    """The statements of generate_checked() alone (the checks cost as much again)."""
    return [statement for statement, _ in _statements(tables, history, wanted, checks=False)]


def _statements(
    tables: dict[str, Table], history: list[Change], wanted: set[int], *, checks: bool
) -> list[tuple[str, Check | None]]:
    generator = SqlGenerator(tables)
    statements: list[tuple[str, Check | None]] = []
    for change in history:
        if change.id in wanted:
            statement = generator.statement(change)
            if statement is not None:
                statements.append((statement, generator.check(change) if checks else None))
        generator.remember(change)
    return statements


# Row changes a statement made itself: not those of the triggers or cascades it set off,
# which the same statement sets off again where it is replayed.
_WRITTEN = "AND change_type IN ('INSERT', 'UPDATE', 'DELETE') AND NOT change ? 'depth'"


async def _history(conn: asyncpg.Connection, modules: list[ModuleSpec]) -> list[Change]:
    """Every row change, in the schema this server's modules declare (entries written in an
    older schema version are translated: renamed columns renamed, dropped ones dropped)."""
    rows = await conn.fetch(
        "SELECT id, table_name, change_type::text, change, schema_version FROM iasql_audit_log"
        " WHERE change_type IN ('INSERT', 'UPDATE', 'DELETE') ORDER BY id"
    )
    written = [
        (Change(r["id"], r["table_name"], r["change_type"], r["change"]), r["schema_version"])
        for r in rows
    ]
    return await translate_history(conn, written, modules)


async def _generate(
    db: Database, conn: asyncpg.Connection, user_ids: set[int], *, checks: bool
) -> list[tuple[str, Check | None]]:
    """The statements of the changes `user_ids`, with their checks when `checks`."""
    modules = list((await db.installed(conn)).values())
    tables = {t.name: t for m in modules for t in m.tables}
    history = await _history(conn, modules)
    try:
        return _statements(tables, history, user_ids, checks=checks)
    except LookupError as exc:
        raise EngineError("XX001", f"cannot write the SQL: {exc}") from exc


async def default_transaction(conn: asyncpg.Connection) -> str | None:
    """The open transaction, else the latest one."""
    value = await conn.fetchval(
        "SELECT transaction_id FROM iasql_transaction"
        " ORDER BY closed_at IS NULL DESC, opened_at DESC LIMIT 1"
    )
    return None if value is None else str(value)


async def sql_for_transaction(db: Database, transaction_id: str | None) -> list[str]:
    return [s for s, _check in await _transaction_sql(db, transaction_id, checks=False)]


async def checked_sql(db: Database, transaction_id: str | None) -> list[tuple[str, Check]]:
    """A transaction's statements with their promotion checks."""
    return [
        (statement, check)
        for statement, check in await _transaction_sql(db, transaction_id, checks=True)
        if check is not None
    ]


async def _transaction_sql(
    db: Database, transaction_id: str | None, *, checks: bool
) -> list[tuple[str, Check | None]]:
    async with db.pool.acquire() as conn:
        if transaction_id is None:
            transaction_id = await default_transaction(conn)
        elif not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM iasql_transaction WHERE transaction_id = $1)",
            transaction_id,
        ):
            raise EngineError(
                "22023",
                f"no transaction {transaction_id!r} in this database",
                hint="SELECT transaction_id FROM iasql_transaction lists them",
            )
        ids = await conn.fetch(
            f'SELECT id FROM iasql_audit_log WHERE transaction_id = $1 AND "user" <> $2 {_WRITTEN}',
            transaction_id,
            db.engine_user,
        )
        return await _generate(db, conn, {r["id"] for r in ids}, checks=checks)


async def sql_since(db: Database, limit_date: Any) -> list[str]:
    async with db.pool.acquire() as conn:
        ids = await conn.fetch(
            f'SELECT id FROM iasql_audit_log WHERE "user" <> $1 {_WRITTEN}'
            " AND ($2::text IS NULL OR ts >= $2::text::timestamptz)",
            db.engine_user,
            None if limit_date is None else str(limit_date),
        )
        return [s for s, _check in await _generate(db, conn, {r["id"] for r in ids}, checks=False)]


def _cell(value: Any) -> str:
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def review_markdown(
    title: str, description: str, preview: list[dict[str, Any]], statements: list[str]
) -> str:
    """A pull-request body: the preview as a table and the transaction's SQL."""
    lines = [f"# {title}", "", description, "", "## Preview", ""]
    columns = ["action", "table_name", "id", "description", "changes"]
    if preview:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in preview]
    else:
        lines.append("No cloud changes.")
    lines += ["", "## SQL", "", *fenced("sql", statements), ""]
    return "\n".join(lines)


def fenced(language: str, lines: list[str]) -> list[str]:
    """A Markdown code block of `lines`, its fence longer than any run of backticks in them."""
    fence = "```"
    while any(fence in line for line in lines):
        fence += "`"
    return [fence + language, *lines, fence]
