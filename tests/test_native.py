"""The native data plane (proxy/_relay.c, proxy/native.py).

- Differential: the C walk, run over random frames cut at random points, relays exactly what
  the Python session would, and when it hands a session back, the session carries on from the
  walk's state and produces, in all, the same bytes and events as a session that saw
  everything itself.
- Real clients through a server on the native plane: sessions are relayed by the thread
  between iasql calls and come back to Python for them; prepared iasql statements, COPY, LISTEN/
  NOTIFY, large frames, cancel, a backend that dies, and a server that closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iasql.certs import ensure_certificate, names_for
from iasql.postgres import LocalPostgres
from proxy import native
from proxy import protocol as pg
from proxy.intercept import needles
from proxy.server import ProxyServer
from proxy.session import Session, ToClient, ToServer
from proxy.tls import server_context
from tests.support.env import RunningServer, TlsServer, in_process_server
from tests.support.wire import CATALOG, started_session

COMPILER = next((cc for cc in ("cc", "gcc") if shutil.which(cc)), None)
needs_relay = pytest.mark.skipif(
    not native.AVAILABLE and COMPILER is None,
    reason="proxy._relay is not built and no C compiler is on PATH: the asyncio relay is used",
)
pytestmark = needs_relay


def test_the_native_relay_is_built() -> None:
    # Without it every session stays on the asyncio relay, several times the CPU per query.
    assert native.AVAILABLE, "proxy._relay is not built: run `pip install -e .` with a C compiler"


# --- the walk against the session -------------------------------------------------------------


def frame(code: bytes, body: bytes) -> bytes:
    return pg.message(code, body)


CLIENT_FRAMES = [
    frame(b"B", b"\x00P_0\x00\x00\x00\x00\x01\x00\x00\x00\x0212\x00\x00"),  # a plain Bind
    pg.Bind("", "s1", [], [], []).encode(),  # binds a statement the proxy rewrote
    pg.Bind("p", "P_0", [0], [b"x", None], [1]).encode(),
    frame(b"B", b"\x00s1"),  # malformed
    frame(b"B", "\x00é\x00\x00\x00\x00\x00\x00\x00".encode()),  # a name that is not ASCII
    frame(b"D", b"P\x00"),
    frame(b"D", b"SP_0\x00"),
    frame(b"D", b"Ss1\x00"),  # describes a statement the proxy rewrote
    frame(b"D", b"S\x00"),
    frame(b"D", b"SP_0"),  # malformed
    frame(b"D", b""),
    frame(b"C", b"Ss1\x00"),
    frame(b"C", b"SP_0\x00"),
    frame(b"C", b"P\x00"),
    frame(b"C", b"S\x00"),
    frame(b"E", b"\x00\x00\x00\x00\x00"),
    frame(b"S", b""),
    frame(b"H", b""),
    pg.query("SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
    pg.query("SELECT * FROM iasql_version()"),
    pg.query("select x from Iasql_Modules_List()"),
    pg.parse("P_0", "SELECT $1::int", []),
    pg.parse("", "SELECT 1", []),
    pg.parse("s2", "SELECT iasql_version()", []),
    frame(b"F", b"\x00\x00\x04\xd2\x00\x00\x00\x00\x00\x00"),
    frame(b"d", b"1\t2\n" * 10),
    frame(b"c", b""),
    frame(b"z", b""),  # not a frontend message type
    b"Q\x00\x00\x00\x02",  # a length under 4
    b"d\x00\x00\x20\x00" + b"x" * 8191,  # over max_message (4096)
]
SERVER_FRAMES = [
    frame(b"T", b"\x00\x01abalance\x00" + b"\x00" * 18),
    frame(b"D", b"\x00\x01\x00\x00\x00\x0212"),
    frame(b"C", b"SELECT 1\x00"),
    pg.ready_for_query(b"I"),
    pg.ready_for_query(b"T"),
    frame(b"Z", b""),
    pg.error_response("42P01", "relation does not exist"),
    pg.error_response("26000", "x"),  # short enough for the smallest buffer
    frame(b"2", b""),
    frame(b"1", b""),
    frame(b"t", b"\x00\x01\x00\x00\x00\x17"),
    frame(b"N", b"SNOTICE\x00Mhello\x00\x00"),
    frame(b"A", b"\x00\x00\x00\x01chan\x00payload\x00"),
    frame(b"K", b"\x00\x00\x00\x01\x00\x00\x00\x02"),
    frame(b"D", b"\x00\x01\x00\x00\x01\x00" + b"r" * 256),
]
CLIENT, SERVER = "client", "server"
_POISON = re.compile(rb"__iasql_poison_[0-9a-f]{16}")


class Output:
    """What a session sent each way, and its other events, as comparable values."""

    def __init__(self) -> None:
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.events: list[Any] = []

    def add(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, ToServer):
                self.to_server += event.data
            elif isinstance(event, ToClient):
                self.to_client += event.data
            else:
                calls = getattr(event, "calls", None)
                names = [spec.name for spec, _ in calls] if calls else None
                self.events.append((type(event).__name__, names))

    def relay(self, session: Session, side: str, chunk: bytes) -> None:
        """The asyncio plane: the fast path first, as proxy/server.py does."""
        if side == CLIENT:
            if session.relay_client(chunk):
                self.to_server += chunk
            else:
                self.add(session.client_data(chunk))
        elif session.relay_server(chunk):
            self.to_client += chunk
        else:
            self.add(session.server_data(chunk))

    def value(self) -> tuple[bytes, bytes, list[Any]]:
        # A poisoned statement's name is random: the same in both runs once replaced.
        return (
            _POISON.sub(b"POISON", bytes(self.to_server)),
            _POISON.sub(b"POISON", bytes(self.to_client)),
            self.events,
        )


def prepared_session(rewritten: tuple[str, ...], pending: str) -> Session:
    """A logged-in session that rewrote these statements and awaits the answers to `pending`:
    Q a Query, D a Describe of a statement it did not rewrite."""
    session = started_session()
    for name in rewritten:
        session.client_data(pg.parse(name, "SELECT * FROM iasql_version()", []))
    for code in pending:
        session.client_data(pg.query("SELECT 1") if code == "Q" else frame(b"D", b"SP_0\x00"))
    return session


def chunks_of(parts: list[tuple[str, list[bytes], list[int]]]) -> list[tuple[str, bytes]]:
    """Each part's frames joined, then cut at its cut points."""
    script = []
    for side, frames, cuts in parts:
        data = b"".join(frames)
        points = sorted({c for c in cuts if 0 < c < len(data)})
        for start, end in zip([0, *points], [*points, len(data)], strict=True):
            script.append((side, data[start:end]))
    return script


