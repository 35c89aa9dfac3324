"""Malformed input at the port: answered with 08P01 (FATAL, and the connection ends, unless
the proxy relayed the message and Postgres itself kept the connection), and nothing else
notices: not the server, not other sessions, not the process's memory.

Every client here is a raw socket: before startup, between startup and authentication, and
after a real SCRAM login done by hand, so the exact bytes on the wire are under the test's
control. While they run, a bystander session keeps querying through the same server, and
each test ends by checking that the bystander still gets right answers, that the server's
event loop reported no exception, and that no client or backend connection was left over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from engine.core import server_version
from iasql.postgres import LocalPostgres
from tests.support.env import PASSWORD, SUPERUSER, RunningServer

MAX_MESSAGE = 1 << 20  # the `iasql` fixture's max_message
MAX_STARTUP = 10_000  # Postgres's limit for a startup packet, which the proxy shares
PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPpQSX")  # what a started client may send
DEADLINE = 5.0  # seconds any single answer may take; a hang is a failure, not a slow test
HANG = 2.5  # where a hang is the suspected failure: how long to wait before calling it one
APP_PREFIX = "fuzz-raw-"  # application_name of every raw login, to find leaked backends

_I32 = struct.Struct("!i")


# --- wire helpers -------------------------------------------------------------------------


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def cstr(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\x00"


def query(sql: str | bytes) -> bytes:
    return frame(b"Q", cstr(sql))


def parse(name: str, sql: str, types: list[int] | None = None) -> bytes:
    types = types or []
    body = cstr(name) + cstr(sql) + struct.pack("!h", len(types))
    return frame(b"P", body + b"".join(_I32.pack(t) for t in types))


def bind(
    statement: str, values: list[bytes | None], formats: list[int] | None = None, portal: str = ""
) -> bytes:
    formats = formats or []
    body = cstr(portal) + cstr(statement) + struct.pack("!h", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats) + struct.pack("!h", len(values))
    for value in values:
        body += _I32.pack(-1) if value is None else _I32.pack(len(value)) + value
    return frame(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "") -> bytes:
    return frame(b"E", cstr(portal) + _I32.pack(0))


SYNC = frame(b"S", b"")


def startup_packet(
    params: dict[str, str] | None = None, *, raw_params: bytes | None = None
) -> bytes:
    if raw_params is None:
        raw_params = b"".join(cstr(k) + cstr(v) for k, v in (params or {}).items()) + b"\x00"
    body = _I32.pack(PROTOCOL_V3) + raw_params
    return _I32.pack(len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse body, parsed strictly: code byte, text, NUL, ..., NUL."""
    fields: dict[str, str] = {}
    pos = 0
    while True:
        assert pos < len(body), f"ErrorResponse without its final NUL: {body!r}"
        if body[pos] == 0:
            assert pos == len(body) - 1, f"bytes after the final NUL: {body!r}"
            return fields
        end = body.index(b"\x00", pos + 1)
        fields[chr(body[pos])] = body[pos + 1 : end].decode()
        pos = end + 1


Message = tuple[bytes, bytes]


def describe(messages: list[Message]) -> list[Any]:
    """Messages in a readable form for assertion messages."""
    return [
        (kind, error_fields(body) if kind in b"EN" and body[-1:] == b"\x00" else body[:40])
        for kind, body in messages
    ]


def errors_in(messages: list[Message]) -> list[dict[str, str]]:
    return [error_fields(body) for kind, body in messages if kind == b"E"]


class Torn(AssertionError):
    """The server's answer ended in the middle of a message."""


