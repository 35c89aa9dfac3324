"""Infrastructure transactions: begin, preview, commit, rollback, and sync / drift.

State lives in the backing Postgres only, so several iasql processes can serve one database:
- the open transaction is a row of `iasql_transaction` (a unique index allows one);
- a running commit holds a session advisory lock on one of the engine's connections, which
  Postgres releases when that process dies, and marks its transaction `committing`; a
  `committing` transaction whose lock is free was cut short, and is undone from the journal;
- user changes not applied yet are the user rows of the audit log after `applied_through`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from engine import audit
from engine.apply import Applier, StepFailed, recover
from engine.cloud import cloud_failure
from engine.contract import CallContext, EngineError, Row
from engine.database import Database
from engine.plan import CREATE, DELETE, Edited, Plan, build_plan
from engine.records import References
from engine.sync import Kept, SyncBlocked, sync_tables
from modules import account_module
from modules.spec import ArgumentError, CloudError, ModuleFunction, ModuleSpec, Record, Table

log = logging.getLogger("iasql.transaction")

COMMIT_LOCK = 0x1A5C3  # advisory lock key: one commit (or rollback, sync) at a time


@dataclass(frozen=True)
class TransactionSettings:
    begin_timeout: float = 30.0  # how long iasql_begin() waits for another transaction
    commit_concurrency: int = 16  # cloud operations running at once in a commit


@dataclass(frozen=True)
class OpenTransaction:
    transaction_id: str
    opened_by: str
    opened_at: Any
    outcome: str | None


async def _open_transaction(conn: asyncpg.Connection) -> OpenTransaction | None:
    row = await conn.fetchrow(
        "SELECT transaction_id, opened_by, opened_at, outcome FROM iasql_transaction"
        " WHERE closed_at IS NULL"
    )
    return None if row is None else OpenTransaction(*row)


@contextlib.asynccontextmanager
async def _commit_lock(db: Database) -> AsyncIterator[asyncpg.Connection]:
    """The database's commit lock, on a connection held for as long as it is needed."""
    async with db.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", COMMIT_LOCK):
            raise EngineError(
                "55P03",
                "a commit is running in this database",
                hint="wait for it to finish, then try again",
            )
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", COMMIT_LOCK)


async def _close(
    conn: asyncpg.Connection, ctx: CallContext, transaction_id: str, outcome: str
) -> None:
    await conn.execute(
        "UPDATE iasql_transaction SET closed_at = clock_timestamp(), outcome = $2"
        " WHERE transaction_id = $1",
        transaction_id,
        outcome,
    )
    await audit.log_event(conn, "CLOSE_TRANSACTION", ctx.user, transaction_id, outcome)


# --- begin ------------------------------------------------------------------------------


async def begin(db: Database, ctx: CallContext, settings: TransactionSettings) -> list[Row]:
    await recover_interrupted(db, ctx)
    transaction_id = str(uuid.uuid4())
    deadline = asyncio.get_running_loop().time() + settings.begin_timeout
    async with db.pool.acquire() as conn:
        while True:
            opened = await conn.fetchval(
                "INSERT INTO iasql_transaction (transaction_id, opened_by) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                transaction_id,
                ctx.user,
            )
            if opened:
                break
            holder = await _open_transaction(conn)
            if holder is not None and asyncio.get_running_loop().time() >= deadline:
                raise EngineError(
                    "55P03",
                    f"another infrastructure transaction is open: {holder.transaction_id},"
                    f" opened by {holder.opened_by} at {holder.opened_at:%Y-%m-%d %H:%M:%S%z}",
                    detail=f"waited {settings.begin_timeout:g} s for it",
                    hint="commit or roll it back (SELECT * FROM iasql_commit() or"
                    " iasql_rollback()), or try again later",
                )
            await asyncio.sleep(0.1)
        await audit.log_event(conn, "OPEN_TRANSACTION", ctx.user, transaction_id)
    return [{"message": "transaction open", "transaction_id": transaction_id}]


# --- plans ------------------------------------------------------------------------------


