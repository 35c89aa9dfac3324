"""The sans-IO protocol layer, byte string in, events out: no sockets."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from engine.contract import EngineError
from proxy import protocol as pg
from proxy.intercept import prefilter
from proxy.session import (
    CancelTarget,
    CloseConnection,
    ConnectServer,
    KeyAssigned,
    RunEngine,
    Session,
    ToClient,
)
from tests.support.wire import CATALOG, frames, started_session, startup, to_client, to_server


def test_ssl_and_gssenc_requests_are_declined_then_startup_goes_through() -> None:
    session = Session(CATALOG, prefilter(CATALOG))
    ssl = struct.pack("!ii", 8, pg.SSL_REQUEST)
    gss = struct.pack("!ii", 8, pg.GSSENC_REQUEST)
    assert session.client_data(ssl) == [ToClient(b"N")]
    assert session.client_data(gss) == [ToClient(b"N")]
    events = session.client_data(startup("bob", "staging"))
    assert isinstance(events[0], ConnectServer)
    assert events[0].params == {"user": "bob", "database": "staging"}
    assert (session.user, session.database) == ("bob", "staging")


def test_startup_split_over_many_chunks() -> None:
    session = Session(CATALOG, prefilter(CATALOG))
    packet = startup()
    events: list[Any] = []
    for i in range(len(packet)):
        events += session.client_data(packet[i : i + 1])
    assert [type(e) for e in events] == [ConnectServer]


def test_cancel_request_names_its_target() -> None:
    session = Session(CATALOG, prefilter(CATALOG))
    packet = struct.pack("!iiii", 16, pg.CANCEL_REQUEST, 4242, 99)
    events = session.client_data(packet)
    assert events == [CancelTarget(4242, struct.pack("!i", 99), packet), CloseConnection()]


def test_backend_key_data_is_reported() -> None:
    session = started_session()
    key = pg.message(b"K", struct.pack("!ii", 77, 1234))
    events = session.server_data(key)
    assert KeyAssigned(77, struct.pack("!i", 1234)) in events
    assert to_client(events) == key


def test_ordinary_query_is_relayed_as_the_same_bytes_object() -> None:
    session = started_session()
    data = pg.query("SELECT 1") + pg.query("SELECT 2")
    events = session.client_data(data)
    assert len(events) == 1 and events[0].data is data  # zero-copy


def test_server_chunks_are_relayed_unchanged_even_when_split_mid_frame() -> None:
    session = started_session()
    session.client_data(pg.query("SELECT 1"))
    reply = (
        pg.message(b"T", b"x" * 40)
        + pg.message(b"D", b"y" * 1000)
        + pg.message(b"C", b"SELECT 1\x00")
    )
    reply += pg.ready_for_query(b"T")
    out = b""
    for i in range(0, len(reply), 7):
        out += to_client(session.server_data(reply[i : i + 7]))
    assert out == reply
    assert session.status == b"T"


def test_frames_split_across_client_chunks_keep_their_order() -> None:
    session = started_session()
    data = (
        pg.query("SELECT 1") + pg.message(b"H", b"") + pg.query("select x from t where a = 'iasql'")
    )
    out = b""
    for i in range(0, len(data), 3):
        out += to_server(session.client_data(data[i : i + 3]))
    assert out == data


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (b"\x01\x00\x00\x00\x08abcd", "invalid frontend message type"),
        (b"Q\x00\x00\x00\x02", "invalid message length"),
        (b"Q\x7f\xff\xff\xff", "invalid message length"),
        (b"Q" + struct.pack("!i", 5000) + b"x" * 10, "invalid message length"),  # over max_message
    ],
)
def test_malformed_frames_end_the_connection_with_08P01(garbage: bytes, reason: str) -> None:
    session = started_session()
    events = session.client_data(garbage)
    assert isinstance(events[-1], CloseConnection)
    fields = pg.decode_fields(events[-2].data[5:])
    assert fields["C"] == "08P01" and reason in fields["M"]
    assert session.client_data(pg.query("SELECT 1")) == []  # nothing more is read


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!i", 4),
        struct.pack("!i", 1_000_000) + b"x" * 8,
        struct.pack("!ii", 8, 12345),
        struct.pack("!ii", 12, pg.PROTOCOL_V3) + b"user",  # not terminated
    ],
)
def test_malformed_startup_packets_end_the_connection(packet: bytes) -> None:
    session = Session(CATALOG, prefilter(CATALOG))
    events = session.client_data(packet)
    assert isinstance(events[-1], CloseConnection)
    assert pg.decode_fields(events[-2].data[5:])["C"] == "08P01"


def test_intercepted_query_runs_the_engine_then_sends_the_rewritten_statement() -> None:
    session = started_session()
    events = session.client_data(pg.query("SELECT * FROM IASQL_VERSION()") + pg.query("SELECT 2"))
    assert len(events) == 1 and isinstance(events[0], RunEngine)
    assert session.blocked
    spec, arguments = events[0].calls[0]
    assert spec.name == "iasql_version" and arguments == []
    events = session.engine_done([[{"version": "9.9"}]], None)
    sent = frames(to_server(events))
    assert [kind for kind, _ in sent] == [b"P", b"B", b"D", b"E", b"S", b"Q"]
    parse, bind = pg.decode_parse(sent[0][1]), pg.decode_bind(sent[1][1])
    # The rows travel as a parameter, not in the statement's text (which Postgres may log).
    assert "jsonb_to_recordset(CAST($1 AS jsonb))" in parse.sql and "version text" in parse.sql
    assert "9.9" not in parse.sql and parse.param_types == [3802]
    assert bind.values == [b'[{"version": "9.9"}]']
    assert not session.blocked
    # the pipelined second query waited behind the engine call, and went out right after
    assert pg.decode_query(sent[5][1]) == "SELECT 2"


def test_a_simple_query_sent_as_extended_gets_a_simple_query_answer() -> None:
    """ParseComplete, BindComplete and NoData answer the proxy's messages, not the client's
    Query: they are dropped, however the server's answer is cut into chunks."""
    row_description = pg.message(b"T", b"\x00\x01version\x00" + b"\x00" * 18)
    answer = (
        pg.message(b"1", b"")
        + pg.message(b"2", b"")
        + row_description
        + pg.message(b"D", b"\x00\x01\x00\x00\x00\x011")
        + pg.message(b"C", b"SELECT 1\x00")
        + pg.ready_for_query(b"I")
    )
    for cut in range(len(answer) + 1):
        copy = started_session()
        copy.client_data(pg.query("SELECT * FROM iasql_version()"))
        copy.engine_done([[{"version": "1"}]], None)
        got = to_client(copy.server_data(answer[:cut]) + copy.server_data(answer[cut:]))
        assert got == answer[10:], cut
    # An INSERT's NoData too; and after the ReadyForQuery the client's own extended requests
    # get their ParseComplete again.
    session = started_session()
    session.client_data(pg.query("INSERT INTO t SELECT * FROM iasql_version()"))
    session.engine_done([[{"version": "1"}]], None)
    insert = pg.message(b"1", b"") + pg.message(b"2", b"") + pg.message(b"n", b"")
    insert += pg.message(b"C", b"INSERT 0 1\x00") + pg.ready_for_query(b"I")
    client_parse = pg.parse("", "SELECT 1", []) + pg.message(b"S", b"")
    session.client_data(client_parse)
    events = session.server_data(insert + pg.message(b"1", b"") + pg.ready_for_query(b"I"))
    assert to_client(events) == insert[15:] + pg.message(b"1", b"") + pg.ready_for_query(b"I")


