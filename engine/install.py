"""Installing and uninstalling modules in an environment database."""

from __future__ import annotations

import asyncpg

from engine import audit, ddl, platform
from engine.contract import CallContext, EngineError, Row, did_you_mean
from engine.database import Database
from engine.sync import sync_tables
from engine.transaction import kept_since
from modules import account_module
from modules.spec import ModuleSpec, Table

INSTALL_LOCK = 0x1A5C2  # one install or uninstall at a time per database


def _known(names: list[str]) -> list[ModuleSpec]:
    modules = platform.module_catalogue()
    found = []
    for name in names:
        if name not in modules:
            suggestion = did_you_mean(name, list(modules))
            raise EngineError(
                "42704",
                f"module {name!r} does not exist",
                hint=suggestion or "SELECT * FROM iasql_modules_list() lists them",
            )
        found.append(modules[name])
    return found


def with_dependencies(requested: list[ModuleSpec]) -> list[ModuleSpec]:
    """The modules and every module they need, dependencies first; never the built-in ones
    (platform.BUILTIN_MODULES), which every database has: installing one does nothing."""
    modules = platform.module_catalogue()
    ordered: list[ModuleSpec] = []

    def visit(module: ModuleSpec) -> None:
        if module in ordered or module.name in platform.BUILTIN_MODULES:
            return
        for dependency in module.dependencies:
            visit(modules[dependency])
        ordered.append(module)

    for module in requested:
        visit(module)
    return ordered


async def install(db: Database, ctx: CallContext, names: list[str]) -> list[Row]:
    if not names:
        raise EngineError("22023", "name at least one module", hint="iasql_install('aws_s3')")
    wanted = with_dependencies(_known(names))
    async with db.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", INSTALL_LOCK)
        try:
            installed = await db.installed(conn)
            new = [m for m in wanted if m.name not in installed]
            if new:
                await _check_collisions(conn, new)
                async with conn.transaction():
                    for module in new:
                        await _create(conn, module)
                ctx.notify(f"installed {', '.join(m.name for m in new)}")
            tables = [t for m in new for t in m.tables]
            counts = await import_tables(db, conn, ctx, tables, only_new_changes=True)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", INSTALL_LOCK)
    return [
        {"module_name": m.name, "created_table_name": t.name, "record_count": counts.get(t.name, 0)}
        for m in new
        for t in m.tables
    ]


async def _check_collisions(conn: asyncpg.Connection, modules: list[ModuleSpec]) -> None:
    names = [t.name for m in modules for t in m.tables]
    # A user's table in their own schema would hide the module's from them.
    taken = await conn.fetch(
        "SELECT DISTINCT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('public', $2) AND relname = ANY($1::text[]) ORDER BY relname",
        names,
        platform.USER_SCHEMA,
    )
    if taken:
        tables = ", ".join(r["relname"] for r in taken)
        raise EngineError(
            "42P07",
            f"cannot install: these tables already exist and are not iasql's: {tables}",
            hint="rename or drop them first",
        )


async def _create(conn: asyncpg.Connection, module: ModuleSpec) -> None:
    for statement in module.setup_sql:
        await conn.execute(statement)
    for table in module.tables:  # the spec holds them referenced tables first
        for statement in ddl.create_table(table):
            await conn.execute(statement)
    for statement in module.after_tables_sql:
        await conn.execute(statement)
    await conn.execute(
        "INSERT INTO iasql_module (name, version, installed_at, schema_version)"
        " VALUES ($1, $2, clock_timestamp(), $3)",
        module.name,
        module.version,
        module.schema_version,
    )
    for dependency in module.dependencies:
        await conn.execute(
            "INSERT INTO iasql_dependencies VALUES ($1, $2)", module.name, dependency
        )
    for table in module.tables:
        await conn.execute("INSERT INTO iasql_tables VALUES ($1, $2)", table.name, module.name)


async def import_tables(
    db: Database,
    conn: asyncpg.Connection,
    ctx: CallContext,
    new: list[Table],
    *,
    only_new_changes: bool,
) -> dict[str, int]:
    """Imports every existing cloud resource of new tables (or of tables with new columns)
    when there are credentials. It leaves alone the rows of user changes no commit applied
    yet; with `only_new_changes`, of changes made from now on only."""
    tables = [t for t in new if t.mapper is not None]
    account = account_module()[1]
    credentials, regions_table = account.credentials.name, account.regions.name
    if not tables or not await conn.fetchval(
        f"SELECT to_regclass('{credentials}') IS NOT NULL AND EXISTS (SELECT 1 FROM {credentials})"
    ):
        return {}
    cloud = await db.cloud()
    counts: dict[str, int] = {}
    if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {regions_table})"):
        async with conn.transaction():  # its deferred check picks the default region
            counts.update(await ensure_regions(db, conn))
    regions = await db.enabled_regions(conn)
    rest = [t for t in tables if t.name != regions_table]
    # The new tables are the import's to fill; what users write into them from now on
    # (even while the import runs) is theirs, and the import leaves it alone. Changes from
    # before, of a table of the same name uninstalled since, are no longer about these rows.
    since = await audit.settled_last_id(conn) if only_new_changes else None
    ctx.notify(f"importing from {len(regions)} regions")
    counts.update(
        await sync_tables(conn, cloud, rest, regions, kept=kept_since(db, since), notify=ctx.notify)
    )
    return counts