def _children(tables: list[Table], of: set[str]) -> set[str]:
    return {t.name for t in tables for c in t.references if c.ref is not None and c.ref.table in of}


def _reread_after(tables: list[Table], of: set[str]) -> set[str]:
    """What a sync of `of` re-reads too: the tables referencing them, and the tables whose
    resources theirs bring along in the cloud (Table.synced_with, Table.brings_along), again
    and again."""
    installed = {t.name for t in tables}
    names = set(of)
    while more := (_children(tables, names) | _brought_along(tables, names)) & installed - names:
        names |= more
    return names


def _brought_along(tables: list[Table], of: set[str]) -> set[str]:
    synced = {t.name for t in tables if of & set(t.synced_with)}
    return synced | {b for t in tables if t.name in of for b in t.brings_along}


async def plan_changes(db: Database, conn: asyncpg.Connection, changes: list[audit.Change]) -> Plan:
    """The plan for the tables these changes touched, and for the tables referencing a
    resource the plan replaces or deletes (their rows must follow)."""
    installed = await db.installed_tables(conn)
    touched = {c.table_name for c in changes}
    return await _plan_tables(db, conn, installed, touched, _edited(installed, changes))


def _edited(installed: list[Table], changes: list[audit.Change]) -> Edited:
    """The cloud-assigned columns (an arn, an id AWS gives) that users wrote, per row: the
    commit restores them from the cloud."""
    tables = {t.name: t for t in installed}
    edited: Edited = {}
    for change in changes:
        table = tables.get(change.table_name)
        row = change.change.get("change")
        if table is None or table.mapper is None or row is None:
            continue
        before = change.change.get("original") or {}
        columns = {
            c.name
            for c in table.columns
            if c.cloud_assigned
            and c.name not in table.cloud_id
            and c.name in row
            and row.get(c.name) != before.get(c.name)
        }
        if columns:
            key = tuple(row.get(c) for c in table.primary_key)
            edited.setdefault(table.name, {}).setdefault(key, set()).update(columns)
    return edited


async def _plan_tables(
    db: Database,
    conn: asyncpg.Connection,
    installed: list[Table],
    names: set[str],
    edited: Edited | None = None,
) -> Plan:
    wanted = [t for t in installed if t.name in names and t.mapper is not None]
    if not wanted:
        return Plan([], References(), [])
    cloud = await db.cloud()
    regions = await db.enabled_regions(conn)
    while True:
        plan = await build_plan(conn, cloud, wanted, regions, edited)
        going = {o.table.name for o in plan.operations if o.action not in (CREATE, "update")}
        more = _children(installed, going) - {t.name for t in wanted}
        if not more:
            return plan
        wanted = [t for t in installed if t.name in more or t in wanted]


async def preview(db: Database, ctx: CallContext) -> list[Row]:
    """What the next commit would do. Changes made with no transaction open are applied by
    the next commit, so with none open this shows them too, and a notice says so."""
    async with db.pool.acquire() as conn:
        changes = await audit.pending_changes(conn, db.engine_user)
        plan = await plan_changes(db, conn, changes)
        transaction = await _open_transaction(conn)
    if transaction is None:
        ctx.notify(
            "no infrastructure transaction is open: this is what the next commit would apply;"
            " SELECT * FROM iasql_begin() opens one"
        )
    _notify_protected(ctx, plan)
    return plan.preview_rows()


def _notify_protected(ctx: CallContext, plan: Plan) -> None:
    for operation in plan.protected:
        ctx.notify(
            f"{operation.table.name} {operation.description} was created by AWS and is not"
            " deleted: its row will be restored"
        )


# --- commit -----------------------------------------------------------------------------