def test_a_simple_query_with_calls_and_a_parameter_is_refused_before_the_calls_run() -> None:
    session = started_session()
    events = session.client_data(pg.query("SELECT * FROM iasql_version() WHERE $1"))
    assert not any(isinstance(e, RunEngine) for e in events)
    token = pg.decode_query(to_server(events)[5:]).split('"')[1]
    server_error = pg.error_response("42P01", f'relation "{token}" does not exist')
    fields = pg.decode_fields(to_client(session.server_data(server_error))[5:])
    assert (fields["C"], fields["M"]) == ("42P02", "there is no parameter $1")


def test_engine_error_is_delivered_in_order_through_a_poisoned_statement() -> None:
    session = started_session()
    [run] = session.client_data(pg.query("SELECT * FROM iasql_version()"))
    assert isinstance(run, RunEngine)
    events = session.engine_done(None, EngineError("22023", "bad thing", hint="try again"))
    poison_sql = pg.decode_query(to_server(events)[5:])
    token = poison_sql.split('"')[1]
    server_error = pg.error_response("42P01", f'relation "{token}" does not exist')
    events = session.server_data(server_error + pg.ready_for_query(b"I"))
    fields = pg.decode_fields(to_client(events)[5:])
    assert fields["C"] == "22023" and fields["M"] == "bad thing" and fields["H"] == "try again"
    assert to_client(events).endswith(pg.ready_for_query(b"I"))


