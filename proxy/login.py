"""The proxy's side of a password login, sans-IO: bytes in, a Step out.

The client's SCRAM-SHA-256 exchange is answered by the proxy, against the role's stored
verifier (read from pg_authid by the server, as PgBouncer's auth_query does). Only once the
proof is right is the backend connection opened, and the proxy logs in to it with the ClientKey
the proof revealed (proxy/scram.py). So a client that never finishes its login holds no
connection of the backing Postgres. An unknown role is challenged like a real one, with a
verifier nothing matches, and fails at the proof with Postgres's own message. A role that can
log in but has no SCRAM verifier (an MD5 hash, no password with a trust rule) is given to the
backing Postgres as before: the login is relayed.
"""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy import protocol as pg
from proxy.scram import (
    MECHANISM,
    ScramError,
    ServerFirst,
    Verified,
    Verifier,
    client_final,
    client_first,
    mock_verifier,
    parse_verifier,
    server_first,
    server_signature_matches,
    verify_client_final,
)

MAX_AUTH_MESSAGE = 65_535  # Postgres's limit for a SASL message (PG_MAX_AUTH_TOKEN_LENGTH)
_MOCK_SECRET = secrets.token_bytes(32)  # salts of unknown roles: stable for this process
_LENGTH = struct.Struct("!i")
_METHODS = {
    pg.AUTH_CLEARTEXT: "password",
    pg.AUTH_MD5: "md5",
    7: "gss",
    9: "sspi",
}


@dataclass(frozen=True)
class Role:
    """What pg_authid says about a role."""

    password: str | None  # rolpassword: a SCRAM verifier, an MD5 hash, or none
    can_login: bool = True


# The proxy cannot read verifiers (its role is no superuser): every login is relayed.
UNVERIFIABLE = Role(None, True)


@dataclass
class Step:
    """What the session does next. Bytes go out first (to_client, then to_server)."""

    to_client: bytes = b""
    to_server: bytes = b""
    connect: bytes | None = None  # open the backend connection with this startup packet
    relay: bool = False  # the backing Postgres checks this login itself: relay it
    close: bool = False  # end the connection (after to_client, a FATAL)
    leftover: bytes = b""  # client bytes after the login's messages: the session's
    rest: bytes | None = None  # server bytes from AuthenticationOk (or an error) on: relay


def _fail(sqlstate: str, text: str) -> Step:
    return Step(to_client=pg.error_response(sqlstate, text, fatal=True), close=True)


def _nonce() -> str:
    return base64.b64encode(secrets.token_bytes(18)).decode()