async def commit(
    db: Database, ctx: CallContext, message: str | None, settings: TransactionSettings
) -> list[Row]:
    async with _commit_lock(db) as conn:
        await recover_interrupted(db, ctx, locked=True)
        transaction = await _open_transaction(conn)
        if transaction is None:
            raise EngineError(
                "25P01",
                "no infrastructure transaction is open",
                hint="SELECT * FROM iasql_begin() first, then change rows, then commit",
            )
        tid = transaction.transaction_id
        # What this commit applies is fixed here; later changes stay pending for the next one.
        through = await audit.settled_last_id(conn)
        changes = await audit.pending_changes(conn, db.engine_user)
        changes = [c for c in changes if c.id <= through]
        plan = await plan_changes(db, conn, changes)  # a cloud failure here changes nothing
        await conn.execute(
            "UPDATE iasql_transaction SET outcome = 'committing', applying_through = $2"
            " WHERE transaction_id = $1",
            tid,
            through,
        )
        await audit.log_event(conn, "START_COMMIT", ctx.user, tid)
        if message:
            await audit.log_event(conn, "SET_COMMIT_MESSAGE", ctx.user, tid, message)
        _notify_protected(ctx, plan)
        applier = Applier(
            db.pool,
            await db.cloud(),
            plan,
            tid,
            ctx.notify,
            settings.commit_concurrency,
            lambda: ctx.cancel_requested,
        )
        if applier.steps:
            ctx.notify(f"applying {len(applier.steps)} cloud operations")
        try:
            await applier.run()
        except (StepFailed, asyncio.CancelledError) as failure:
            await _revert(db, conn, ctx, applier, changes, through, failure)
        # What the commit made is read back alone where the mapper can (ReadsSome), except in
        # tables where an AWS-created row is to be restored by reading the whole table.
        # Likewise where a user's cloud-assigned value (an arn) is to be restored.
        restored = {o.table.name for o in [*plan.protected, *plan.restores]}
        made = {t: r for t, r in applier.applied().items() if t not in restored}
        await _sync_after(db, conn, ctx, plan, changes, through, made, vanished=applier.vanished)
        await audit.mark_applied(conn, through)
        await audit.log_event(conn, "END_COMMIT", ctx.user, tid, message)
        await _close(conn, ctx, tid, "committed")
    return plan.preview_rows()


# Errors of reading the cloud that leave the rows as they are: after an apply, re-reading is
# a refresh only, and `iasql_sync()` can do it later.
REFRESH_ERRORS = (
    BotoCoreError,
    ClientError,
    ResponseParserError,  # an answer that is no AWS response (not a BotoCoreError)
    CloudError,
    OSError,
    TimeoutError,
    SyncBlocked,
)


async def _sync_after(
    db: Database,
    conn: asyncpg.Connection,
    ctx: CallContext,
    plan: Plan,
    changes: list[audit.Change],
    through: int,
    made: dict[str, list[Record]] | None = None,
    *,
    current: str | None = None,
    vanished: dict[str, list[Record]] | None = None,
) -> None:
    """Re-reads the tables the commit touched (for the tables in `made`, just the resources
    named there, where the mapper can), and the tables under them (creating a VPC
    creates its default security group and rules), so the rows hold what the cloud really
    has; new credentials refresh the account's regions. Rows changed after `through` (by any
    session, while the commit ran) are left as they are: they wait for the next commit.
    `current` and `vanished` are passed on to kept_since. Best effort: whatever fails here
    is a notice, since the cloud has been changed already."""
    names = {t.name for t in plan.tables}
    account = account_module()[1]
    if any(c.table_name == account.credentials.name for c in changes):
        names.add(account.regions.name)
    try:
        await _sync_with_children(
            db, conn, ctx, names, after=through, only=made, current=current, vanished=vanished
        )
    except Exception as exc:  # the cloud is changed already: this must not undo the commit
        if not isinstance(exc, REFRESH_ERRORS):
            log.exception("re-reading %s after a commit failed", ", ".join(sorted(names)))
        _refresh_failed(ctx, names, exc)


def _refresh_failed(ctx: CallContext, names: set[str], error: BaseException) -> None:
    """The notice for a re-read from the cloud that failed after the rows were settled."""
    ctx.notify(
        f"could not re-read {', '.join(sorted(names))} from the cloud: {error};"
        " SELECT * FROM iasql_sync() refreshes the rows later"
    )