part = st.one_of(
    st.tuples(
        st.just(CLIENT),
        st.lists(st.sampled_from(CLIENT_FRAMES), min_size=1, max_size=4),
        st.lists(st.integers(0, 120), max_size=3),
    ),
    st.tuples(
        st.just(SERVER),
        st.lists(st.sampled_from(SERVER_FRAMES), min_size=1, max_size=4),
        st.lists(st.integers(0, 300), max_size=3),
    ),
)


@settings(max_examples=1000, deadline=None)
@given(
    parts=st.lists(part, max_size=10),
    rewritten=st.sampled_from([(), ("s1",), ("s1", "")]),
    pending=st.text("QD", max_size=4),
    capacity=st.sampled_from([24, 64, 4096]),
)
def test_the_native_walk_relays_and_hands_back_what_the_session_would(
    parts: list[tuple[str, list[bytes], list[int]]],
    rewritten: tuple[str, ...],
    pending: str,
    capacity: int,
) -> None:
    script = chunks_of(parts)
    alone, handed = prepared_session(rewritten, pending), prepared_session(rewritten, pending)
    reference, ours = Output(), Output()
    for side, chunk in script:
        reference.relay(alone, side, chunk)

    state = handed.native_state()
    assert state is not None
    names, syncs, describes = state
    assert syncs == pending.count("Q") and set(names) == {n.encode() for n in rewritten}
    assert describes == tuple(pending[:i].count("Q") for i, c in enumerate(pending) if c == "D")
    walk = native.Walk(
        needles(CATALOG), names, handed.max_message, capacity, syncs, describes, handed.status
    )
    unwalked = {CLIENT: b"", SERVER: b""}
    steps = iter(script)
    for side, chunk in steps:
        data = unwalked[side] + chunk
        relayed, stop = walk.client(data) if side == CLIENT else walk.server(data)
        if side == CLIENT:
            ours.to_server += data[:relayed]
        else:
            ours.to_client += data[:relayed]
        unwalked[side] = data[relayed:]
        if stop:
            break
    # Handed back: at a stop, or at the end (as when the connection closes): the session goes
    # on from the walk's state with the bytes it had not walked (client first, as
    # ClientConnection.native_returned feeds them), then with the rest.
    client_skip, server_skip, syncs, describes, status = walk.state()
    handed.resume_after_native(syncs, describes, status, client_skip, server_skip)
    if unwalked[CLIENT]:
        ours.relay(handed, CLIENT, unwalked[CLIENT])
    if unwalked[SERVER]:
        ours.relay(handed, SERVER, unwalked[SERVER])
    for side, chunk in steps:
        ours.relay(handed, side, chunk)

    assert ours.value() == reference.value()
    assert list(handed._inflight) == list(alone._inflight)
    assert handed.status == alone.status
    assert handed._prepared.keys() == alone._prepared.keys()
    assert handed.blocked == alone.blocked


