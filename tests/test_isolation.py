"""An environment reaches its own database and nothing else (issue 13, section 1): its role
connects nowhere else, iasql works only in environment databases, nothing a user makes (in
template1, in a temp table, as a function) reaches the engine or another environment, RPC
secrets stay out of the backing Postgres's log, and pg_dump backs an environment up."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import boto3
import psycopg
import pytest

from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from tests.support.env import (
    PASSWORD,
    SUPERUSER,
    RunningServer,
    add_credentials,
    one,
    psql_env,
    rows,
)


def alias_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_database(url: str, database: str) -> str:
    return urlsplit(url)._replace(path=f"/{database}").geturl()


def direct(postgres: LocalPostgres, database: str) -> psycopg.Connection:
    """The superuser on the backing Postgres itself, not through iasql."""
    return psycopg.connect(postgres.dsn(database), autocommit=True)


def new_environment(iasql: RunningServer) -> str:
    alias = f"env_{secrets.token_hex(4)}"
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = rows(admin, f"SELECT url FROM iasql_connect('{alias}')")
    return str(url)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=psql_env(), stdin=subprocess.DEVNULL, timeout=60
    )


# --- connections ----------------------------------------------------------------------------


def test_a_role_connects_to_its_own_database_only(
    iasql: RunningServer, postgres: LocalPostgres, env_url: str
) -> None:
    others = ["postgres", "template1", "iasql", alias_of(new_environment(iasql))]
    login = urlsplit(env_url).netloc.rpartition("@")[0]
    for database in others:
        through_iasql = urlsplit(with_database(env_url, database))
        on_postgres = through_iasql._replace(netloc=f"{login}@127.0.0.1:{postgres.port}")
        for url in (through_iasql.geturl(), on_postgres.geturl()):
            with pytest.raises(psycopg.OperationalError) as denied:
                psycopg.connect(url, connect_timeout=10).close()
            assert f'permission denied for database "{database}"' in str(denied.value), url
    role = alias_of(env_url)
    with direct(postgres, "postgres") as admin:
        # Nor may it make temp tables anywhere else (TEMPORARY is PUBLIC's too by default).
        reachable = admin.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)"
            " AND (has_database_privilege(%s, oid, 'CONNECT')"
            " OR has_database_privilege(%s, oid, 'TEMPORARY')) ORDER BY 1",
            ([*others, role], role, role),
        ).fetchall()
    assert reachable == [(role,)]
    with psycopg.connect(env_url, autocommit=True) as own:
        assert one(own, "SELECT current_database()") == role


def test_iasql_runs_only_in_environment_databases(
    iasql: RunningServer, postgres: LocalPostgres
) -> None:
    for database in ("postgres", "template1"):
        with psycopg.connect(iasql.dsn(database=database), autocommit=True) as conn:
            for call in ("iasql_install('aws_account')", "iasql_modules_installed()"):
                with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
                    conn.execute(f"SELECT * FROM {call}")
                message = str(refused.value)
                assert (
                    f"iasql functions run only in environment databases, and '{database}'"
                    in message
                )
                assert "iasql_db_list()" in (refused.value.diag.message_hint or "")
            # What needs no database still answers.
            assert rows(conn, "SELECT count(*) > 0 FROM iasql_help()") == [(True,)]
    # The engine opened nothing there: no platform schema, no connection left.
    with direct(postgres, "template1") as conn:
        assert one(conn, "SELECT to_regclass('iasql_settings') IS NULL") is True
        assert one(conn, "SELECT to_regclass('aws_credentials') IS NULL") is True
    with direct(postgres, "postgres") as conn:
        assert one(conn, "SELECT to_regclass('iasql_settings') IS NULL") is True
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'template1'"
        assert one(conn, others) == 0


def test_nothing_planted_in_template1_reaches_a_new_environment(
    iasql: RunningServer, postgres: LocalPostgres
) -> None:
    with direct(postgres, "template1") as template1:
        template1.execute("CREATE TABLE planted (endpoint text)")
        try:
            template1.execute("INSERT INTO planted VALUES ('http://attacker.example')")
            # A session left open on template1 does not stop environments being made.
            url = new_environment(iasql)
        finally:
            template1.execute("DROP TABLE planted")
    with psycopg.connect(url, autocommit=True) as env:
        assert one(env, "SELECT to_regclass('planted') IS NULL") is True


# --- the audit trigger and the engine's own queries ----------------------------------------


def test_a_temp_table_does_not_catch_the_audit_log(envdb: psycopg.Connection) -> None:
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    envdb.execute(
        'CREATE TEMP TABLE iasql_audit_log ("user" text, table_name text, change_type text,'
        " change jsonb, message text, transaction_id text)"
    )
    envdb.execute(
        "CREATE TEMP TABLE iasql_transaction (transaction_id text, closed_at timestamptz)"
    )
    envdb.execute("INSERT INTO iasql_transaction VALUES ('made-up', NULL)")
    envdb.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES ('AKIDHIDDEN', 'secret', 'http://127.0.0.1:9')"
    )
    assert one(envdb, "SELECT count(*) FROM pg_temp.iasql_audit_log") == 0
    audit = rows(
        envdb,
        "SELECT change_type::text, change -> 'change' ->> 'access_key_id', transaction_id"
        " FROM public.iasql_audit_log WHERE table_name = 'aws_credentials'",
    )
    assert audit == [("INSERT", "AKIDHIDDEN", None)]
    # Every SECURITY DEFINER function has its search path pinned, pg_temp last.
    pinned = rows(
        envdb,
        "SELECT proname, proconfig FROM pg_proc WHERE prosecdef"
        " AND pronamespace = 'public'::regnamespace ORDER BY 1",
    )
    assert [name for name, _ in pinned] == ["aws_default_endpoint", "iasql_audit"]
    assert all(config == ["search_path=public, pg_temp"] for _, config in pinned)


def test_a_function_a_user_makes_is_never_run_by_the_engine(envdb: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        envdb.execute("CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    # What a user makes goes to a schema of their own, which the engine never looks in.
    schema = one(envdb, "SELECT current_schema()")
    envdb.execute("CREATE TABLE ran_as (who text)")
    # Better matches than pg_catalog's for what the engine runs: the advisory lock of an
    # install (pg_advisory_lock($1), an unknown parameter: float8 is numeric's preferred
    # type), and to_jsonb(NEW) in the audit trigger.
    envdb.execute(
        "CREATE FUNCTION pg_advisory_lock(double precision) RETURNS void LANGUAGE sql"
        f" AS $$ INSERT INTO {schema}.ran_as VALUES (current_user) $$"
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    envdb.execute(
        "CREATE FUNCTION to_jsonb(aws_credentials) RETURNS jsonb LANGUAGE sql"
        f" AS $$ INSERT INTO {schema}.ran_as VALUES (current_user) RETURNING '{{}}'::jsonb $$"
    )
    envdb.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES ('AKIDMINE', 'secret', 'http://127.0.0.1:9')"
    )
    envdb.execute("SELECT * FROM iasql_uninstall('aws_account')")
    assert rows(envdb, "SELECT who FROM ran_as") == []
    assert (
        one(envdb, "SELECT count(*) FROM iasql_audit_log WHERE change::text LIKE '%AKIDMINE%'") == 1
    )


# --- RPC secrets and the backing Postgres's log ---------------------------------------------


def log_since(postgres: LocalPostgres, offset: int) -> str:
    with postgres.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.slow
def test_rpc_secrets_never_reach_the_postgres_log(
    envdb: psycopg.Connection,
    env_url: str,
    postgres: LocalPostgres,
    moto_accounts: Callable[[], MotoServer],
) -> None:
    moto = moto_accounts()
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint)
    for user in ("simple", "extended"):
        iam.create_user(UserName=user)
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")
    offset = postgres.log_path.stat().st_size

    # psql's simple Query: a statement that fails around the call, then one that succeeds.
    failed = run(
        "psql", env_url, "-X", "-At", "-c", "SELECT *, 1/0 FROM access_key_request('simple')"
    )
    assert failed.returncode != 0 and "division by zero" in failed.stderr
    made = run(
        "psql",
        env_url,
        "-X",
        "-At",
        "-c",
        "SELECT secret_access_key FROM access_key_request('simple')",
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert len(secret) >= 20

    async def extended() -> None:  # asyncpg: Parse/Bind, the rows a parameter
        conn = await asyncpg.connect(env_url)
        try:
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetch("SELECT *, 1/0 FROM access_key_request($1)", "extended")
        finally:
            await conn.close()

    asyncio.run(extended())
    logged = log_since(postgres, offset)
    assert logged.count("division by zero") == 2  # both failures are in the log ...
    assert secret not in logged  # ... but not one key: neither its secret nor its id
    for user in ("simple", "extended"):
        for key in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
            assert key["AccessKeyId"] not in logged
    assert 'secret_access_key":' not in logged


# --- backup and restore ---------------------------------------------------------------------


def test_pg_dump_by_the_role_restores_into_a_new_environment(
    iasql: RunningServer, envdb: psycopg.Connection, env_url: str, tmp_path: Path
) -> None:
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    envdb.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES ('AKIDBACKUP', 'backed-up-secret', 'http://127.0.0.1:9')"
    )
    envdb.execute("CREATE TABLE notes (id serial PRIMARY KEY, note text)")
    envdb.execute("INSERT INTO notes (note) VALUES ('kept by the backup')")
    envdb.execute("CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) $$")
    audit = one(envdb, "SELECT count(*) FROM iasql_audit_log")

    dump = tmp_path / "env.dump"
    dumped = run("pg_dump", "--format=custom", f"--file={dump}", env_url)
    assert dumped.returncode == 0, dumped.stderr

    restored_url = new_environment(iasql)
    restored = alias_of(restored_url)
    admin_url = (
        f"postgresql://{quote(SUPERUSER, safe='')}:{quote(PASSWORD, safe='')}"
        f"@{iasql.host}:{iasql.port}/{restored}"
    )
    steps = (  # iasql's schema as the server's admin; the role's own schema as the role
        (admin_url, "public"),
        (restored_url, "app"),
    )
    for url, schema in steps:
        done = run(
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            f"--schema={schema}",
            f"--dbname={url}",
            str(dump),
        )
        assert (done.returncode, done.stderr) == (0, ""), schema

    with psycopg.connect(restored_url, autocommit=True) as conn:
        assert rows(conn, "SELECT module_name FROM iasql_modules_installed()") == [
            ("aws_account",),
            ("iasql_functions",),
            ("iasql_platform",),
        ]
        assert rows(conn, "SELECT access_key_id FROM aws_credentials") == [("AKIDBACKUP",)]
        assert one(conn, "SELECT count(*) FROM iasql_audit_log") == audit
        assert rows(conn, "SELECT shout(note) FROM notes") == [("KEPT BY THE BACKUP",)]
        conn.execute("INSERT INTO notes (note) VALUES ('and written after')")  # the role's own
        conn.execute("DELETE FROM aws_credentials")
        assert one(conn, "SELECT count(*) FROM iasql_audit_log") == audit + 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM iasql_audit_log")
        # The restore gave the new role nothing more: its own schema, and no CREATE in public.
        assert one(conn, "SELECT current_schema()") == "app"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.mine (a int)")