async def _sync_with_children(
    db: Database,
    conn: asyncpg.Connection,
    ctx: CallContext,
    names: set[str],
    skip: frozenset[str] = frozenset(),
    *,
    after: int | None = None,
    only: dict[str, list[Record]] | None = None,
    current: str | None = None,
    vanished: dict[str, list[Record]] | None = None,
) -> None:
    """Syncs the tables `names` and every table under them, except `skip`, keeping what
    kept_since(db, after, current, vanished) says."""
    installed = await db.installed_tables(conn)
    names = _reread_after(installed, names)
    tables = [t for t in installed if t.name in names - skip and t.mapper is not None]
    if tables:
        await sync_tables(
            conn,
            await db.cloud(),
            tables,
            await db.enabled_regions(conn),
            kept=kept_since(db, after, current=current, vanished=vanished),
            notify=ctx.notify,
            only=only,
        )


def kept_since(
    db: Database,
    after: int | None,
    *,
    current: str | None = None,
    vanished: dict[str, list[Record]] | None = None,
) -> Callable[[asyncpg.Connection], Awaitable[Kept]]:
    """What a sync must leave alone (see sync.Kept): the rows of user changes after the audit
    id `after` (None: after the last applied one); what failed commits left in the cloud,
    and what the commit `current` (being undone) left there; and `vanished`, resources a
    commit made whose rows a user deleted before their ids were written back."""

    async def load(conn: asyncpg.Connection) -> Kept:
        kept = Kept()
        tables = {t.name: t for t in await db.installed_tables(conn)}
        for change in await audit.pending_changes(conn, db.engine_user, after=after):
            table = tables.get(change.table_name)
            if table is None:
                continue
            for side in ("original", "change"):
                if side in change.change:
                    kept.keep_row(table, change.change[side])
            if "original" in change.change:
                kept.originals.setdefault(table.name, []).append(change.change["original"])
        for orphan in await conn.fetch(_LEFTOVER_CREATES, current or ""):
            kept.orphans.setdefault(orphan["table_name"], []).append(orphan["after"])
        for table_name, records in (vanished or {}).items():
            kept.orphans.setdefault(table_name, []).extend(records)
        return kept

    return load


# Journal entries of failed or recovered commits (or of the commit $1, being undone) whose
# undo has not succeeded yet.
_LEFTOVERS = (
    "FROM iasql_commit_journal j JOIN iasql_transaction t USING (transaction_id)"
    " WHERE (t.outcome IN ('failed', 'recovered') OR t.transaction_id = $1)"
    " AND j.state IN ('started', 'done')"
)
_LEFTOVER_CREATES = (
    f"SELECT j.table_name, j.after {_LEFTOVERS} AND j.action = 'create' AND j.after IS NOT NULL"
)


async def _revert(
    db: Database,
    conn: asyncpg.Connection,
    ctx: CallContext,
    applier: Applier,
    changes: list[audit.Change],
    through: int,
    failure: BaseException,
) -> None:
    """Undoes a failed or cancelled commit in the cloud and in the rows, closes the
    transaction, and raises the error the client sees."""
    tid = applier.transaction_id
    cancelled = isinstance(failure, asyncio.CancelledError)
    with contextlib.suppress(AttributeError):  # a cancel we handle here must not linger
        task = asyncio.current_task()
        while task is not None and task.cancelling():
            task.uncancel()
    ctx.notify("commit cancelled: undoing" if cancelled else f"commit failed: {failure}; undoing")
    await audit.log_event(conn, "START_REVERT", ctx.user, tid)
    left = await applier.revert(await db.enabled_regions(conn))
    await _undo_rows(db, conn, changes, through)
    await _sync_after(db, conn, ctx, applier.plan, changes, through, current=tid)
    await audit.mark_applied(conn, through)
    await audit.log_event(conn, "END_REVERT", ctx.user, tid)
    text = "canceled by user request" if cancelled else f"commit failed: {failure}"
    if left:
        text += "; left in the cloud (undone at the next begin, commit, rollback or sync): "
        text += "; ".join(left)
    await audit.log_event(conn, "ERROR", ctx.user, tid, text)
    await _close(conn, ctx, tid, "failed")
    detail = (
        "left in the cloud, to be undone at the next begin, commit, rollback or sync: "
        + "; ".join(left)
        if left
        else "the changes made were undone"
    )
    if cancelled:
        raise EngineError(
            "57014", "canceling statement due to user request: the commit was undone", detail=detail
        )
    assert isinstance(failure, StepFailed)
    raise EngineError(
        "58000",
        f"commit failed: {failure}",
        detail=detail + "; the transaction's SQL is still in iasql_get_sql_for_transaction()",
    )