class Wire:
    """A raw client socket. Reads go through our own buffer so that bytes the server sent
    before resetting the connection are still seen (asyncio streams drop them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    async def connect(cls, server: RunningServer) -> Wire:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        return cls(sock)

    async def send(self, data: bytes) -> bool:
        """False when the server had already closed the connection."""
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(self.sock, data), 10)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    async def _fill(self, size: int) -> bool:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < size and not self.eof:
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buffer += chunk
        return len(self.buffer) >= size

    async def read_to_eof(self, timeout: float = DEADLINE) -> bytes:
        """Every byte until the server closes; TimeoutError if it does not."""

        async def drain() -> bytes:
            while not self.eof:
                await self._fill(len(self.buffer) + 1)
            data = bytes(self.buffer)
            self.buffer.clear()
            return data

        return await asyncio.wait_for(drain(), timeout)

    async def message(self) -> Message | None:
        """The next whole message, or None at a clean end of stream."""
        if not await self._fill(5):
            if self.buffer:
                raise Torn(f"stream ends inside a message header: {bytes(self.buffer)!r}")
            return None
        length = _I32.unpack_from(self.buffer, 1)[0]
        assert length >= 4, f"server sent a message with length {length}"
        if not await self._fill(1 + length):
            raise Torn(f"stream ends inside a {bytes(self.buffer[:1])!r} message")
        kind, body = bytes(self.buffer[:1]), bytes(self.buffer[5 : 1 + length])
        del self.buffer[: 1 + length]
        return kind, body

    async def until(self, kinds: bytes = b"Z", timeout: float = DEADLINE) -> list[Message]:
        """Messages up to and including one of `kinds`, or up to the end of the stream."""

        async def collect() -> list[Message]:
            found: list[Message] = []
            while (item := await self.message()) is not None:
                found.append(item)
                if item[0] in kinds:
                    break
            return found

        return await asyncio.wait_for(collect(), timeout)

    async def to_eof(self, timeout: float = DEADLINE) -> list[Message]:
        """Every message until the server closes; TimeoutError if it does not."""
        messages = await self.until(b"", timeout)
        assert self.eof
        return messages


_salted: dict[tuple[str, int], bytes] = {}  # PBKDF2 once per salt, not once per login


async def sasl_exchange(wire: Wire) -> list[Message]:
    """Authenticates a started connection with SCRAM-SHA-256; returns what follows the
    authentication up to ReadyForQuery."""
    _, body = await _expect(wire, b"R")
    assert _I32.unpack_from(body)[0] == 10 and b"SCRAM-SHA-256\x00" in body[4:], body
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = f"n,,{first_bare}".encode()
    await wire.send(frame(b"p", cstr("SCRAM-SHA-256") + _I32.pack(len(first)) + first))
    _, body = await _expect(wire, b"R")
    assert _I32.unpack_from(body)[0] == 11, body
    server_first = body[4:].decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    assert attrs["r"].startswith(nonce)
    key = (attrs["s"], int(attrs["i"]))
    if key not in _salted:
        _salted[key] = hashlib.pbkdf2_hmac(
            "sha256", PASSWORD.encode(), base64.b64decode(key[0]), key[1]
        )
    client_key = hmac.new(_salted[key], b"Client Key", "sha256").digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    await wire.send(frame(b"p", f"{without_proof},p={proof.decode()}".encode()))
    _, body = await _expect(wire, b"R")
    assert _I32.unpack_from(body)[0] == 12, body  # SASLFinal
    _, body = await _expect(wire, b"R")
    assert _I32.unpack_from(body)[0] == 0, body  # AuthenticationOk
    rest = await wire.until(b"ZE")
    assert rest and rest[-1][0] == b"Z", describe(rest)
    return rest


async def _expect(wire: Wire, kind: bytes) -> Message:
    item = await asyncio.wait_for(wire.message(), DEADLINE)
    assert item is not None and item[0] == kind, (kind, item and describe([item]))
    return item


async def login(server: RunningServer, app: str = "") -> Wire:
    """A raw connection that went through startup and SCRAM, idle after ReadyForQuery."""
    wire = await Wire.connect(server)
    name = APP_PREFIX + (app or uuid.uuid4().hex[:8])
    await wire.send(
        startup_packet({"user": SUPERUSER, "database": "postgres", "application_name": name})
    )
    await sasl_exchange(wire)
    return wire


async def assert_protocol_violation(wire: Wire) -> None:
    """The answer to a malformed message is an 08P01 error. When the proxy judges it, that
    is FATAL and the connection ends; when it is relayed, Postgres answers with its own 08P01
    ERROR and keeps the connection, which must then still be usable and in step."""
    answer = await wire.until()
    if wire.eof:
        assert_fatal_protocol_violation(answer, wire)
        return
    errors = errors_in(answer)
    assert [e["C"] for e in errors] == ["08P01"], describe(answer)
    assert errors[0]["S"] == "ERROR" and answer[-1] == (b"Z", b"I"), describe(answer)
    await assert_usable(wire)


def assert_fatal_protocol_violation(messages: list[Message], wire: Wire) -> dict[str, str]:
    """The answer ends with one FATAL 08P01 ErrorResponse and then the server closed."""
    assert wire.eof, "the server did not close the connection"
    assert messages, "the server closed the connection without an ErrorResponse"
    kind, body = messages[-1]
    assert kind == b"E", f"last message before the close is not an error: {describe(messages)}"
    fields = error_fields(body)
    assert fields.get("C") == "08P01" and fields.get("S") == "FATAL", fields
    return fields


async def assert_usable(wire: Wire, token: str | None = None) -> None:
    """The connection answers a fresh query correctly."""
    token = token or uuid.uuid4().hex
    await wire.send(query(f"SELECT '{token}'"))
    answer = await wire.until()
    rows = [body for kind, body in answer if kind == b"D"]
    assert len(rows) == 1 and rows[0].endswith(token.encode()), describe(answer)
    assert answer[-1] == (b"Z", b"I"), describe(answer)


# --- the bystander and the leak checks ----------------------------------------------------


class Bystander(threading.Thread):
    """One ordinary psycopg session querying in a loop, checking every answer."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="fuzz-bystander", daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        version = server_version()
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=10, application_name="fuzz-bystander"
            ) as conn:
                self.ready.set()
                i = 0
                while not self.stop.is_set():
                    i += 1
                    if i % 3 == 0:
                        got: Any = conn.execute("SELECT %s::int * 2, %s::text", (i, f"v{i}"))
                        expected: Any = (2 * i, f"v{i}")
                    elif i % 3 == 1:
                        got = conn.execute(f"SELECT {i} + 1, repeat('x', {i % 50})")
                        expected = (i + 1, "x" * (i % 50))
                    else:
                        got = conn.execute("SELECT version FROM iasql_version()")
                        expected = (version,)
                    row = got.fetchone()
                    if row != expected:
                        self.failures.append(f"query {i}: got {row!r}, expected {expected!r}")
                    self.answered += 1
                    time.sleep(0.002)
        except Exception as exc:
            self.failures.append(f"bystander failed: {type(exc).__name__}: {exc}")
        finally:
            self.ready.set()


@pytest.fixture(scope="module")
def bystander(iasql: RunningServer) -> Iterator[Bystander]:
    worker = Bystander(iasql.dsn())
    worker.start()
    assert worker.ready.wait(15) and not worker.failures, worker.failures
    yield worker
    worker.stop.set()
    worker.join(10)


@dataclass
class LoopErrors:
    """What the server's event loop and the proxy logger report: a crash in a protocol
    callback or a task shows up here even when the client only sees a closed socket."""

    seen: list[str] = field(default_factory=list)


class _ProxyLogHandler(logging.Handler):
    def __init__(self, sink: LoopErrors) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.seen.append(f"log {record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def loop_errors(iasql: RunningServer) -> Iterator[LoopErrors]:
    sink = LoopErrors()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        sink.seen.append(f"{context.get('message')}: {type(exc).__name__}: {exc}")
        loop.default_exception_handler(context)

    iasql.loop.call_soon_threadsafe(iasql.loop.set_exception_handler, handler)
    log_handler = _ProxyLogHandler(sink)
    logging.getLogger("iasql.proxy").addHandler(log_handler)
    yield sink
    logging.getLogger("iasql.proxy").removeHandler(log_handler)
    iasql.loop.call_soon_threadsafe(iasql.loop.set_exception_handler, None)


async def client_connections(server: RunningServer) -> set[Any]:
    """The proxy's client connections, read on the server's own thread (the set changes)."""

    async def snapshot() -> set[Any]:
        return set(server.proxy.connections)

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(snapshot(), server.loop))


