"""Arguments of iasql calls computed by SQL (a sub-select, an expression, another iasql call),
as IaSQL users write them: evaluated first in the client's own session, through real clients."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import asyncpg
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules import available_modules
from tests.support.env import add_credentials, only_regions, psql_env, rows

# What iasql_install() answers for these modules (module, table, records imported).
SQS = [("aws_sqs", "queue", 0)]
ACM = [("aws_acm", "certificate", 0)]
S_MODULES = sorted(name for name in available_modules() if name.startswith("aws_s"))
# Those with tables: install and uninstall answer a row per table (aws_sdk has functions only).
S_TABLED = {name for name in S_MODULES if available_modules()[name].tables}


@pytest.fixture(scope="module")
def moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    """An AWS account of this file's own: the counts of imported records it asserts would
    differ in the suite's shared account, where other files leave certificates and queues."""
    return moto_accounts()


def account(envdb: psycopg.Connection, moto: MotoServer) -> None:
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb)


def installed(envdb: psycopg.Connection) -> list[str]:
    return [
        name
        for (name,) in rows(envdb, "SELECT module_name FROM iasql_modules_installed() ORDER BY 1")
        if name.startswith("aws_") and name != "aws_account"
    ]


def test_install_and_uninstall_a_list_computed_from_iasql_modules_list(
    envdb: psycopg.Connection, moto: MotoServer
) -> None:
    """IaSQL's own idiom: the sub-select calls iasql_modules_list(), whose rows come from the
    engine, filtered by Postgres; both the select-list and the FROM forms."""
    account(envdb, moto)
    done = rows(
        envdb,
        "SELECT iasql_install(variadic array(SELECT module_name FROM iasql_modules_list()"
        " WHERE module_name LIKE 'aws_s%'))",
    )
    assert {record[0] for (record,) in done} >= S_TABLED
    assert set(S_MODULES) <= set(installed(envdb))
    dropped = rows(
        envdb,
        "SELECT * FROM iasql_uninstall(VARIADIC ARRAY(SELECT module_name FROM"
        " iasql_modules_installed() WHERE module_name LIKE 'aws_s%' ORDER BY 1))",
    )
    assert {module for module, *_ in dropped} == S_TABLED
    assert not set(S_MODULES) & set(installed(envdb))
    done = rows(
        envdb,
        "SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT module_name FROM iasql_modules_list()"
        " WHERE module_name IN ('aws_sqs', 'aws_acm')))",
    )
    assert sorted(done) == sorted(SQS + ACM)


def test_constant_arguments_keep_working(envdb: psycopg.Connection, moto: MotoServer) -> None:
    account(envdb, moto)
    assert sorted(rows(envdb, "SELECT * FROM iasql_install(VARIADIC ARRAY['aws_sqs','aws_acm'])"))
    assert installed(envdb) == ["aws_acm", "aws_sqs"]
    envdb.execute("SELECT * FROM iasql_uninstall('aws_sqs', 'aws_acm')")
    assert installed(envdb) == []
    assert len(rows(envdb, "SELECT iasql_install('aws_sqs', 'aws_acm')")) == 2
    assert installed(envdb) == ["aws_acm", "aws_sqs"]


def test_the_expression_sees_the_sessions_tables_and_settings(
    envdb: psycopg.Connection, moto: MotoServer
) -> None:
    account(envdb, moto)
    envdb.execute("CREATE TEMP TABLE wanted (name text)")
    envdb.execute("INSERT INTO wanted VALUES ('aws_sqs')")
    assert rows(envdb, "SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT name FROM wanted))") == (
        SQS
    )
    envdb.execute("SET iasql_test.module = 'aws_acm'")
    assert rows(envdb, "SELECT * FROM iasql_install(current_setting('iasql_test.module'))") == ACM
    # A scalar sub-select, and a boolean expression for a named argument.
    assert rows(envdb, "SELECT count(*) FROM iasql_rollback(force => (SELECT 1 < 2))") == [(0,)]