def test_the_walk_stops_at_the_frames_the_session_needs() -> None:
    plain = pg.query("SELECT 1")
    call = pg.query("SELECT iasql_version()")
    walk = native.Walk(needles(CATALOG), (), 4096, 4096, 0, (), b"I")
    assert walk.client(plain + plain) == (2 * len(plain), False)
    assert walk.client(plain + call + plain) == (len(plain), True)
    assert walk.client(plain[:-1]) == (0, False)  # a Query is walked whole
    assert walk.state()[2] == 3  # three Queries await their ReadyForQuery
    assert walk.server(pg.ready_for_query(b"T")) == (6, False)
    assert walk.state()[2:] == (2, (), b"T")
    copy = frame(b"d", b"x" * 3000)
    assert walk.client(copy[:100]) == (100, False)  # streamed: the rest is skipped over
    assert walk.state()[0] == len(copy) - 100
    rewritten = native.Walk(needles(CATALOG), (b"s1",), 4096, 4096, 0, (), b"I")
    assert rewritten.client(pg.Bind("", "s1", [], [], []).encode())[1]
    assert not rewritten.client(pg.Bind("", "s2", [], [], []).encode())[1]
    assert rewritten.client(frame(b"D", b"Ss1\x00"))[1]  # its parameters are trimmed


def test_the_walk_matches_describes_to_their_answers() -> None:
    describe, sync = frame(b"D", b"SP_0\x00"), frame(b"S", b"")
    walk = native.Walk(needles(CATALOG), (), 4096, 4096, 0, (), b"I")
    assert walk.client(describe + sync + describe + describe) == (3 * len(describe) + 5, False)
    assert walk.state()[2:4] == (1, (0, 1, 1))  # the last two follow the Sync
    walk.server(frame(b"t", b"\x00\x00"))
    assert walk.state()[2:4] == (1, (1, 1))
    walk.server(pg.ready_for_query(b"I"))
    assert walk.state()[2:4] == (0, (0, 0))
    walk.server(pg.error_response("26000", "no such statement"))  # answers both
    assert walk.state()[2:4] == (0, ())
    full = native.Walk(needles(CATALOG), (), 4096, 4096, 0, (0,) * native.MAX_DESCRIBES, b"I")
    assert full.client(describe) == (0, True)  # one more: the session takes over


# --- a server on the native plane -------------------------------------------------------------