async def _raw_backends(postgres: LocalPostgres) -> set[int]:
    """Backend pids of this file's raw logins (and of bad clients that got that far)."""
    conn = await asyncpg.connect(postgres.dsn())
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1", APP_PREFIX + "%"
        )
    finally:
        await conn.close()
    return {row["pid"] for row in rows}


@dataclass
class Health:
    server: RunningServer
    postgres: LocalPostgres
    bystander: Bystander
    errors: LoopErrors
    connections: set[Any]  # the proxy's client connections when the test started
    backends: set[int]
    answered: int
    first_error: int

    async def check(self) -> None:
        """Call at the end of a test: the bystander kept working, nothing crashed, nothing
        leaked (client connections and backends both return to where they were)."""
        target = self.bystander.answered + 3
        deadline = time.monotonic() + DEADLINE
        while self.bystander.answered < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not self.bystander.failures, self.bystander.failures
        assert self.bystander.answered >= target, "the bystander session stopped answering"
        assert self.bystander.answered > self.answered

        while time.monotonic() < deadline:
            if not await client_connections(self.server) - self.connections:
                break
            await asyncio.sleep(0.02)
        leaked = await client_connections(self.server) - self.connections
        assert not leaked, f"{len(leaked)} client connection(s) still open"
        while time.monotonic() < deadline and await _raw_backends(self.postgres) - self.backends:
            await asyncio.sleep(0.05)
        assert not await _raw_backends(self.postgres) - self.backends, "backend(s) still open"
        assert self.errors.seen[self.first_error :] == [], "the server's event loop reported errors"


@pytest.fixture
async def health(
    iasql: RunningServer, postgres: LocalPostgres, bystander: Bystander, loop_errors: LoopErrors
) -> AsyncIterator[Health]:
    before = await client_connections(iasql)
    yield Health(
        iasql,
        postgres,
        bystander,
        loop_errors,
        before,
        await _raw_backends(postgres),
        bystander.answered,
        len(loop_errors.seen),
    )
    # A test that failed may leave a connection the proxy never closes: close it here, so
    # that later tests (in this file or others) start from a clean server.
    leftovers = await client_connections(iasql) - before

    async def close_all() -> None:
        for conn in leftovers:
            conn.close()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close_all(), iasql.loop))


async def run_all(coroutines: list[Any], limit: int = 16) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coroutines))


# --- 1. garbage before startup ------------------------------------------------------------


@dataclass(frozen=True)
class StartupOutcome:
    declined: int  # how many SSLRequest/GSSENCRequest were answered 'N'
    error: str | None  # SQLSTATE of the FATAL error, or None for a close without one
    started: bool = False  # a startup packet went through to the backing Postgres


def expected_startup_outcome(data: bytes) -> StartupOutcome:
    """What the server must do with `data` followed by end of stream, before any startup
    (protocol v3, section 55.2.1, with Postgres's own 10 000-byte startup limit)."""
    declined = 0
    while True:
        if len(data) < 4:
            return StartupOutcome(declined, None)  # still waiting for a length: just close
        length = _I32.unpack_from(data)[0]
        if not 8 <= length <= MAX_STARTUP:
            return StartupOutcome(declined, "08P01")
        if len(data) < length:
            return StartupOutcome(declined, None)  # truncated packet: just close
        code = _I32.unpack_from(data, 4)[0]
        if code in (SSL_REQUEST, GSSENC_REQUEST) and length == 8:
            declined += 1
            data = data[8:]
            continue
        if code == CANCEL_REQUEST and length == 16:
            return StartupOutcome(declined, None)  # the cancel is forwarded, then closed
        if code >> 16 != 3:
            return StartupOutcome(declined, "08P01")
        params = _startup_params(data[8:length])
        if params is None:
            return StartupOutcome(declined, "08P01")
        if not params.get("user"):
            return StartupOutcome(declined, "28000")
        return StartupOutcome(declined, None, started=True)


def _startup_params(raw: bytes) -> dict[str, str] | None:
    """The key/value pairs of a startup packet, or None when they are malformed."""
    parts = raw.split(b"\x00")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2:
        return None  # not NUL-terminated pairs followed by the terminating NUL
    try:
        texts = [p.decode() for p in parts[:-2]]
    except UnicodeDecodeError:
        return None
    if any(not key for key in texts[::2]):
        return None
    return dict(zip(texts[::2], texts[1::2], strict=True))


def random_pre_startup(rng: random.Random) -> bytes:
    """Random bytes, plus random bytes shaped like the things a client may send first."""
    kind = rng.choices(range(8), [5, 1, 1, 1, 1, 1, 1, 1])[0]
    noise = rng.randbytes
    if kind == 0:  # pure noise, sometimes shorter than a length word
        return noise(rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 16, 64, 300, 5000, 70_000]))
    if kind == 1:  # a plausible length, then noise
        length = rng.randrange(8, 200)
        return _I32.pack(length) + noise(rng.choice([length - 4, length - 5, length + 20]))
    if kind == 2:  # a v3 startup header with noise where the parameters go
        body = _I32.pack(PROTOCOL_V3) + bytes(
            rng.choice(b"\x00\x00auserxyz\xff") for _ in range(rng.randrange(0, 40))
        )
        return _I32.pack(len(body) + 4) + body
    if kind == 3:  # a valid startup packet, truncated or with one byte changed
        packet = bytearray(startup_packet({"user": "fuzz_nobody", "database": "nowhere"}))
        if rng.random() < 0.5:
            return bytes(packet[: rng.randrange(len(packet))])
        packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)
    if kind == 4:  # a declined SSL/GSS request, then noise
        code = rng.choice([SSL_REQUEST, GSSENC_REQUEST])
        return _I32.pack(8) + _I32.pack(code) + noise(rng.randrange(0, 24))
    if kind == 5:  # a cancel request for a key nobody holds, then noise
        return _I32.pack(16) + _I32.pack(CANCEL_REQUEST) + noise(8 + rng.randrange(0, 8))
    if kind == 6:  # another protocol version
        major = rng.choice([0, 1, 2, 4, 1234, 0xFFFF])
        return _I32.pack(8 + 9) + struct.pack("!HH", major, 0) + cstr("user") + cstr("x") + b"\x00"
    # a startup packet whose parameters are malformed in one of the ways Postgres rejects
    raw = rng.choice(
        [
            b"user\x00alice",  # unterminated value
            b"user\x00alice\x00",  # no final NUL
            b"user\x00\xff\xfe\x00\x00",  # value not UTF-8
            b"\x00",  # no parameters at all, so no user
            b"database\x00db\x00\x00",  # no user
            b"user\x00alice\x00\x00trailing",  # bytes after the final NUL
        ]
    )
    return startup_packet(raw_params=raw)


