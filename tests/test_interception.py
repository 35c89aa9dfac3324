"""iasql_* calls intercepted anywhere in a statement, through real clients and a real Postgres."""

from __future__ import annotations

import subprocess

import asyncpg
import psycopg
import pytest

from engine.core import server_version
from engine.platform import module_catalogue
from proxy.values import parse_text_array
from tests.support.env import RunningServer, psql_env

MODULES = sorted(module_catalogue())


async def test_from_clause_where_order_by_and_count(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        rows = await conn.fetch("SELECT * FROM iasql_modules_list() ORDER BY module_name DESC")
        assert [r["module_name"] for r in rows] == sorted(MODULES, reverse=True)
        assert list(rows[0].keys()) == [
            "module_name",
            "module_version",
            "dependencies",
            "schema_version",
        ]
        count = await conn.fetchval(
            "SELECT count(*) FROM iasql_modules_list() WHERE module_name LIKE 'iasql%'"
        )
        assert count == len([m for m in MODULES if m.startswith("iasql")]) >= 2
        version = await conn.fetchval("SELECT version FROM iasql_version()")
        assert version == server_version()
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT iasql_version()",
        "select IASQL_VERSION()",
        'SELECT "iasql_version"()',
        "SELECT public.iasql_version()",
        "SELECT v.version FROM public.iasql_version() AS v",
        "SELECT x FROM iasql_version() AS v(x)",
        "SELECT (SELECT version FROM iasql_version())",
        "WITH v AS (SELECT * FROM iasql_version()) SELECT version FROM v",
        "SELECT version FROM (SELECT * FROM iasql_version()) sub",
        "SELECT upper(iasql_version())",
        "SELECT 1 WHERE iasql_version() IS NOT NULL AND true",
        "SELECT version FROM generate_series(1, 1) g, LATERAL iasql_version()",
    ],
)
async def test_call_positions(iasql: RunningServer, sql: str) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        value = await conn.fetchval(sql)
    finally:
        await conn.close()
    expected = 1 if sql.startswith("SELECT 1") else server_version()
    assert str(value).lower() == str(expected).lower()