class NativeServer(RunningServer):
    proxy: ProxyServer

    @property
    def plane(self) -> native.NativePlane:
        assert self.proxy.native is not None
        return self.proxy.native

    def on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def native_sessions(self) -> int:
        return int(self.on_loop(lambda: self.plane.sessions))

    def handbacks(self) -> int:
        return int(self.on_loop(lambda: self.plane.handbacks))

    def wait_native(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while self.native_sessions() != count:
            assert time.monotonic() < deadline, f"{self.native_sessions()} native, not {count}"
            time.sleep(0.01)


@contextlib.contextmanager
def native_server(postgres: LocalPostgres) -> Iterator[NativeServer]:
    """A server of its own on the native plane (its proxy may be closed inside)."""
    with in_process_server(postgres, "iasql-native", relay="native") as running:
        yield NativeServer(running.host, running.port, running.loop, running.proxy)


@pytest.fixture(scope="module")
def server(postgres: LocalPostgres) -> Iterator[NativeServer]:
    with native_server(postgres) as running:
        yield running


def test_sessions_go_native_between_iasql_calls(server: NativeServer) -> None:
    before = server.handbacks()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        server.wait_native(1)
        for i in range(20):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
            assert conn.execute("SELECT iasql_version()").fetchone() == ("0.1.0",)
        # ...and an iasql call inside a transaction block, between plain statements.
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE kept (a int)")
            assert conn.execute("SELECT * FROM iasql_version()").fetchone() == ("0.1.0",)
            conn.execute("INSERT INTO kept VALUES (7)")
        assert conn.execute("SELECT a FROM kept").fetchone() == (7,)
        server.wait_native(1)
        # Each call came back to Python (the psycopg Query, then its answer's end).
        assert server.handbacks() - before >= 21
    server.wait_native(0)


async def test_prepared_iasql_statements_and_plain_ones_on_one_connection(
    server: NativeServer,
) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        for i in range(10):  # asyncpg prepares every statement: the iasql one is rewritten
            assert await conn.fetchval("SELECT $1::int * 2", i) == 2 * i
            assert await conn.fetchval("SELECT iasql_version()") == "0.1.0"
        assert server.native_sessions() == 1
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE numbers (n int)")
            await conn.executemany("INSERT INTO numbers VALUES ($1)", [(n,) for n in range(500)])
        assert await conn.fetchval("SELECT sum(n) FROM numbers") == sum(range(500))
    finally:
        await conn.close()


async def test_describes_of_plain_statements_stay_on_the_thread(server: NativeServer) -> None:
    # No statement cache: asyncpg sends Parse, Describe and Sync before every query.
    conn = await asyncpg.connect(server.dsn(), statement_cache_size=0)
    try:
        server.wait_native(1)
        before = server.handbacks()
        for i in range(50):
            assert await conn.fetchval(f"SELECT $1::int + {i}", i) == 2 * i
            if i % 10 == 0:  # the Parse fails: the server skips the Describe, up to the Sync
                with pytest.raises(asyncpg.UndefinedTableError):
                    await conn.fetchval("SELECT n FROM no_such_table WHERE n = $1", i)
        assert (server.handbacks() - before, server.native_sessions()) == (0, 1)
        # An iasql call in between goes to Python and back; the plain ones go on as before.
        assert await conn.fetchval("SELECT iasql_version()") == "0.1.0"
        server.wait_native(1)
        assert await conn.fetchval("SELECT $1::text", "after") == "after"
    finally:
        await conn.close()


def test_copy_large_frames_and_notifications(server: NativeServer) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE lines (a text)")
        with conn.cursor().copy("COPY lines FROM STDIN") as copy:
            for i in range(20_000):
                copy.write_row([f"line {i} " + "x" * 40])
        assert conn.execute("SELECT count(*) FROM lines").fetchone() == (20_000,)
        out = bytearray()
        with conn.cursor().copy("COPY lines TO STDOUT") as copy:
            for data in copy:
                out += data
        assert out.count(b"\n") == 20_000
        # A Query larger than the relay's buffer goes through Python, and back.
        big = "x" * (native.BUFFER_SIZE * 3)
        assert conn.execute(f"SELECT length('{big}')").fetchone() == (len(big),)
        assert conn.execute("SELECT %s::text", (big,)).fetchone() == (big,)
        server.wait_native(1)
        with psycopg.connect(server.dsn(), autocommit=True) as other:
            conn.execute("LISTEN native_channel")
            other.execute("NOTIFY native_channel, 'hello'")
            notice = next(conn.notifies(timeout=5))
            assert (notice.channel, notice.payload) == ("native_channel", "hello")


def test_a_cancel_reaches_a_query_the_thread_relays(server: NativeServer) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        server.wait_native(1)
        timer = threading.Timer(0.3, conn.cancel_safe)  # cancel() keeps the GIL
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_backend_that_dies_ends_the_session_and_frees_it(
    server: NativeServer, postgres: LocalPostgres
) -> None:
    conn = psycopg.connect(server.dsn(), autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    server.wait_native(1)
    connections = server.on_loop(lambda: len(server.proxy.connections))
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", pid)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    server.wait_native(0)
    deadline = time.monotonic() + 5
    while server.on_loop(lambda: len(server.proxy.connections)) >= connections:
        assert time.monotonic() < deadline, "the closed connection is still counted"
        time.sleep(0.01)


def test_closing_the_server_releases_native_sessions(postgres: LocalPostgres) -> None:
    with native_server(postgres) as running:
        conns = [psycopg.connect(running.dsn(), autocommit=True) for _ in range(3)]
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        running.wait_native(3)
        running.run(running.proxy.close())
        for conn in conns:  # closed by the server, not left hanging in the thread
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            conn.close()
        assert running.proxy.native is None


def test_tls_sessions_stay_on_the_asyncio_relay(iasql: RunningServer, tmp_path: Path) -> None:
    # Their bytes are decrypted in Python: the thread must never get their sockets.
    made = ensure_certificate(tmp_path, names_for("127.0.0.1"))
    assert made.ca is not None
    context = server_context(made.cert, made.key)
    engine, backend = iasql.proxy.engine, iasql.proxy.backend

    async def start() -> tuple[ProxyServer, int]:
        proxy = ProxyServer(
            engine, backend, max_message=1 << 20, ssl=context, require_tls=True, relay="native"
        )
        return proxy, await proxy.listen("127.0.0.1", 0)

    proxy, port = cast(tuple[ProxyServer, int], iasql.run(start()))
    tls = TlsServer("127.0.0.1", port, iasql.loop, proxy, ca=made.ca)
    try:
        with psycopg.connect(tls.tls_dsn(tls.dsn()), autocommit=True) as conn:
            for _ in range(3):
                assert conn.execute("SELECT 1").fetchone() == (1,)
                assert conn.execute("SELECT iasql_version()").fetchone() == ("0.1.0",)
            assert proxy.native is not None and proxy.native.sessions == 0
            assert [c.native_fds for c in proxy.connections] == [None]
    finally:
        iasql.run(proxy.close())


# --- the thread on socket pairs ---------------------------------------------------------------


class Returned:
    """An Owner for NativePlane.adopt that keeps what was handed back."""

    def __init__(self) -> None:
        self.handback: asyncio.Future[native.Handback] = asyncio.get_running_loop().create_future()

    def native_returned(self, handback: native.Handback) -> None:
        self.handback.set_result(handback)

    def close(self) -> None:
        pass


def received(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def test_the_thread_relays_and_loses_nothing_when_a_peer_closes() -> None:
    plane = native.NativePlane(needles(CATALOG), 4096)
    app, client_side = socket.socketpair()
    server_side, postgres = socket.socketpair()  # unix sockets: hang-up comes before the data
    for sock in (app, client_side, server_side, postgres):
        sock.setblocking(False)
    owner = Returned()
    try:
        plane.adopt(owner, client_side.fileno(), server_side.fileno(), (), 0, (), b"I")
        query, answer = (
            pg.query("SELECT 1"),
            frame(b"C", b"SELECT 1\x00") + pg.ready_for_query(b"I"),
        )
        app.send(query)
        deadline = time.monotonic() + 5
        seen = b""
        while len(seen) < len(query) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            seen += received(postgres)
        assert seen == query
        postgres.send(answer)
        farewell = pg.error_response("57P01", "terminating connection", fatal=True)
        postgres.send(farewell)
        postgres.close()
        handback = await asyncio.wait_for(owner.handback, 5)
        assert handback.ended and handback.syncs in (0, 1)
        # What the thread relayed, what it handed back, and what the socket still holds (the
        # transport reads it) are the backend's bytes, whole and in order.
        relayed = received(app) + handback.to_client + handback.server_rest
        assert relayed + received(server_side) == answer + farewell
    finally:
        plane.close()
        for sock in (app, client_side, server_side):
            sock.close()