async def pre_startup_case(
    server: RunningServer, data: bytes
) -> tuple[bytes, StartupOutcome, bytes]:
    expected = expected_startup_outcome(data)
    wire = await Wire.connect(server)
    try:
        await wire.send(data)
        wire.shutdown_write()  # the rest never comes: a server waiting for it must close
        answer = await wire.read_to_eof()
    finally:
        wire.close()
    return data, expected, answer


def check_pre_startup_answer(data: bytes, expected: StartupOutcome, answer: bytes) -> None:
    context = f"sent {data[:80]!r}{'...' if len(data) > 80 else ''}: answer {answer[:200]!r}"
    declined = len(answer) - len(answer.lstrip(b"N"))
    assert declined == expected.declined, context
    rest = answer[declined:]
    if expected.started:
        return  # the backing Postgres answered it; only the close matters
    if expected.error is None:
        assert rest == b"", context
        return
    assert rest[:1] == b"E", context
    length = _I32.unpack_from(rest, 1)[0]
    assert len(rest) == 1 + length, f"not exactly one ErrorResponse: {context}"
    fields = error_fields(rest[5:])
    assert fields["S"] == "FATAL" and fields["C"] == expected.error, context


async def test_random_garbage_before_startup(iasql: RunningServer, health: Health) -> None:
    rng = random.Random(0x1A5C1)
    inputs = [random_pre_startup(rng) for _ in range(200)]
    outcomes = {expected_startup_outcome(d).error for d in inputs}
    assert {None, "08P01", "28000"} <= outcomes  # the generator reaches every branch
    results = await run_all([pre_startup_case(iasql, data) for data in inputs], limit=20)
    for data, expected, answer in results:
        check_pre_startup_answer(data, expected, answer)
    await health.check()


@pytest.mark.parametrize(
    "length", [0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 100_000_000, 0, 3, 4, 7, MAX_STARTUP + 1]
)
async def test_absurd_startup_length(iasql: RunningServer, health: Health, length: int) -> None:
    wire = await Wire.connect(iasql)
    try:
        # No more bytes follow, and the write side stays open: the server must answer from
        # the length alone, without waiting for (or buffering) the packet it announces.
        await wire.send(struct.pack("!I", length) + _I32.pack(PROTOCOL_V3))
        messages = await wire.to_eof()
    finally:
        wire.close()
    fields = assert_fatal_protocol_violation(messages, wire)
    assert len(messages) == 1 and "length" in fields["M"]
    await health.check()


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (struct.pack("!ii", 8, SSL_REQUEST) + b"\xff" * 8, StartupOutcome(1, "08P01")),
        (struct.pack("!ii", 8, GSSENC_REQUEST) + b"\x00" * 8, StartupOutcome(1, "08P01")),
        (struct.pack("!ii", 12, SSL_REQUEST) + b"abcd", StartupOutcome(0, "08P01")),
        (struct.pack("!ii", 8, CANCEL_REQUEST), StartupOutcome(0, "08P01")),
        (struct.pack("!iiii", 16, CANCEL_REQUEST, 1, 2), StartupOutcome(0, None)),
        (struct.pack("!ii", 8, 0x00020000), StartupOutcome(0, "08P01")),
        (startup_packet(raw_params=b"user\x00alice"), StartupOutcome(0, "08P01")),
        (startup_packet(raw_params=b"user\x00\xc3\x28\x00\x00"), StartupOutcome(0, "08P01")),
        (startup_packet(raw_params=b"user\x00a\x00\x00\x00"), StartupOutcome(0, "08P01")),
        (startup_packet({"database": "postgres"}), StartupOutcome(0, "28000")),
        (startup_packet({"user": SUPERUSER})[:-3], StartupOutcome(0, None)),
        (b"\x00\x00", StartupOutcome(0, None)),
    ],
    ids=[
        "ssl-then-garbage",
        "gssenc-then-garbage",
        "ssl-code-wrong-length",
        "cancel-too-short",
        "cancel-unknown-key",
        "protocol-2",
        "unterminated-parameter",
        "parameter-not-utf8",
        "bytes-after-parameters",
        "no-user",
        "truncated-startup",
        "truncated-length",
    ],
)
async def test_startup_edge_cases(
    iasql: RunningServer, health: Health, data: bytes, outcome: StartupOutcome
) -> None:
    assert expected_startup_outcome(data) == outcome  # the oracle agrees with the spec
    check_pre_startup_answer(*(await pre_startup_case(iasql, data)))
    await health.check()


