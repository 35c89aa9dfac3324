"""Upgrading an environment database's module tables to the schema versions this server's
modules declare, in place: one database transaction per database, so that a migration that
fails leaves the database as it was.

A module's `migrations` (modules/migration.py) say what changed in its tables; from them this
derives the DDL, and translates what was written in the older schema: the audit log's entries
(as `iasql_get_sql_since()` reads them; each entry records the schema version it was written
in), and, in place, the changes of the open infrastructure transaction and the commit
journal, which the engine acts on next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import asyncpg

from engine import audit, ddl
from engine.audit import Change
from engine.cloud import cloud_failure
from engine.contract import CallContext, EngineError, Row
from engine.database import Database
from engine.ddl import quote_ident, quote_literal
from engine.install import INSTALL_LOCK, import_tables
from engine.transaction import COMMIT_LOCK
from engine.translation import Image, Translator, first_line, steps_between, using
from modules import available_modules
from modules.migration import (
    AddColumn,
    AddTable,
    ChangeNaturalKey,
    ChangeType,
    DropColumn,
    RenameColumn,
    SplitTable,
    Step,
)
from modules.spec import ModuleSpec, Table

log = logging.getLogger("iasql.engine")

GUARD_TRIGGER = "iasql_outdated"

# What iasql_upgrade() returns.
COLUMNS = (
    ("database", "text"),
    ("module_name", "text"),
    ("from_version", "integer"),
    ("to_version", "integer"),
    ("status", "text"),
    ("detail", "text"),
)


@dataclass
class ModuleUpgrade:
    """One module of one database, from the schema version it has to the one it needs."""

    module: ModuleSpec
    installed: int

    @property
    def steps(self) -> list[Step]:
        return steps_between(self.module, self.installed)

    @property
    def newer(self) -> bool:
        """The database was upgraded by a newer iasql than this one."""
        return self.installed > self.module.schema_version


def steps_from(source: dict[str, int], installed: Iterable[ModuleSpec]) -> list[Step]:
    """The steps that bring SQL written by a server whose modules have the schema versions
    `source` ({module: version}) to this one's. A module on a newer schema there is refused:
    this server cannot know what changed."""
    steps: list[Step] = []
    for module in installed:
        version = source.get(module.name)
        if version is None:
            continue
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise EngineError(
                "22023", f"source_schema: {module.name}'s version must be a number from 1"
            )
        if version > module.schema_version:
            raise EngineError(
                "0A000",
                f"the source writes {module.name} in schema {version}, newer than this"
                f" server's {module.schema_version}: SQL cannot be promoted to an older schema",
                hint="upgrade the target's iasql server first",
            )
        steps += steps_between(module, version)
    return steps


async def pending_upgrades(conn: asyncpg.Connection) -> list[ModuleUpgrade]:
    """The installed modules whose schema version is not this server's, in install order."""
    rows = await conn.fetch(
        "SELECT name, schema_version FROM iasql_module ORDER BY installed_at, name"
    )
    known = available_modules()
    return [
        ModuleUpgrade(known[r["name"]], r["schema_version"])
        for r in rows
        if r["name"] in known and r["schema_version"] != known[r["name"]].schema_version
    ]


def problem(upgrades: list[ModuleUpgrade], database: str) -> EngineError | None:
    """Why the engine must not act on a database with these modules, or None."""
    if not upgrades:
        return None
    which = ", ".join(
        f"{u.module.name} is on schema {u.installed} (this server's: {u.module.schema_version})"
        for u in upgrades
    )
    if any(u.newer for u in upgrades):
        return EngineError(
            "55000",
            f"database {database} was upgraded by a newer iasql: {which}",
            hint="run the newer iasql server; its module tables are read-only here",
        )
    return EngineError(
        "55000",
        f"database {database} is not upgraded: {which}",
        hint="SELECT * FROM iasql_get_errors() says why the upgrade failed; fix that, then"
        " SELECT * FROM iasql_upgrade(). Module tables are read-only until then",
    )


