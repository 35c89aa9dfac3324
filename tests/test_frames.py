"""The relay fast path: the C frame walks agree with their Python twin, and a session that
relays through the fast path forwards and remembers exactly what the general path would."""

from __future__ import annotations

import shutil
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import frames
from proxy import protocol as pg
from proxy.session import _CLIENT_PLAIN_TABLE, _SERVER_INSPECTED_TABLE, Session
from tests.support.wire import started_session, to_client, to_server

LIMIT = 4096  # started_session()'s max_message


def frame(code: bytes, body: bytes) -> bytes:
    return pg.message(code, body)


bind = frame(b"B", b"\x00P_0\x00\x00\x00\x00\x01\x00\x00\x00\x0212\x00\x00")
describe_portal = frame(b"D", b"P\x00")
describe_statement = frame(b"D", b"SP_0\x00")
execute = frame(b"E", b"\x00\x00\x00\x00\x00")
sync = frame(b"S", b"")
plain_query = pg.query("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
iasql_query = pg.query("SELECT * FROM iasql_version()")
parse = pg.parse("P_0", "SELECT $1::int", [])
copy_data = frame(b"d", b"1\t2\n" * 10)
CLIENT_FRAMES = [
    bind,
    describe_portal,
    describe_statement,
    execute,
    sync,
    plain_query,
    iasql_query,
    parse,
    copy_data,
]

row_description = frame(b"T", b"\x00\x01abalance\x00" + b"\x00" * 18)
data_row = frame(b"D", b"\x00\x01\x00\x00\x00\x0212")
complete = frame(b"C", b"SELECT 1\x00")
ready = pg.ready_for_query(b"I")
error = pg.error_response("42P01", "relation does not exist")
bind_complete = frame(b"2", b"")
SERVER_FRAMES = [row_description, data_row, complete, ready, error, bind_complete]


# The C half is tested wherever it can be built. Without a C compiler the install still
# succeeds (the README promises it) and the Python walks stand in: those tests are skipped.
# With a compiler at hand a missing extension is a missing build step, and fails below.
COMPILER = next((cc for cc in ("cc", "gcc") if shutil.which(cc)), None)
needs_c = pytest.mark.skipif(
    not frames.NATIVE and COMPILER is None,
    reason="proxy._frames is not built and no C compiler (cc, gcc) is on PATH:"
    " the relay uses the Python frame walks",
)


@needs_c
def test_the_c_frame_walker_is_built() -> None:
    # The relay runs without it, but about 15 µs per transaction slower: the test command's
    # install (make deps) compiles it, and a missing build step should fail loudly here.
    assert frames.NATIVE, "proxy._frames is not built: run `pip install -e .` with a C compiler"


def test_client_walk_examples() -> None:
    scan = frames.scan_client
    assert scan(bind + describe_portal + execute + sync, _CLIENT_PLAIN_TABLE, LIMIT, True) == 1
    assert scan(bind + execute + sync, _CLIENT_PLAIN_TABLE, LIMIT, False) == -1  # prepared
    assert scan(sync + sync, _CLIENT_PLAIN_TABLE, LIMIT, True) == 2
    assert scan(plain_query, _CLIENT_PLAIN_TABLE, LIMIT, True) == 1
    assert scan(plain_query + sync, _CLIENT_PLAIN_TABLE, LIMIT, True) == -1  # Query not alone
    assert scan(describe_statement, _CLIENT_PLAIN_TABLE, LIMIT, True) == -1
    assert scan(bind[:-1], _CLIENT_PLAIN_TABLE, LIMIT, True) == -1  # partial frame
    assert scan(copy_data, _CLIENT_PLAIN_TABLE, 20, True) == -1  # over the limit
    assert scan(b"S\x00\x00\x00\x03", _CLIENT_PLAIN_TABLE, LIMIT, True) == -1  # length < 4


def test_server_walk_examples() -> None:
    scan = frames.scan_server
    answer = bind_complete + data_row + complete + ready
    assert scan(answer, _SERVER_INSPECTED_TABLE) == len(answer) - len(ready)
    assert scan(ready + ready, _SERVER_INSPECTED_TABLE) == -1  # inspected, not last
    assert scan(error + ready, _SERVER_INSPECTED_TABLE) == -1
    assert scan(answer[:-1], _SERVER_INSPECTED_TABLE) == -1
    assert scan(b"", _SERVER_INSPECTED_TABLE) == -1


chunks = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from(CLIENT_FRAMES + SERVER_FRAMES), max_size=6).map(b"".join),
)


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    data=chunks, cut=st.integers(0, 80), limit=st.sampled_from([4, 20, LIMIT]), binds=st.booleans()
)
def test_c_and_python_walks_agree(data: bytes, cut: int, limit: int, binds: bool) -> None:
    for chunk in (data, data[:cut], data[cut:]):
        assert frames.scan_client(chunk, _CLIENT_PLAIN_TABLE, limit, binds) == (
            frames.scan_client_py(chunk, _CLIENT_PLAIN_TABLE, limit, binds)
        )
        assert frames.scan_server(chunk, _SERVER_INSPECTED_TABLE) == (
            frames.scan_server_py(chunk, _SERVER_INSPECTED_TABLE)
        )


