"""TLS: the server's own certificate and CA, sslmode=require and verify-full from psql,
psycopg and asyncpg, --require-tls, cancels through TLS, and TLS from the relay to a backing
Postgres that asks for it (--backend-url ...?sslmode=verify-full)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import psycopg
import pytest
from cryptography import x509

from iasql.certs import ensure_certificate, names_for
from iasql.postgres import LocalPostgres, free_port
from proxy import protocol as pg
from proxy.intercept import prefilter
from proxy.server import BackendAddress
from proxy.session import (
    CancelTarget,
    CloseConnection,
    ConnectServer,
    Session,
    StartTls,
    ToClient,
)
from proxy.tls import TlsConfigError, backend_tls
from tests.support.cli import cli_env
from tests.support.env import (
    PASSWORD,
    SUPERUSER,
    RunningServer,
    TlsServer,
    psql_env,
    reachable_tempdir,
)
from tests.support.wire import CATALOG, startup

SSL_REQUEST = struct.pack("!ii", 8, pg.SSL_REQUEST)
GSSENC_REQUEST = struct.pack("!ii", 8, pg.GSSENC_REQUEST)
_SCRIPT = Path(sys.executable).with_name("iasql")
IASQL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "iasql.cli"]


def tls_session(**kw: Any) -> Session:
    return Session(CATALOG, prefilter(CATALOG), tls=True, **kw)


def error_fields(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", data
    fields = {}
    for part in data[5:].split(b"\x00"):
        if part:
            fields[part[:1].decode()] = part[1:].decode()
    return fields


# --- the sans-IO session --------------------------------------------------------------------


def test_ssl_request_is_answered_s_and_the_startup_follows_through_tls() -> None:
    session = tls_session()
    assert session.client_data(SSL_REQUEST) == [ToClient(b"S"), StartTls()]
    assert session.blocked  # nothing is read until the handshake is done
    assert session.tls_started() == []
    assert session.encrypted
    events = session.client_data(startup("bob", "staging"))
    assert isinstance(events[0], ConnectServer)
    assert (session.user, session.database) == ("bob", "staging")


def test_gssenc_request_is_still_declined_before_tls() -> None:
    session = tls_session()
    assert session.client_data(GSSENC_REQUEST) == [ToClient(b"N")]
    assert session.client_data(SSL_REQUEST) == [ToClient(b"S"), StartTls()]


def test_without_a_certificate_ssl_request_is_declined() -> None:
    session = Session(CATALOG, prefilter(CATALOG))
    assert session.client_data(SSL_REQUEST) == [ToClient(b"N")]


def test_plaintext_bytes_after_the_ssl_request_are_refused() -> None:
    """They would be read as if they had come through TLS (CVE-2021-23214)."""
    session = tls_session()
    events = session.client_data(SSL_REQUEST + startup())
    assert isinstance(events[-1], CloseConnection)
    assert isinstance(events[0], ToClient)
    assert error_fields(events[0].data)["C"] == "08P01"


@pytest.mark.parametrize("second", [SSL_REQUEST, GSSENC_REQUEST])
def test_a_negotiation_request_inside_tls_is_refused(second: bytes) -> None:
    session = tls_session()
    session.client_data(SSL_REQUEST)
    session.tls_started()
    events = session.client_data(second)
    assert isinstance(events[0], ToClient)
    assert error_fields(events[0].data)["C"] == "08P01"
    assert isinstance(events[-1], CloseConnection)


def test_require_tls_refuses_a_plaintext_startup_naming_sslmode() -> None:
    session = tls_session(require_tls=True)
    events = session.client_data(startup())
    assert isinstance(events[0], ToClient)
    fields = error_fields(events[0].data)
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert "sslmode=require" in fields["H"]
    assert isinstance(events[-1], CloseConnection)
    # after a declined GSSENCRequest too
    session = tls_session(require_tls=True)
    events = session.client_data(GSSENC_REQUEST + startup())
    assert events[0] == ToClient(b"N")
    assert isinstance(events[1], ToClient) and error_fields(events[1].data)["C"] == "28000"


def test_require_tls_lets_a_plaintext_cancel_request_through() -> None:
    """libpq before 17 sends CancelRequest in plaintext, whatever the session's sslmode."""
    session = tls_session(require_tls=True)
    packet = struct.pack("!iiii", 16, pg.CANCEL_REQUEST, 42, 7)
    events = session.client_data(packet)
    assert isinstance(events[0], CancelTarget) and events[0].process_id == 42