@dataclass
class Login:
    user: str
    params: dict[str, str]
    packet: bytes  # the client's startup packet, its length word included
    nonce: Callable[[], str] = _nonce
    # lookup -> client_first -> client_final -> backend -> done
    phase: str = "lookup"
    _client: bytearray = field(default_factory=bytearray)
    _server: bytearray = field(default_factory=bytearray)
    _verifier: Verifier | None = None
    _exchange: ServerFirst | None = None
    _verified: Verified | None = None
    _backend_first: tuple[str, str] | None = None  # (client-first-bare, nonce) sent to it
    _auth_message: bytes | None = None

    @property
    def connecting(self) -> bool:
        """The client is logged in; the backend connection is being opened or logged in to."""
        return self.phase == "backend"

    def _negotiation(self) -> tuple[bytes, bytes]:
        """(NegotiateProtocolVersion for the client, the startup packet for the backend). A
        client asking for a newer minor version or `_pq_.` options is answered as a 3.0
        server answers it, and the backend is sent a plain 3.0 startup: it must not negotiate
        behind the client's back, after the client has logged in."""
        minor = _LENGTH.unpack_from(self.packet, 4)[0] & 0xFFFF
        options = [key for key in self.params if key.startswith("_pq_.")]
        if not minor and not options:
            return b"", self.packet
        plain = {k: v for k, v in self.params.items() if not k.startswith("_pq_.")}
        return pg.negotiate_protocol_version(0, options), pg.startup_message(plain)

    def role(self, role: Role | None) -> Step:
        """The lookup's answer (None: no such role): challenge the client, or relay."""
        verifier = parse_verifier(role.password) if role is not None else None
        if role is not None and role.can_login and verifier is None:
            self.phase = "done"
            return Step(relay=True)
        if verifier is None or role is None or not role.can_login:
            verifier = mock_verifier(self.user, _MOCK_SECRET)
        self._verifier = verifier
        self.phase = "client_first"
        negotiation, _ = self._negotiation()
        return Step(to_client=negotiation + pg.authentication_sasl([MECHANISM]))

    # --- client -> proxy ----------------------------------------------------------------

    def client(self, data: bytes) -> Step:
        """Client bytes during the login."""
        buf = self._client
        buf += data
        if self.phase not in ("client_first", "client_final"):
            leftover = bytes(buf)
            buf.clear()
            return Step(leftover=leftover)
        out = b""
        while len(buf) >= 5:
            code, length = buf[0], _LENGTH.unpack_from(buf, 1)[0]
            if code == ord("X"):  # Terminate: the client gave up
                return Step(close=True)
            if code != ord("p"):
                return _fail("08P01", f"expected SASL response, got message type {code}")
            if not 4 <= length <= MAX_AUTH_MESSAGE + 4:
                return _fail("08P01", f"invalid message length {length}")
            if len(buf) < 1 + length:
                break
            body = bytes(buf[5 : 1 + length])
            del buf[: 1 + length]
            step = self._sasl(body)
            step.to_client = out + step.to_client
            if step.close:
                return step
            if step.connect is not None:
                step.leftover = bytes(buf)  # pipelined after the login: the session's
                buf.clear()
                return step
            out = step.to_client
        return Step(to_client=out)

    def _sasl(self, body: bytes) -> Step:
        assert self._verifier is not None
        try:
            if self.phase == "client_first":
                mechanism, data = pg.decode_sasl_initial_response(body)
                if mechanism != MECHANISM:
                    return _fail(
                        "08P01", "client selected an invalid SASL authentication mechanism"
                    )
                self._exchange = server_first(self._verifier, data, self.nonce())
                self.phase = "client_final"
                continue_ = pg.authentication(
                    pg.AUTH_SASL_CONTINUE, self._exchange.message.encode()
                )
                return Step(to_client=continue_)
            assert self._exchange is not None
            verified = verify_client_final(self._verifier, self._exchange, body)
        except pg.ProtocolViolation as exc:
            return _fail("08P01", str(exc))
        except ScramError as exc:
            return _fail(exc.sqlstate, str(exc))
        if verified is None:
            return _fail("28P01", f'password authentication failed for user "{self.user}"')
        self._verified = verified
        self.phase = "backend"
        return Step(connect=self._negotiation()[1])

    # --- backend -> proxy ---------------------------------------------------------------

    def server(self, data: bytes) -> Step:
        """Backend bytes until it has logged the client in (or refused to)."""
        buf = self._server
        buf += data
        to_client = b""
        to_server = b""
        while len(buf) >= 5:
            code, length = buf[0], _LENGTH.unpack_from(buf, 1)[0]
            if code == ord("E"):  # refused (too many clients, no such database, ...): relay
                rest = bytes(buf)
                buf.clear()
                self.phase = "done"
                return Step(to_client=to_client, to_server=to_server, rest=rest)
            if not (8 if code == ord("R") else 4) <= length <= MAX_AUTH_MESSAGE + 8:
                return _fail("08P01", "invalid message from the backing Postgres during login")
            if len(buf) < 1 + length:
                break
            frame = bytes(buf[: 1 + length])
            if code == ord("N"):  # a notice: the client may see it
                del buf[: 1 + length]
                to_client += frame
                continue
            if code != ord("R"):
                return _fail(
                    "08P01",
                    f"unexpected message type {code} from the backing Postgres during login",
                )
            kind = _LENGTH.unpack_from(frame, 5)[0]
            if kind == pg.AUTH_OK:
                assert self._verified is not None
                rest = bytes(buf)
                buf.clear()
                self.phase = "done"
                final = pg.authentication(pg.AUTH_SASL_FINAL, self._verified.server_final.encode())
                return Step(to_client=to_client + final, to_server=to_server, rest=rest)
            del buf[: 1 + length]
            try:
                answer = self._backend_auth(kind, frame[9:])
            except (ScramError, pg.ProtocolViolation) as exc:
                return _fail("08P01", f"logging in to the backing Postgres failed: {exc}")
            if isinstance(answer, Step):
                return answer
            to_server += answer
        return Step(to_client=to_client, to_server=to_server)

    def _backend_auth(self, kind: int, data: bytes) -> bytes | Step:
        """The answer to one Authentication request of the backend."""
        assert self._verified is not None and self._verifier is not None
        if kind == pg.AUTH_SASL:
            if MECHANISM not in pg.decode_sasl_mechanisms(data):
                return _fail("28000", "the backing Postgres offers no SCRAM-SHA-256 login")
            nonce = self.nonce()
            message, bare = client_first(nonce)
            self._backend_first = (bare, nonce)
            return pg.sasl_initial_response(MECHANISM, message.encode())
        if kind == pg.AUTH_SASL_CONTINUE and self._backend_first is not None:
            bare, nonce = self._backend_first
            final, self._auth_message = client_final(self._verified.client_key, bare, nonce, data)
            return pg.sasl_response(final.encode())
        if kind == pg.AUTH_SASL_FINAL and self._auth_message is not None:
            if not server_signature_matches(self._verifier.server_key, self._auth_message, data):
                return _fail("28000", "the backing Postgres's SCRAM signature does not match")
            return b""
        method = _METHODS.get(kind, f"type {kind}")
        return _fail(
            "28000",
            f'the backing Postgres asked for {method} authentication for user "{self.user}";'
            " the iasql proxy checks SCRAM-SHA-256 passwords itself and can answer only"
            " SCRAM-SHA-256 (or trust)",
        )
