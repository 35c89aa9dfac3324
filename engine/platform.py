"""The platform schema every environment database gets: module registry, audit log, the open
infrastructure transaction, the commit journal, the audit trigger and the function stubs.

Platform tables belong to the engine's role; users may read them, never write them. The
audit trigger runs as its owner (SECURITY DEFINER) so that it can write the log on behalf of
a user who cannot.
"""

from __future__ import annotations

import hashlib
import logging

import asyncpg

from engine import promotion
from engine.contract import FunctionSpec
from engine.ddl import quote_ident
from modules import VERSION, available_modules
from modules.spec import ModuleSpec

log = logging.getLogger("iasql.engine")

# The two modules that are the engine itself, as IaSQL names them: installed in every
# environment database, always. They have no package under modules/ and no row in
# iasql_module: iasql_install() of one is a no-op, iasql_uninstall() refuses.
PLATFORM_MODULE = ModuleSpec(
    name="iasql_platform",
    version=VERSION,
    description="platform tables: installed modules, their tables and the audit log",
)
FUNCTIONS_MODULE = ModuleSpec(
    name="iasql_functions",
    version=VERSION,
    dependencies=(PLATFORM_MODULE.name,),
    description="the iasql_* functions: modules, transactions, preview, commit, audit SQL",
)
BUILTIN_MODULES = {m.name: m for m in (FUNCTIONS_MODULE, PLATFORM_MODULE)}


def module_catalogue() -> dict[str, ModuleSpec]:
    """Every module a database can have, by name in name order: the built-in ones and the
    module packages (`modules.available_modules()`)."""
    return dict(sorted({**available_modules(), **BUILTIN_MODULES}.items()))


_SETUP_LOCK = 0x1A5C1  # advisory lock key: one engine at a time sets a database up

CHANGE_TYPES = (
    "INSERT",
    "UPDATE",
    "DELETE",
    "START_COMMIT",
    "PREVIEW_START_COMMIT",
    "END_COMMIT",
    "PREVIEW_END_COMMIT",
    "OPEN_TRANSACTION",
    "CLOSE_TRANSACTION",
    "ERROR",
    "START_REVERT",
    "END_REVERT",
    "SET_COMMIT_MESSAGE",
    "UPGRADE",
)

