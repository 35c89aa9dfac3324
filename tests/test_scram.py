"""SCRAM-SHA-256 and the proxy's login, sans-IO: byte strings in and out, no sockets.

The RFC 7677 test vector checks both sides; then the proxy's Login is driven as a client and
a backing Postgres would drive it, the backend played by the same pure server functions.
"""

from __future__ import annotations

import base64
import struct

import pytest

from proxy import protocol as pg
from proxy import scram
from proxy.login import UNVERIFIABLE, Login, Role
from tests.support.wire import frames

# RFC 7677, section 3: user "user", password "pencil".
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_vector_server_side() -> None:
    verifier = scram.make_verifier("pencil", RFC_SALT, 4096)
    exchange = scram.server_first(verifier, RFC_CLIENT_FIRST, RFC_SERVER_NONCE)
    assert exchange.message == RFC_SERVER_FIRST
    verified = scram.verify_client_final(verifier, exchange, RFC_CLIENT_FINAL)
    assert verified is not None
    assert verified.server_final == RFC_SERVER_FINAL
    assert verified.client_key == scram.client_key_of("pencil", RFC_SALT, 4096)


def test_rfc7677_vector_client_side_from_the_client_key_alone() -> None:
    """The proof the proxy sends the backend is computed from ClientKey, without the password."""
    key = scram.client_key_of("pencil", RFC_SALT, 4096)
    bare = "n=user,r=" + RFC_CLIENT_NONCE
    final, auth_message = scram.client_final(key, bare, RFC_CLIENT_NONCE, RFC_SERVER_FIRST.encode())
    assert final.encode() == RFC_CLIENT_FINAL
    server_key = scram.make_verifier("pencil", RFC_SALT, 4096).server_key
    assert scram.server_signature_matches(server_key, auth_message, RFC_SERVER_FINAL.encode())
    assert not scram.server_signature_matches(server_key, auth_message, b"v=AAAA")


def test_verifier_text_round_trips_and_rejects_other_hashes() -> None:
    verifier = scram.make_verifier("secret", b"0123456789abcdef")
    text = scram.format_verifier(verifier)
    assert text.startswith("SCRAM-SHA-256$4096:")
    assert scram.parse_verifier(text) == verifier
    for other in (None, "", "md5" + "0" * 32, "plain", "SCRAM-SHA-256$x:y$z", text[:-4]):
        assert scram.parse_verifier(other) is None


def test_wrong_password_and_unknown_role_fail_at_the_proof() -> None:
    verifier = scram.make_verifier("right", b"salt-salt-salt-1")
    nonce = "clientnonce"
    first = f"n,,n=,r={nonce}".encode()
    for password, verifier_used in (("wrong", verifier), ("right", scram.mock_verifier("x", b"k"))):
        exchange = scram.server_first(verifier_used, first, "servernonce")
        key = scram.client_key_of(password, verifier_used.salt, verifier_used.iterations)
        final, _ = scram.client_final(key, f"n=,r={nonce}", nonce, exchange.message.encode())
        assert scram.verify_client_final(verifier_used, exchange, final.encode()) is None


def test_mock_salt_is_stable_per_name() -> None:
    a, b = scram.mock_verifier("ghost", b"k"), scram.mock_verifier("ghost", b"k")
    assert a.salt == b.salt and a.doomed
    assert scram.mock_verifier("other", b"k").salt != a.salt


@pytest.mark.parametrize(
    ("message", "sqlstate"),
    [
        (b"", "08P01"),
        (b"x,,n=,r=abc", "08P01"),
        (b"p=tls-server-end-point,,n=,r=abc", "08P01"),
        (b"n,a=admin,n=,r=abc", "0A000"),
        (b"n,,r=abc", "08P01"),
        (b"n,,n=,r=", "08P01"),
        (b"n,,n=,r=abc,m=ext", "0A000"),
        (b"n,,n=,r=a\x00c", "08P01"),
        (b"n,,\xff", "08P01"),
    ],
)
def test_malformed_client_first(message: bytes, sqlstate: str) -> None:
    verifier = scram.make_verifier("pw", b"s" * 16)
    with pytest.raises(scram.ScramError) as error:
        scram.server_first(verifier, message, "srv")
    assert error.value.sqlstate == sqlstate


@pytest.mark.parametrize(
    "final",
    [
        b"c=biws,r=abcsrv",  # no proof
        b"c=eSws,r=abcsrv,p=" + base64.b64encode(b"x" * 32),  # gs2 header differs
        b"c=biws,r=abcother,p=" + base64.b64encode(b"x" * 32),  # nonce differs
        b"c=biws,r=abcsrv,p=!!!",  # not base64
        b"c=biws,r=abcsrv,p=" + base64.b64encode(b"x" * 31),  # short proof
    ],
)
def test_malformed_client_final(final: bytes) -> None:
    verifier = scram.make_verifier("pw", b"s" * 16)
    exchange = scram.server_first(verifier, b"n,,n=,r=abc", "srv")
    with pytest.raises(scram.ScramError):
        scram.verify_client_final(verifier, exchange, final)


