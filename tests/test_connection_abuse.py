"""Connection abuse can't take the server down (issue 13, section 2).

A server of its own, with a short auth timeout and small limits, on the suite's Postgres:
- a client that does not finish its login in time is disconnected, a working client is not;
- the server-wide, per-database and admin-reserved limits answer 53300 at once, naming the
  limit, to real psycopg and asyncpg clients;
- logins stalled at the SCRAM challenge, more than the backing Postgres has connections,
  hold none of them: the proxy checks the password itself before it opens the backend one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest

from iasql.postgres import LocalPostgres, free_port
from proxy import protocol as pg
from proxy.login import UNVERIFIABLE
from proxy.roles import RoleDirectory
from proxy.server import ProxyServer
from tests.support.cli import cli_env
from tests.support.env import PASSWORD, SUPERUSER, RunningServer, in_process_server

AUTH_TIMEOUT = 1.0


@dataclass
class Guarded:
    server: RunningServer
    proxy: ProxyServer

    def dsn(
        self, database: str = "postgres", user: str = SUPERUSER, password: str = PASSWORD
    ) -> str:
        return self.server.dsn(database, user, password)

    def set(self, **settings: object) -> None:
        """Changes the proxy's limits or auth timeout for the next connections."""

        def apply() -> None:
            for key, value in settings.items():
                if key == "auth_timeout":
                    self.proxy.auth_timeout = value  # type: ignore[assignment]
                else:
                    setattr(self.proxy.limits, key, value)

        self.server.loop.call_soon_threadsafe(apply)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def guarded(postgres: LocalPostgres) -> Iterator[Guarded]:
    with in_process_server(postgres, "iasql-guarded", auth_timeout=AUTH_TIMEOUT) as server:
        yield Guarded(server, server.proxy)