def test_cancel_request_through_tls() -> None:
    session = tls_session(require_tls=True)
    session.client_data(SSL_REQUEST)
    session.tls_started()
    events = session.client_data(struct.pack("!iiii", 16, pg.CANCEL_REQUEST, 42, 7))
    assert isinstance(events[0], CancelTarget)


# --- the certificate iasql makes ----------------------------------------------------------


def test_certificate_covers_the_names_and_is_kept_across_starts(tmp_path: Path) -> None:
    made = ensure_certificate(tmp_path, names_for("0.0.0.0", "db.example.test"))
    assert made.ca is not None
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "db.example.test"} <= dns
    assert {"127.0.0.1", "::1"} <= ips
    assert oct(made.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    ca_before, cert_before = made.ca.read_bytes(), made.cert.read_bytes()
    again = ensure_certificate(tmp_path, names_for("0.0.0.0", "db.example.test"))
    assert again.ca is not None
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca_before, cert_before)
    # a new advertised name: a new server certificate from the same CA
    third = ensure_certificate(tmp_path, names_for("127.0.0.1", "other.example.test"))
    assert third.ca is not None and third.ca.read_bytes() == ca_before
    assert third.cert.read_bytes() != cert_before
    context = ssl.create_default_context(cafile=str(third.ca))
    assert context.cert_store_stats()["x509_ca"] == 1


# --- clients against the in-process server with TLS -----------------------------------------


def admin_url(server: RunningServer) -> str:
    return server.dsn(database="iasql")


def test_psycopg_verify_full_and_require(iasql_tls: TlsServer) -> None:
    for mode in ("verify-full", "require"):
        with psycopg.connect(iasql_tls.tls_dsn(admin_url(iasql_tls), mode)) as conn:
            assert conn.pgconn.ssl_in_use
            row = conn.execute(
                "SELECT module_name FROM iasql_modules_list() WHERE module_name = %s",
                ("aws_account",),
            ).fetchone()
            assert row == ("aws_account",)


def test_verify_full_fails_with_another_ca(iasql_tls: TlsServer, tmp_path: Path) -> None:
    other = ensure_certificate(tmp_path, names_for("127.0.0.1"))
    url = iasql_tls.tls_dsn(admin_url(iasql_tls)).replace(
        quote(str(iasql_tls.ca)), quote(str(other.ca))
    )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url, connect_timeout=10)


def test_verify_full_fails_for_a_name_the_certificate_lacks(iasql_tls: TlsServer) -> None:
    url = iasql_tls.tls_dsn(admin_url(iasql_tls))
    with pytest.raises(psycopg.OperationalError, match="does not match"):
        psycopg.connect(url, host="not-in-the-cert.test", hostaddr="127.0.0.1", connect_timeout=10)