async def ensure_regions(db: Database, conn: asyncpg.Connection) -> dict[str, int]:
    """Fills the account module's regions table from the account. Its deferred check picks
    the default region when the transaction ends (us-east-1 when there is one)."""
    table = account_module()[1].regions
    return await sync_tables(conn, await db.cloud(), [table], [])


async def uninstall(db: Database, ctx: CallContext, names: list[str]) -> list[Row]:
    if not names:
        raise EngineError("22023", "name at least one module", hint="iasql_uninstall('aws_s3')")
    modules = _known(names)
    builtin = [m.name for m in modules if m.name in platform.BUILTIN_MODULES]
    if builtin:
        raise EngineError(
            "42501",
            f"cannot uninstall {', '.join(builtin)}: built into every environment database",
            hint="iasql_platform and iasql_functions are always installed; uninstall the other"
            " modules by name, or drop the whole database with: iasql db drop NAME",
        )
    async with db.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", INSTALL_LOCK)
        try:
            return await _uninstall(db, conn, ctx, modules)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", INSTALL_LOCK)


async def _uninstall(
    db: Database, conn: asyncpg.Connection, ctx: CallContext, modules: list[ModuleSpec]
) -> list[Row]:
    installed = await db.installed(conn)
    missing = [m.name for m in modules if m.name not in installed]
    if missing:  # as IaSQL does: nothing to drop
        which = (
            f"modules {', '.join(missing)} are" if len(missing) > 1 else f"module {missing[0]} is"
        )
        ctx.notify(f"{which} not installed: skipped")
    leaving = {m.name for m in modules if m.name in installed}
    if not leaving:
        return []
    dependents = await conn.fetch(
        "SELECT module, dependency FROM iasql_dependencies"
        " WHERE dependency = ANY($1::text[]) AND NOT module = ANY($1::text[]) ORDER BY module",
        list(leaving),
    )
    if dependents:
        needs = ", ".join(f"{r['module']} needs {r['dependency']}" for r in dependents)
        raise EngineError(
            "2BP01",
            f"cannot uninstall: {needs}",
            hint="uninstall the dependent modules first, or name them too",
        )
    result: list[Row] = []
    ordered = [m for m in reversed(list(installed.values())) if m.name in leaving]
    async with conn.transaction():
        for module in ordered:
            for table in reversed(module.tables):
                count = await conn.fetchval(f"SELECT count(*) FROM {ddl.quote_ident(table.name)}")
                await conn.execute(ddl.drop_table(table))
                result.append(
                    {
                        "module_name": module.name,
                        "dropped_table_name": table.name,
                        "record_count": count,
                    }
                )
            for statement in module.teardown_sql:
                await conn.execute(statement)
            await conn.execute("DELETE FROM iasql_module WHERE name = $1", module.name)
    ctx.notify(f"uninstalled {', '.join(m.name for m in ordered)}; the cloud is untouched")
    return result


async def modules_installed(db: Database) -> list[Row]:
    rows = await db.pool.fetch(
        "SELECT m.name, m.version, m.schema_version, coalesce(array_agg(d.dependency ORDER BY"
        " d.dependency) FILTER (WHERE d.dependency IS NOT NULL), '{}') AS deps"
        " FROM iasql_module m LEFT JOIN iasql_dependencies d ON d.module = m.name"
        " GROUP BY m.name ORDER BY m.name"
    )
    installed = [
        {
            "module_name": r["name"],
            "module_version": r["version"],
            "dependencies": list(r["deps"]),
            "schema_version": r["schema_version"],
        }
        for r in rows
        if r["name"] not in platform.BUILTIN_MODULES  # a row from before they were built in
    ]
    # The built-in modules have no row, and are always there.
    installed += [
        {
            "module_name": m.name,
            "module_version": m.version,
            "dependencies": list(m.dependencies),
            "schema_version": m.schema_version,
        }
        for m in platform.BUILTIN_MODULES.values()
    ]
    return sorted(installed, key=lambda row: row["module_name"])