# --- the DDL --------------------------------------------------------------------------


def step_sql(step: Step, module: ModuleSpec) -> list[str]:
    """The statements one step runs."""
    if isinstance(step, AddColumn):
        return _add_column(step)
    if isinstance(step, DropColumn):
        return [f"ALTER TABLE {quote_ident(step.table)} DROP COLUMN {quote_ident(step.column)}"]
    if isinstance(step, RenameColumn):
        return [
            f"ALTER TABLE {quote_ident(step.table)} RENAME COLUMN {quote_ident(step.old)}"
            f" TO {quote_ident(step.new)}"
        ]
    if isinstance(step, ChangeType):
        # The old default goes first: it may not convert to the new type by itself.
        column = f"ALTER COLUMN {quote_ident(step.column)}"
        actions = [f"{column} DROP DEFAULT", f"{column} TYPE {step.new_type} USING {using(step)}"]
        if step.default is not None:
            actions.append(f"{column} SET DEFAULT {step.default}")
        return [f"ALTER TABLE {quote_ident(step.table)} {', '.join(actions)}"]
    if isinstance(step, AddTable):
        return [*ddl.create_table(step.table), _register(step.table, module)]
    if isinstance(step, SplitTable):
        return _split(step, module)
    if isinstance(step, ChangeNaturalKey):
        return [_unique_check(step)]
    return list(step.statements)


def _add_column(step: AddColumn) -> list[str]:
    column = step.column
    if column.type == "serial":
        raise ValueError(f"{step.table}.{column.name}: a serial column cannot be added")
    table = quote_ident(step.table)
    statements = [f"ALTER TABLE {table} ADD COLUMN {ddl.column_sql(column)}"]
    if column.ref is not None:
        statements.append(f"ALTER TABLE {table} ADD {ddl.foreign_key_sql(column)}")
    return statements


def _register(table: Table, module: ModuleSpec) -> str:
    return (
        f"INSERT INTO iasql_tables VALUES ({quote_literal(table.name)},"
        f" {quote_literal(module.name)})"
    )


def _split(step: SplitTable, module: ModuleSpec) -> list[str]:
    """The new table, the moved values copied before its audit trigger exists (they are not
    a change of anyone's), then the columns dropped from the source."""
    create = ddl.create_table(step.table)
    moved = ", ".join(quote_ident(c) for c in step.columns)
    any_value = " OR ".join(f"{quote_ident(c)} IS NOT NULL" for c in step.columns)
    copy_rows = (
        f"INSERT INTO {quote_ident(step.table.name)} ({quote_ident(step.reference)}, {moved})"
        f" SELECT id, {moved} FROM {quote_ident(step.source)} WHERE {any_value} ORDER BY id"
    )
    drops = [DropColumn(step.source, c) for c in step.columns]
    return [
        create[0],
        copy_rows,
        *create[1:],
        _register(step.table, module),
        *(s for d in drops for s in step_sql(d, module)),
    ]


def _unique_check(step: ChangeNaturalKey) -> str:
    keys = ", ".join(quote_ident(c) for c in step.natural_key)
    message = (
        f"rows of {step.table} share a value of its new natural key ({', '.join(step.natural_key)}):"
        " make them differ, then upgrade again"
    )
    return (
        f"DO $check$ BEGIN IF EXISTS (SELECT FROM {quote_ident(step.table)} GROUP BY {keys}"
        f" HAVING count(*) > 1) THEN RAISE EXCEPTION USING ERRCODE = '23505', MESSAGE ="
        f" {quote_literal(message)}; END IF; END $check$"
    )