def test_psql_runs_the_iasql_idiom_in_a_multi_statement_query(
    env_url: str, envdb: psycopg.Connection, moto: MotoServer
) -> None:
    account(envdb, moto)
    sql = (
        "SELECT 1; SELECT count(*) FROM iasql_install(VARIADIC ARRAY(SELECT module_name"
        " FROM iasql_modules_list() WHERE module_name = 'aws_sqs')); SELECT 2"
    )
    out = subprocess.run(
        ["psql", env_url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1", "1", "2"]
    assert installed(envdb) == ["aws_sqs"]


@pytest.mark.parametrize(
    ("argument", "error", "text"),
    [
        ("VARIADIC ARRAY(SELECT (1/0)::text)", psycopg.errors.DivisionByZero, "division by zero"),
        (
            "VARIADIC ARRAY(SELECT nope FROM iasql_modules_list())",
            psycopg.errors.UndefinedColumn,
            'column "nope" does not exist',
        ),
        (
            "VARIADIC (SELECT array_agg(x) FROM no_such_table)",
            psycopg.errors.UndefinedTable,
            'relation "no_such_table" does not exist',
        ),
        ("lower(1, 2)", psycopg.errors.UndefinedFunction, "function lower(integer, integer)"),
        # Postgres's own error for a value of the wrong type: a date is no text[]
        ("VARIADIC current_date", psycopg.errors.CannotCoerce, "cannot cast type date to text[]"),
        (
            "VARIADIC ARRAY(SELECT 'x' FROM iasql_modules_lst())",
            psycopg.errors.UndefinedFunction,
            "function iasql_modules_lst() does not exist",
        ),
    ],
)
def test_an_argument_that_fails_answers_its_own_error(
    envdb: psycopg.Connection, argument: str, error: type[psycopg.Error], text: str
) -> None:
    for sql in (f"SELECT * FROM iasql_install({argument})", f"SELECT iasql_install({argument})"):
        with pytest.raises(error) as raised:
            envdb.execute(sql)
        assert text in str(raised.value), sql
        assert raised.value.sqlstate != "XX000"
        assert raised.value.diag.statement_position is None  # not a position in the user's text
        assert rows(envdb, "SELECT 41 + 1") == [(42,)]
    with pytest.raises(psycopg.errors.SyntaxError):
        envdb.execute("SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT FROM WHERE))")


def test_an_argument_error_aborts_the_transaction_block(env_url: str) -> None:
    with psycopg.connect(env_url) as conn:  # psycopg opens a transaction block by default
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT * FROM iasql_install((1/0)::text)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert rows(conn, "SELECT 1") == [(1,)]


def test_an_argument_naming_the_statements_columns_says_what_to_write(
    envdb: psycopg.Connection,
) -> None:
    with pytest.raises(psycopg.errors.FeatureNotSupported) as raised:
        envdb.execute("SELECT iasql_install(module_name) FROM iasql_modules_list()")
    assert raised.value.diag.message_primary == (
        "an argument of iasql_install() cannot refer to a column of the calling statement"
    )
    assert "iasql_install(VARIADIC ARRAY(SELECT" in (raised.value.diag.message_hint or "")


def test_the_expression_runs_as_the_clients_role(envdb: psycopg.Connection) -> None:
    """Not as the engine's privileged role: what the client cannot read, the argument cannot
    read either, and current_user is the client."""
    role = envdb.info.user
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        envdb.execute("SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT rolname FROM pg_authid))")
    with pytest.raises(psycopg.errors.UndefinedObject) as unknown:
        envdb.execute("SELECT * FROM iasql_install(current_user::text)")
    assert role in str(unknown.value)


async def test_the_extended_protocol_says_what_to_write(env_url: str) -> None:
    conn = await asyncpg.connect(env_url)
    try:
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.fetch(
                "SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT module_name"
                " FROM iasql_modules_list() WHERE module_name LIKE $1))",
                "aws_s%",
            )
        assert raised.value.sqlstate == "0A000"
        assert "simple query protocol" in raised.value.args[0]
        assert "iasql_install($1, $2)" in (raised.value.hint or "")
        # asyncpg's execute() without arguments sends a simple Query: there it runs.
        await conn.execute("CREATE TEMP TABLE wanted AS SELECT 'aws_nope'::text AS name")
        with pytest.raises(asyncpg.PostgresError) as unknown:
            await conn.execute(
                "SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT name FROM wanted))"
            )
        assert "aws_nope" in unknown.value.args[0]
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_several_computed_calls_and_computed_arguments_of_computed_arguments(
    envdb: psycopg.Connection,
) -> None:
    """Two calls in one statement, each with its own computed argument, and an argument whose
    sub-select calls a function whose own argument is computed: innermost first."""
    envdb.execute("SET iasql_test.force = 'on'")
    sql = (
        "SELECT (SELECT count(*) FROM iasql_rollback(force => current_setting('iasql_test.force')"
        "::boolean)), (SELECT count(*) FROM iasql_rollback(force => (SELECT 1 = 1)))"
    )
    assert rows(envdb, sql) == [(0, 0)]
    nested = (
        "SELECT count(*) FROM iasql_rollback(force => (SELECT count(*) = 0 FROM"
        " iasql_rollback(force => (SELECT module_name = 'iasql_platform' FROM"
        " iasql_modules_list() WHERE module_name LIKE 'iasql_pl%'))))"
    )
    assert rows(envdb, nested) == [(0,)]
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction):  # force => false, computed
        envdb.execute(
            "SELECT * FROM iasql_rollback(force => (SELECT count(*) = 0 FROM"
            " iasql_modules_list() WHERE module_name LIKE 'iasql%'))"
        )


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELECT * FROM iasql_install(VARIADIC (SELECT NULL::text[]))", "22004"),
        ("SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT NULL::text))", "22004"),
        ("SELECT * FROM iasql_install((SELECT NULL::text))", "22004"),
        # an empty computed list: the engine's own error for no module named
        ("SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT 'x' WHERE false))", "22023"),
        # an empty computed list: the engine's own error for no module named
        ("SELECT * FROM iasql_uninstall(VARIADIC ARRAY(SELECT 'x' WHERE false))", "22023"),
        ("SELECT * FROM iasql_rollback(force => (SELECT true WHERE false))", "22004"),
        # a set-returning argument is computed once: one row, not one call per row
        ("SELECT * FROM iasql_install(unnest(ARRAY['aws_sqs', 'aws_acm']))", "21000"),
        ("SELECT * FROM iasql_install(unnest(ARRAY[]::text[]))", "22023"),
        ("SELECT * FROM iasql_version((SELECT 'extra'))", "42883"),
        ("SELECT * FROM iasql_rollback(nope => (SELECT true))", "42883"),
    ],
)
def test_computed_nulls_empty_lists_and_extra_arguments_are_clear_errors(
    envdb: psycopg.Connection, sql: str, sqlstate: str
) -> None:
    with pytest.raises(psycopg.Error) as raised:
        envdb.execute(sql)
    assert raised.value.sqlstate == sqlstate, str(raised.value)
    if sqlstate in ("21000", "22023") and "unnest" in sql:
        assert "VARIADIC ARRAY(SELECT" in (raised.value.diag.message_hint or "")