async def test_select_list_call_names_its_column_and_returns_each_row(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        rows = await conn.fetch("SELECT iasql_version()")
        assert list(rows[0].keys()) == ["iasql_version"]
        records = await conn.fetch("SELECT iasql_modules_list()")
        assert len(records) == len(MODULES)  # one row per function row, like a set-returning call
    finally:
        await conn.close()


async def test_join_with_an_ordinary_table_and_parameters(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        await conn.execute("CREATE TEMP TABLE wanted (name text, note text)")
        await conn.execute("INSERT INTO wanted VALUES ('iasql_platform', 'base'), ('nope', 'x')")
        rows = await conn.fetch(
            "SELECT w.note, m.module_version FROM wanted w "
            "JOIN iasql_modules_list() m ON m.module_name = w.name WHERE w.note <> $1",
            "other",
        )
        assert [(r["note"], r["module_version"]) for r in rows] == [("base", server_version())]
    finally:
        await conn.close()


async def test_named_prepared_statement_reused_many_times(iasql: RunningServer) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        statement = await conn.prepare(
            "SELECT module_name FROM iasql_modules_list() WHERE module_name LIKE $1 ORDER BY 1"
        )
        # asyncpg sent Parse, Describe and Flush without Sync: the description is the client's
        assert [p.name for p in statement.get_parameters()] == ["text"]
        assert [a.name for a in statement.get_attributes()] == ["module_name"]
        for _ in range(20):
            found = [r[0] for r in await statement.fetch("iasql%")]
            assert found == [m for m in MODULES if m.startswith("iasql")]
        assert await statement.fetch("zzz%") == []
    finally:
        await conn.close()


def test_psycopg_prepares_after_five_runs_and_keeps_working(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        for i in range(10):
            rows = conn.execute(
                "SELECT module_name FROM iasql_modules_list() WHERE length(module_name) > %s",
                (i,),
            ).fetchall()
            assert sorted(r[0] for r in rows) == [m for m in MODULES if len(m) > i]
        # binary parameters and results too
        cur = conn.cursor(binary=True)
        cur.execute("SELECT version FROM iasql_version() WHERE %s", (True,))
        assert cur.fetchone() == (server_version(),)


def test_psycopg_describe_before_execute(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT * FROM iasql_modules_list() LIMIT 0", prepare=True)
        assert [d.name for d in cur.description] == [
            "module_name",
            "module_version",
            "dependencies",
            "schema_version",
        ]


def test_psql_multi_statement_query_runs_every_statement(iasql: RunningServer) -> None:
    sql = (
        "CREATE TEMP TABLE seen (v text); "
        "INSERT INTO seen SELECT version FROM iasql_version(); "
        "SELECT count(*) AS modules FROM iasql_modules_list(); "
        "INSERT INTO seen VALUES ('after'); "
        "SELECT string_agg(v, ',' ORDER BY v) FROM seen"
    )
    out = subprocess.run(
        ["psql", iasql.dsn(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    # psql 15+ prints every statement's result, as it would against Postgres itself
    expected = ["CREATE TABLE", "INSERT 0 1", str(len(MODULES)), "INSERT 0 1"]
    assert out.stdout.splitlines() == [*expected, f"{server_version()},after"]


def test_psql_error_stops_a_multi_statement_query(iasql: RunningServer) -> None:
    sql = "SELECT * FROM iasql_version(); SELECT 1/0; SELECT * FROM iasql_modules_list()"
    out = subprocess.run(
        ["psql", iasql.dsn(), "-X", "-A", "-t", "-c", sql],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=30,
    )
    assert out.returncode == 1
    assert "division by zero" in out.stderr
    assert "iasql_platform" not in out.stdout


async def test_engine_error_has_sqlstate_and_hint_and_the_session_continues(
    iasql: RunningServer,
) -> None:
    conn = await asyncpg.connect(iasql.dsn())
    try:
        with pytest.raises(asyncpg.PostgresError) as error:
            await conn.fetch("SELECT * FROM iasql_connect('x')")
        assert error.value.sqlstate == "0A000"
        assert "admin database" in error.value.args[0]
        with pytest.raises(asyncpg.PostgresError) as error:
            await conn.fetch("SELECT * FROM iasql_version('extra')")
        assert error.value.sqlstate == "42883"
        assert "iasql_version()" in (error.value.hint or "")
        with pytest.raises(asyncpg.PostgresError) as error:
            await conn.fetch("SELECT * FROM iasql_version(now()::text)")
        assert error.value.sqlstate == "0A000"
        with pytest.raises(asyncpg.PostgresError) as error:
            await conn.fetch("SELECT * FROM iasql_modules_lst() WHERE true")
        assert error.value.sqlstate == "42883"
        assert error.value.args[0] == "function iasql_modules_lst() does not exist"
        assert error.value.hint == 'did you mean "iasql_modules_list"?'
        with pytest.raises(asyncpg.PostgresError) as error:
            await conn.fetch("SELECT iasql_version('abc'::int)")
        assert error.value.sqlstate == "22P02"
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await conn.close()


def test_engine_error_inside_a_transaction_block_aborts_it(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn()) as conn:  # psycopg opens a transaction block by default
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT * FROM iasql_connect('x')")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT version FROM iasql_version()").fetchone() == (server_version(),)


def test_extended_protocol_error_in_pipeline_keeps_protocol_order(iasql: RunningServer) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported), conn.pipeline():
            first = conn.execute("SELECT 1")
            conn.execute("SELECT * FROM iasql_connect(%s)", ("x",))
            conn.execute("CREATE TEMP TABLE never_made (a int)")  # skipped after the error
        assert first.fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('never_made')").fetchone() == (None,)
        assert conn.execute("SELECT * FROM iasql_version()").fetchone() == (server_version(),)


def test_a_statement_not_calling_us_is_untouched_even_if_it_mentions_iasql(
    iasql: RunningServer,
) -> None:
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'iasql_version()' AS text").fetchone() == ("iasql_version()",)
        with pytest.raises(psycopg.errors.SyntaxError) as error:
            conn.execute("SELECT iasql_version( FROM")
        assert error.value.diag.statement_position is not None
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("SELECT iasql_no_such_function()")


# Stand-ins for the arguments a NULL test leaves alone, by parameter type: a new type fails
# the test (KeyError) rather than being skipped.
STAND_INS = {
    "text": "'x'",
    "varchar": "'x'",
    "boolean": "false",
    "json": "'{}'",
    "timestamptz": "'2020-01-01'",
    "int": "1",
    "integer": "1",
}


def test_null_arguments_get_a_clear_error(iasql: RunningServer, envdb: psycopg.Connection) -> None:
    """NULL is an argument only where the parameter's default is NULL. Elsewhere (a required
    parameter, a VARIADIC element, a flag like force) it is 22004 naming the function and the
    parameter, never an internal error: every function of the catalog, both protocols."""
    engine = iasql.proxy.engine
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        for spec in engine.functions.values():
            conn = admin if spec.admin_only else envdb
            if not spec.params:
                with pytest.raises(psycopg.errors.UndefinedFunction):
                    conn.execute(f"SELECT * FROM {spec.name}(NULL)")
                continue
            for param in spec.params:
                if param.variadic:
                    calls = [
                        ("NULL", None),
                        ("'aws_account', NULL", None),
                        ("VARIADIC NULL::text[]", None),
                        ("VARIADIC ARRAY['aws_account', NULL]", None),
                        ("%s", (None,)),
                        ("%s, %s", ("aws_account", None)),
                    ]
                else:
                    others = [
                        f"{p.name} => {STAND_INS[p.type]}"
                        for p in spec.params
                        if p is not param and p.default is not None
                    ]
                    calls = [
                        (", ".join([f"{param.name} => NULL", *others]), None),
                        (", ".join([f"{param.name} => %s", *others]), (None,)),
                    ]
                for arguments, values in calls:
                    sql = f"SELECT * FROM {spec.name}({arguments})"
                    if param.default is not None:
                        with pytest.raises(psycopg.errors.NullValueNotAllowed) as error:
                            conn.execute(sql, values)
                        assert str(error.value).startswith(f"{spec.name}(): "), sql
                        assert param.name in str(error.value), sql
                    else:  # NULL is the default: taken (the call may fail for another reason,
                        # e.g. no transaction to commit, a module function's module missing)
                        try:
                            conn.execute(sql, values)
                        except psycopg.Error as exc:
                            assert exc.sqlstate not in ("22004", "XX000"), (sql, exc)
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as region:
        envdb.execute("SELECT default_aws_region(NULL)")
    assert "default_aws_region(): the argument new_region cannot be NULL" in str(region.value)


# JSON escapes `"`, `\` and non-ASCII characters with backslashes.
TRICKY = "a\"b\\c 'q' $$ $t$ \\' é ✓ 🚀"


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_results_do_not_depend_on_standard_conforming_strings(
    env_url: str, conforming: str
) -> None:
    literal = "E'" + TRICKY.replace("\\", "\\\\").replace("'", "''") + "'"
    query = f"SELECT markdown FROM iasql_create_review({literal}, {literal})"
    expected = f"# {TRICKY}\n\n{TRICKY}\n"
    with psycopg.connect(env_url, autocommit=True) as conn:
        conn.execute(f"SET standard_conforming_strings = {conforming}")
        [(simple,)] = conn.execute(query).fetchall()  # no parameters: the simple protocol
        assert simple.startswith(expected)
        [(extended,)] = conn.execute(
            "SELECT markdown FROM iasql_create_review(%s, %s)", (TRICKY, TRICKY)
        ).fetchall()
        assert extended == simple
    out = subprocess.run(
        [
            "psql",
            env_url,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"SET standard_conforming_strings = {conforming}; {query}",
        ],
        capture_output=True,
        text=True,
        env={**psql_env(), "PGCLIENTENCODING": "UTF8"},
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"SET\n{expected}")


def test_untyped_string_arguments_are_read_as_the_parameter_type(envdb: psycopg.Connection) -> None:
    """'false' is false, as Postgres reads an untyped constant for a boolean parameter; a
    string that is no boolean is 22P02, not a silent true."""
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
        envdb.execute("SELECT * FROM iasql_rollback('false')")
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
        envdb.execute("SELECT * FROM iasql_rollback(force => 'off')")
    for bad in ("'maybe'", "'maybe'::boolean"):
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as error:
            envdb.execute(f"SELECT * FROM iasql_rollback({bad})")
        assert "maybe" in str(error.value)
    assert envdb.execute("SELECT count(*) FROM iasql_rollback('yes')").fetchone() == (0,)


async def test_a_variadic_array_parameter_is_the_whole_list(env_url: str) -> None:
    """f(VARIADIC $1) binds the list itself: asyncpg (binary text[], after a Describe),
    psycopg (text form) and a constant '{...}'::text[] all name each module."""
    conn = await asyncpg.connect(env_url)
    try:
        installed = await conn.fetch(
            "SELECT DISTINCT module_name FROM iasql_install(VARIADIC $1::text[])",
            ["aws_account", "aws_sqs"],
        )
        assert sorted(r["module_name"] for r in installed) == ["aws_account", "aws_sqs"]
        dropped = await conn.fetch(
            "SELECT DISTINCT module_name FROM iasql_uninstall(VARIADIC $1)", ["aws_sqs"]
        )
        assert [r["module_name"] for r in dropped] == ["aws_sqs"]
    finally:
        await conn.close()
    with psycopg.connect(env_url, autocommit=True) as sync:
        for sql, args in (
            ("SELECT DISTINCT module_name FROM iasql_install(VARIADIC %s)", (["aws_sqs"],)),
            ("SELECT DISTINCT module_name FROM iasql_uninstall(VARIADIC '{aws_sqs}'::text[])", ()),
        ):
            assert sync.execute(sql, args).fetchall() == [("aws_sqs",)], sql
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):  # not one-dimensional
            sync.execute("SELECT * FROM iasql_install(VARIADIC '{{a},{b}}'::text[])")


def test_text_arrays_are_read_as_postgres_writes_them() -> None:
    assert parse_text_array('{a, "b c" ,NULL,"NULL","x\\"y",""}') == [
        "a",
        "b c",
        None,
        "NULL",
        'x"y',
        "",
    ]
    assert parse_text_array("{}") == []
    for bad in ("a,b", "{a,,b}", '{"a}', "{a,{b}}"):
        with pytest.raises(ValueError):
            parse_text_array(bad)
