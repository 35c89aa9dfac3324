"""One client connection as a sans-IO state machine.

The session is fed bytes from the client and from the backing Postgres and answers with
events: bytes to send each way, engine calls to run, keys to register. It never touches a
socket, so every protocol path is testable with plain byte strings.

Relaying is zero-copy on the hot path: frames are scanned by their 5-byte headers only, and a
chunk whose frames need no attention is forwarded as the very bytes object that arrived. Only
Query and Parse (and Bind/Describe/Close for statements the proxy rewrote) are looked into.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.contract import EngineError, FunctionSpec, Row, SqlArgument
from proxy import protocol as pg
from proxy.frames import scan_client, scan_server, table
from proxy.intercept import Call, Prefilter, Statement, UnsupportedCall, split_statements
from proxy.literals import Literals, reduce
from proxy.login import Login, Role, Step
from proxy.values import decode_param

_LENGTH = struct.Struct("!i")
_unpack_length = _LENGTH.unpack_from

# --- events the session emits ---------------------------------------------------------------


@dataclass(slots=True)
class ToServer:
    data: bytes


@dataclass(slots=True)
class ToClient:
    data: bytes


@dataclass(slots=True)
class ConnectServer:
    """Open the backend connection and send it the client's startup packet."""

    startup_packet: bytes
    params: dict[str, str]


@dataclass(slots=True)
class CancelTarget:
    """A CancelRequest arrived on this connection: cancel that key, then close."""

    process_id: int
    secret_key: bytes
    packet: bytes


@dataclass(slots=True)
class KeyAssigned:
    """The backend gave the client this cancel key: map it to this session."""

    process_id: int
    secret_key: bytes


@dataclass(slots=True)
class RunEngine:
    """Run these calls, in order, then call `Session.engine_done` with their rows."""

    calls: list[tuple[FunctionSpec, list[SqlArgument]]]


@dataclass(slots=True)
class CloseConnection:
    pass


@dataclass(slots=True)
class LookupRole:
    """Find the role's stored password verifier, then call `Session.role_found`."""

    user: str


@dataclass(slots=True)
class StartTls:
    """The client was answered 'S' to its SSLRequest: run the TLS handshake on its socket, then
    call `Session.tls_started`. Until then the session reads nothing more from the client."""


Event = (
    ToServer
    | ToClient
    | ConnectServer
    | CancelTarget
    | KeyAssigned
    | RunEngine
    | CloseConnection
    | StartTls
    | LookupRole
)
_NO_EVENTS: tuple[Event, ...] = ()


class NativeState(NamedTuple):
    """What the native relay (proxy/native.py) takes over with a session."""

    names: tuple[bytes, ...]  # the statements the proxy rewrote
    syncs: int  # Queries and Syncs awaiting a ReadyForQuery
    # Describes of other statements awaiting their answer, oldest first: how many of the
    # syncs were sent before each (their ParameterDescriptions are relayed as they are)
    describes: tuple[int, ...]


# --- what the session remembers about requests in flight -------------------------------------


class _Sync:
    """A Query or Sync sent to the server: answered by exactly one ReadyForQuery."""


_SYNC = _Sync()
# A simple Query's statement that the proxy sent as Parse/Bind/Describe/Execute/Sync (see
# `_extended_piece`): its ParseComplete, BindComplete and NoData are not for the client.
_EXTENDED = _Sync()
# A statement computing a call's non-constant arguments (see `Statement.arguments`), sent as
# Parse/Bind/Execute/Sync: its answer, up to and including ReadyForQuery, is the proxy's, not
# the client's, but for an error, which is the client's (the error of its argument).
_CAPTURE = _Sync()


@dataclass(slots=True)
class _Describe:
    """A Describe of a statement: `client_params` is set when the proxy added parameters the
    client must not see in the ParameterDescription."""

    client_params: int | None


_PLAIN_DESCRIBE = _Describe(None)


@dataclass(slots=True)
class _Poison:
    """A message sent in place of one whose engine call failed: the server's error for it is
    replaced by the engine's error, so errors reach the client in protocol order."""

    token: str
    error: bytes


@dataclass
class _Prepared:
    calls: list[Call]  # not the statement: its text and tree may be large, and are not needed
    client_params: int
    param_types: list[int]


@dataclass
class _QueryPlan:
    """A simple Query mixing iasql calls and ordinary SQL, run one piece at a time."""

    pieces: list[Statement | str]
    next: int = 0  # index of the next piece to send
    failed: bool = False  # the server reported an error for a piece: run no more
    running: Statement | None = None  # the piece whose engine calls are running
    # Statements whose arguments are being computed (the innermost last), and the computed
    # values once the server sent them (JSON, in hex: see `Statement.arguments`, _CAPTURE).
    waiting: list[Statement] = field(default_factory=list)
    captured: bytes | None = None
    oversized: bool = False  # the computed arguments were over CAPTURE_LIMIT: refused
    literals: Literals | None = None  # the long literals the pieces hold placeholders for