def environment(guarded: Guarded) -> str:
    alias = f"abuse_{secrets.token_hex(4)}"
    with psycopg.connect(guarded.dsn("iasql"), autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(scope="module")
def env_urls(guarded: Guarded) -> list[str]:
    return [environment(guarded), environment(guarded)]


# --- raw sockets ------------------------------------------------------------------------------


def startup(user: str, database: str, app: str) -> bytes:
    return pg.startup_message({"user": user, "database": database, "application_name": app})


async def read_messages(reader: asyncio.StreamReader, timeout: float) -> tuple[list[bytes], bool]:
    """Message types read until the server closes (True) or `timeout` passes (False)."""
    kinds: list[bytes] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return kinds, False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return kinds, False
        except ConnectionResetError:
            return kinds, True
        if not chunk:
            return kinds, True
        buffer += chunk
        while len(buffer) >= 5:
            length = struct.unpack_from("!i", buffer, 1)[0]
            if len(buffer) < 1 + length:
                break
            kinds.append(buffer[:1] + buffer[5 : 1 + length])
            buffer = buffer[1 + length :]


async def stall(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    return reader, writer


def env_login(url: str) -> tuple[str, str]:
    """(user, database) of an environment URL."""
    rest = url.split("//", 1)[1]
    user = rest.split(":", 1)[0]
    return user, rest.rsplit("/", 1)[1]


# --- 1. the auth timeout ------------------------------------------------------------------------


async def test_logins_not_finished_in_time_are_disconnected(
    guarded: Guarded, env_urls: list[str]
) -> None:
    user, database = env_login(env_urls[0])
    port = guarded.server.port
    full = startup(user, database, "stalled")
    payloads = {
        "nothing": b"",
        "half a length": full[:2],
        "half a startup packet": full[: len(full) // 2],
        "a startup, then no answer to the SCRAM challenge": full,
        "an unknown role, then no answer": startup("no_such_role", database, "stalled"),
        "half a SASL response": full
        + pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdef")[:9],
    }
    started = time.monotonic()
    clients = {name: await stall(port, data) for name, data in payloads.items()}
    async with await psycopg.AsyncConnection.connect(env_urls[0], autocommit=True) as working:
        results = await asyncio.gather(
            *(read_messages(reader, AUTH_TIMEOUT + 4) for reader, _ in clients.values())
        )
        elapsed = time.monotonic() - started
        # The working client logged in and stays connected past the timeout.
        await asyncio.sleep(0.2)
        assert await (await working.execute("SELECT 41 + 1")).fetchone() == (42,)
    for name, (messages, closed) in zip(clients, results, strict=True):
        assert closed, f"{name}: still open after {elapsed:.1f} s"
        fatal = pg.decode_fields(messages[-1][1:])
        assert messages[-1][:1] == b"E", name
        assert (fatal["S"], fatal["C"]) == ("FATAL", "08P01"), name
        assert "--auth-timeout" in fatal["M"], name
    assert AUTH_TIMEOUT - 0.1 <= elapsed <= AUTH_TIMEOUT + 3
    for _, writer in clients.values():
        writer.close()


async def test_a_relayed_login_that_stalls_is_disconnected_too(
    guarded: Guarded, postgres: LocalPostgres
) -> None:
    """A role without a SCRAM verifier is relayed to the backing Postgres; the timeout still
    ends it, and its backend connection with it."""
    role = f"md5_{secrets.token_hex(3)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute("SET password_encryption = 'md5'")
        direct.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'md5-password'")
    try:
        app = f"relayed-{role}"
        reader, writer = await stall(guarded.server.port, startup(role, "postgres", app))
        messages, closed = await read_messages(reader, AUTH_TIMEOUT + 4)
        assert closed
        assert messages[0][:1] == b"R"  # the backing Postgres's own challenge, relayed
        assert pg.decode_fields(messages[-1][1:])["C"] == "08P01"
        writer.close()
        # The proxy's connection, and the backend connection it had opened, are gone.
        assert not [c for c in list(guarded.proxy.connections) if c.session.user == role]
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP ROLE {role}")


# --- 2. limits --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def limited(guarded: Guarded, **limits: object) -> AsyncIterator[None]:
    guarded.set(**limits)
    try:
        yield
    finally:
        guarded.set(max_connections=None, per_database=None, admin_reserved=0)


async def test_limits_answer_53300_naming_the_limit(guarded: Guarded, env_urls: list[str]) -> None:
    a, b = env_urls
    opened: list[asyncpg.Connection] = []
    async with limited(guarded, max_connections=6, per_database=3, admin_reserved=2):
        try:
            for _ in range(3):
                opened.append(await asyncpg.connect(a))
            with pytest.raises(asyncpg.TooManyConnectionsError) as error:
                await asyncpg.connect(a)
            assert "--max-connections-per-db" in str(error.value)
            assert 'database "' in str(error.value) and "limit is 3" in str(error.value)

            opened.append(await asyncpg.connect(b))  # 4 of 6: the last 2 are the admin's
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(b)
            assert "FATAL:  sorry, too many clients already" in str(refused.value)
            assert "reserved for the admin database" in str(refused.value)

            for _ in range(2):
                opened.append(await asyncpg.connect(guarded.dsn("iasql")))
            with pytest.raises(asyncpg.TooManyConnectionsError) as error:
                await asyncpg.connect(guarded.dsn("iasql"))
            assert "server-wide limit of 6" in str(error.value)
            assert "--max-connections" in str(error.value)

            # A disconnect frees its place at once.
            await opened.pop().close()
            await asyncio.sleep(0.1)
            opened.append(await asyncpg.connect(guarded.dsn("iasql")))
            assert await opened[-1].fetchval("SELECT 1") == 1
            for conn in (opened.pop(0), opened.pop(), opened.pop()):  # one in a, both admin
                await conn.close()
            await asyncio.sleep(0.1)
            opened.append(await asyncpg.connect(a))  # 3 in a, 1 in b: the 4 not reserved
            assert await opened[-1].fetchval("SELECT 1") == 1
        finally:
            for conn in opened:
                await conn.close()


async def test_logins_in_progress_count_for_no_limit(guarded: Guarded, env_urls: list[str]) -> None:
    user, database = env_login(env_urls[0])
    async with limited(guarded, max_connections=3, per_database=2):
        stalled = [
            await stall(guarded.server.port, startup(user, database, "stalled")) for _ in range(20)
        ]
        try:
            conns = [await asyncpg.connect(env_urls[0]) for _ in range(2)]
            assert [await c.fetchval("SELECT 1") for c in conns] == [1, 1]
            for conn in conns:
                await conn.close()
        finally:
            for _, writer in stalled:
                writer.close()


# --- 3. no backend connection before the password is checked ----------------------------------


async def test_stalled_logins_do_not_exhaust_the_backing_postgres(
    guarded: Guarded, env_urls: list[str], postgres: LocalPostgres
) -> None:
    """More stalled logins than the backing Postgres has connections (max_connections 200):
    before the proxy checked passwords, each held a backend connection, and the 200th locked
    every tenant out with `too many clients` for Postgres's own 60 s authentication timeout."""
    user, database = env_login(env_urls[0])
    guarded.set(auth_timeout=60.0)
    try:
        stalled = []
        for i in range(230):
            who = user if i % 2 else "no_such_role"
            stalled.append(await stall(guarded.server.port, startup(who, database, "stalled")))
        challenges = await asyncio.gather(
            *(read_messages(reader, 0.5) for reader, _ in stalled[::23])
        )
        for messages, closed in challenges:
            assert not closed
            assert messages and messages[0][:1] == b"R"  # the proxy's SCRAM challenge
            assert struct.unpack_from("!i", messages[0], 1)[0] == pg.AUTH_SASL
        # A normal client still logs in and queries, by asyncpg and psycopg.
        conn = await asyncpg.connect(env_urls[0])
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()
        async with await psycopg.AsyncConnection.connect(env_urls[1]) as other:
            assert await (await other.execute("SELECT 1")).fetchone() == (1,)
        holding = [c for c in list(guarded.proxy.connections) if c.backend is not None]
        assert len(holding) <= 1, "a stalled login holds a backend connection"
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            held = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stalled'"
            ).fetchone()
            assert held == (0,)
            assert direct.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0] < 100
        for _, writer in stalled:
            writer.close()
    finally:
        guarded.set(auth_timeout=AUTH_TIMEOUT)


async def test_wrong_password_is_refused_by_the_proxy_alone(
    guarded: Guarded, env_urls: list[str]
) -> None:
    user, database = env_login(env_urls[0])
    with pytest.raises(asyncpg.InvalidPasswordError) as error:
        await asyncpg.connect(
            host="127.0.0.1",
            port=guarded.server.port,
            user=user,
            password="wrong",
            database=database,
        )
    assert str(error.value) == f'password authentication failed for user "{user}"'
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1",
            port=guarded.server.port,
            user="ghost",
            password="x",
            database=database,
        )