async def _undo_rows(
    db: Database, conn: asyncpg.Connection, changes: list[audit.Change], through: int
) -> None:
    """Reverses `changes`, except on rows that a user changed again after `through`: the
    later change stays as written, pending for the next commit."""
    tables = {t.name: t for t in await db.installed_tables(conn)}
    later = await kept_since(db, through)(conn)
    mine = [c for c in changes if not later.touches(tables.get(c.table_name), c.change)]
    async with conn.transaction():
        await audit.undo(conn, mine, tables)


# --- rollback ---------------------------------------------------------------------------


async def rollback(db: Database, ctx: CallContext, force: bool) -> list[Row]:
    async with _commit_lock(db) as conn:
        await recover_interrupted(db, ctx, locked=True)
        transaction = await _open_transaction(conn)
        if transaction is None and not force:
            raise EngineError(
                "25P01",
                "no infrastructure transaction is open",
                hint="iasql_rollback(force => true) also discards changes made outside one",
            )
        through = await audit.settled_last_id(conn)
        changes = await audit.pending_changes(conn, db.engine_user)
        changes = [c for c in changes if c.id <= through]
        plan = await _plan_unless_cloud_fails(db, conn, ctx, changes)
        await _undo_rows(db, conn, changes, through)
        if plan is not None:
            await _sync_after(db, conn, ctx, plan, changes, through)
        await audit.mark_applied(conn, through)
        if transaction is not None:
            await _close(conn, ctx, transaction.transaction_id, "rolled back")
    operations = plan.operations if plan is not None else []
    return [{k: v for k, v in o.preview_row().items() if k != "changes"} for o in operations]


async def _plan_unless_cloud_fails(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, changes: list[audit.Change]
) -> Plan | None:
    """The plan of the changes a rollback discards, for its answer and the re-read after it;
    None when the cloud cannot be read: discarding rows must not wait for the cloud."""
    try:
        return await plan_changes(db, conn, changes)
    except Exception as exc:
        failure = cloud_failure(exc)
        if failure is None:
            raise
        ctx.notify(
            f"the cloud could not be read ({failure.message}): the rows are restored from the"
            " audit log alone; SELECT * FROM iasql_sync() re-reads them later"
        )
        return None


# --- crash recovery ---------------------------------------------------------------------


async def recover_interrupted(db: Database, ctx: CallContext, *, locked: bool = False) -> None:
    """Finds a commit cut short by a crash and undoes it (cloud first, then rows), then
    retries the undos that failed commits could not finish."""
    async with db.pool.acquire() as conn:
        interrupted = await conn.fetchrow(_INTERRUPTED)
        leftovers = await conn.fetch(_LEFTOVER_TRANSACTIONS, "")
        if interrupted is None and not leftovers:
            return
        if not locked and not await conn.fetchval("SELECT pg_try_advisory_lock($1)", COMMIT_LOCK):
            return  # that commit is alive, in this or another process
        try:
            # Again under the lock: the commit seen above may have ended meanwhile.
            interrupted = await conn.fetchrow(_INTERRUPTED)
            recovered = None
            if interrupted is not None:
                recovered = interrupted["transaction_id"]
                await _recover(db, conn, ctx, recovered, interrupted["applying_through"])
            for tid in await conn.fetch(_LEFTOVER_TRANSACTIONS, ""):
                if tid["transaction_id"] != recovered:  # just tried: not again at once
                    await _retry_undo(db, conn, ctx, tid["transaction_id"])
        finally:
            if not locked:
                await conn.execute("SELECT pg_advisory_unlock($1)", COMMIT_LOCK)