async def test_flood_of_ssl_requests(iasql: RunningServer, health: Health) -> None:
    """Postgres declines one SSLRequest and rejects a second one with 08P01; the proxy may
    decline more, but hundreds of them in one read must still end in an 08P01, not in a
    crash of the connection's read callback."""
    wire = await Wire.connect(iasql)
    try:
        await wire.send(struct.pack("!ii", 8, SSL_REQUEST) * 600 + b"\xff" * 8)
        answer = await wire.read_to_eof()
    finally:
        wire.close()
    declined = len(answer) - len(answer.lstrip(b"N"))
    assert declined >= 1, f"no SSLRequest was declined; the answer was {answer[:100]!r}"
    rest = answer[declined:]
    assert rest[:1] == b"E", f"no ErrorResponse after {declined} 'N': {rest[:100]!r}"
    assert error_fields(rest[5:])["C"] == "08P01"
    await health.check()


# --- 2. garbage after startup, before authentication --------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        frame(b"\x00", b""),
        frame(b"Z", b"I"),
        b"Q" + _I32.pack(2),
        b"p" + _I32.pack(-1),
        b"p" + _I32.pack(MAX_MESSAGE + 1),
        query("SELECT 1"),  # a query where the password should be
        frame(b"p", b"no terminator"),
        frame(b"p", cstr("NO-SUCH-MECHANISM") + _I32.pack(3) + b"abc"),
        frame(b"p", cstr("SCRAM-SHA-256") + _I32.pack(7) + b"garbage"),
    ],
    ids=[
        "type-nul",
        "type-Z",
        "length-2",
        "length-minus-1",
        "length-over-limit",
        "query-instead-of-password",
        "password-unterminated",
        "unknown-sasl-mechanism",
        "malformed-scram",
    ],
)
async def test_garbage_before_authentication(
    iasql: RunningServer, health: Health, garbage: bytes
) -> None:
    wire = await Wire.connect(iasql)
    try:
        app = APP_PREFIX + uuid.uuid4().hex[:8]
        params = {"user": SUPERUSER, "database": "postgres", "application_name": app}
        await wire.send(startup_packet(params) + garbage)
        messages = await wire.to_eof()
    finally:
        wire.close()
    assert [kind for kind, _ in messages[:-1]] in ([], [b"R"])  # maybe the SASL request first
    assert_fatal_protocol_violation(messages, wire)
    await health.check()


