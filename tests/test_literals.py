"""Long string literals kept away from pglast (proxy/literals.py): the lexing that finds
them, the session paths that put them back byte for byte, and the same statements through
a real Postgres."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import psycopg
import pytest

from proxy import literals
from proxy import protocol as pg
from proxy.intercept import prefilter, split_statements
from proxy.literals import long_literals, reduce
from proxy.session import CloseConnection, RunEngine, Session, ToServer
from tests.support.env import RunningServer
from tests.support.wire import CATALOG, frames, startup, to_client, to_server

BIG = "x" * 70_000  # longer than literals.STRIP_FROM: the statement is reduced


def spans(sql: str) -> list[str]:
    data = sql.encode()
    return [data[a:b].decode() for a, b in long_literals(data, 0, len(data))]


@pytest.fixture
def short_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every literal of 3 bytes or more counts as long, in statements of any size."""
    monkeypatch.setattr(literals, "LONG_LITERAL", 3)
    monkeypatch.setattr(literals, "STRIP_FROM", 0)


@pytest.mark.usefixtures("short_literals")
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'abc', 'a''b', ''", ["'abc'", "'a''b'"]),
        ("SELECT E'a\\'b', e'\\\\', E''''", ["E'a\\'b'", "e'\\\\'", "E''''"]),
        # continued across lines (comments allowed in between), not on one line
        ("SELECT 'ab'\n  'cd', 'ef' 'gh'", ["'ab'\n  'cd'", "'ef'", "'gh'"]),
        ("SELECT 'ab' -- note\n -- more\n 'cd'", ["'ab' -- note\n -- more\n 'cd'"]),
        ("SELECT E'a\\'' \n'\\''", ["E'a\\'' \n'\\''"]),
        # quotes inside comments and identifiers are not strings
        ("SELECT 1 -- it's\n, 'abc'", ["'abc'"]),
        ("SELECT /* it's /* nested ' */ still' */ 'abc'", ["'abc'"]),
        ('SELECT "it\'s" AS "a""\'b", \'abc\'', ["'abc'"]),
        # dollar quotes, with and without a tag; a `$` inside a word is not one
        ("SELECT $$it's$$, $t$a $$ 'b'$t$", ["$$it's$$", "$t$a $$ 'b'$t$"]),
        ("SELECT a$b$, 'abc', $1, 'x$$y'", ["'abc'", "'x$$y'"]),
        # prefixed strings and a string right after a word stay as they are
        ("SELECT B'101', X'ff0', N'abc', U&'d\\0061t', date'2020-01-01', 'ok'", ["'ok'"]),
        ("SELECT somee'abc', 1e'abc', \"x\"'abc'", ["'abc'"]),
        # unterminated: nothing after it is trusted
        ("SELECT 'abc', 'unterminated", ["'abc'"]),
        ("SELECT 'abc' /* open", ["'abc'"]),
        ("SELECT 'abc', $x$ open", ["'abc'"]),
        ("SELECT 'abc', \"open", ["'abc'"]),
    ],
)
def test_long_literals_follow_postgres_lexing(sql: str, expected: list[str]) -> None:
    assert spans(sql) == expected


@pytest.mark.usefixtures("short_literals")
def test_a_literal_at_the_very_start_of_the_text_is_judged_on_the_text_alone() -> None:
    # The byte before the text (a length byte, here 'e') must not make E'' a word's end.
    data = b"e" + b"E'a\\'b'"
    assert long_literals(data, 1, len(data)) == [(1, len(data))]
    data = b"a" + b"$$abc$$"
    assert long_literals(data, 1, len(data)) == [(1, len(data))]


def test_millions_of_escapes_are_one_pass() -> None:
    sql = ("SELECT E'" + "a\\'" * 2_000_000 + "', '" + "b''" * 2_000_000 + "'").encode()
    found = long_literals(sql, 0, len(sql))
    assert [sql[a : a + 3] for a, _ in found] == [b"E'a", b"'b'"]


@pytest.mark.usefixtures("short_literals")
def test_reduce_replaces_long_literals_and_expand_puts_the_bytes_back() -> None:
    sql = "SELECT 'héllo', $$wörld$$, 1 -- 'c'\n"
    data = b"\x00" + sql.encode() + b"\x00"
    text, found = reduce(data, 1, len(data) - 1)
    assert found is not None
    assert text == f"SELECT {found.placeholder(0)}, {found.placeholder(1)}, 1 -- 'c'\n"
    assert b"".join(found.expand(text)) == sql.encode()
    assert found.full_text() == sql
    with pytest.raises(UnicodeDecodeError):  # a literal is checked as if it were decoded
        bad = b"SELECT '\xff\xfe'"
        reduce(bad, 0, len(bad))


# --- the session ------------------------------------------------------------------------


def session() -> Session:
    new = Session(CATALOG, prefilter(CATALOG), max_message=1 << 24)
    new.client_data(startup())
    new.server_data(pg.ready_for_query(b"I"))
    return new


def query_text(data: bytes) -> bytes:
    [(kind, body)] = frames(data)
    assert kind == b"Q"
    return body[:-1]