def plaintext_refusal(port: int) -> dict[str, str]:
    """The fields of the error a plaintext startup gets (libpq keeps no SQLSTATE of it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(startup(SUPERUSER, "iasql"))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return error_fields(answer)


def test_plaintext_is_refused_with_28000(iasql_tls: TlsServer) -> None:
    url = iasql_tls.tls_dsn(admin_url(iasql_tls), "disable")
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(url, connect_timeout=10)
    assert "accepts only TLS" in str(caught.value)
    assert "sslmode=require" in str(caught.value)
    fields = plaintext_refusal(iasql_tls.port)
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")


def test_psql_verify_full(iasql_tls: TlsServer, env_url: str) -> None:
    url = iasql_tls.tls_dsn(env_url)
    sql = "SELECT count(*) FROM iasql_modules_list() WHERE module_name LIKE 'aws%'"
    out = subprocess.run(
        ["psql", url, "-X", "-At", "-c", sql, "-c", "\\conninfo"],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    count, conninfo = out.stdout.strip().split("\n", 1)
    assert int(count) > 5
    assert "SSL connection (protocol: TLSv1.3" in conninfo
    plain = subprocess.run(
        ["psql", iasql_tls.tls_dsn(env_url, "disable"), "-X", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=60,
    )
    assert plain.returncode != 0
    assert "accepts only TLS" in plain.stderr and "sslmode=require" in plain.stderr


async def test_asyncpg_verify_full_and_require(iasql_tls: TlsServer, env_url: str) -> None:
    for mode in ("verify-full", "require"):
        conn = await asyncpg.connect(iasql_tls.tls_dsn(env_url, mode))
        try:
            assert conn._transport.get_extra_info("ssl_object") is not None  # type: ignore[attr-defined]
            rows = await conn.fetch(
                "SELECT module_name FROM iasql_modules_list() WHERE module_name = $1", "aws_sqs"
            )
            assert [r[0] for r in rows] == ["aws_sqs"]
            for i in range(7):  # asyncpg's statement cache: Bind only after the first
                assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
        finally:
            await conn.close()


async def test_asyncpg_cancel_through_tls(iasql_tls: TlsServer, env_url: str) -> None:
    conn = await asyncpg.connect(iasql_tls.tls_dsn(env_url))
    try:
        task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(20)"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await conn.fetchval("SELECT 1") == 1  # the connection is still good
        assert time.monotonic() - started < 10
    finally:
        await conn.close()


def test_psycopg_cancel_through_tls(iasql_tls: TlsServer, env_url: str) -> None:
    """libpq 17's cancel_safe(), which negotiates TLS before its CancelRequest. (Its blocking
    PQcancel would hold the GIL that the in-process server needs: see the psql test.)"""
    with psycopg.connect(iasql_tls.tls_dsn(env_url), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psql_ctrl_c_on_a_tls_session(iasql_tls: TlsServer, env_url: str) -> None:
    """psql's Ctrl-C: a plaintext CancelRequest (libpq's PQcancel) for a TLS session, let in
    by --require-tls."""
    proc = subprocess.Popen(
        ["psql", iasql_tls.tls_dsn(env_url), "-X", "-c", "SELECT pg_sleep(20)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=psql_env(),
    )
    time.sleep(1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert "canceling statement due to user request" in err
    assert time.monotonic() - started < 10


def test_a_failed_handshake_closes_only_that_connection(iasql_tls: TlsServer) -> None:
    with socket.create_connection((iasql_tls.host, iasql_tls.port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        sock.sendall(b"\x16\x03\x01\x00\x05hello, not TLS at all" * 4)
        with contextlib.suppress(ConnectionResetError):  # an alert or nothing, then the close
            while sock.recv(4096):
                pass
    url = iasql_tls.tls_dsn(admin_url(iasql_tls))
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_clients_that_leave_mid_handshake_leave_nothing_behind(iasql_tls: TlsServer) -> None:
    baseline = len(iasql_tls.proxy.connections)
    outgoing = ssl.MemoryBIO()
    hello = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    client_hello = outgoing.read()
    for i in range(30):
        with socket.create_connection((iasql_tls.host, iasql_tls.port), timeout=10) as sock:
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"S"
            if i % 3 == 1:
                sock.sendall(client_hello[: len(client_hello) // 2])
            elif i % 3 == 2:
                sock.sendall(client_hello)
                sock.recv(100)  # the start of the ServerHello
    deadline = time.monotonic() + 10
    while len(iasql_tls.proxy.connections) > baseline:
        assert time.monotonic() < deadline, "connections left behind"
        time.sleep(0.05)
    with psycopg.connect(iasql_tls.tls_dsn(admin_url(iasql_tls))) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- `iasql serve` ------------------------------------------------------------------------------


class Serve:
    """`iasql serve --backend-url URL` in a subprocess, until stop()."""

    def __init__(self, backend_url: str, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        env = cli_env()
        cmd = [*IASQL, "serve", "--backend-url", backend_url, "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "create an environment database" in line or time.monotonic() > deadline:
                break
        if self.proc.poll() is not None or not self.lines:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"iasql serve did not start: {self.lines} {err}")

    def url(self, *, user: str = SUPERUSER, database: str = "iasql", query: str = "") -> str:
        creds = f"{quote(user, safe='')}:{quote(PASSWORD, safe='')}"
        return f"postgresql://{creds}@localhost:{self.port}/{database}{query}"

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def fail_to_start(backend_url: str, data_dir: Path, *extra: str) -> str:
    env = cli_env()
    cmd = [*IASQL, "serve", "--backend-url", backend_url, "--data-dir", str(data_dir)]
    out = subprocess.run(
        [*cmd, "--port", str(free_port()), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    return out.stderr


def test_serve_makes_a_ca_and_verify_full_works(postgres: LocalPostgres, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Serve(postgres.dsn(), data_dir)
    try:
        ca = data_dir / "tls" / "ca.crt"
        assert any(f"sslrootcert={ca}" in line for line in server.lines), server.lines
        url = server.url(query=f"?sslmode=verify-full&sslrootcert={ca}")
        with psycopg.connect(url) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT count(*) FROM iasql_db_list()").fetchone() is not None
        url_ip = url.replace("@localhost:", "@127.0.0.1:")
        with psycopg.connect(url_ip) as conn:
            assert conn.pgconn.ssl_in_use
        with psycopg.connect(server.url(query="?sslmode=disable")) as conn:  # not required
            assert not conn.pgconn.ssl_in_use
    finally:
        server.stop()
    ca_bytes = ca.read_bytes()
    server = Serve(postgres.dsn(), data_dir, "--require-tls")
    try:
        assert ca.read_bytes() == ca_bytes  # clients keep trusting the same CA
        with psycopg.connect(server.url(query=f"?sslmode=verify-full&sslrootcert={ca}")):
            pass
        with pytest.raises(psycopg.OperationalError, match="accepts only TLS"):
            psycopg.connect(server.url(query="?sslmode=disable"))
        assert plaintext_refusal(server.port)["C"] == "28000"
    finally:
        server.stop()


def test_serve_takes_tls_cert_and_key(postgres: LocalPostgres, tmp_path: Path) -> None:
    own = ensure_certificate(tmp_path / "own", names_for("localhost"))
    data_dir = tmp_path / "data"
    server = Serve(postgres.dsn(), data_dir, "--tls-cert", str(own.cert), "--tls-key", str(own.key))
    try:
        assert not (data_dir / "tls").exists()
        url = server.url(query=f"?sslmode=verify-full&sslrootcert={own.ca}")
        with psycopg.connect(url) as conn:
            assert conn.pgconn.ssl_in_use
    finally:
        server.stop()
    err = fail_to_start(postgres.dsn(), data_dir, "--tls-cert", str(own.cert))
    assert err.count("\n") == 1 and "--tls-key" in err
    err = fail_to_start(
        postgres.dsn(), data_dir, "--tls-cert", str(own.cert), "--tls-key", str(own.cert)
    )
    assert err.count("\n") == 1 and "cannot use the certificate" in err


# --- TLS to the backing Postgres -------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[tuple[LocalPostgres, Path]]:
    """A Postgres that accepts TCP logins only through TLS (hostssl; hostnossl rejected),
    with a certificate and CA made by the test."""
    folder = reachable_tempdir("iasql-test-tlspg-")
    made = ensure_certificate(folder / "certs", ["127.0.0.1"])  # not localhost
    assert made.ca is not None
    cluster = LocalPostgres(
        folder / "pgdata",
        superuser=SUPERUSER,
        password=PASSWORD,
        settings={
            "ssl": "on",
            "ssl_cert_file": str(made.cert),
            "ssl_key_file": str(made.key),
            "fsync": "off",
        },
    )
    cluster.init()
    (cluster.pgdata / "pg_hba.conf").write_text(
        "hostnossl all all 0.0.0.0/0 reject\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
    )
    if cluster.account.switch:  # Postgres reads its key as its own user, mode 0600
        os.chown(made.key, cluster.account.uid, cluster.account.gid)
    (folder / "certs").chmod(0o755)
    (folder / "certs" / "tls").chmod(0o755)
    cluster.start()
    yield cluster, made.ca
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_relay_speaks_tls_to_a_verify_full_backend(
    tls_postgres: tuple[LocalPostgres, Path], tmp_path: Path
) -> None:
    cluster, ca = tls_postgres
    backend = cluster.dsn() + f"?sslmode=verify-full&sslrootcert={ca}"
    server = Serve(backend, tmp_path / "data")
    try:
        with psycopg.connect(server.url(database="postgres"), autocommit=True) as conn:
            # the relayed session itself: the backend sees it come in over TLS
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)
            assert conn.execute("SELECT count(*) FROM iasql_modules_list()").fetchone()
            timer = threading.Timer(0.5, conn.cancel_safe)  # the cancel goes through TLS too
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
            timer.join()
        # the engine's own pools (asyncpg, from the same URL): an environment is made
        with psycopg.connect(server.url(), autocommit=True) as admin:
            url = admin.execute("SELECT url FROM iasql_connect('tlsenv')").fetchone()
        assert url is not None
        with psycopg.connect(url[0], autocommit=True) as env:
            env.execute("SELECT * FROM iasql_install('aws_account')")
            assert env.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        server.stop()


async def test_backend_sslmodes(
    tls_postgres: tuple[LocalPostgres, Path], postgres: LocalPostgres, tmp_path: Path
) -> None:
    cluster, ca = tls_postgres
    loop = asyncio.get_running_loop()

    async def answer(port: int, url: str) -> bytes:
        address = BackendAddress("127.0.0.1", port, backend_tls(url))
        transport, protocol = await address.connect(loop, _Collect)
        try:
            transport.write(startup(SUPERUSER, "postgres"))
            return await asyncio.wait_for(protocol.first, 10)
        finally:
            transport.close()

    full = f"postgresql://x@127.0.0.1/?sslmode=verify-full&sslrootcert={ca}"
    assert (await answer(cluster.port or 0, full))[:1] == b"R"  # the SCRAM request
    assert (await answer(cluster.port or 0, "postgresql://x@h/?sslmode=require"))[:1] == b"R"
    # prefer falls back to plaintext on a Postgres without TLS; require refuses it
    assert (await answer(postgres.port or 0, "postgresql://x@h/"))[:1] == b"R"
    with pytest.raises(ConnectionRefusedError, match="does not offer TLS"):
        await answer(postgres.port or 0, "postgresql://x@h/?sslmode=require")
    # the wrong CA, and a name the certificate does not carry
    other = ensure_certificate(tmp_path, names_for("127.0.0.1"))
    with pytest.raises(ssl.SSLCertVerificationError):
        await answer(cluster.port or 0, full.replace(str(ca), str(other.ca)))
    address = BackendAddress("localhost", cluster.port or 0, backend_tls(full))
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await address.connect(loop, _Collect)
    verify_ca = backend_tls(full.replace("verify-full", "verify-ca")).context
    assert verify_ca is not None and not verify_ca.check_hostname
    with pytest.raises(TlsConfigError, match="sslmode"):
        backend_tls("postgresql://x@h/?sslmode=bogus")
    with pytest.raises(TlsConfigError, match="sslrootcert"):
        backend_tls(f"postgresql://x@h/?sslmode=verify-full&sslrootcert={tmp_path}/none.crt")


def test_serve_with_a_wrong_backend_ca_fails_in_one_line(
    tls_postgres: tuple[LocalPostgres, Path], tmp_path: Path
) -> None:
    cluster, _ = tls_postgres
    other = ensure_certificate(tmp_path / "other", names_for("127.0.0.1"))
    backend = cluster.dsn() + f"?sslmode=verify-full&sslrootcert={other.ca}"
    err = fail_to_start(backend, tmp_path / "data")
    assert err.count("\n") == 1 and "cannot use the backing Postgres" in err, err


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.first.done():
            self.first.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(exc or ConnectionResetError())