# Frame type bytes as ints: `data[pos]` is cheaper than slicing a one-byte string.
_QUERY, _PARSE, _BIND, _DESCRIBE, _CLOSE, _SYNC_MSG, _FUNCTION_CALL = b"QPBDCSF"
_CLIENT_INSPECTED = frozenset((_QUERY, _PARSE, _BIND, _DESCRIBE, _CLOSE, _SYNC_MSG, _FUNCTION_CALL))
_READY, _ERROR, _PARAMS, _KEY = b"ZEtK"
_SERVER_INSPECTED = frozenset((_READY, _ERROR, _PARAMS, _KEY))
# ParseComplete, BindComplete, NoData: dropped from the answer to an _EXTENDED statement.
_EXTENDED_ACKS = frozenset(b"12n")
# ... and these too from the answer to a _CAPTURE statement (DataRow is kept for the proxy).
_CAPTURED = frozenset(b"12nDCI")
CAPTURE_LIMIT = 16 * 2**20  # bytes of computed arguments (hex JSON) the proxy reads at most
_DATA_ROW = ord("D")
# Relayed with no look inside; as lookup tables for the frame walks of proxy/frames.py.
_CLIENT_PLAIN_TABLE = table(pg.FRONTEND_TYPES - _CLIENT_INSPECTED)
_SERVER_INSPECTED_TABLE = table(_SERVER_INSPECTED)
_STATEMENT = ord("S")  # Describe/Close of a prepared statement (not a portal)
_DESCRIBE_PORTAL = pg.message(b"D", b"P\x00")  # the unnamed portal
_EXECUTE_ALL = pg.message(b"E", b"\x00\x00\x00\x00\x00")  # the unnamed portal, every row
_SYNC_MESSAGE = pg.message(b"S", b"")
_POISON_PREFIX = "__iasql_poison_"