def upgrade_sql(upgrade: ModuleUpgrade) -> list[str]:
    """Every statement of one module's upgrade: its version, its steps, then its tables'
    audit triggers and grants as the spec now declares them (a new secret column)."""
    module = upgrade.module
    # First: what the steps write is audited as the new schema's (a RunSql UPDATE).
    statements = [
        f"UPDATE iasql_module SET schema_version = {module.schema_version},"
        f" version = {quote_literal(module.version)} WHERE name = {quote_literal(module.name)}"
    ]
    statements += [s for step in upgrade.steps for s in step_sql(step, module)]
    for table in module.tables:
        name = quote_ident(table.name)
        statements.append(f"DROP TRIGGER IF EXISTS {quote_ident(table.name + '_audit')} ON {name}")
        statements += [s for s in ddl.create_table(table)[1:] if s not in table.extra_ddl]
    return statements


# --- upgrading one database -----------------------------------------------------------


async def upgrade_database(db: Database, ctx: CallContext, *, dry_run: bool) -> list[Row]:
    """Upgrades the database's modules to this server's schema versions, all in one database
    transaction; returns a row per module (per statement for a dry run). A failed migration
    leaves the database as it was, its module tables read-only, and the error in the audit
    log; a busy database (a commit running, a lock held) is left as it was, to try again."""
    async with db.pool.acquire() as conn:
        if dry_run:
            upgrades = await _known_upgrades(db, conn, guard=False)
            return [_row(db, u, "planned", sql) for u in upgrades for sql in upgrade_sql(u)]
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", COMMIT_LOCK):
            return await _busy(db, conn, f"a commit, rollback or sync of {db.name} is running")
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", INSTALL_LOCK)
            try:
                # Read under the locks: another server may have upgraded it meanwhile.
                upgrades = await _known_upgrades(db, conn, guard=True)
                if not upgrades:
                    await lift_guards(conn)
                    return []
                return await _upgrade(db, conn, ctx, upgrades)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", INSTALL_LOCK)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", COMMIT_LOCK)


async def _known_upgrades(
    db: Database, conn: asyncpg.Connection, *, guard: bool
) -> list[ModuleUpgrade]:
    """The pending upgrades; refused (its tables guarded, with `guard`) where a module is on
    a newer schema than this server knows."""
    upgrades = await pending_upgrades(conn)
    newer = [u for u in upgrades if u.newer]
    error = problem(newer, db.name)
    if error is not None:
        if guard:
            await _guard(conn, newer, error)
        raise error
    return upgrades


# Failures that say nothing about the migration: the database is left as it was, unguarded,
# to try again (a lock another session holds, a deadlock, a cancel, a lost connection).
_TRANSIENT = ("40", "55P03", "57014", "08")
LOCK_TIMEOUT = "5s"


async def _busy(db: Database, conn: asyncpg.Connection, reason: str) -> NoReturn:
    message = (
        f"upgrade of {db.name} not started: {reason}; SELECT * FROM iasql_upgrade() tries again"
    )
    log.warning("%s", message)
    await audit.log_event(conn, "ERROR", db.engine_user, None, message)
    raise EngineError("55006", message, hint="the database is left as it was")


async def _upgrade(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, upgrades: list[ModuleUpgrade]
) -> list[Row]:
    statements = {u.module.name: upgrade_sql(u) for u in upgrades}
    current: tuple[ModuleUpgrade, str] | None = None
    try:
        async with conn.transaction():
            # A tenant's idle transaction on a table must not hold the upgrade (and every
            # database after it) forever: past the timeout, the database is busy.
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await _unguard(conn, [t for u in upgrades for t in _table_names(u)])
            for upgrade in upgrades:
                for statement in statements[upgrade.module.name]:
                    current = (upgrade, statement)
                    await conn.execute(statement)
                current = None
                await _check_columns(conn, upgrade.module)
            await _carry(db, conn, upgrades)
            summary = ", ".join(
                f"{u.module.name} schema {u.installed} -> {u.module.schema_version}"
                for u in upgrades
            )
            await audit.log_event(conn, "UPGRADE", db.engine_user, None, f"upgraded {summary}")
    except (asyncpg.PostgresError, EngineError) as exc:
        if (exc.sqlstate or "").startswith(_TRANSIENT):
            await _busy(db, conn, first_line(exc))
        failed = current[0] if current is not None else upgrades[0]
        message = (
            f"upgrade of {failed.module.name} from schema {failed.installed} to"
            f" {failed.module.schema_version} failed: {first_line(exc)}"
        )
        if current is not None:
            message += f" (while running: {_clip(current[1])})"
        log.warning("%s: %s", db.name, message)
        await audit.log_event(conn, "ERROR", db.engine_user, None, message)
        await _guard(conn, upgrades, problem(upgrades, db.name) or EngineError("55000", message))
        return [_row(db, u, "failed" if u is failed else "not upgraded", message) for u in upgrades]
    ctx.notify(f"upgraded {db.name}: {summary}")
    await _import_new(db, conn, ctx, upgrades)
    return [
        _row(db, u, "upgraded", f"{len(statements[u.module.name])} statements") for u in upgrades
    ]