@pytest.mark.parametrize(
    "literal",
    [f"'{BIG}'", f"E'{BIG}\\'é\\\\'", f"'{BIG}'\n  'and more'", f"$body${BIG}'$body$"],
)
def test_a_call_beside_a_long_literal_keeps_its_bytes(literal: str) -> None:
    sql = f"SELECT * FROM iasql_version() WHERE {literal} <> ''"
    new = session()
    [run] = new.client_data(pg.query(sql))
    assert isinstance(run, RunEngine)
    rows = [[{"version": "1.2"}]]
    # Sent as Parse (its rows a parameter), Bind, Describe, Execute, Sync.
    kind, body = frames(to_server(new.engine_done(rows, None)))[0]
    assert kind == b"P" and body.startswith(b"\x00")  # the unnamed statement
    sent = body[1 : body.index(b"\x00", 1)]
    assert sent.endswith(f" WHERE {literal} <> ''".encode())  # verbatim, not re-printed
    # The rest is what pglast prints when it parses the whole statement.
    [whole] = split_statements(sql, CATALOG) or []
    assert sent.split(b" WHERE ")[0] == whole.render_with_params(1).split(" WHERE ")[0].encode()


def test_plain_statements_around_a_call_keep_their_long_literals() -> None:
    first, last = f"INSERT INTO t VALUES ('{BIG}')", f"SELECT E'{BIG}\\n'"
    new = session()
    sent = to_server(new.client_data(pg.query(f"{first}; SELECT * FROM iasql_version(); {last}")))
    assert query_text(sent) == first.encode()
    events = new.server_data(pg.message(b"C", b"INSERT 0 1\x00") + pg.ready_for_query(b"I"))
    assert isinstance(events[-1], RunEngine)
    new.engine_done([[{"version": "1"}]], None)
    events = new.server_data(pg.message(b"C", b"SELECT 1\x00") + pg.ready_for_query(b"I"))
    assert query_text(to_server(events)) == last.encode()


def test_a_long_literal_given_to_a_call_reaches_the_engine_whole() -> None:
    sql = f"SELECT * FROM iasql_get_sql_for_transaction(E'{BIG}\\'') WHERE '{BIG}' <> ''"
    [run] = session().client_data(pg.query(sql))
    assert isinstance(run, RunEngine)
    [(spec, [argument])] = run.calls
    assert spec.name == "iasql_get_sql_for_transaction" and argument.value == BIG + "'"


def test_a_long_literal_in_a_parse_is_sent_verbatim_and_not_kept() -> None:
    sql = f"SELECT * FROM iasql_version() WHERE $1 <> '{BIG}'"
    new = session()
    sent = to_server(new.client_data(pg.parse("s1", sql, [25])))
    [(kind, body)] = frames(sent)
    rewritten = pg.decode_parse(body)
    assert kind == b"P" and rewritten.name == "s1" and rewritten.param_types == [25, 3802]
    assert rewritten.sql.endswith(f" WHERE $1 <> '{BIG}'") and "$2" in rewritten.sql
    assert len(repr(vars(new._prepared["s1"]))) < 10_000  # the statement's text is not kept
    bind = pg.Bind("", "s1", [], [b"v"], []).encode()
    [run] = new.client_data(bind + pg.message(b"S", b""))
    assert isinstance(run, RunEngine)
    sent = to_server(new.engine_done([[{"version": "1"}]], None))
    assert frames(sent)[0][0] == b"B"


def test_a_long_statement_that_calls_nothing_is_relayed_as_it_came() -> None:
    message = pg.query(f"SELECT 'iasql_version()', '{BIG}'")
    assert to_server(session().client_data(message)) == message
    parse = pg.parse("", f"SELECT 'iasql_version()', '{BIG}'", [])
    assert to_server(session().client_data(parse)) == parse


def test_invalid_utf8_in_a_long_literal_ends_the_connection_as_before() -> None:
    body = b"SELECT * FROM iasql_version() WHERE '" + b"\xff" * 70_000 + b"' <> ''\x00"
    events = session().client_data(b"Q" + struct.pack("!i", len(body) + 4) + body)
    assert isinstance(events[-1], CloseConnection)
    assert pg.decode_fields(to_client(events)[5:])["C"] == "08P01"
    assert not any(isinstance(e, ToServer) for e in events)


# --- through Postgres ---------------------------------------------------------------------

VALUE = ("x" * 50_000) + "it's é \\ \" $ -- /* end"


def literal_forms() -> list[str]:
    plain = VALUE.replace("'", "''")
    escaped = VALUE.replace("\\", "\\\\").replace("'", "\\'")
    half = len(plain) // 2
    return [
        f"'{plain}'",
        f"E'{escaped}'",
        f"'{plain[:half]}'\n'{plain[half:]}'",
        f"$q${VALUE}$q$",
    ]


@pytest.mark.parametrize("literal", literal_forms())
def test_postgres_sees_the_same_value_in_simple_and_extended_queries(
    iasql: RunningServer, literal: str
) -> None:
    sql = (
        f"SELECT length(s), md5(s), version IS NOT NULL FROM iasql_version(),"
        f" (SELECT {literal}::text AS s) v"
    )
    expected: list[Any] = [len(VALUE), hashlib.md5(VALUE.encode()).hexdigest(), True]
    with psycopg.connect(iasql.dsn(), autocommit=True) as conn:
        simple = conn.pgconn.exec_(sql.encode())
        assert simple.status == psycopg.pq.ExecStatus.TUPLES_OK, simple.error_message
        extended = conn.pgconn.exec_params(sql.encode(), [])
        assert extended.status == psycopg.pq.ExecStatus.TUPLES_OK, extended.error_message
        for result in (simple, extended):
            row = [result.get_value(0, i) for i in range(3)]
            assert row == [str(expected[0]).encode(), expected[1].encode(), b"t"]