def test_multi_statement_query_runs_pieces_in_order_with_one_ready_for_query() -> None:
    session = started_session()
    sql = "CREATE TABLE t (a int); SELECT * FROM iasql_version(); INSERT INTO t VALUES (1)"
    events = session.client_data(pg.query(sql))
    assert pg.decode_query(to_server(events)[5:]) == "CREATE TABLE t (a int)"
    events = session.server_data(pg.message(b"C", b"CREATE TABLE\x00") + pg.ready_for_query(b"I"))
    assert to_client(events) == pg.message(b"C", b"CREATE TABLE\x00")  # RFQ held back
    assert isinstance(events[-1], RunEngine)
    events = session.engine_done([[{"version": "1"}]], None)
    assert "jsonb_to_recordset" in pg.decode_parse(frames(to_server(events))[0][1]).sql
    events = session.server_data(pg.message(b"C", b"SELECT 1\x00") + pg.ready_for_query(b"I"))
    assert pg.decode_query(to_server(events)[5:]) == "INSERT INTO t VALUES (1)"
    events = session.server_data(pg.message(b"C", b"INSERT 0 1\x00") + pg.ready_for_query(b"I"))
    assert to_client(events).endswith(pg.ready_for_query(b"I"))
    assert not session.blocked


def test_error_in_a_piece_stops_the_rest() -> None:
    session = started_session()
    events = session.client_data(pg.query("SELECT 1/0; SELECT * FROM iasql_version()"))
    assert pg.decode_query(to_server(events)[5:]) == "SELECT 1/0"
    error = pg.error_response("22012", "division by zero")
    events = session.server_data(error + pg.ready_for_query(b"I"))
    assert to_client(events) == error + pg.ready_for_query(b"I")
    assert not any(isinstance(e, RunEngine) for e in events)
    assert not session.blocked


def test_extended_protocol_parse_adds_a_rows_parameter_hidden_from_describe() -> None:
    session = started_session()
    parse = pg.parse("s1", "SELECT * FROM iasql_modules_list() WHERE module_name = $1", [])
    describe = pg.message(b"D", b"Ss1\x00")
    events = session.client_data(parse + describe + pg.message(b"H", b""))
    sent = to_server(events)
    rewritten = pg.decode_parse(sent[5 : 1 + struct.unpack_from("!i", sent, 1)[0]])
    assert rewritten.param_types == [0, 3802] and "$2" in rewritten.sql
    reply = pg.message(b"1", b"") + pg.parameter_description([25, 3802])
    assert to_client(session.server_data(reply)) == pg.message(
        b"1", b""
    ) + pg.parameter_description([25])
    bind = pg.Bind("", "s1", [], [b"iasql_platform"], []).encode()
    [run] = session.client_data(
        bind + pg.message(b"E", b"\x00\x00\x00\x00\x00") + pg.message(b"S", b"")
    )
    assert isinstance(run, RunEngine)
    events = session.engine_done([[{"module_name": "x"}]], None)
    sent = to_server(events)
    bound = pg.decode_bind(sent[5 : 1 + struct.unpack_from("!i", sent, 1)[0]])
    assert bound.values == [b"iasql_platform", b'[{"module_name": "x"}]']
    assert bound.param_formats == [0, 0]


def test_intercepted_statement_with_unsupported_argument_errors_at_parse() -> None:
    session = started_session()
    events = session.client_data(pg.parse("", "SELECT iasql_version(random())", []))
    assert b"__iasql_poison_" in to_server(events)


def test_notice_waits_for_a_frame_boundary() -> None:
    session = started_session()
    session.client_data(pg.query("SELECT 1"))
    row = pg.message(b"D", b"z" * 100)
    first = session.server_data(row[:50])
    assert session.notice("working") == []
    events = session.server_data(row[50:])
    assert to_client(first + events) == row + pg.notice_response("working")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"SELECT * FROM iasql_version()", True),
        (b"select * from IASQL_Modules_List()", True),
        (b"SELECT key_pair_request('k', 'us-east-1')", True),
        (b"SELECT Certificate_Import($1, $2)", True),
        (b"SELECT set_user_password_request('u')", True),
        (b"SELECT abalance FROM pgbench_accounts WHERE aid = 1", False),
        (b"SELECT key_pair_name FROM key_pair", False),
        (b"SELECT 'iasql' AS name", False),
        (b"", False),
    ],
)
def test_prefilter_finds_every_function_name_in_any_case(text: bytes, expected: bool) -> None:
    mentions = prefilter(CATALOG)
    framed = b"Q\x00\x00\x00\x00" + text + b"\x00"
    assert mentions(framed, 5, len(framed) - 1) is expected
    assert all(mentions(name.upper().encode(), 0, len(name)) for name in CATALOG)


def test_prefilter_handles_names_without_an_underscore() -> None:
    mentions = prefilter(["refresh", "iasql_version"])
    assert mentions(b"SELECT Refresh()", 0, 16)
    assert mentions(b"SELECT iasql_VERSION()", 0, 22)
    assert not mentions(b"SELECT fresh_x()", 0, 16)