# --- the Login state machine --------------------------------------------------------------

PASSWORD = "a password with é"
VERIFIER = scram.make_verifier(PASSWORD, b"0123456789abcdef")


def startup(params: dict[str, str], minor: int = 0) -> bytes:
    packet = pg.startup_message(params)
    return packet[:4] + struct.pack("!i", pg.PROTOCOL_V3 + minor) + packet[8:]


def auth_request(data: bytes) -> tuple[int, bytes]:
    [(kind, body)] = frames(data)
    assert kind == b"R"
    return struct.unpack_from("!i", body)[0], body[4:]


def client_login(login: Login, password: str) -> tuple[bytes, bytes]:
    """Plays libpq against the login: (the client's last answer's Step.to_client, and
    what was pipelined after). Returns the Step of the client-final message."""
    kind, data = auth_request(login.role(Role(scram.format_verifier(VERIFIER))).to_client)
    assert kind == pg.AUTH_SASL and pg.decode_sasl_mechanisms(data) == ["SCRAM-SHA-256"]
    first, bare = scram.client_first("cnonce")
    step = login.client(pg.sasl_initial_response("SCRAM-SHA-256", first.encode()))
    kind, server_first = auth_request(step.to_client)
    assert kind == pg.AUTH_SASL_CONTINUE
    attrs = dict(p.split("=", 1) for p in server_first.decode().split(","))
    key = scram.client_key_of(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    final, auth_message = scram.client_final(key, bare, "cnonce", server_first)
    return pg.sasl_response(final.encode()), auth_message


def test_login_verifies_the_client_then_logs_in_to_the_backend_with_its_client_key() -> None:
    params = {"user": "dev", "database": "dev"}
    login = Login("dev", params, startup(params))
    final, client_auth_message = client_login(login, PASSWORD)
    step = login.client(final + pg.query("SELECT 1"))  # a query pipelined after the login
    assert step.connect == startup(params) and not step.to_client and not step.close
    assert step.leftover == pg.query("SELECT 1")
    assert login.connecting

    # The backend: Postgres's own exchange, against the same stored verifier.
    step = login.server(pg.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    [(kind, body)] = frames(step.to_server)
    mechanism, backend_first = pg.decode_sasl_initial_response(body)
    assert kind == b"p" and mechanism == "SCRAM-SHA-256"
    exchange = scram.server_first(VERIFIER, backend_first, "backendnonce")
    continue_ = pg.authentication(pg.AUTH_SASL_CONTINUE, exchange.message.encode())
    # split across two chunks
    assert login.server(continue_[:7]).to_server == b""
    step = login.server(continue_[7:])
    [(_, backend_final)] = frames(step.to_server)
    verified = scram.verify_client_final(VERIFIER, exchange, backend_final)
    assert verified is not None  # the backend accepts the proxy's proof
    after = pg.authentication(pg.AUTH_OK) + pg.message(b"S", b"a\x00b\x00")
    backend_final_msg = pg.authentication(pg.AUTH_SASL_FINAL, verified.server_final.encode())
    assert login.server(backend_final_msg) == login.server(b"")  # nothing to do yet
    step = login.server(after + pg.ready_for_query(b"I"))
    # The client gets the proxy's own SASLFinal, signed for its exchange, then the rest.
    kind, data = auth_request(step.to_client)
    assert kind == pg.AUTH_SASL_FINAL
    assert scram.server_signature_matches(VERIFIER.server_key, client_auth_message, data)
    assert step.rest == after + pg.ready_for_query(b"I")
    assert login.phase == "done"


def test_wrong_password_never_reaches_the_backend() -> None:
    params = {"user": "dev", "database": "dev"}
    login = Login("dev", params, startup(params))
    final, _ = client_login(login, "not it")
    step = login.client(final)
    assert step.close and step.connect is None
    [(kind, body)] = frames(step.to_client)
    fields = pg.decode_fields(body)
    assert (kind, fields["S"], fields["C"]) == (b"E", "FATAL", "28P01")
    assert fields["M"] == 'password authentication failed for user "dev"'


def test_unknown_and_nologin_roles_are_challenged_then_refused_alike() -> None:
    params = {"user": "ghost", "database": "x"}
    for role in (None, Role(scram.format_verifier(VERIFIER), can_login=False), Role(None, False)):
        login = Login("ghost", params, startup(params))
        kind, _ = auth_request(login.role(role).to_client)
        assert kind == pg.AUTH_SASL
        first, _bare = scram.client_first("n1")
        step = login.client(pg.sasl_initial_response("SCRAM-SHA-256", first.encode()))
        kind, server_first = auth_request(step.to_client)
        assert kind == pg.AUTH_SASL_CONTINUE
        # even the right key of the stored verifier does not pass
        key = scram.client_key_of(PASSWORD, VERIFIER.salt, VERIFIER.iterations)
        final, _ = scram.client_final(key, _bare, "n1", server_first)
        step = login.client(pg.sasl_response(final.encode()))
        assert step.close and b"28P01" in step.to_client


def test_roles_without_a_scram_verifier_are_relayed() -> None:
    params = {"user": "old", "database": "x"}
    for role in (Role("md5" + "0" * 32), Role(None), UNVERIFIABLE):
        step = Login("old", params, startup(params)).role(role)
        assert step.relay and not step.to_client


def test_protocol_negotiation_is_answered_by_the_proxy() -> None:
    params = {"user": "dev", "database": "dev", "_pq_.compression": "on"}
    login = Login("dev", params, startup(params, minor=2))
    [(kind, body), (auth, _)] = frames(login.role(Role(scram.format_verifier(VERIFIER))).to_client)
    assert (kind, auth) == (b"v", b"R")
    assert body == struct.pack("!ii", 0, 1) + b"_pq_.compression\x00"
    first, bare = scram.client_first("c")
    step = login.client(pg.sasl_initial_response("SCRAM-SHA-256", first.encode()))
    _, server_first = auth_request(step.to_client)
    key = scram.client_key_of(PASSWORD, VERIFIER.salt, VERIFIER.iterations)
    final, _ = scram.client_final(key, bare, "c", server_first)
    step = login.client(pg.sasl_response(final.encode()))
    assert step.connect == pg.startup_message({"user": "dev", "database": "dev"})


@pytest.mark.parametrize(
    ("client_bytes", "sqlstate"),
    [
        (pg.query("SELECT 1"), "08P01"),
        (pg.sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=x,,n=,r=a"), "08P01"),
        (pg.sasl_initial_response("SCRAM-SHA-256", b"garbage"), "08P01"),
        (b"p" + struct.pack("!i", 1 << 20), "08P01"),
    ],
)
def test_bad_client_messages_end_the_login(client_bytes: bytes, sqlstate: str) -> None:
    params = {"user": "dev", "database": "dev"}
    login = Login("dev", params, startup(params))
    login.role(Role(scram.format_verifier(VERIFIER)))
    step = login.client(client_bytes)
    assert step.close
    assert pg.decode_fields(frames(step.to_client)[0][1])["C"] == sqlstate


def test_terminate_during_the_login_closes_quietly() -> None:
    params = {"user": "dev", "database": "dev"}
    login = Login("dev", params, startup(params))
    login.role(None)
    step = login.client(b"X\x00\x00\x00\x04")
    assert step.close and not step.to_client


def logged_in(params: dict[str, str]) -> Login:
    login = Login("dev", params, startup(params))
    final, _ = client_login(login, PASSWORD)
    assert login.client(final).connect is not None
    return login


def test_backend_refusal_is_relayed_as_it_is() -> None:
    login = logged_in({"user": "dev", "database": "dev"})
    refusal = pg.error_response("53300", "sorry, too many clients already", fatal=True)
    step = login.server(refusal[:3])
    assert step.rest is None
    step = login.server(refusal[3:])
    assert step.rest == refusal and not step.close


@pytest.mark.parametrize(
    ("backend", "text"),
    [
        (pg.authentication(pg.AUTH_MD5, b"salt"), "md5"),
        (pg.authentication(pg.AUTH_CLEARTEXT), "password"),
        (pg.authentication_sasl(["SCRAM-SHA-256-PLUS"]), "no SCRAM-SHA-256"),
        (pg.message(b"v", struct.pack("!ii", 0, 0)), "unexpected message"),
    ],
)
def test_backend_asking_for_what_the_proxy_cannot_answer(backend: bytes, text: str) -> None:
    login = logged_in({"user": "dev", "database": "dev"})
    step = login.server(backend)
    assert step.close
    assert text in pg.decode_fields(frames(step.to_client)[0][1])["M"]


def test_backend_with_a_forged_signature_is_refused() -> None:
    login = logged_in({"user": "dev", "database": "dev"})
    step = login.server(pg.authentication_sasl(["SCRAM-SHA-256"]))
    _, backend_first = pg.decode_sasl_initial_response(frames(step.to_server)[0][1])
    exchange = scram.server_first(VERIFIER, backend_first, "x")
    login.server(pg.authentication(pg.AUTH_SASL_CONTINUE, exchange.message.encode()))
    forged = "v=" + base64.b64encode(b"\x00" * 32).decode()
    step = login.server(pg.authentication(pg.AUTH_SASL_FINAL, forged.encode()))
    assert step.close and b"signature" in step.to_client


def test_trust_backend_logs_in_at_once() -> None:
    login = logged_in({"user": "dev", "database": "dev"})
    step = login.server(pg.authentication(pg.AUTH_OK) + pg.ready_for_query(b"I"))
    assert auth_request(step.to_client)[0] == pg.AUTH_SASL_FINAL
    assert step.rest == pg.authentication(pg.AUTH_OK) + pg.ready_for_query(b"I")


# --- the login inside the Session ---------------------------------------------------------


def test_session_checks_the_password_before_it_asks_for_the_backend() -> None:
    from proxy.intercept import prefilter
    from proxy.session import (
        ConnectServer,
        LookupRole,
        Session,
        ToClient,
        ToServer,
    )
    from tests.support.wire import CATALOG

    session = Session(CATALOG, prefilter(CATALOG), verify_passwords=True)
    params = {"user": "dev", "database": "dev"}
    assert session.client_data(startup(params)) == [LookupRole("dev")]
    assert session.wants_server is False
    [challenge] = session.role_found(Role(scram.format_verifier(VERIFIER)))
    assert isinstance(challenge, ToClient)
    assert auth_request(challenge.data)[0] == pg.AUTH_SASL
    assert not session.wants_server  # the client's answers are read: no backend yet

    first, bare = scram.client_first("cn")
    [server_first] = session.client_data(pg.sasl_initial_response("SCRAM-SHA-256", first.encode()))
    assert isinstance(server_first, ToClient)
    _, data = auth_request(server_first.data)
    key = scram.client_key_of(PASSWORD, VERIFIER.salt, VERIFIER.iterations)
    final, client_auth_message = scram.client_final(key, bare, "cn", data)
    events = session.client_data(pg.sasl_response(final.encode()) + pg.query("SELECT 1"))
    assert events == [ConnectServer(startup(params), params)]
    assert session.wants_server and session.blocked

    [to_backend] = session.server_data(pg.authentication_sasl(["SCRAM-SHA-256"]))
    assert isinstance(to_backend, ToServer)
    _, backend_first = pg.decode_sasl_initial_response(frames(to_backend.data)[0][1])
    exchange = scram.server_first(VERIFIER, backend_first, "bn")
    [to_backend] = session.server_data(
        pg.authentication(pg.AUTH_SASL_CONTINUE, exchange.message.encode())
    )
    verified = scram.verify_client_final(VERIFIER, exchange, frames(to_backend.data)[0][1])
    assert verified is not None
    ok = (
        pg.authentication(pg.AUTH_SASL_FINAL, verified.server_final.encode())
        + pg.authentication(pg.AUTH_OK)
        + pg.message(b"K", struct.pack("!i", 42) + b"abcd")
        + pg.ready_for_query(b"I")
    )
    events = session.server_data(ok)
    sent = b"".join(e.data for e in events if isinstance(e, ToClient))
    kinds = [(kind, body[:4]) for kind, body in frames(sent)]
    assert kinds[0] == (b"R", struct.pack("!i", pg.AUTH_SASL_FINAL))
    assert kinds[1:] == [(b"R", b"\x00\x00\x00\x00"), (b"K", struct.pack("!i", 42)), (b"Z", b"I")]
    assert scram.server_signature_matches(
        VERIFIER.server_key, client_auth_message, frames(sent)[0][1][4:]
    )
    # The query pipelined after the login goes to the backend once it has logged in.
    assert [e for e in events if isinstance(e, ToServer)] == [ToServer(pg.query("SELECT 1"))]
    assert session.authenticated and not session.blocked


def test_session_relays_a_login_it_cannot_check() -> None:
    from proxy.intercept import prefilter
    from proxy.session import ConnectServer, LookupRole, Session, ToServer
    from tests.support.wire import CATALOG

    session = Session(CATALOG, prefilter(CATALOG), verify_passwords=True)
    params = {"user": "old", "database": "db"}
    packet = startup(params, minor=2)
    early = pg.sasl_response(b"early")  # relayed in order, as before the proxy checked logins
    assert session.client_data(packet + early) == [LookupRole("old")]
    events = session.role_found(Role("md5" + "0" * 32))
    assert events == [ConnectServer(packet, params), ToServer(early)]
    assert session.wants_server