_TABLES = f"""
DO $$ BEGIN
    CREATE TYPE iasql_change_type AS ENUM ({", ".join(f"'{t}'" for t in CHANGE_TYPES)});
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
-- Made by a version before the value was there (usable once this transaction commits).
ALTER TYPE iasql_change_type ADD VALUE IF NOT EXISTS 'UPGRADE';

CREATE TABLE IF NOT EXISTS iasql_module (
    name text PRIMARY KEY,
    version text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
-- The version of the module's tables' schema (ModuleSpec.schema_version).
ALTER TABLE iasql_module ADD COLUMN IF NOT EXISTS schema_version integer NOT NULL DEFAULT 1;
CREATE TABLE IF NOT EXISTS iasql_dependencies (
    module text NOT NULL REFERENCES iasql_module (name) ON DELETE CASCADE,
    dependency text NOT NULL REFERENCES iasql_module (name),
    PRIMARY KEY (module, dependency)
);
CREATE TABLE IF NOT EXISTS iasql_tables (
    table_name text PRIMARY KEY,
    module text NOT NULL REFERENCES iasql_module (name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS iasql_audit_log (
    id bigserial PRIMARY KEY,
    ts timestamptz NOT NULL DEFAULT clock_timestamp(),
    "user" text NOT NULL,
    table_name text NOT NULL,
    change_type iasql_change_type NOT NULL,
    change jsonb NOT NULL,
    message text,
    transaction_id text
);
-- The schema version of the module whose table a row change is of, when it was written
-- (NULL: 1, or not a module table): iasql_get_sql_since() translates older entries.
ALTER TABLE iasql_audit_log ADD COLUMN IF NOT EXISTS schema_version integer;
CREATE INDEX IF NOT EXISTS iasql_audit_log_ts ON iasql_audit_log (ts);
CREATE INDEX IF NOT EXISTS iasql_audit_log_transaction ON iasql_audit_log (transaction_id);

-- The database's infrastructure transaction: at most one open (closed_at IS NULL).
CREATE TABLE IF NOT EXISTS iasql_transaction (
    transaction_id text PRIMARY KEY,
    opened_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    opened_by text NOT NULL,
    closed_at timestamptz,
    -- NULL while open; committing while a commit runs; then committed, rolled back,
    -- failed or recovered
    outcome text,
    applying_through bigint  -- the last audit id a running commit applies
);
CREATE UNIQUE INDEX IF NOT EXISTS iasql_transaction_one_open
    ON iasql_transaction ((true)) WHERE closed_at IS NULL;

-- Every cloud operation of a commit, written before and after it runs, so that a commit cut
-- short by a crash can be undone by the next engine. state: started, done, undone.
CREATE TABLE IF NOT EXISTS iasql_commit_journal (
    id bigserial PRIMARY KEY,
    transaction_id text NOT NULL,
    table_name text NOT NULL,
    action text NOT NULL,
    token text NOT NULL,
    before jsonb,
    after jsonb,
    state text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS iasql_commit_journal_transaction
    ON iasql_commit_journal (transaction_id);

CREATE TABLE IF NOT EXISTS iasql_settings (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- Records each row change, with the transaction open at write time. TG_ARGV names secret
-- columns, which are left out of the log. A change a trigger or a cascade made has its
-- trigger depth: promotion replays the statement that caused it, not the change.
-- It runs as the engine's role for every user's write, so its search path is pinned with
-- pg_temp last (a user's temp table must not catch the log's rows) and every name in it is
-- qualified.
CREATE OR REPLACE FUNCTION iasql_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    tx text;
    secrets text[] := coalesce(TG_ARGV, ARRAY[]::text[]);  -- NULL when no column is secret
    entry jsonb;
    written jsonb;
    version integer;
BEGIN
    SELECT t.transaction_id INTO tx FROM public.iasql_transaction t WHERE t.closed_at IS NULL;
    SELECT m.schema_version INTO version FROM public.iasql_tables t
        JOIN public.iasql_module m ON m.name OPERATOR(pg_catalog.=) t.module
        WHERE t.table_name OPERATOR(pg_catalog.=) TG_TABLE_NAME;
    IF TG_OP = 'INSERT' THEN
        entry := pg_catalog.jsonb_build_object(
            'change', pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) secrets);
    ELSIF TG_OP = 'DELETE' THEN
        entry := pg_catalog.jsonb_build_object(
            'original', pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.-) secrets);
    ELSE
        IF pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.=) pg_catalog.to_jsonb(OLD) THEN
            RETURN NULL;
        END IF;
        entry := pg_catalog.jsonb_build_object(
            'original', pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.-) secrets,
            'change', pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) secrets);
    END IF;
    -- JSON objects as written: jsonb sorts their keys, and an order may mean something (a
    -- DynamoDB key schema lists its partition key first).
    IF TG_OP <> 'DELETE' THEN
        SELECT pg_catalog.jsonb_object_agg(e.key, e.value::text) INTO written
        FROM pg_catalog.json_each(pg_catalog.to_json(NEW)) e
        WHERE pg_catalog.json_typeof(e.value) = 'object' AND e.key <> ALL (secrets);
        IF written IS NOT NULL THEN
            entry := entry OPERATOR(pg_catalog.||)
                pg_catalog.jsonb_build_object('json_text', written);
        END IF;
    END IF;
    -- Made by a trigger or a foreign key's cascade, not by the statement itself: marked, so
    -- that promotion replays the statement alone. Only while every trigger in the database
    -- is iasql's own (in public): a user's trigger could otherwise write module rows that
    -- promotion would never replay.
    IF pg_catalog.pg_trigger_depth() > 1 AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
            WHERE NOT g.tgisinternal
              AND c.relnamespace OPERATOR(pg_catalog.<>) 'public'::pg_catalog.regnamespace) THEN
        entry := entry OPERATOR(pg_catalog.||)
            pg_catalog.jsonb_build_object('depth', pg_catalog.pg_trigger_depth());
    END IF;
    INSERT INTO public.iasql_audit_log
        ("user", table_name, change_type, change, transaction_id, schema_version)
    VALUES (session_user, TG_TABLE_NAME, TG_OP::public.iasql_change_type, entry, tx, version);
    RETURN NULL;
END $$;

-- The tables of a module whose upgrade failed (engine/upgrade.py) refuse writes with this,
-- until an upgrade succeeds: the server's code no longer matches them.
CREATE OR REPLACE FUNCTION iasql_refuse_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '25006', MESSAGE = TG_ARGV[0], HINT = TG_ARGV[1];
END $$;
"""

_PLATFORM_TABLES = (
    "iasql_module",
    "iasql_dependencies",
    "iasql_tables",
    "iasql_audit_log",
    "iasql_transaction",
    "iasql_commit_journal",
    "iasql_settings",
    promotion.LEDGER_TABLE,
)
_PLATFORM_SEQUENCES = (
    "iasql_audit_log_id_seq",
    "iasql_commit_journal_id_seq",
    f"{promotion.LEDGER_TABLE}_id_seq",
)
# Tables the environment's role writes: settings of its own, audited like module tables.
_USER_TABLES = (promotion.RULES_TABLE,)

# The schema where an environment's role creates its own tables, functions and types. The
# role may not create anything in `public`, where iasql's tables live: the engine's queries,
# run as a privileged role with `public` in their search path, could otherwise pick a
# function or operator a user made there (the CVE-2018-1058 class).
USER_SCHEMA = "app"
# The search path of the engine's own connections, and of its SECURITY DEFINER functions.
ENGINE_SEARCH_PATH = "public, pg_temp"


def _stub_sql(spec: FunctionSpec) -> str:
    """A real function with the right signature that explains it must go through iasql."""
    columns = ", ".join(f'"{name}" {type_}' for name, type_ in spec.columns)
    message = f"{spec.name}() runs only through the iasql server: connect to its port"
    return (
        f"CREATE OR REPLACE FUNCTION {spec.signature()} RETURNS TABLE ({columns})"
        f" LANGUAGE plpgsql AS $stub$ BEGIN RAISE EXCEPTION '{message}'"
        " USING ERRCODE = '0A000'; END $stub$"
    )