# --- the flags ----------------------------------------------------------------------------------


def test_max_connections_must_leave_room_for_the_engine(postgres: LocalPostgres) -> None:
    """Against a backing Postgres of max_connections 200 (3 reserved), --max-connections over
    177 leaves the engine's 20 connections no room: a one-line failure at start."""
    folder = Path(tempfile.mkdtemp(prefix="iasql-limits-"))
    env = cli_env()
    env["IASQL_MAX_CONNECTIONS"] = "178"
    try:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "iasql.cli", "serve", "--data-dir", str(folder)),
                *("--port", str(free_port()), "--backend-url", postgres.dsn()),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert out.returncode == 1, out
    assert len(out.stderr.splitlines()) == 1, out.stderr
    line = out.stderr.strip()
    assert line.startswith("iasql: --max-connections 178 does not fit"), line
    assert "max_connections 200" in line and "room for 177" in line


async def test_role_directory_reads_verifiers_and_gives_way_without_superuser(
    postgres: LocalPostgres,
) -> None:
    role = f"plain_{secrets.token_hex(3)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'plain-pw' CREATEDB")
    directory = RoleDirectory(postgres.dsn(), "postgres")
    plain = RoleDirectory(
        f"postgresql://{role}:plain-pw@127.0.0.1:{postgres.port}/postgres", "postgres"
    )
    try:
        found = await directory.find(SUPERUSER)
        assert found is not None and found.can_login
        assert found.password is not None and found.password.startswith("SCRAM-SHA-256$")
        assert await directory.find("no_such_role_here") is None
        assert await plain.find(SUPERUSER) is UNVERIFIABLE  # pg_authid is superuser-only
        assert not plain.readable
    finally:
        await directory.close()
        await plain.close()
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP ROLE {role}")
