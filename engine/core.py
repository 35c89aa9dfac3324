"""The engine: the catalog of iasql functions and the state they run against."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

import asyncpg

from engine import admin, install, platform, promotion, sqlgen, transaction, upgrade
from engine.cloud import cloud_failure
from engine.contract import CallContext, EngineError, FunctionSpec, Param, Row
from engine.database import Database
from modules import available_modules
from modules.spec import ModuleFunction, ModuleSpec

log = logging.getLogger("iasql.engine")

# Watching the backing Postgres (Engine._watch_backend), in seconds.
RECONNECT_FIRST = 0.5  # the wait after a failed attempt, doubled after each one ...
RECONNECT_MAX = 10.0  # ... up to this
PROBE_EVERY = 5.0  # an idle watch connection is asked SELECT 1 this often
PROBE_TIMEOUT = 5.0
# What an unreachable, restarting or refusing backing Postgres raises (TimeoutError is an
# OSError; CannotConnectNowError, "the database system is starting up", a PostgresError).
BACKEND_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

# What runs on a database whose modules are not on this server's schema versions (see
# engine/upgrade.py): nothing else reads or writes module tables there.
# SQL from the audit log is written in this server's schemas: the log is translated from
# older ones (not from newer ones: those databases are refused it).
READ_THE_LOG = {"iasql_get_sql_for_transaction", "iasql_get_sql_since", "iasql_get_promotion_sql"}
RUN_WHEN_NOT_UPGRADED = {
    *READ_THE_LOG,
    "iasql_version",
    "iasql_modules_list",
    "iasql_modules_installed",
    "iasql_help",
    "iasql_get_errors",
    "iasql_upgrade",
    "iasql_promotions",
}

# IaSQL's old names. (`iasql_sync` was one too; here it is the drift import, as the README's
# "Infrastructure transactions" section says.)
DEPRECATED = {
    "iasql_apply": "iasql_begin(), then iasql_commit()",
    "iasql_preview_apply": "iasql_preview()",
    "iasql_preview_sync": "iasql_drift()",
}


def server_version() -> str:
    try:
        return metadata.version("iasql")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


@dataclass(frozen=True)
class EngineConfig:
    backend_dsn: str  # a role on the backing Postgres that may create databases and roles
    address: admin.PublicAddress  # where clients reach the server, for URLs handed out
    local_cloud_endpoint: str | None = None  # the sandbox's AWS endpoint, if one runs
    transactions: transaction.TransactionSettings = field(
        default_factory=transaction.TransactionSettings
    )


# The built-in functions, as declared by @builtin on their Engine methods (in class order):
# the name of the method and the function, whose handler Engine() binds to itself.
_BUILTINS: list[tuple[str, FunctionSpec]] = []

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[list[Row]]])


async def _unbound(_ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
    raise AssertionError("a built-in function's handler is bound by Engine()")


def builtin(
    name: str,
    *,
    columns: tuple[tuple[str, str], ...],
    description: str,
    params: tuple[Param, ...] = (),
    admin_only: bool = False,
    outside_transaction_block: bool = False,
    sample: str | None = None,
) -> Callable[[_Method], _Method]:
    """Declares the Engine method below it as the handler of the built-in SQL function `name`
    (see FunctionSpec for the arguments). The method itself is left as it is."""

    def declare(method: _Method) -> _Method:
        assert all(spec.name != name for _method, spec in _BUILTINS), f"{name} twice"
        spec = FunctionSpec(
            name=name,
            columns=columns,
            params=params,
            handler=_unbound,
            description=description,
            admin_only=admin_only,
            outside_transaction_block=outside_transaction_block,
            sample=sample,
        )
        _BUILTINS.append((method.__name__, spec))
        return method

    return declare


# A row of the promotion ledger (iasql_promotions(), iasql_record_promotion()).
PROMOTION_COLUMNS = (
    ("source_environment", "text"),
    ("source_transaction_id", "text"),
    ("status", "text"),
    ("target_transaction_id", "text"),
    ("recorded_at", "timestamptz"),
    ("recorded_by", "text"),
)

# What iasql_preview() and friends return: one row per cloud operation.
PLAN_COLUMNS = (
    ("action", "text"),
    ("table_name", "text"),
    ("id", "text"),
    ("description", "text"),
    ("changes", "jsonb"),
)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.functions: dict[str, FunctionSpec] = {}
        self.rewriter = promotion.RewriteWorker()  # iasql_promotion_sql's parser, a process
        for method, declared in _BUILTINS:
            self.functions[declared.name] = dataclasses.replace(
                declared, handler=getattr(self, method)
            )
        # Module RPCs (e.g. key_pair_request), by name: their module, for iasql_help().
        self.function_modules: dict[str, str] = {}
        for module in available_modules().values():
            for function in module.functions:
                self.functions[function.name] = self._module_function(module, function)
                self.function_modules[function.name] = module.name
        self._admin: asyncpg.Connection | None = None
        self._admin_lock = asyncio.Lock()
        self._databases: dict[str, Database] = {}
        self._databases_lock = asyncio.Lock()
        self._recovery: asyncio.Future[None] | None = None
        # Commits running in this process, by database.
        self._committing: collections.Counter[str] = collections.Counter()
        # Databases whose modules are not on this server's schema versions: those modules.
        self._not_upgraded: dict[str, list[upgrade.ModuleUpgrade]] = {}

    async def start(self) -> None:
        """Checks the backing Postgres and prepares the admin database."""
        conn = await asyncpg.connect(self.config.backend_dsn)
        try:
            await admin.ensure_admin_database(conn)
            kept = await admin.close_other_databases(conn)
        finally:
            await conn.close()
        if kept:
            log.warning(
                "the environments' roles can still connect to %s: this server's role may not"
                " revoke CONNECT from PUBLIC there (do it as their owner)",
                ", ".join(kept),
            )
        async with self._admin_lock:
            await admin.prepare_registry(await self._admin_connection())
        await self._upgrade_all(dry_run=False)
        self._recovery = asyncio.ensure_future(self._watch_backend())

    async def _upgrade_all(self, *, dry_run: bool) -> list[Row]:
        """Upgrades every environment database, one after the other; one that fails stays as
        it was and the others carry on. (A commit cut short by a crash is undone after the
        upgrade, which rewrote its journal in the new schema's terms.)"""
        async with self._admin_lock:
            aliases = [r["alias"] for r in await (await self._admin_connection()).fetch(
                "SELECT alias FROM iasql_database ORDER BY alias"
            )]  # fmt: skip
        rows: list[Row] = []
        for alias in aliases:
            try:
                db = await self.database(alias)
                if alias not in self._not_upgraded:
                    continue
                ctx = CallContext(alias, db.engine_user, notify=lambda text: log.info("%s", text))
                rows += await self._upgrade(db, ctx, dry_run=dry_run)
            except EngineError as exc:  # busy, or upgraded by a newer server: it says why
                status = "busy" if exc.sqlstate == "55006" else "failed"
                rows.append({"database": alias, "status": status, "detail": exc.message})
            except Exception as exc:  # one broken database must not stop the others
                log.warning("could not upgrade %s: %s", alias, _one_line(exc))
                rows.append({"database": alias, "status": "failed", "detail": _one_line(exc)})
        return rows

    async def _upgrade(self, db: Database, ctx: CallContext, *, dry_run: bool) -> list[Row]:
        try:
            return await upgrade.upgrade_database(db, ctx, dry_run=dry_run)
        finally:
            await self._check_upgraded(db)

    async def _check_upgraded(self, db: Database) -> None:
        async with db.pool.acquire() as conn:
            pending = await upgrade.pending_upgrades(conn)
            if not pending:  # guarded by a newer server that failed to upgrade it: not here
                await upgrade.lift_guards(conn)
        if pending:
            self._not_upgraded[db.name] = pending
        else:
            self._not_upgraded.pop(db.name, None)

    async def _watch_backend(self) -> None:
        """For the server's life: recovers interrupted commits now, then watches the backing
        Postgres on a connection of its own. When Postgres goes away (a restart, a failover),
        it reconnects with backoff, one log line per attempt, and as soon as Postgres is back
        it recovers again: a commit cut short with it is undone without waiting for a call."""
        while True:
            conn = await self._reconnect()
            try:
                await self._recover_interrupted_commits()
                reason = await self._until_lost(conn)
                log.warning("lost the backing Postgres (%s): reconnecting", reason)
            except Exception:  # a bug: say so, and keep watching
                log.exception("watching the backing Postgres failed")
                await asyncio.sleep(RECONNECT_MAX)
            finally:
                conn.terminate()

    async def _reconnect(self) -> asyncpg.Connection:
        """A connection to the admin database, retried at 0.5 s, doubling up to 10 s."""
        delay = RECONNECT_FIRST
        failed = 0
        while True:
            try:
                conn = await asyncpg.connect(
                    self.config.backend_dsn, database=admin.ADMIN_DATABASE, timeout=PROBE_TIMEOUT
                )
            except BACKEND_ERRORS as exc:
                failed += 1
                log.warning(
                    "the backing Postgres is unreachable (attempt %d: %s); next attempt in %g s",
                    failed,
                    _one_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            if failed:
                log.warning(
                    "the backing Postgres is back (attempt %d): recovering interrupted commits",
                    failed + 1,
                )
            return conn

    @staticmethod
    async def _until_lost(conn: asyncpg.Connection) -> str:
        """Returns, with the reason, once `conn` is closed or stops answering."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not conn.is_closed():
            try:
                await asyncio.wait_for(lost.wait(), PROBE_EVERY)
            except TimeoutError:  # quiet: make sure it still answers
                try:
                    await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT)
                except BACKEND_ERRORS as exc:
                    return _one_line(exc)
        return "its connection was closed"

    async def _recover_interrupted_commits(self) -> None:
        """After a restart (of this server or of the backing Postgres), undoes the commits cut
        short, in every environment database, without waiting for someone to use it."""
        try:
            async with self._admin_lock:
                conn = await self._admin_connection()
                rows = await conn.fetch("SELECT alias FROM iasql_database")
        except BACKEND_ERRORS as exc:  # gone again: the watch sees it, and comes back here
            log.warning("could not list the environment databases: %s", _one_line(exc))
            return
        # A commit still running here lost its lock with the old connection, but not its
        # steps in flight: it is recovered later, once it has stopped.
        # A database not on this server's schemas is left alone: its journal is in the terms
        # of another version of the modules.
        aliases = [
            r["alias"]
            for r in rows
            if self._committing[r["alias"]] <= 0 and r["alias"] not in self._not_upgraded
        ]
        for alias in aliases:
            try:
                db = await self.database(alias)
                ctx = CallContext(
                    alias, db.engine_user, notify=lambda text: log.warning("%s", text)
                )
                await transaction.recover_interrupted(db, ctx)
            except Exception as exc:  # one broken database must not stop the others
                log.warning(
                    "could not check %s for an interrupted commit: %s", alias, _one_line(exc)
                )

    async def database(self, name: str) -> Database:
        """The environment database `name`, its platform schema ensured on first use. Only
        the registry's environment databases have one: the engine opens no pool elsewhere."""
        if name == admin.ADMIN_DATABASE:
            raise EngineError(
                "0A000",
                "the admin database has no modules",
                hint="connect to an environment database (SELECT * FROM iasql_db_list())",
            )
        async with self._databases_lock:
            db = self._databases.get(name)
            if db is None:
                async with self._admin_lock:
                    registered = await admin.is_environment(await self._admin_connection(), name)
                if not registered:
                    raise EngineError(
                        "0A000",
                        f"iasql functions run only in environment databases, and {name!r} is"
                        " not one",
                        hint="connect to an environment database (SELECT * FROM iasql_db_list()"
                        f" on the admin database {admin.ADMIN_DATABASE!r} lists them), or"
                        " create one with: iasql db create NAME",
                    )
                db = await Database.open(
                    self.config.backend_dsn,
                    name,
                    list(self.functions.values()),
                    self.config.local_cloud_endpoint,
                )
                await self._check_upgraded(db)
                self._databases[name] = db
            return db

    async def close(self) -> None:
        await self.rewriter.close()
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        # All at once: each closes its pool and its AWS clients, which takes a moment.
        databases = list(self._databases.values())
        self._databases.clear()
        results = await asyncio.gather(*(db.close() for db in databases), return_exceptions=True)
        for db, result in zip(databases, results, strict=True):
            if isinstance(result, Exception):
                log.warning("closing the pool of %s failed: %s", db.name, result)
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def call(
        self, spec: FunctionSpec, ctx: CallContext, arguments: dict[str, Any]
    ) -> list[Row]:
        if spec.admin_only and ctx.database != admin.ADMIN_DATABASE:
            raise EngineError(
                "0A000",
                f"{spec.name}() runs on the admin database {admin.ADMIN_DATABASE!r}",
                hint=f"connect to the database {admin.ADMIN_DATABASE!r} as the server's admin",
            )
        if spec.name in DEPRECATED:
            raise EngineError(
                "42883",
                f"{spec.name}() was renamed: use {DEPRECATED[spec.name]}",
                hint="SELECT * FROM iasql_help() lists the functions",
            )
        if spec.outside_transaction_block and ctx.in_transaction_block:
            raise EngineError(
                "25001",
                f"{spec.name}() cannot run inside a transaction block",
                hint="use autocommit: psycopg autocommit=True;"
                ' SQLAlchemy isolation_level="AUTOCOMMIT"; JDBC setAutoCommit(true);'
                " asyncpg outside conn.transaction(); psql outside BEGIN",
            )
        pending = self._not_upgraded.get(ctx.database)
        if (
            pending
            and not spec.admin_only
            and ctx.database != admin.ADMIN_DATABASE
            and (
                spec.name not in RUN_WHEN_NOT_UPGRADED
                or (spec.name in READ_THE_LOG and any(u.newer for u in pending))
            )
        ):
            raise upgrade.problem(pending, ctx.database) or AssertionError(pending)
        try:
            return await spec.handler(ctx, arguments)
        except EngineError:
            raise
        except Exception as exc:
            # A cloud that is unreachable or answers errors is the client's 08001 / 58000,
            # never an internal error.
            failure = cloud_failure(exc)
            if failure is None:
                raise
            log.warning("%s() failed: %s", spec.name, failure.message)
            raise failure from exc

    def _module_function(self, module: ModuleSpec, function: ModuleFunction) -> FunctionSpec:
        async def handler(ctx: CallContext, args: dict[str, Any]) -> list[Row]:
            db = await self.database(ctx.database)
            return await transaction.call_module_function(db, ctx, module, function, args)

        return FunctionSpec(
            name=function.name,
            columns=function.columns,
            params=tuple(
                Param(name, type_, default=None)
                if name in function.optional
                else Param(name, type_)
                for name, type_ in function.params
            ),
            handler=handler,
            description=function.description,
            outside_transaction_block=function.changes_cloud,
            sample=function.sample,
        )

    # --- built-in functions -------------------------------------------------------------
    # Each is declared by @builtin on its handler, in the order iasql_help() lists them.

    @builtin(
        "iasql_version", columns=(("version", "text"),), description="the iasql server version"
    )
    async def _version(self, _ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return [{"version": server_version()}]

    @builtin(
        "iasql_modules_list",
        columns=(
            ("module_name", "text"),
            ("module_version", "text"),
            ("dependencies", "json"),
            ("schema_version", "integer"),
        ),
        description="every available module",
    )
    async def _modules_list(self, _ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return [
            {
                "module_name": m.name,
                "module_version": m.version,
                "dependencies": list(m.dependencies),
                "schema_version": m.schema_version,
            }
            for m in platform.module_catalogue().values()
        ]

    @builtin(
        "iasql_modules_installed",
        columns=(
            ("module_name", "text"),
            ("module_version", "text"),
            ("dependencies", "text[]"),
            ("schema_version", "integer"),
        ),
        description="the modules installed in this database, with their tables' schema version",
    )
    async def _modules_installed(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return await install.modules_installed(await self.database(ctx.database))

    @builtin(
        "iasql_install",
        columns=(("module_name", "text"), ("created_table_name", "text"), ("record_count", "int")),
        params=(Param("module_names", "text[]", variadic=True),),
        description="installs modules (and what they need) and imports their cloud resources",
        outside_transaction_block=True,
        sample="SELECT * FROM iasql_install('aws_s3', 'aws_vpc')",
    )
    async def _install(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        return await install.install(await self.database(ctx.database), ctx, args["module_names"])

    @builtin(
        "iasql_uninstall",
        columns=(("module_name", "text"), ("dropped_table_name", "text"), ("record_count", "int")),
        params=(Param("module_names", "text[]", variadic=True),),
        description="drops the modules' tables; the cloud is untouched",
        outside_transaction_block=True,
        sample="SELECT * FROM iasql_uninstall('aws_s3')",
    )
    async def _uninstall(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        return await install.uninstall(db, ctx, args["module_names"])

    @builtin(
        "iasql_upgrade",
        columns=upgrade.COLUMNS,
        params=(Param("dry_run", "boolean", default=False),),
        description="migrates this database's module tables to this server's schema versions"
        " (on the admin database: every environment database); a dry run lists the SQL",
        outside_transaction_block=True,
        sample="SELECT * FROM iasql_upgrade(dry_run => true)",
    )
    async def _upgrade_call(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        dry_run = bool(args["dry_run"])
        if ctx.database == admin.ADMIN_DATABASE:
            return await self._upgrade_all(dry_run=dry_run)
        rows = await self._upgrade(await self.database(ctx.database), ctx, dry_run=dry_run)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise EngineError(
                "55000", str(failed[0]["detail"]), hint="the database is left as it was"
            )
        return rows

    @builtin(
        "iasql_begin",
        columns=(("message", "text"), ("transaction_id", "text")),
        description="opens this database's infrastructure transaction",
        # Inside a client's block, its ROLLBACK would leave the database locked.
        outside_transaction_block=True,
    )
    async def _begin(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        return await transaction.begin(db, ctx, self.config.transactions)

    @builtin(
        "iasql_preview",
        columns=PLAN_COLUMNS,
        description="what iasql_commit() would do, one row per cloud operation",
    )
    async def _preview(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return await transaction.preview(await self.database(ctx.database), ctx)

    @builtin(
        "iasql_commit",
        columns=PLAN_COLUMNS,
        params=(Param("message", "text", default=None),),
        description="applies the transaction's changes to the cloud and closes it",
        outside_transaction_block=True,
        sample="SELECT * FROM iasql_commit('add the web tier')",
    )
    async def _commit(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        work = asyncio.ensure_future(
            transaction.commit(db, ctx, args["message"], self.config.transactions)
        )
        self._committing[ctx.database] += 1
        work.add_done_callback(lambda _work: self._committing.subtract([ctx.database]))
        return await _finish_unless_cancelled(ctx, work)

    @builtin(
        "iasql_rollback",
        columns=PLAN_COLUMNS[:4],
        params=(Param("force", "boolean", default=False),),
        description="discards the changes no commit applied (rows restored from the cloud)",
        outside_transaction_block=True,
    )
    async def _rollback(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        return await transaction.rollback(db, ctx, bool(args["force"]))

    @builtin(
        "iasql_sync",
        columns=PLAN_COLUMNS,
        description="imports the cloud's current state into the rows (drift import)",
        outside_transaction_block=True,
    )
    async def _sync(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return await transaction.sync(await self.database(ctx.database), ctx)

    @builtin(
        "iasql_drift",
        columns=PLAN_COLUMNS,
        description="where rows and cloud differ, without changing anything",
    )
    async def _drift(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        return await transaction.drift(await self.database(ctx.database), ctx)

    @builtin(
        "iasql_get_sql_for_transaction",
        columns=(("sql", "text"),),
        params=(Param("transaction_id", "text", default=None),),
        description="SQL replaying a transaction's changes in another environment (default: the"
        " open or latest one)",
    )
    async def _sql_for_transaction(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        return [{"sql": s} for s in await sqlgen.sql_for_transaction(db, args["transaction_id"])]

    @builtin(
        "iasql_get_sql_since",
        columns=(("sql", "text"),),
        params=(Param("limit_date", "timestamptz", default=None),),
        description="SQL replaying every change since a time (default: all of them)",
        sample="SELECT * FROM iasql_get_sql_since(now() - interval '1 day')",
    )
    async def _sql_since(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        return [{"sql": s} for s in await sqlgen.sql_since(db, args["limit_date"])]

    @builtin(
        "iasql_create_review",
        columns=(("markdown", "text"),),
        params=(
            Param("title", "text", default="New Review"),
            Param("description", "text", default="Review description"),
        ),
        description="a pull-request body: the preview as a table and the transaction's SQL",
        sample="SELECT * FROM iasql_create_review('Add the web tier', 'Why: ...')",
    )
    async def _create_review(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        preview = await transaction.preview(db, ctx)
        statements = await sqlgen.sql_for_transaction(db, None)
        async with db.pool.acquire() as conn:
            promoting = [r for r in await promotion.ledger(conn) if r["status"] == "pending"]
        description = "\n\n".join(
            [
                args["description"],
                *(
                    f"Promotes {r['source_environment']} transaction {r['source_transaction_id']}."
                    for r in promoting
                ),
            ]
        )
        text = sqlgen.review_markdown(args["title"], description, preview, statements)
        return [{"markdown": text}]

    @builtin(
        "iasql_get_promotion_sql",
        columns=(
            ("position", "int"),
            ("table_name", "text"),
            ("sql", "text"),
            ("check_sql", "text"),
            ("expected_rows", "int"),
            ("now_sql", "text"),
            ("source_before", "jsonb"),
            ("source_after", "jsonb"),
        ),
        params=(Param("transaction_id", "text", default=None),),
        description="a transaction's SQL for iasql promote: each statement with the check"
        " that the target's row is as the source's was before it",
    )
    async def _promotion_source(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        checked = await sqlgen.checked_sql(db, args["transaction_id"])
        return [
            {
                "position": position,
                "table_name": check.table,
                "sql": statement,
                "check_sql": check.sql,
                "expected_rows": check.expected,
                "now_sql": check.now_sql,
                "source_before": check.before,
                "source_after": check.after,
            }
            for position, (statement, check) in enumerate(checked, 1)
        ]

    @builtin(
        "iasql_promotion_sql",
        columns=(
            ("position", "int"),
            ("sql", "text"),
            ("source_sql", "text"),
            ("rewrites", "jsonb"),
            ("excluded_by", "int"),
        ),
        params=(
            Param("statements", "text"),
            Param("source_environment", "text", default=None),
            Param("source_schema", "jsonb", default=None),
        ),
        description="another environment's SQL with this database's promotion rules applied"
        " (sql is NULL where an exclude rule keeps a statement out); source_schema, the"
        " source server's {module: schema version}, translates SQL of older module schemas",
        sample="SELECT sql FROM iasql_promotion_sql($$INSERT INTO vpc (cidr_block)"
        " VALUES ('10.1.0.0/16');$$, 'staging')",
    )
    async def _promotion_sql(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        async with db.pool.acquire() as conn:
            rules = await promotion.load_rules(conn, args["source_environment"])
            steps = upgrade.steps_from(
                _schema_versions(args["source_schema"]), (await db.installed(conn)).values()
            )
        rewritten = await self.rewriter.rewrite(args["statements"] or "", rules, steps)
        return [
            {
                "position": position,
                "sql": statement.sql,
                "source_sql": statement.source_sql,
                "rewrites": statement.rewrites,
                "excluded_by": statement.excluded_by,
            }
            for position, statement in enumerate(rewritten, 1)
        ]

    @builtin(
        "iasql_record_promotion",
        columns=(("message", "text"), ("target_transaction_id", "text")),
        params=(
            Param("source_environment", "text"),
            Param("source_transaction_id", "text"),
            Param("status", "text", default="applied"),
        ),
        description="records a source transaction in the ledger: applied by the open"
        " transaction (counted once it commits), or skipped",
    )
    async def _record_promotion(self, ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        async with db.pool.acquire() as conn:
            recorded = await promotion.record(
                conn, ctx.user, args["source_environment"], args["source_transaction_id"],
                args["status"],
            )  # fmt: skip
        return [
            {
                "message": f"{recorded['status']}: {recorded['source_environment']} transaction"
                f" {recorded['source_transaction_id']}",
                "target_transaction_id": recorded["target_transaction_id"],
            }
        ]

    @builtin(
        "iasql_promotions",
        columns=PROMOTION_COLUMNS,
        description="the promotion ledger: the source transactions this database applied or"
        " skipped",
    )
    async def _promotions(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        async with db.pool.acquire() as conn:
            return await promotion.ledger(conn)

    @builtin(
        "iasql_get_errors",
        columns=(("ts", "timestamptz"), ("message", "text")),
        description="recent engine errors (failed or interrupted commits), newest first",
    )
    async def _get_errors(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        db = await self.database(ctx.database)
        found = await db.pool.fetch(
            "SELECT ts, message FROM iasql_audit_log WHERE change_type = 'ERROR'"
            " ORDER BY id DESC LIMIT 100"
        )
        return [dict(r) for r in found]

    @builtin(
        "iasql_help",
        columns=(
            ("module", "text"),
            ("name", "text"),
            ("signature", "text"),
            ("description", "text"),
            ("sample_usage", "text"),
        ),
        description="every iasql function: signature, what it does, an example",
    )
    async def _help(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        """The built-in functions, and the RPCs of the modules installed here."""
        installed: set[str] = set()
        async with self._admin_lock:
            environment = await admin.is_environment(await self._admin_connection(), ctx.database)
        if environment:
            installed = set(await (await self.database(ctx.database)).installed())
        builtin_module = platform.FUNCTIONS_MODULE.name
        return [
            {
                "module": self.function_modules.get(spec.name, builtin_module),
                "name": spec.name,
                "signature": spec.signature(),
                "description": spec.description,
                "sample_usage": spec.sample or f"SELECT * FROM {spec.name}()",
            }
            for spec in self.functions.values()
            if not spec.admin_only
            and spec.name not in DEPRECATED
            and self.function_modules.get(spec.name, builtin_module)
            in {*installed, *platform.BUILTIN_MODULES}
        ]

    async def _deprecated(self, ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        raise AssertionError("answered in call()")

    # IaSQL's old names: each is a function still, which call() answers with its new name.
    for _old, _new in DEPRECATED.items():
        builtin(_old, columns=(("message", "text"),), description=f"renamed {_new}")(_deprecated)
    del _old, _new

    @builtin(
        "iasql_connect",
        columns=(("database", "text"), ("user", "text"), ("password", "text"), ("url", "text")),
        params=(Param("db_alias", "text"),),
        description="creates an environment database and its login role",
        admin_only=True,
    )
    async def _connect(self, _ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        async with self._admin_lock:
            conn = await self._admin_connection()
            return [
                await admin.connect_database(
                    conn, self.config.backend_dsn, self.config.address, args["db_alias"]
                )
            ]

    @builtin(
        "iasql_disconnect",
        columns=(("message", "text"),),
        params=(Param("db_alias", "text"),),
        description="drops an environment database and its role (the cloud is untouched)",
        admin_only=True,
    )
    async def _disconnect(self, _ctx: CallContext, args: dict[str, Any]) -> list[Row]:
        async with self._databases_lock:  # a pool into a dropped database must not be reused
            db = self._databases.pop(str(args["db_alias"]), None)
        if db is not None:
            await db.close()
        async with self._admin_lock:
            return [
                await admin.disconnect_database(await self._admin_connection(), args["db_alias"])
            ]

    @builtin(
        "iasql_db_list",
        columns=(
            ("alias", "text"),
            ("database", "text"),
            ("user", "text"),
            ("url", "text"),
            ("created_at", "timestamptz"),
        ),
        description="the environment databases of this server",
        admin_only=True,
    )
    async def _db_list(self, _ctx: CallContext, _args: dict[str, Any]) -> list[Row]:
        async with self._admin_lock:
            return await admin.list_databases(await self._admin_connection(), self.config.address)

    async def _admin_connection(self) -> asyncpg.Connection:
        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(
                self.config.backend_dsn, database=admin.ADMIN_DATABASE
            )
        return self._admin


async def _finish_unless_cancelled(ctx: CallContext, work: asyncio.Future[list[Row]]) -> list[Row]:
    """Awaits work that must not stop halfway when the client goes away. A CancelRequest
    (ctx.cancel_requested) makes the work itself stop cleanly; a disconnect leaves it running."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if not ctx.cancel_requested:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return await work


def _schema_versions(value: Any) -> dict[str, int]:
    """iasql_promotion_sql's source_schema: {module: schema version}."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise EngineError(
            "22023",
            "source_schema must be a JSON object of module schema versions",
            hint="""'{"aws_sqs": 1}'""",
        )
    return value


def _one_line(exc: BaseException) -> str:
    """An exception as one log line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