async def test_pipelined_iasql_call_before_authentication_never_reaches_the_engine(
    iasql: RunningServer, health: Health, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Query pipelined behind the startup packet arrives where the password belongs:
    Postgres rejects it (08P01). The proxy must not run iasql functions for a client that has
    not authenticated, under a user name it merely claims."""
    engine = iasql.proxy.engine
    user = f"fuzz_nobody_{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    real_call = engine.call

    async def spy(spec: Any, ctx: Any, arguments: Any) -> Any:
        if ctx.user == user:
            seen.append(spec.name)
        return await real_call(spec, ctx, arguments)

    monkeypatch.setattr(engine, "call", spy)
    wire = await Wire.connect(iasql)
    try:
        await wire.send(
            startup_packet({"user": user, "database": "postgres"})
            + query("SELECT * FROM iasql_version()")
        )
        messages = await wire.to_eof()
    finally:
        wire.close()
    assert_fatal_protocol_violation(messages, wire)
    assert seen == [], f"the engine ran {seen} for an unauthenticated client"
    await health.check()


async def test_pipelined_bad_iasql_call_before_authentication(
    iasql: RunningServer, health: Health
) -> None:
    wire = await Wire.connect(iasql)
    try:
        await wire.send(
            startup_packet(
                {"user": SUPERUSER, "database": "postgres", "application_name": APP_PREFIX + "cast"}
            )
            + query("SELECT iasql_version('x'::int)")
        )
        try:
            messages = await wire.to_eof(HANG)
        except TimeoutError:
            pytest.fail(f"no answer and no close within {HANG}s")
    finally:
        wire.close()
    assert_fatal_protocol_violation(messages, wire)
    await health.check()


# --- 3. malformed messages after a real login ---------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        frame(b"\x00", b""),
        frame(b"Z", b"I"),
        frame(b"q", cstr("SELECT 1")),
        frame(b"\xff", b"\xff" * 16),
        b"Q" + _I32.pack(0),
        b"Q" + _I32.pack(3),
        b"S" + _I32.pack(-1),
        b"d" + _I32.pack(-(2**31)),
        b"Q" + _I32.pack(MAX_MESSAGE + 1),
        b"P" + _I32.pack(0x7FFFFFFF),
        b"d" + _I32.pack(0x40000000),
        b"B" + _I32.pack(MAX_MESSAGE * 16),
    ],
    ids=[
        "type-nul",
        "type-Z",
        "type-lowercase-q",
        "type-ff",
        "length-0",
        "length-3",
        "length-minus-1",
        "length-min-int",
        "query-over-limit",
        "parse-2GiB",
        "copydata-1GiB",
        "bind-16MiB",
    ],
)
async def test_invalid_frame_after_login(
    iasql: RunningServer, health: Health, garbage: bytes
) -> None:
    """Only the header is sent, and the write side stays open: the server must answer from
    the header alone, never waiting for (or buffering) a body it announced."""
    wire = await login(iasql)
    try:
        await wire.send(garbage)
        messages = await wire.to_eof()
    finally:
        wire.close()
    assert_fatal_protocol_violation(messages, wire)
    assert len(messages) == 1, describe(messages)
    await health.check()


async def test_message_size_limit_is_exact(iasql: RunningServer, health: Health) -> None:
    wire = await login(iasql)
    try:
        filler = "x" * (MAX_MESSAGE - 4 - len("SELECT length('')\0"))
        largest = query(f"SELECT length('{filler}')")
        assert len(largest) == 1 + MAX_MESSAGE
        await wire.send(largest)
        answer = await wire.until()
        value = str(len(filler)).encode()
        rows = [body for kind, body in answer if kind == b"D"]
        assert rows == [b"\x00\x01" + _I32.pack(len(value)) + value], describe(answer)
        await wire.send(query(f"SELECT length('{filler}x')"))
        messages = await wire.to_eof()
    finally:
        wire.close()
    fields = assert_fatal_protocol_violation(messages, wire)
    assert str(MAX_MESSAGE + 1) in fields["M"]
    await health.check()


@pytest.mark.parametrize(
    "partial",
    [
        b"Q",
        b"Q\x00\x00",
        b"Q" + _I32.pack(100) + b"SELECT",
        b"P" + _I32.pack(MAX_MESSAGE) + b"\x00SELECT 1" + b" " * 50_000,
        b"d" + _I32.pack(MAX_MESSAGE) + b"\x00" * 200_000,
        query("SELECT 1") + b"B" + _I32.pack(20),
    ],
    ids=["type-only", "half-length", "query-body", "big-parse", "big-copydata", "after-a-query"],
)
async def test_truncated_message_then_close(
    iasql: RunningServer, health: Health, partial: bytes
) -> None:
    """The client vanishes inside a message: no error is owed, but the client connection and
    its backend must both go away (health.check looks for both)."""
    wire = await login(iasql)
    await wire.send(partial)
    await asyncio.sleep(0.05)  # let the server take in the partial message first
    wire.close()
    await health.check()


REWRITTEN = parse("fz", "SELECT version FROM iasql_version() WHERE $1::int > 0") + SYNC
TEXT_STATEMENT = parse("", "SELECT $1::text")


@pytest.mark.parametrize(
    ("setup", "garbage"),
    [
        # relayed as they are: Postgres judges them
        (b"", frame(b"Q", b"")),
        (b"", frame(b"Q", b"SELECT 1")),
        (b"", frame(b"Q", b"SELECT 1\x00trailing")),
        (b"", frame(b"P", b"\x00SELECT 1") + SYNC),
        (b"", frame(b"P", b"\x00SELECT 1\x00\x00\x05\x00\x00") + SYNC),
        (b"", parse("", "SELECT $1::int") + bind("", [b"1", b"2"]) + execute() + SYNC),
        (b"", TEXT_STATEMENT + frame(b"B", b"\x00\x00\xff\xff") + SYNC),
        (
            b"",
            TEXT_STATEMENT
            + frame(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x10\x00ab\x00\x00")
            + SYNC,
        ),
        (b"", frame(b"E", b"\x00") + SYNC),
        (b"", frame(b"D", b"X\x00") + SYNC),
        (b"", frame(b"D", b"S") + SYNC),
        (b"", frame(b"C", b"") + SYNC),
        (b"", frame(b"F", b"\x00\x00")),  # FunctionCall: answered by its own ReadyForQuery
        # Query/Parse naming an iasql function: the proxy decodes them
        (b"", frame(b"Q", b"SELECT * FROM iasql_version()")),
        (b"", frame(b"Q", b"SELECT * FROM iasql_version()\x00\x00")),
        (b"", frame(b"Q", b"SELECT iasql_version() -- \xff\xfe\x00")),
        (b"", frame(b"P", b"\x00SELECT * FROM iasql_version()\x00\xff\xff") + SYNC),
        (b"", frame(b"P", b"\x00SELECT iasql_version()\x00\x00\x01\x00") + SYNC),
        # Bind/Describe/Close while a rewritten statement exists: the proxy decodes them
        (REWRITTEN, frame(b"B", b"\x00fz\x00\xff\xff") + SYNC),
        (
            REWRITTEN,
            frame(b"B", b"\x00fz\x00\x00\x02\x00\x00\x00\x00\x00\x03" + b"\xff" * 12 + b"\x00\x00")
            + SYNC,
        ),
        (REWRITTEN, frame(b"B", b"\x00fz\x00\x00\x00\x00\x01\x00\x00\x01\x00x\x00\x00") + SYNC),
        (REWRITTEN, frame(b"B", b"\xff\x00fz\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00") + SYNC),
        (REWRITTEN, frame(b"B", b"\x00fz\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00junk") + SYNC),
        (REWRITTEN, frame(b"D", b"Sfz") + SYNC),
        (REWRITTEN, frame(b"D", b"Sfz\x00junk") + SYNC),
        (REWRITTEN, frame(b"C", b"S\xff\x00") + SYNC),
    ],
    ids=[
        "query-empty",
        "query-no-nul",
        "query-trailing-bytes",
        "parse-sql-unterminated",
        "parse-types-cut-short",
        "bind-2-values-for-1",
        "bind-65535-formats-absent",
        "bind-value-overruns",
        "execute-no-row-limit",
        "describe-bad-target",
        "describe-name-unterminated",
        "close-empty",
        "function-call-cut-short",
        "iasql-query-no-nul",
        "iasql-query-trailing-byte",
        "iasql-query-not-utf8",
        "iasql-parse-negative-type-count",
        "iasql-parse-type-cut-short",
        "rewritten-bind-negative-format-count",
        "rewritten-bind-2-formats-3-values",
        "rewritten-bind-value-overruns",
        "rewritten-bind-portal-not-utf8",
        "rewritten-bind-trailing-bytes",
        "rewritten-describe-name-unterminated",
        "rewritten-describe-trailing-bytes",
        "rewritten-close-name-not-utf8",
    ],
)
async def test_malformed_message_body(
    iasql: RunningServer, health: Health, setup: bytes, garbage: bytes
) -> None:
    wire = await login(iasql)
    try:
        if setup:
            await wire.send(setup)
            answer = await wire.until()
            assert not errors_in(answer), describe(answer)
        await wire.send(garbage)
        await assert_protocol_violation(wire)
    finally:
        wire.close()
    await health.check()


# --- 4. input reaching the proxy's own decoding, engine and bookkeeping paths -------------


@pytest.mark.parametrize(
    "trigger",
    [
        query("SELECT iasql_version('abc'::int)"),
        query("SELECT * FROM iasql_version('1e5'::bigint)"),
        parse("", "SELECT * FROM iasql_version($1::int)") + bind("", [b"abc"]) + execute() + SYNC,
    ],
    ids=["query-cast", "query-cast-bigint", "bind-text-param-cast"],
)
async def test_uncastable_iasql_argument_is_an_error_not_a_dropped_connection(
    iasql: RunningServer, health: Health, trigger: bytes
) -> None:
    """Postgres answers `'abc'::int` with 22P02 and carries on; so must an iasql call."""
    wire = await login(iasql)
    try:
        await wire.send(trigger)
        answer = await wire.until()
        assert not wire.eof, f"connection dropped; got {describe(answer)}"
        errors = errors_in(answer)
        assert len(errors) == 1 and errors[0]["S"] == "ERROR", describe(answer)
        assert errors[0]["C"] != "XX000" and answer[-1][0] == b"Z", describe(answer)
        await assert_usable(wire)
    finally:
        wire.close()
    await health.check()


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (1184, b"\x01\x02\x03"),
        (1114, b""),
        (1009, b"\x00\x00\x00\x01"),
        (1009, struct.pack("!5i", 1, 0, 25, 5, 1)),
    ],
    ids=[
        "timestamptz-3-bytes",
        "timestamp-empty",
        "text-array-cut-short",
        "text-array-missing-items",
    ],
)
async def test_undecodable_binary_parameter_is_an_error_not_a_dropped_connection(
    iasql: RunningServer, health: Health, oid: int, value: bytes
) -> None:
    """A binary parameter of an iasql call that cannot be decoded: Postgres says 22P03
    for its own parameters; the proxy must answer with an error too, and carry on."""
    wire = await login(iasql)
    try:
        await wire.send(
            parse("", "SELECT * FROM iasql_version($1)", [oid])
            + bind("", [value], formats=[1])
            + execute()
            + SYNC
        )
        answer = await wire.until()
        assert not wire.eof, f"connection dropped; got {describe(answer)}"
        errors = errors_in(answer)
        assert len(errors) == 1 and errors[0]["S"] == "ERROR", describe(answer)
        assert errors[0]["C"] != "XX000" and answer[-1] == (b"Z", b"I"), describe(answer)
        await assert_usable(wire)
    finally:
        wire.close()
    await health.check()


async def test_empty_parse_after_a_rewritten_statement(
    iasql: RunningServer, health: Health
) -> None:
    """A Parse with no body at all (length 4), arriving on its own, once the session holds a
    statement the proxy rewrote."""
    wire = await login(iasql)
    try:
        await wire.send(REWRITTEN)
        assert not errors_in(await wire.until())
        await wire.send(frame(b"P", b""))
        await asyncio.sleep(0.05)  # so that the Parse is the last thing the server has read
        await wire.send(SYNC)
        await assert_protocol_violation(wire)
    finally:
        wire.close()
    await health.check()


async def test_function_call_answer_keeps_the_proxy_in_step(
    iasql: RunningServer, health: Health
) -> None:
    """A FunctionCall (here a malformed one) is answered by its own ReadyForQuery. Pipelined
    with a Query that mixes SQL and an iasql call, each must get its own answer."""
    wire = await login(iasql)
    try:
        await wire.send(
            frame(b"F", b"\x00\x00") + query("SELECT 7; SELECT version FROM iasql_version()")
        )
        first = await wire.until()
        assert [k for k, _ in first] == [b"E", b"Z"], describe(first)
        assert errors_in(first)[0]["C"] == "08P01"
        second = await wire.until()
        assert [k for k, _ in second] == [b"T", b"D", b"C", b"T", b"D", b"C", b"Z"], describe(
            second
        )
    finally:
        wire.close()
    await health.check()


# --- 5. random mutations of a valid stream ------------------------------------------------

VALID_STREAM = [
    query("SELECT 1"),
    parse("", "SELECT $1::int + 1", [23]),
    bind("", [b"41"]),
    frame(b"D", b"P\x00"),
    execute(),
    SYNC,
    parse("fz", "SELECT version FROM iasql_version() WHERE $1::int > 0"),
    bind("fz", [b"1"]),
    frame(b"D", b"Sfz\x00"),
    execute(),
    SYNC,
    query("SELECT 'a'; SELECT 2"),
    frame(b"C", b"Sfz\x00") + SYNC,
]
INTERESTING_LENGTHS = [0, 1, 3, 4, 5, -1, -(2**31), 2**31 - 1, MAX_MESSAGE, MAX_MESSAGE + 1, 10_001]
BACKEND_TYPES = frozenset(b"RKSZTDCEN1234tnsIGHWdcAv")


def mutate(rng: random.Random) -> bytes:
    """One to three frame-level changes, then (sometimes) a little byte-level damage."""
    frames = [bytearray(f) for f in VALID_STREAM]
    for _ in range(rng.randrange(1, 4)):
        op = rng.choices(["body", "length", "reorder", "type", "cut"], [6, 2, 3, 1, 1])[0]
        index = rng.randrange(len(frames))
        if op == "body":  # bytes of a body changed, inserted or deleted; the length follows
            body = frames[index][5:]
            at = rng.randrange(len(body) + 1)
            change = rng.randrange(3)
            if change == 0 and body:
                body[min(at, len(body) - 1)] = rng.choice([0, 0xFF, rng.randrange(256)])
            elif change == 1:
                body[at:at] = rng.choice([b"\x00", b"\xff\xff", rng.randbytes(rng.randrange(1, 6))])
            else:
                del body[at : at + rng.randrange(1, 5)]
            frames[index] = bytearray(frame(bytes(frames[index][:1]), bytes(body)))
        elif op == "length":  # a length word replaced by an interesting or nearby value
            current = _I32.unpack_from(frames[index], 1)[0]
            value = rng.choice([*INTERESTING_LENGTHS, current + rng.randint(-6, 6)])
            frames[index][1:5] = _I32.pack(value)
        elif op == "reorder":  # a frame dropped, moved or repeated
            moved = frames.pop(index)
            if rng.random() < 0.6:
                frames.insert(rng.randrange(len(frames) + 1), moved)
            if rng.random() < 0.4:
                frames.insert(rng.randrange(len(frames) + 1), bytearray(moved))
        elif op == "type":  # the type byte changed, mostly to another valid one
            types = sorted(FRONTEND_TYPES) if rng.random() < 0.7 else range(256)
            frames[index][0] = rng.choice(types)
        else:  # the body cut short, with the length word left as it was
            frames[index] = frames[index][: rng.randrange(5, len(frames[index]) + 1)]
    data = bytearray(b"".join(frames))
    for _ in range(rng.choice([0, 0, 0, 0, 1, 2])):  # byte-level damage anywhere
        op = rng.randrange(4)
        at = rng.randrange(len(data))
        if op == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at] = rng.randrange(256)
        elif op == 2:
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        else:
            del data[at : at + rng.randrange(1, 9)]
    return bytes(data)


def framing(data: bytes) -> tuple[str, list[int]]:
    """How the server must see `data`: ("complete" | "partial" | "invalid", frame types up to
    the end or up to the first frame with a bad type or length)."""
    kinds: list[int] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            return "partial", kinds
        code, length = data[pos], _I32.unpack_from(data, pos + 1)[0]
        if code not in FRONTEND_TYPES or not 4 <= length <= MAX_MESSAGE:
            return "invalid", kinds
        if pos + 1 + length > len(data):
            return "partial", kinds
        kinds.append(code)
        pos += 1 + length
    return "complete", kinds


async def mutation_case(server: RunningServer, number: int, data: bytes) -> str:
    token = f"probe-{number}"
    # Sync ends any extended-protocol error, ROLLBACK any transaction block left failed.
    stream = data + SYNC + query("ROLLBACK") + query(f"SELECT '{token}'")
    shape, kinds = framing(stream)
    wire = await login(server, f"mutation-{number}")
    answer: list[Message] = []
    context = f"case {number}, {shape}, sent {data!r}"
    try:
        await wire.send(stream)
        if shape == "partial":
            wire.shutdown_write()  # the server may rightly wait for the rest: end it
        try:
            while (item := await asyncio.wait_for(wire.message(), DEADLINE)) is not None:
                answer.append(item)
                if item[0] == b"D" and item[1].endswith(token.encode()):
                    answer += await wire.until()  # CommandComplete, ReadyForQuery
                    break
        except TimeoutError:
            raise AssertionError(
                f"{context}: no answer and no close; got {describe(answer)}"
            ) from None
        except Torn as exc:
            raise AssertionError(f"{context}: {exc}") from exc
    finally:
        wire.close()
    assert all(kind[0] in BACKEND_TYPES for kind, _ in answer), (context, describe(answer))
    for index, (kind, body) in enumerate(answer):
        if kind == b"E":
            fields = error_fields(body)
            # XX000 from Postgres itself (it names its source routine) is Postgres's business
            # (e.g. a Parse naming a type OID that does not exist); from the proxy it is a bug.
            assert fields["C"] != "XX000" or "R" in fields, (context, fields)
            if fields["S"] == "FATAL":
                assert fields["C"] == "08P01", (context, fields)
                assert index == len(answer) - 1 and wire.eof, (context, describe(answer))
    probed = bool(answer) and answer[-1] == (b"Z", b"I") and not wire.eof
    terminated = ord("X") in kinds  # the stream itself asked to close
    fatal = bool(answer) and answer[-1][0] == b"E" and wire.eof
    if shape == "invalid":
        assert not probed, context
        assert fatal or terminated, (context, describe(answer))
        return "closed 08P01" if fatal else "terminated"
    if shape == "complete":
        assert probed or fatal or terminated, (context, describe(answer))
        return "answered" if probed else ("closed 08P01" if fatal else "terminated")
    assert wire.eof and not probed, context
    return "partial"


async def test_mutated_streams(iasql: RunningServer, health: Health) -> None:
    rng = random.Random(0xF022)
    cases = [mutate(rng) for _ in range(150)]
    outcomes = await run_all([mutation_case(iasql, n, data) for n, data in enumerate(cases)], 12)
    seen = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    # the mutations reach every kind of ending
    assert {"answered", "closed 08P01", "partial"} <= seen.keys(), seen
    await health.check()


# --- 6. memory stays bounded --------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("kind", [b"Q", b"d"], ids=["query", "copydata"])
async def test_message_claiming_a_gigabyte_is_refused_without_buffering(
    iasql: RunningServer, health: Health, kind: bytes
) -> None:
    wire = await login(iasql)
    try:
        before = rss_bytes()
        await wire.send(kind + _I32.pack((1 << 30) - 1))
        chunk = b"\x00" * (1 << 20)
        sent = 0
        for _ in range(8):  # keep pushing: the server must not take it in
            if not await wire.send(chunk):
                break
            sent += len(chunk)
        messages = await wire.to_eof()
        growth = rss_bytes() - before
    finally:
        wire.close()
    assert_fatal_protocol_violation(messages, wire)
    assert growth < 50 * (1 << 20), f"RSS grew by {growth / (1 << 20):.1f} MiB"
    await health.check()


async def test_many_partial_messages_stay_within_the_limit(
    iasql: RunningServer, health: Health
) -> None:
    """Twenty clients each park an inspected message of exactly max_message, two bytes short
    of complete: the server holds about that much per client, no more, and then answers."""
    wires = [await login(iasql) for _ in range(20)]
    try:
        before = rss_bytes()
        # two bytes short of complete
        partial = b"Q" + _I32.pack(MAX_MESSAGE) + b"SELECT '" + b"y" * (MAX_MESSAGE - 4 - 10)
        await asyncio.gather(*(w.send(partial) for w in wires))
        await asyncio.sleep(0.2)
        growth = rss_bytes() - before
        assert growth < 2 * 20 * MAX_MESSAGE + 20 * (1 << 20), f"RSS grew by {growth} bytes"
        # each one completes fine afterwards
        await asyncio.gather(*(w.send(b"'\x00") for w in wires))
        for w in wires:
            answer = await w.until()
            assert answer[-1] == (b"Z", b"I") and not errors_in(answer), describe(answer[-2:])
    finally:
        for w in wires:
            w.close()
    await health.check()