@dataclass
class Session:
    catalog: Mapping[str, FunctionSpec]
    mentions_function: Prefilter
    max_message: int = 128 * 1024 * 1024
    database: str = ""
    user: str = ""
    status: bytes = b"I"  # the last ReadyForQuery status: I, T or E
    tls: bool = False  # answer SSLRequest 'S' (the server has a certificate), else 'N'
    require_tls: bool = False  # refuse a startup that did not come through TLS
    encrypted: bool = False  # the client's bytes come through TLS. Read-only outside.

    _started: bool = False
    _negotiated: set[int] = field(default_factory=set)  # SSL/GSS requests answered
    # Set at the server's first ReadyForQuery: before it, bytes are relayed uninspected, so
    # nothing reaches the engine until Postgres has authenticated the client.
    _authenticated: bool = False
    _backlog: bytearray = field(default_factory=bytearray)
    # Waiting for the engine or for the server: client bytes are held back. Read-only outside.
    blocked: bool = False
    _client_skip: int = 0  # bytes left of a client frame being relayed across chunks
    _need: int = 0  # bytes the backlog must hold before it is worth scanning again
    _server_skip: int = 0
    _server_partial: bytes | bytearray = b""
    _server_discard: int = 0  # bytes left of a server frame dropped (an oversized capture)
    _inflight: deque[Any] = field(default_factory=deque)
    _prepared: dict[str, _Prepared] = field(default_factory=dict)
    _plan: _QueryPlan | None = None
    _pending_bind: tuple[pg.Bind, _Prepared] | None = None
    _notices: list[bytes] = field(default_factory=list)
    # Check SCRAM passwords in the proxy (proxy/login.py) before the backend is connected.
    verify_passwords: bool = False
    _login: Login | None = None

    # --- the fast path: chunks that need nothing but relaying -----------------------------
    # Most traffic is whole frames with nothing for the proxy in them: a Bind/Execute/Sync, a
    # Query naming no function, a result ending in ReadyForQuery. These two checks are the only
    # Python such a chunk runs through, so they are kept short. They change nothing unless
    # they answer True; on False the caller takes the general way (client_data/server_data).

    def relay_client(self, data: bytes) -> bool:
        """True when the server may get `data` unchanged, and the session has noted it."""
        if self.blocked or self._backlog or self._client_skip or not self._authenticated:
            return False
        syncs = scan_client(data, _CLIENT_PLAIN_TABLE, self.max_message, not self._prepared)
        if syncs < 0:
            return False
        # A Query comes only alone (one Sync's worth); an empty chunk has no data[0] to read.
        if syncs == 1 and data[0] == _QUERY and self.mentions_function(data, 5, len(data)):
            return False
        for _ in range(syncs):
            self._inflight.append(_SYNC)
        return True

    def relay_server(self, data: bytes) -> bool:
        """True when the client may get `data` unchanged, and the session has noted it: whole
        frames, none inspected but a ReadyForQuery at the very end, which answers the oldest
        Query or Sync while no plan runs."""
        if self._server_partial or self._server_skip or self._server_discard:
            return False
        if self._plan is not None or self._notices:
            return False
        if not self._authenticated:
            return False
        last = scan_server(data, _SERVER_INSPECTED_TABLE)
        if last < 0:
            return False
        code = data[last]
        if code == _READY:
            if not self._inflight or self._inflight[0] is not _SYNC:
                return False
            self._inflight.popleft()
            self.status = data[last + 5 : last + 6]
            return True
        # (A ReadyForQuery ends what an _EXTENDED entry answers: it is not _SYNC, see above.)
        return code not in _SERVER_INSPECTED and not (
            self._inflight and self._inflight[0] is _EXTENDED
        )

    # --- the native data plane (proxy/native.py) -------------------------------------------
    # Between two exchanges the proxy takes part in, a session's state is small: how many
    # Queries and Syncs await a ReadyForQuery, which Describes of statements it did not
    # rewrite await their answer, the last status, and which statements it rewrote. The
    # native relay keeps that state while it relays; these two methods hand it over and take
    # it back.

    def native_state(self) -> NativeState | None:
        """What the native relay needs to take the session over, when it is between exchanges
        and its state is that small; else None."""
        if (
            not self._authenticated
            or self.blocked
            or self._login is not None
            or self.encrypted
            or self._backlog
            or self._client_skip
            or self._server_partial
            or self._server_skip
            or self._server_discard
            or self._plan is not None
            or self._pending_bind is not None
            or self._notices
        ):
            return None
        syncs, describes = 0, []
        for entry in self._inflight:
            if entry is _SYNC:
                syncs += 1
            elif isinstance(entry, _Describe) and entry.client_params is None:
                describes.append(syncs)
            else:
                return None
        names = tuple(name.encode() for name in self._prepared)
        return NativeState(names, syncs, tuple(describes))

    def resume_after_native(
        self,
        syncs: int,
        describes: tuple[int, ...],
        status: bytes,
        client_skip: int,
        server_skip: int,
    ) -> None:
        """The native relay handed the session back with this state (see native_state); the
        bytes it read and did not relay are fed next, through client_data and server_data."""
        self._inflight = deque()
        sent = 0
        for ahead in describes:  # in order, each at most syncs
            self._inflight.extend([_SYNC] * (ahead - sent))
            self._inflight.append(_PLAIN_DESCRIBE)
            sent = ahead
        self._inflight.extend([_SYNC] * (syncs - sent))
        self.status = status
        self._client_skip = client_skip
        self._server_skip = server_skip

    # --- client -> server ---------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Event]:
        if self.blocked:
            self._backlog += data
            return []
        if self._backlog:
            self._backlog += data
            if len(self._backlog) < self._need:
                return []  # a frame still incomplete: don't rescan it on every chunk
            data = bytes(self._backlog)
            self._backlog.clear()
            self._need = 0
        if not self._started:
            return self._startup(data)
        if self._login is not None:
            return self._login_events(self._login.client(data))
        return self._scan_client(data)

    def tls_started(self) -> list[Event]:
        """The TLS handshake the StartTls event asked for is done: from now on the client's
        bytes are the decrypted ones, and the startup packet comes next."""
        self.encrypted = True
        self.blocked = False
        return self.client_data(b"")

    def _startup(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        while True:
            if len(data) < 4:
                self._backlog += data
                return events
            length = _LENGTH.unpack_from(data)[0]
            if not 8 <= length <= pg.MAX_STARTUP_LENGTH:
                return events + self._violation("invalid length of startup packet")
            if len(data) < length:
                self._backlog += data
                return events
            code = _LENGTH.unpack_from(data, 4)[0]
            if code not in (pg.SSL_REQUEST, pg.GSSENC_REQUEST) or length != 8:
                break
            if code in self._negotiated or self.encrypted:  # as Postgres: each once, none in TLS
                return events + self._violation("unsupported frontend protocol")
            self._negotiated.add(code)
            if code == pg.SSL_REQUEST and self.tls:
                if len(data) > 8:  # would be read as if it had come through TLS (CVE-2021-23214)
                    return events + self._violation("received unencrypted data after SSL request")
                self.blocked = True  # until the handshake is done
                return [*events, ToClient(b"S"), StartTls()]
            events.append(ToClient(b"N"))
            data = data[8:]
        return events + self._startup_packet(data[:length], data[length:])

    def _startup_packet(self, packet: bytes, rest: bytes) -> list[Event]:
        code = _LENGTH.unpack_from(packet, 4)[0]
        length = len(packet)
        if code == pg.CANCEL_REQUEST and length == 16:
            pid = _LENGTH.unpack_from(packet, 8)[0]
            return [CancelTarget(pid, packet[12:16], packet), CloseConnection()]
        if code >> 16 != 3:
            return self._violation("unsupported frontend protocol")
        if self.require_tls and not self.encrypted:
            return self._violation(
                "this iasql server accepts only TLS connections",
                "28000",
                hint="connect with sslmode=require, or sslmode=verify-full and the server's CA",
            )
        try:
            params = pg.decode_startup(b"\x00\x03\x00\x00" + packet[8:])
        except pg.ProtocolViolation as exc:
            return self._violation(str(exc))
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        if not self.user:
            return self._violation("no PostgreSQL user name specified in startup packet", "28000")
        self._started = True
        if self.verify_passwords:
            self._login = Login(self.user, params, packet)
            self.blocked = True  # until the role is looked up
            self._backlog += rest
            return [LookupRole(self.user)]
        events: list[Event] = [ConnectServer(packet, params)]
        self._backlog += rest
        return events

    # --- the proxy's own login (proxy/login.py) ------------------------------------------

    @property
    def authenticated(self) -> bool:
        """The backing Postgres has logged the client in (its first ReadyForQuery)."""
        return self._authenticated

    @property
    def wants_server(self) -> bool:
        """The backend connection has been asked for: the client's requests wait for it."""
        return self._started and (self._login is None or self._login.connecting)

    @property
    def at_frame_boundary(self) -> bool:
        """No server message is half relayed to the client: the proxy may send one."""
        return not (self._server_partial or self._server_skip or self._server_discard)

    def role_found(self, role: Role | None) -> list[Event]:
        """The answer to LookupRole: the role's pg_authid entry, or None when there is none."""
        login = self._login
        if login is None:
            return []
        self.blocked = False
        step = login.role(role)
        if step.relay:  # the backing Postgres checks this one: as before the proxy checked any
            self._login = None
            return [ConnectServer(login.packet, login.params), *self._unblock()]
        events = self._login_events(step)
        if self._backlog and self._login is not None:
            data = bytes(self._backlog)
            self._backlog.clear()
            events += self._login_events(self._login.client(data))
        return events

    def _login_events(self, step: Step) -> list[Event]:
        login = self._login
        assert login is not None
        events: list[Event] = [ToClient(step.to_client)] if step.to_client else []
        if step.close:
            self.blocked = True
            self._backlog.clear()
            return [*events, CloseConnection()]
        if step.to_server:
            events.append(ToServer(step.to_server))
        if step.leftover:
            self._backlog += step.leftover
        if step.connect is not None:
            self.blocked = True  # the client's next requests wait for the backend's login
            events.append(ConnectServer(step.connect, login.params))
        if step.rest is not None:  # logged in (or refused) by the backend: relay from here
            self._login = None
            events += self.server_data(step.rest)
            events += self._unblock()
        return events

    def _scan_client(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        size = len(data)
        pos = 0
        if self._client_skip:
            if self._client_skip >= size:
                self._client_skip -= size
                return [ToServer(data)]
            pos, self._client_skip = self._client_skip, 0
        relay_from = 0
        frontend_types = pg.FRONTEND_TYPES
        limit = self.max_message
        while size - pos >= 5:
            code = data[pos]
            length = _unpack_length(data, pos + 1)[0]
            if code not in frontend_types or not 4 <= length <= limit:
                # The frames before it go on, as they would have had they come in a read of
                # their own (and as the native relay sends them).
                if pos > relay_from:
                    events.append(ToServer(data[relay_from:pos]))
                if code not in frontend_types:
                    return events + self._violation(f"invalid frontend message type {code}")
                return events + self._violation(f"invalid message length {length}")
            end = pos + 1 + length
            if code in _CLIENT_INSPECTED and self._authenticated:
                if end > size:
                    self._need = end - pos
                    break  # wait for the whole frame
                handled = self._inspect(code, data, pos, end)
                if handled is not None:
                    if pos > relay_from:
                        events.append(ToServer(data[relay_from:pos]))
                    events += handled
                    relay_from = pos = end
                    if self.blocked:
                        self._backlog += data[end:]
                        return events
                    continue
            elif end > size:
                self._client_skip = end - size
                pos = size
                break
            pos = end
        if pos < size:  # a partial frame: keep it until the rest arrives
            self._backlog += data[pos:]
        if pos > relay_from:
            events.append(
                ToServer(data if relay_from == 0 and pos == size else data[relay_from:pos])
            )
        return events

    def _inspect(self, code: int, data: bytes, pos: int, end: int) -> list[Event] | None:
        """Looks at one whole frame; returns None to relay it unchanged."""
        if code in (_SYNC_MSG, _FUNCTION_CALL):  # each answered by one ReadyForQuery
            self._inflight.append(_SYNC)
            return None
        if code == _QUERY:
            if not self.mentions_function(data, pos + 5, end):
                self._inflight.append(_SYNC)
                return None
            return self._query(data, pos + 5, end)
        if code == _PARSE:
            if not self.mentions_function(data, pos + 5, end):
                if self._prepared and end > pos + 5 and data[pos + 5] == 0:
                    self._prepared.pop("", None)  # a new unnamed statement replaces ours
                return None
            return self._parse(data, pos + 5, end)
        if code == _BIND:
            if not self._prepared:
                return None
            return self._bind(data[pos + 5 : end])
        # Describe or Close. Portals need no bookkeeping, and while no statement is rewritten
        # a statement's ParameterDescription is relayed as is: skip decoding the name.
        if end - pos < 6 or data[pos + 5] != _STATEMENT:
            return None
        if not self._prepared:
            if code == _DESCRIBE:
                self._inflight.append(_PLAIN_DESCRIBE)
            return None
        try:
            _target, name = pg.decode_target(data[pos + 5 : end])  # a statement, checked above
        except pg.ProtocolViolation as exc:
            return self._violation(str(exc))
        if code == _DESCRIBE:
            prepared = self._prepared.get(name)
            self._inflight.append(_Describe(prepared.client_params if prepared else None))
        else:
            self._prepared.pop(name, None)
        return None

    # --- simple query -------------------------------------------------------------------

    def _query(self, data: bytes, start: int, end: int) -> list[Event] | None:
        """The Query whose body is data[start:end]; None to relay it unchanged."""
        try:
            statements, found = _split(self.catalog, data, start, pg.query_text(data, start, end))
        except pg.ProtocolViolation as exc:
            return self._violation(str(exc))
        except UnsupportedCall as exc:
            poisoned = self._poison_query(exc.as_engine_error())  # queues the poison first
            self._inflight.append(_SYNC)
            return [ToServer(poisoned)]
        if statements is None:
            self._inflight.append(_SYNC)
            return None
        pieces: list[Statement | str] = []
        for statement in statements:
            if not statement.calls and pieces and isinstance(pieces[-1], str):
                pieces[-1] = f"{pieces[-1]};\n{statement.text}"
            else:
                pieces.append(statement if statement.calls else statement.text)
        return self._start_plan(pieces, found)

    def _start_plan(self, pieces: list[Statement | str], found: Literals | None) -> list[Event]:
        self._plan = _QueryPlan(pieces, literals=found)
        self.blocked = True
        return [] if self._inflight else self._advance_plan()

    def _advance_plan(self) -> list[Event]:
        """Sends the plan's next piece; called when the server is idle."""
        plan = self._plan
        assert plan is not None
        piece = plan.pieces[plan.next]
        plan.next += 1
        if isinstance(piece, Statement):
            if piece.max_param:  # as Postgres answers it, before any call runs
                plan.next = len(plan.pieces)
                error = EngineError("42P02", f"there is no parameter ${piece.max_param}")
                return self._send_piece(self._poison_query(error))
            return self._run_statement(piece, None)
        return self._send_piece(self._plan_query(piece))

    def _plan_query(self, sql: str) -> bytes:
        """A Query of a plan's piece: its placeholders become the literals they stand for."""
        assert self._plan is not None
        found = self._plan.literals
        return pg.query(sql) if found is None else pg.query_of(found.expand(sql))

    def _run_statement(self, statement: Statement, computed: list[Any] | None) -> list[Event]:
        """Runs a plan's statement's calls, once the arguments they compute are known: until
        then, the statement that computes them runs first (see `Statement.arguments`)."""
        plan = self._plan
        assert plan is not None
        if statement.arguments is not None and computed is None:
            plan.waiting.append(statement)
            return self._run_statement(statement.arguments, None)
        plan.running = statement
        if not statement.calls:
            return self.engine_done([], None)
        return self._run_calls(statement.calls, None, computed)

    def _captured(self) -> list[Event]:
        """The server answered the statement computing arguments: run the statement waiting
        for them."""
        plan = self._plan
        assert plan is not None and plan.waiting
        data, plan.captured = plan.captured, None
        statement = plan.waiting.pop()
        if plan.oversized:
            plan.next = len(plan.pieces)
            name = statement.computing_function
            error = EngineError(
                "54000",
                f"the computed arguments of {name}() are over {CAPTURE_LIMIT // 2**20} MiB",
                hint="pass smaller values: iasql functions take names, ids and documents",
            )
            return self._send_piece(self._poison_query(error))
        values = json.loads(bytes.fromhex(data.decode())) if data is not None else None
        if not isinstance(values, list):  # NULL: a set-returning argument returned no rows
            plan.next = len(plan.pieces)
            name = statement.computing_function
            error = EngineError(
                "22023",
                f"an argument of {name}() returned no rows",
                hint=f"pass a list, which may be empty: {name}(VARIADIC ARRAY(SELECT ...))",
            )
            return self._send_piece(self._poison_query(error))
        return self._run_statement(statement, values)

    def _extended_piece(
        self, statement: Statement, rows: list[list[Row]], describe: bool = True
    ) -> tuple[bytes, bytes]:
        """A plan's statement with its calls' rows, as Parse/Bind/Describe/Execute/Sync with
        the rows as Bind parameters: what a module function returns (a secret key, say) is
        not in the statement's text, which Postgres logs when the statement fails (it logs no
        parameters by default). The answer is made a simple Query's: see _EXTENDED."""
        sql = statement.render_with_params(1)  # the statement has no $n of its own
        types = [3802] * len(statement.calls)  # jsonb
        assert self._plan is not None
        found = self._plan.literals
        parse = (
            pg.parse("", sql, types) if found is None else pg.parse_of("", found.expand(sql), types)
        )
        values: list[bytes | None] = [json.dumps(r, default=str).encode() for r in rows]
        bind = pg.Bind("", "", [], values, []).encode()
        # Two writes, not one concatenation: the Parse may be a huge statement's one copy.
        return parse, bind + (_DESCRIBE_PORTAL if describe else b"") + _EXECUTE_ALL + _SYNC_MESSAGE

    def _send_piece(self, message: bytes | tuple[bytes, ...], answer: _Sync = _SYNC) -> list[Event]:
        """Sending the last piece ends the plan: its answer, ReadyForQuery included, then
        goes straight to the client, and the client's next requests may follow it at once."""
        plan = self._plan
        assert plan is not None
        self._inflight.append(answer)
        chunks = message if isinstance(message, tuple) else (message,)
        events: list[Event] = [ToServer(chunk) for chunk in chunks]
        if plan.next >= len(plan.pieces):
            self._plan = None
            events += self._unblock()
        return events

    def _plan_ready(self) -> tuple[bool, list[Event]]:
        """The server went idle while a plan runs: (relay its ReadyForQuery?, next events)."""
        plan = self._plan
        assert plan is not None
        if plan.next == 0:  # that ReadyForQuery answered a request sent before the plan
            return True, self._advance_plan()
        if plan.failed:
            self._plan = None
            return True, self._unblock()
        if plan.waiting and plan.running is None:  # a _CAPTURE statement was answered
            return False, self._captured()
        return False, self._advance_plan()

    def _poison_query(self, error: EngineError) -> bytes:
        return pg.query(f'SELECT * FROM "{self._poison(error)}"')

    # --- extended query -----------------------------------------------------------------

    def _parse(self, data: bytes, start: int, end: int) -> list[Event] | None:
        """The Parse whose body is data[start:end]; None to relay it unchanged."""
        try:
            name, sql_start, sql_end, param_types = pg.parse_fields(data, start, end)
            statements, found = _split(self.catalog, data, sql_start, sql_end)
        except pg.ProtocolViolation as exc:
            return self._violation(str(exc))
        except UnsupportedCall as exc:
            self._prepared.pop(name, None)  # the client's Bind must not run an older one's calls
            token = self._poison(exc.as_engine_error())
            return [ToServer(pg.parse(token, f'SELECT * FROM "{token}"', []))]
        if statements is None or len(statements) != 1:
            self._prepared.pop(name, None)
            return None
        statement = statements[0]
        if statement.arguments is not None:
            self._prepared.pop(name, None)
            token = self._poison(_computed_in_prepared(statement).as_engine_error())
            return [ToServer(pg.parse(token, f'SELECT * FROM "{token}"', []))]
        client_params = max(statement.max_param, len(param_types))
        types = param_types + [0] * (client_params - len(param_types))
        for call in statement.calls:
            for number, oid in call.param_types().items():
                if types[number - 1] == 0:
                    types[number - 1] = oid
        sql = statement.render_with_params(client_params + 1)
        types += [3802] * len(statement.calls)  # jsonb rows, one parameter per call
        self._prepared[name] = _Prepared(statement.calls, client_params, types)
        if found is None:
            return [ToServer(pg.parse(name, sql, types))]
        return [ToServer(pg.parse_of(name, found.expand(sql), types))]

    def _bind(self, body: bytes) -> list[Event] | None:
        try:
            bind = pg.decode_bind(body)
        except pg.ProtocolViolation as exc:
            return self._violation(str(exc))
        prepared = self._prepared.get(bind.statement)
        if prepared is None:
            return None
        if len(bind.values) != prepared.client_params:
            return None  # the server reports the count mismatch itself
        try:
            params = [
                decode_param(value, bind.format_of(i), prepared.param_types[i])
                for i, value in enumerate(bind.values)
            ]
        except ValueError as exc:
            return [ToServer(self._poison_bind(EngineError("22P02", str(exc))))]
        self._pending_bind = (bind, prepared)
        self.blocked = True
        return self._run_calls(prepared.calls, params)

    def _finish_bind(self, rows: list[list[Row]] | None, error: EngineError | None) -> list[Event]:
        assert self._pending_bind is not None
        bind, _prepared = self._pending_bind
        self._pending_bind = None
        if error is not None:
            return [ToServer(self._poison_bind(error)), *self._unblock()]
        assert rows is not None
        formats = [bind.format_of(i) for i in range(len(bind.values))]
        bind.param_formats = formats + [0] * len(rows)
        bind.values += [json.dumps(r, default=str).encode() for r in rows]
        return [ToServer(bind.encode()), *self._unblock()]

    def _poison_bind(self, error: EngineError) -> bytes:
        token = self._poison(error)
        return pg.Bind("", token, [], [], []).encode()

    # --- engine calls -------------------------------------------------------------------

    def _run_calls(
        self, calls: list[Call], params: list[Any] | None, computed: list[Any] | None = None
    ) -> list[Event]:
        values = iter(computed) if computed is not None else None
        try:
            prepared = [(call.spec, call.arguments(params, values)) for call in calls]
        except UnsupportedCall as exc:
            return self.engine_done(None, exc.as_engine_error())
        return [RunEngine(prepared)]

    def engine_done(self, rows: list[list[Row]] | None, error: EngineError | None) -> list[Event]:
        """The result of the last RunEngine: one list of rows per call, or an error."""
        if self._pending_bind is not None:
            return self._finish_bind(rows, error)
        plan = self._plan
        assert plan is not None and plan.running is not None
        statement, plan.running = plan.running, None
        if error is not None:
            plan.next = len(plan.pieces)  # nothing after a failed call runs
            return self._send_piece(self._poison_query(error))
        assert rows is not None
        if plan.waiting and statement is plan.waiting[-1].arguments:
            # Its answer is the proxy's: sent without ending the plan (see _CAPTURE).
            self._inflight.append(_CAPTURE)
            return [ToServer(chunk) for chunk in self._extended_piece(statement, rows, False)]
        return self._send_piece(self._extended_piece(statement, rows), _EXTENDED)

    def notice(self, text: str) -> list[Event]:
        """A NOTICE from a running engine call, sent between two server frames."""
        message = pg.notice_response(text)
        if self._server_skip or self._server_partial or self._server_discard:
            self._notices.append(message)
            return []
        return [ToClient(message)]

    def _unblock(self) -> list[Event]:
        self.blocked = False
        if not self._backlog:
            return []
        data = bytes(self._backlog)
        self._backlog.clear()
        return self._scan_client(data)

    def _poison(self, error: EngineError) -> str:
        token = _POISON_PREFIX + secrets.token_hex(8)
        message = pg.error_response(
            error.sqlstate, error.message, detail=error.detail, hint=error.hint
        )
        self._inflight.append(_Poison(token, message))
        return token

    def _violation(self, text: str, code: str = "08P01", hint: str | None = None) -> list[Event]:
        self.blocked = True  # nothing more is read from this client
        self._backlog.clear()
        return [ToClient(pg.error_response(code, text, hint=hint, fatal=True)), CloseConnection()]

    # --- server -> client ---------------------------------------------------------------

    def server_data(self, data: bytes) -> list[Event]:
        if self._login is not None:
            return self._login_events(self._login.server(data))
        if self._server_discard:
            if self._server_discard >= len(data):
                self._server_discard -= len(data)
                return []
            data, self._server_discard = data[self._server_discard :], 0
        if self._server_partial:
            partial = self._server_partial
            if len(partial) >= 5 and len(partial) + len(data) < 1 + _unpack_length(partial, 1)[0]:
                # Still short of the whole frame: gather it in a bytearray, which grows in
                # place, rather than joining ever longer bytes on every read.
                if not isinstance(partial, bytearray):
                    partial = self._server_partial = bytearray(partial)
                partial += data
                return []
            data = bytes(partial) + data
            self._server_partial = b""
        size = len(data)
        pos = 0
        if self._server_skip:
            if self._server_skip >= size:
                self._server_skip -= size
                return [ToClient(data), *self._flush_notices()]
            pos, self._server_skip = self._server_skip, 0
        events: list[Event] = []
        relay_from = 0
        while pos < size:
            if size - pos < 5:
                self._server_partial = data[pos:]
                break
            code = data[pos]
            end = pos + 1 + _unpack_length(data, pos + 1)[0]
            if (
                code == _DATA_ROW
                and end - pos > CAPTURE_LIMIT
                and self._inflight
                and self._inflight[0] is _CAPTURE
                and self._plan is not None
            ):
                # Computed arguments this large are no module name or key: drop them unread.
                self._plan.oversized = True
                if pos > relay_from:
                    events.append(ToClient(data[relay_from:pos]))
                if end > size:
                    self._server_discard = end - size
                    relay_from = pos = size
                    break
                relay_from = pos = end
                continue
            if (
                code in _SERVER_INSPECTED
                or (code in _EXTENDED_ACKS and self._inflight and self._inflight[0] is _EXTENDED)
                or (code in _CAPTURED and self._inflight and self._inflight[0] is _CAPTURE)
            ):
                if end > size:
                    self._server_partial = data[pos:]
                    break
                replacement, after = self._server_frame(code, data, pos, end)
                if replacement is not None:
                    if pos > relay_from:
                        events.append(ToClient(data[relay_from:pos]))
                    if replacement:
                        events.append(ToClient(replacement))
                    relay_from = end
                events += after
            elif end > size:
                self._server_skip = end - size
                pos = size
                break
            pos = end
        stop = size - len(self._server_partial)
        if stop > relay_from:
            events.append(
                ToClient(data if relay_from == 0 and stop == size else data[relay_from:stop])
            )
        if self._notices:
            events += self._flush_notices()
        return events

    def _flush_notices(self) -> list[Event]:
        if not self._notices or self._server_skip or self._server_partial or self._server_discard:
            return []
        events: list[Event] = [ToClient(n) for n in self._notices]
        self._notices.clear()
        return events

    def _server_frame(
        self, code: int, data: bytes, pos: int, end: int
    ) -> tuple[bytes | None, Sequence[Event]]:
        """One whole server frame of interest: (replacement bytes or None to relay, events)."""
        if code == _READY:
            self.status = data[pos + 5 : min(pos + 6, end)]
            self._authenticated = True
            answered = bool(self._inflight)  # else a stray one, relayed and forgotten
            while self._inflight and not isinstance(self._inflight.popleft(), _Sync):
                pass
            if answered and self._plan is not None and not self._inflight:
                relay, events = self._plan_ready()
                return (None if relay else b""), events
            return None, _NO_EVENTS
        if code == _ERROR:
            return self._server_error(data[pos + 5 : end]), []
        if code == _PARAMS:
            return self._parameter_description(data[pos + 5 : end]), []
        if code == _DATA_ROW:  # the arguments a _CAPTURE statement computed
            assert self._plan is not None
            self._plan.captured = _first_column(data, pos + 5, end)
            return b"", _NO_EVENTS
        if code in _CAPTURED:  # answering an _EXTENDED or _CAPTURE statement
            return b"", _NO_EVENTS
        if end - pos >= 13:  # K: BackendKeyData
            pid = _LENGTH.unpack_from(data, pos + 5)[0]
            return None, [KeyAssigned(pid, data[pos + 9 : end])]
        return None, _NO_EVENTS

    def _server_error(self, body: bytes) -> bytes | None:
        """After an error the server skips to the next Sync: forget what it will not answer."""
        if self._plan is not None and self._plan.next > 0:
            self._plan.failed = True
        replacement = None
        fields = pg.decode_fields(body)
        message = fields.get("M", "")
        if self._inflight and self._inflight[0] is _CAPTURE:
            # An argument's own error, as Postgres reports it, but for its position: that is in
            # the statement the proxy wrote, not in the client's.
            code = fields.get("C", "XX000")
            hint = fields.get("H")
            plan = self._plan
            if hint is None and plan is not None and plan.waiting:
                arguments = plan.waiting[-1].arguments
                hint = arguments.error_hint(code, message) if arguments is not None else None
            fatal = fields.get("V", fields.get("S")) in ("FATAL", "PANIC")  # the session ends
            return pg.error_response(code, message, detail=fields.get("D"), hint=hint, fatal=fatal)
        while self._inflight and not isinstance(self._inflight[0], _Sync):
            entry = self._inflight.popleft()
            if isinstance(entry, _Poison) and entry.token in message:
                replacement = entry.error
        return replacement

    def _parameter_description(self, body: bytes) -> bytes | None:
        while self._inflight and not isinstance(self._inflight[0], _Describe | _Sync):
            self._inflight.popleft()
        if not self._inflight or isinstance(self._inflight[0], _Sync):
            return None
        entry = self._inflight.popleft()
        if entry.client_params is None:
            return None
        types = pg.decode_parameter_description(body)
        return pg.parameter_description(types[: entry.client_params])


def _computed_in_prepared(statement: Statement) -> UnsupportedCall:
    """A computed argument in a prepared statement (the extended protocol): it would have to
    run in the middle of the client's pipeline. The simple protocol runs it."""
    name = statement.computing_function
    return UnsupportedCall(
        f"an argument of {name}() computed by an expression needs the simple query protocol",
        hint="send the statement with no parameters as a simple query (psql, psycopg's execute()"
        " without parameters, asyncpg's execute()), or compute the values first and pass them"
        f" as constants or parameters: {name}($1, $2)",
    )


def _first_column(data: bytes, start: int, end: int) -> bytes | None:
    """The first column of the DataRow whose body is data[start:end] (text format)."""
    if end - start < 6:
        return None
    size = _LENGTH.unpack_from(data, start + 2)[0]
    return None if size < 0 else data[start + 6 : start + 6 + size]


def _split(
    catalog: Mapping[str, FunctionSpec], data: bytes, start: int, end: int
) -> tuple[list[Statement] | None, Literals | None]:
    """The statements of the SQL text data[start:end], as split_statements finds them, and the
    long literals they hold placeholders for (see proxy/literals.py). None: relay as it is."""
    try:
        sql, found = reduce(data, start, end)
        statements = split_statements(sql, catalog)
        if found is None or statements is None:
            return statements, None
        if found.survive(statements):
            return statements, found
        # A long literal is a call's argument, or the rewrite printed it some other way.
        return split_statements(found.full_text(), catalog), None
    except UnicodeDecodeError as exc:
        raise pg.ProtocolViolation("string is not valid UTF-8") from exc