def function_stubs(functions: list[FunctionSpec]) -> list[str]:
    return [_stub_sql(spec) for spec in functions if not spec.admin_only]


async def _drop_stale_stubs(conn: asyncpg.Connection, functions: list[FunctionSpec]) -> None:
    """Stubs an earlier version made with other parameters (CREATE OR REPLACE would keep
    them beside the new ones, as overloads). One a user's view uses is left in place."""
    arity = {spec.name: len(spec.params) for spec in functions if not spec.admin_only}
    stale = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS signature, p.proname, p.pronargs FROM pg_proc p"
        " WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY($1::text[])"
        " AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        list(arity),
    )
    for row in stale:
        if row["pronargs"] != arity[row["proname"]]:
            try:
                async with conn.transaction():
                    await conn.execute(f"DROP FUNCTION {row['signature']}")
            except asyncpg.DependentObjectsStillExistError:
                log.warning("kept the old stub %s: other objects use it", row["signature"])


async def ensure(conn: asyncpg.Connection, functions: list[FunctionSpec]) -> None:
    """Creates or upgrades the platform schema in the connected database (idempotent)."""
    stubs = function_stubs(functions)
    version = hashlib.sha256(
        "\n".join([_TABLES, promotion.RULES_DDL, *stubs]).encode()
    ).hexdigest()[:16]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SETUP_LOCK)
        current = await conn.fetchval(
            "SELECT value FROM iasql_settings WHERE key = 'schema_version'"
            if await conn.fetchval("SELECT to_regclass('iasql_settings') IS NOT NULL")
            else "SELECT NULL"
        )
        if current == version:
            return
        await conn.execute(_TABLES)
        await conn.execute(promotion.RULES_DDL)
        await _drop_stale_stubs(conn, functions)
        for stub in stubs:
            await conn.execute(stub)
        await conn.execute(f"REVOKE ALL ON {', '.join(_PLATFORM_TABLES)} FROM PUBLIC")
        await conn.execute(f"GRANT SELECT ON {', '.join(_PLATFORM_TABLES)} TO PUBLIC")
        # Read, never advanced, by users: what pg_dump needs to back an environment up.
        await conn.execute(f"GRANT SELECT ON SEQUENCE {', '.join(_PLATFORM_SEQUENCES)} TO PUBLIC")
        for table in _USER_TABLES:
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO PUBLIC")
            await conn.execute(f"GRANT USAGE, SELECT ON SEQUENCE {table}_id_seq TO PUBLIC")
        await conn.execute(
            "INSERT INTO iasql_settings VALUES ('schema_version', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            version,
        )


async def secure(conn: asyncpg.Connection, role: str) -> None:
    """Locks the connected environment database down for its role (idempotent, so that it
    also brings databases made by earlier versions up to date): the role may not create
    anything in `public` and gets a schema of its own, first in its search path; each
    SECURITY DEFINER function of the engine has its search path pinned with pg_temp last."""
    name = quote_ident(role)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SETUP_LOCK)
        if await conn.fetchval("SELECT has_schema_privilege($1, 'public', 'CREATE')", role):
            await conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
            await conn.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
        if await conn.fetchval("SELECT to_regnamespace($1) IS NULL", USER_SCHEMA):
            database = quote_ident(await conn.fetchval("SELECT current_database()"))
            await conn.execute(f"CREATE SCHEMA {USER_SCHEMA} AUTHORIZATION {name}")
            await conn.execute(
                f"ALTER ROLE {name} IN DATABASE {database} SET search_path = {USER_SCHEMA}, public"
            )
        unpinned = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS signature FROM pg_catalog.pg_proc p"
            " WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace"
            " AND p.proowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)"
            " AND NOT coalesce(p.proconfig @> ARRAY[$1], false)",
            f"search_path={ENGINE_SEARCH_PATH}",
        )
        for row in unpinned:
            await conn.execute(
                f"ALTER FUNCTION {row['signature']} SET search_path = {ENGINE_SEARCH_PATH}"
            )
    # Made by a user before `public` was closed to them (an earlier version): the engine's
    # queries could pick these up. They are the user's, so they are only reported.
    owners = await conn.fetch(
        "SELECT DISTINCT r.rolname FROM ("
        "  SELECT proowner AS owner FROM pg_catalog.pg_proc"
        "  WHERE pronamespace = 'public'::regnamespace"
        "  UNION ALL SELECT oprowner FROM pg_catalog.pg_operator"
        "  WHERE oprnamespace = 'public'::regnamespace"
        ") o JOIN pg_catalog.pg_roles r ON r.oid = o.owner"
        " WHERE r.rolname <> current_user AND NOT r.rolsuper ORDER BY 1"
    )
    if owners:
        log.warning(
            "database %s: schema public has functions or operators of %s; iasql's own queries"
            " could run them: move them to schema %s",
            await conn.fetchval("SELECT current_database()"),
            ", ".join(r["rolname"] for r in owners),
            USER_SCHEMA,
        )