needles = st.lists(st.from_regex(rb"\A[a-z_]{1,12}\Z"), min_size=1, max_size=4).map(tuple)
sql_text = st.from_regex(rb"\A[A-Za-z_ ()';]{0,40}\Z")


@needs_c
@settings(max_examples=400, deadline=None)
@given(needles=needles, text=sql_text, start=st.integers(0, 45), end=st.integers(0, 45))
def test_c_and_python_name_searches_agree(
    needles: tuple[bytes, ...], text: bytes, start: int, end: int
) -> None:
    # A needle planted in the text in upper case, so that hits are common too.
    planted = text[: len(text) // 2] + needles[0].upper() + text[len(text) // 2 :]
    for data in (text, planted):
        expected = frames.find_any_py(needles, data, start, end)
        assert frames.find_any(needles, data, start, end) is expected


def test_name_search_examples() -> None:
    names = (b"iasql_", b"key_pair_request", b"refresh")
    assert frames.find_any(names, b"select * from IASQL_VERSION()", 0, 29)
    assert frames.find_any(names, b"x KEY_pair_Request(", 0, 19)
    assert not frames.find_any(names, b"x key_pair_requesT", 0, 17)  # cut short by `end`
    assert not frames.find_any(names, b"x key_pair_name", 0, 15)
    assert frames.find_any(names, b"SELECT REFRESH()", 0, 16)  # no underscore in the needle
    assert not frames.find_any(names, b"__iasql", 0, 7)
    many = tuple(f"fn_{i:03d}".encode() for i in range(300))  # past the C code's stack arrays
    assert frames.find_any(many, b"select FN_299(1)", 0, 16)
    assert not frames.find_any(many, b"select fn_300(1)", 0, 16)


def relay_client(session: Session, data: bytes) -> bytes:
    """What proxy/server.py does with client bytes: the fast path first."""
    if session.relay_client(data):
        return data
    return to_server(session.client_data(data))


def relay_server(session: Session, data: bytes) -> bytes:
    if session.relay_server(data):
        return data
    return to_client(session.server_data(data))


client_chunks = st.lists(st.sampled_from(CLIENT_FRAMES[:6]), min_size=1, max_size=4).map(b"".join)
plain_answers = st.lists(
    st.sampled_from([row_description, data_row, complete, bind_complete]), max_size=3
).map(lambda frames: b"".join(frames) + ready)


@settings(max_examples=200, deadline=None)
@given(exchanges=st.lists(st.tuples(client_chunks, plain_answers, st.integers(0, 40)), max_size=8))
def test_the_fast_path_forwards_and_remembers_what_the_general_path_does(
    exchanges: list[tuple[bytes, bytes, int]],
) -> None:
    fast, general = started_session(), started_session()
    for request, answer, cut in exchanges:
        assert relay_client(fast, request) == to_server(general.client_data(request))
        # The answer arrives whole, or cut in two (the second part then goes the general way).
        for part in (answer[:cut], answer[cut:]) if cut else (answer,):
            assert relay_server(fast, part) == to_client(general.server_data(part))
        assert list(fast._inflight) == list(general._inflight)
        assert fast.status == general.status


def test_an_empty_chunk_is_relayed_as_nothing() -> None:
    session = started_session()
    assert session.relay_client(b"")
    assert not session.relay_server(b"")
    assert list(session._inflight) == []


def test_a_ready_for_query_nobody_waits_for_goes_the_general_way() -> None:
    session = started_session()
    assert not session.relay_server(ready)  # no Query or Sync in flight
    session.client_data(iasql_query)  # the engine runs: a plan is active
    assert not session.relay_server(ready)


def test_a_describe_of_a_statement_is_noted_by_the_general_path() -> None:
    session = started_session()
    assert not session.relay_client(describe_statement + sync)
    events = session.client_data(describe_statement + sync)
    assert to_server(events) == describe_statement + sync
    assert len(session._inflight) == 2


def test_lengths_are_read_as_signed() -> None:
    negative = b"d" + struct.pack("!i", -5) + b"x" * 10
    assert frames.scan_client(negative, _CLIENT_PLAIN_TABLE, LIMIT, True) == -1
    assert frames.scan_server(negative, _SERVER_INSPECTED_TABLE) == -1