def test_an_argument_error_stops_a_multi_statement_query(envdb: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):
        envdb.execute(
            "CREATE TEMP TABLE before (a int); SELECT * FROM iasql_install((1/0)::text);"
            " CREATE TEMP TABLE never_made (a int)"
        )
    assert rows(envdb, "SELECT to_regclass('before') IS NOT NULL") == [(True,)]
    assert rows(envdb, "SELECT to_regclass('never_made')") == [(None,)]


TRICKY = "a\"b\\c 'q' $$ é ✓ 🚀"


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_computed_text_arguments_round_trip(envdb: psycopg.Connection, conforming: str) -> None:
    """Backslashes, quotes and non-ASCII characters in a computed argument reach the engine as
    Postgres computed them, whatever standard_conforming_strings."""
    envdb.execute(f"SET standard_conforming_strings = {conforming}")
    literal = "E'" + TRICKY.replace("\\", "\\\\").replace("'", "''") + "'"
    [(markdown,)] = rows(
        envdb,
        f"SELECT markdown FROM iasql_create_review((SELECT {literal} || '!'), upper({literal}))",
    )
    assert markdown.startswith(f"# {TRICKY}!\n\n{TRICKY.upper()}\n")


def test_a_refused_prepared_statement_does_not_run_the_previous_ones_calls(
    envdb: psycopg.Connection, moto: MotoServer
) -> None:
    """The refused Parse replaces the client's unnamed statement: its Bind must not run the
    calls of the statement that was unnamed before (here: install aws_sqs again)."""
    account(envdb, moto)
    assert envdb.execute("SELECT * FROM iasql_install(%s)", ("aws_sqs",)).fetchall() == SQS
    envdb.execute("SELECT * FROM iasql_uninstall('aws_sqs')")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        envdb.execute("SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT %s::text))", ("aws_sqs",))
    assert installed(envdb) == []


def test_an_argument_reading_the_statements_with_query_says_what_to_write(
    envdb: psycopg.Connection,
) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable) as raised:
        envdb.execute(
            "WITH wanted AS (SELECT module_name FROM iasql_modules_list()"
            " WHERE module_name = 'aws_sqs')"
            " SELECT * FROM iasql_install(VARIADIC ARRAY(SELECT module_name FROM wanted))"
        )
    assert raised.value.diag.message_primary == 'relation "wanted" does not exist'
    assert "cannot read the statement's WITH queries" in (raised.value.diag.message_hint or "")
    # The WITH query in the argument's own sub-select is the argument's: it runs.
    with pytest.raises(psycopg.errors.UndefinedObject) as unknown:
        envdb.execute(
            "SELECT * FROM iasql_install(VARIADIC ARRAY(WITH w AS (SELECT 'aws_nope' AS m)"
            " SELECT m FROM w))"
        )
    assert "aws_nope" in str(unknown.value)


def test_an_oversized_computed_argument_is_refused_and_the_server_keeps_serving(
    envdb: psycopg.Connection, env_url: str
) -> None:
    """A computed argument of 40 MB (80 MB as the hex the proxy reads) is dropped unread
    with 54000, and the session and another client go on; one under the limit still works."""
    with psycopg.connect(env_url, autocommit=True) as other:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as error:
            envdb.execute("SELECT * FROM iasql_uninstall((SELECT repeat('a', 40000000)))")
        assert "over 16 MiB" in str(error.value)
        assert rows(other, "SELECT 1") == [(1,)]
    assert rows(envdb, "SELECT 2") == [(2,)]
    with pytest.raises(psycopg.errors.UndefinedObject):  # read, then an unknown module
        envdb.execute("SELECT * FROM iasql_uninstall((SELECT repeat('b', 100000)))")
    assert rows(envdb, "SELECT 3") == [(3,)]