_INTERRUPTED = (
    "SELECT transaction_id, applying_through FROM iasql_transaction WHERE outcome = 'committing'"
)
_LEFTOVER_TRANSACTIONS = (
    f"SELECT j.transaction_id, min(j.id) AS first {_LEFTOVERS}"
    " GROUP BY j.transaction_id ORDER BY first"
)


async def _retry_undo(db: Database, conn: asyncpg.Connection, ctx: CallContext, tid: str) -> None:
    """Tries again to undo what the failed commit `tid` left in the cloud."""
    ctx.notify(f"commit {tid} left changes in the cloud: undoing them")
    installed = {t.name: t for t in await db.installed_tables(conn)}
    try:
        cloud = await db.cloud()
        left = await recover(
            db.pool, cloud, tid, installed, await db.enabled_regions(conn), ctx.notify
        )
    except REFRESH_ERRORS as exc:
        left = [str(exc)]
    if left:
        ctx.notify(f"still left in the cloud by commit {tid}: {'; '.join(left)}")
        return
    text = f"what commit {tid} had left in the cloud is now undone"
    await audit.log_event(conn, "ERROR", ctx.user, tid, text)
    ctx.notify(text)


async def _recover(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, tid: str, through: int
) -> None:
    ctx.notify(f"the commit of transaction {tid} was interrupted: undoing it")
    installed = await db.installed_tables(conn)
    regions = await db.enabled_regions(conn)
    problems = await recover(
        db.pool, await db.cloud(), tid, {t.name: t for t in installed}, regions, ctx.notify
    )
    changes = [c for c in await audit.pending_changes(conn, db.engine_user) if c.id <= through]
    journaled = {
        r["table_name"]
        for r in await conn.fetch(
            "SELECT DISTINCT table_name FROM iasql_commit_journal WHERE transaction_id = $1", tid
        )
    }
    await _undo_rows(db, conn, changes, through)
    touched = journaled | {c.table_name for c in changes}
    tables = [t for t in installed if t.name in touched and t.mapper is not None]
    if tables and not problems:
        try:
            await sync_tables(
                conn,
                await db.cloud(),
                tables,
                regions,
                kept=kept_since(db, through, current=tid),
                notify=ctx.notify,
            )
        except Exception as exc:  # the rows are back already; this refresh can wait
            _refresh_failed(ctx, {t.name for t in tables}, exc)
    await audit.mark_applied(conn, through)
    text = "commit interrupted (the server stopped); undone"
    if problems:
        text += "; left in the cloud (undone at the next begin, commit, rollback or sync): "
        text += "; ".join(problems)
    await audit.log_event(conn, "ERROR", ctx.user, tid, text)
    await _close(conn, ctx, tid, "recovered")
    ctx.notify(text)


# --- sync and drift ---------------------------------------------------------------------


_SYNC_ACTIONS = {CREATE: "delete", DELETE: "insert"}  # what a sync does to the row


def _as_sync_rows(plan: Plan) -> list[Row]:
    rows = []
    for operation in [*plan.operations, *plan.protected]:
        row = operation.preview_row()
        row["action"] = _SYNC_ACTIONS.get(operation.action, "update")
        row["changes"] = {
            column: {"old": change.get("new"), "new": change.get("old")}
            for column, change in operation.changes.items()
        }
        rows.append(row)
    return rows


async def drift(db: Database, ctx: CallContext) -> list[Row]:
    """Where rows and cloud differ, as what `iasql_sync()` would do to the rows."""
    async with db.pool.acquire() as conn:
        installed = await db.installed_tables(conn)
        plan = await _plan_tables(db, conn, installed, {t.name for t in installed})
    return _as_sync_rows(plan)