async def _import_new(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, upgrades: list[ModuleUpgrade]
) -> None:
    """New tables, and tables with new columns, are read from the cloud, as an install
    does: a new column holds the cloud's value, not its default. The upgrade has committed
    by then; a cloud that fails leaves that to a later iasql_sync(), and says so."""
    names = {
        name
        for u in upgrades
        for step in u.steps
        for name in (
            [step.table.name] if isinstance(step, AddTable | SplitTable)
            else [step.table] if isinstance(step, AddColumn) else []
        )
    }  # fmt: skip
    tables = [t for u in upgrades for t in u.module.tables if t.name in names]
    try:
        await import_tables(db, conn, ctx, tables, only_new_changes=False)
    except Exception as exc:  # the upgrade stands; the import is for iasql_sync() to redo
        failure = cloud_failure(exc)
        reason = failure.message if failure is not None else first_line(exc)
        message = (
            f"upgraded, but reading the new columns and tables from the cloud failed: {reason};"
            " SELECT * FROM iasql_sync() reads them"
        )
        log.warning("%s: %s", db.name, message)
        await audit.log_event(conn, "ERROR", db.engine_user, None, message)


def _row(db: Database, upgrade: ModuleUpgrade, status: str, detail: str) -> Row:
    return {
        "database": db.name,
        "module_name": upgrade.module.name,
        "from_version": upgrade.installed,
        "to_version": upgrade.module.schema_version,
        "status": status,
        "detail": detail,
    }


def _table_names(upgrade: ModuleUpgrade) -> list[str]:
    """The module's tables as the database has them now, and as they will be."""
    added = {s.table.name for s in upgrade.steps if isinstance(s, AddTable | SplitTable)}
    return sorted({t.name for t in upgrade.module.tables} - added)


async def _check_columns(conn: asyncpg.Connection, module: ModuleSpec) -> None:
    """After the steps, each table must have the columns its spec declares, of their types:
    a migration that forgot a step fails here, not in the next commit."""
    for table in module.tables:
        found = {
            r["attname"]: r["type"]
            for r in await conn.fetch(
                "SELECT attname, atttypid::regtype::text AS type FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                quote_ident(table.name),
            )
        }
        wanted = {}
        for column in table.columns:
            kind = {"serial": "integer", "bigserial": "bigint"}.get(column.type, column.type)
            wanted[column.name] = await conn.fetchval("SELECT $1::regtype::text", kind)
        if found != wanted:
            differences = sorted(
                f"{name}: has {found.get(name) or 'none'}, declared {wanted.get(name) or 'none'}"
                for name in set(found) | set(wanted)
                if found.get(name) != wanted.get(name)
            )
            raise EngineError(
                "42P16",
                f"after the migration steps, table {table.name} differs from module"
                f" {module.name}'s spec ({'; '.join(differences)}): a migration step is missing",
            )