async def sync(db: Database, ctx: CallContext) -> list[Row]:
    """Imports the whole cloud state into the rows, except tables with user changes no
    commit has applied yet (those are left for the commit, and named in a notice)."""
    async with _commit_lock(db) as conn:
        await recover_interrupted(db, ctx, locked=True)
        installed = await db.installed_tables(conn)
        busy = {c.table_name for c in await audit.pending_changes(conn, db.engine_user)}
        busy &= {t.name for t in installed}  # not the promotion rules, say
        if busy:
            ctx.notify(f"not syncing {', '.join(sorted(busy))}: they have uncommitted changes")
        names = {t.name for t in installed} - busy
        plan = await _plan_tables(db, conn, installed, names)
        await sync_tables(
            conn,
            await db.cloud(),
            plan.tables,
            await db.enabled_regions(conn),
            kept=kept_since(db, None),
            notify=ctx.notify,
        )
    return _as_sync_rows(plan)


# --- module functions (RPCs) ------------------------------------------------------------


async def call_module_function(
    db: Database, ctx: CallContext, module: ModuleSpec, function: ModuleFunction, args: Row
) -> list[Row]:
    """Runs a module RPC. One that changes the cloud holds the commit lock, runs inside the
    open infrastructure transaction or else its own, and then syncs the module's tables
    (those without uncommitted user changes) so the rows show what it made."""
    async with db.pool.acquire() as conn:
        if module.name not in await db.installed(conn):
            raise EngineError(
                "42883",
                f"{function.name}() belongs to the module {module.name}, which is not installed",
                hint=f"SELECT * FROM iasql_install('{module.name}')",
            )
        if "region" in args and args["region"] is None:
            args = {**args, "region": await _default_region(conn)}
    if not function.changes_cloud:
        return await _run_function(db, function, args)
    async with _commit_lock(db) as conn:
        await recover_interrupted(db, ctx, locked=True)
        transaction = await _open_transaction(conn)
        tid = transaction.transaction_id if transaction else str(uuid.uuid4())
        if transaction is None:
            await conn.execute(
                "INSERT INTO iasql_transaction (transaction_id, opened_by) VALUES ($1, $2)",
                tid,
                ctx.user,
            )
            await audit.log_event(conn, "OPEN_TRANSACTION", ctx.user, tid, f"{function.name}()")
        outcome, reachable = "failed", True
        try:
            result = await _run_function(db, function, args)
            outcome = "committed"
            return result
        except EngineError as error:
            reachable = error.sqlstate != "08001"
            raise
        finally:
            try:
                if reachable:  # the function may have changed something, even if it failed
                    await _refresh_module(db, conn, ctx, module)
            finally:
                if transaction is None:
                    await _close(conn, ctx, tid, outcome)


async def _refresh_module(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, module: ModuleSpec
) -> None:
    """Syncs a module's tables after one of its functions ran, except the tables with user
    changes no commit has applied yet (they wait for it). A failure here is a notice only:
    the function's result (a private key shown once) must still reach the caller."""
    pending = {c.table_name for c in await audit.pending_changes(conn, db.engine_user)}
    names = {t.name for t in module.tables}
    try:
        await _sync_with_children(db, conn, ctx, names, frozenset(pending))
    except REFRESH_ERRORS as exc:
        _refresh_failed(ctx, names, exc)


async def _run_function(db: Database, function: ModuleFunction, args: Row) -> list[Row]:
    try:
        records = await function.run(await db.cloud(), **args)
    except ArgumentError as error:
        raise EngineError("22023", f"{function.name}(): {error}") from None
    except REFRESH_ERRORS as error:
        failure = cloud_failure(error)
        if failure is None:
            raise EngineError("58000", f"{function.name}() failed: {error}") from None
        raise EngineError(
            failure.sqlstate,
            f"{function.name}() failed: {failure.message}",
            detail=failure.detail,
            hint=failure.hint,
        ) from None
    return [{name: record.get(name) for name, _type in function.columns} for record in records]


async def _default_region(conn: asyncpg.Connection) -> str:
    # The account module, which every module needs, declares how to read it.
    account = account_module()[1]
    region = await conn.fetchval(account.default_region_sql)
    if region is None:
        raise EngineError(
            "22023",
            "no region given and this database has no default region",
            hint=f"pass the region, or add AWS credentials so {account.regions.name} is filled",
        )
    return str(region)