async def _carry(db: Database, conn: asyncpg.Connection, upgrades: list[ModuleUpgrade]) -> None:
    """The user changes no commit has applied yet (the open transaction's), and the commit
    journal, are what the engine acts on next (commit, rollback, recovery): rewritten here in
    the new schema. The rest of the log is history, translated when read."""
    since = await audit.applied_through(conn)
    translator = Translator()
    for upgrade in upgrades:
        await _carry_module(db, conn, translator, upgrade, since)


async def _carry_module(
    db: Database,
    conn: asyncpg.Connection,
    translator: Translator,
    upgrade: ModuleUpgrade,
    since: int,
) -> None:
    steps = upgrade.steps
    names = _table_names(upgrade)
    entries = await conn.fetch(
        "SELECT id, table_name, change_type::text, change FROM iasql_audit_log"
        ' WHERE id > $1 AND table_name = ANY($2::text[]) AND "user" <> $3'
        " AND change_type IN ('INSERT', 'UPDATE', 'DELETE') ORDER BY id",
        since,
        names,
        db.engine_user,
    )
    journal = await conn.fetch(
        "SELECT id, table_name, before, after FROM iasql_commit_journal"
        " WHERE table_name = ANY($1::text[])",
        names,
    )
    changes = [Change(r["id"], r["table_name"], r["change_type"], r["change"]) for r in entries]

    def image(row: asyncpg.Record, side: str) -> Image | None:
        return None if row[side] is None else translator.image(row["table_name"], row[side], steps)

    translated = await translator.until_converted(
        conn, lambda: [translator.change(c, steps) for c in changes]
    )
    records = await translator.until_converted(
        conn, lambda: [(r["id"], image(r, "before"), image(r, "after")) for r in journal]
    )
    for original, result in zip(changes, translated, strict=True):
        if len(result) != 1:
            raise EngineError(
                "55006",
                f"the open infrastructure transaction changed {original.table_name} values"
                " that this upgrade moves into another table",
                hint="commit or roll it back, then upgrade",
            )
    await conn.executemany(
        "UPDATE iasql_audit_log SET change = $2, schema_version = $3 WHERE id = $1",
        [
            (c.id, t[0].change, upgrade.module.schema_version)
            for c, t in zip(changes, translated, strict=True)
        ],
    )
    await conn.executemany(
        "UPDATE iasql_commit_journal SET before = $2, after = $3 WHERE id = $1", records
    )


# --- read-only while not upgraded ---------------------------------------------------------


async def _guard(
    conn: asyncpg.Connection, upgrades: list[ModuleUpgrade], error: EngineError
) -> None:
    """Makes the modules' tables refuse writes, with the error's message."""
    names = [t for u in upgrades for t in _table_names(u)]
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await _guarded(conn, names, error)
    except asyncpg.LockNotAvailableError:  # the engine refuses the database all the same
        log.warning("could not make the tables of %s read-only: a lock is held", names)


async def _guarded(conn: asyncpg.Connection, names: list[str], error: EngineError) -> None:
    await _unguard(conn, names)
    for name in names:
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", quote_ident(name)):
            continue
        await conn.execute(
            f"CREATE TRIGGER {GUARD_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE"
            f" ON {quote_ident(name)} FOR EACH STATEMENT EXECUTE FUNCTION"
            f" iasql_refuse_write({quote_literal(error.message)}, {quote_literal(error.hint or '')})"
        )


async def lift_guards(conn: asyncpg.Connection) -> None:
    """Drops every guard: for a database whose modules are on this server's versions."""
    guarded = await conn.fetch(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE t.tgname = $1 AND c.relnamespace = 'public'::regnamespace",
        GUARD_TRIGGER,
    )
    if guarded:
        await _unguard(conn, [r["relname"] for r in guarded])


async def _unguard(conn: asyncpg.Connection, names: list[str]) -> None:
    for name in names:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", quote_ident(name)):
            await conn.execute(f"DROP TRIGGER IF EXISTS {GUARD_TRIGGER} ON {quote_ident(name)}")


def _clip(statement: str, limit: int = 200) -> str:
    one_line = " ".join(statement.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."
