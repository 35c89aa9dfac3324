"""Real parts for every test: a throwaway Postgres cluster, moto servers, the iasql server."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
import uvloop

from engine import Engine, EngineConfig
from engine.admin import PublicAddress
from engine.cloud import AwsCloud, Credentials
from engine.transaction import TransactionSettings
from iasql.certs import ensure_certificate, names_for
from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer
from proxy.server import BackendAddress, ProxyServer
from proxy.tls import server_context

SUPERUSER = "iasql_test"
PASSWORD = "test-pw-'\"-é"

T = TypeVar("T")


def reachable_tempdir(prefix: str) -> Path:
    """A folder the unprivileged Postgres user can enter (pytest's own tmp is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    folder = reachable_tempdir("iasql-test-pg-")
    cluster = LocalPostgres(
        folder / "pgdata",
        superuser=SUPERUSER,
        password=PASSWORD,
        settings={"max_connections": "200", "fsync": "off", "synchronous_commit": "off"},
    )
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class RunningServer:
    """An iasql server in this process, on its own event loop thread."""

    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    proxy: ProxyServer

    def dsn(
        self, database: str = "postgres", user: str = SUPERUSER, password: str = PASSWORD
    ) -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{database}"

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def iasql(postgres: LocalPostgres) -> Iterator[RunningServer]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="iasql-server", daemon=True)
    thread.start()
    port = free_port()
    address = PublicAddress("127.0.0.1", port)
    engine = Engine(
        EngineConfig(postgres.dsn(), address, transactions=TransactionSettings(begin_timeout=1.0))
    )

    async def start() -> ProxyServer:
        await engine.start()
        proxy = ProxyServer(engine, BackendAddress("127.0.0.1", postgres.port), max_message=1 << 20)
        await proxy.listen("127.0.0.1", port)
        return proxy

    proxy = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    server = RunningServer("127.0.0.1", port, loop, proxy)
    yield server
    asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(30)
    asyncio.run_coroutine_threadsafe(engine.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@dataclass
class TlsServer(RunningServer):
    """A second listener of the in-process server, on the same engine and backend, that
    offers TLS with a certificate made as `iasql serve` makes its own, and refuses plaintext."""

    ca: Path = Path()  # the CA that signed its certificate: sslrootcert for verify-full

    def tls_dsn(self, url: str, mode: str = "verify-full") -> str:
        """`url` (e.g. an environment's, from iasql_connect) pointed at this listener."""
        parts = urlsplit(url)
        netloc = f"{parts.netloc.rpartition('@')[0]}@{self.host}:{self.port}"
        query = f"sslmode={mode}&sslrootcert={quote(str(self.ca))}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@pytest.fixture(scope="session")
def iasql_tls(iasql: RunningServer) -> Iterator[TlsServer]:
    folder = Path(tempfile.mkdtemp(prefix="iasql-test-tls-"))
    made = ensure_certificate(folder, names_for("127.0.0.1"))
    context = server_context(made.cert, made.key)
    engine, backend = iasql.proxy.engine, iasql.proxy.backend

    async def start() -> tuple[ProxyServer, int]:
        proxy = ProxyServer(engine, backend, max_message=1 << 20, ssl=context, require_tls=True)
        return proxy, await proxy.listen("127.0.0.1", 0)

    proxy, port = cast(tuple[ProxyServer, int], iasql.run(start()))
    assert made.ca is not None
    yield TlsServer("127.0.0.1", port, iasql.loop, proxy, ca=made.ca)
    iasql.run(proxy.close())
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_accounts() -> Iterator[Callable[[], MotoServer]]:
    """Starts moto servers on demand; each one is a separate AWS account."""
    started: list[MotoServer] = []

    def start() -> MotoServer:
        server = MotoServer()
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:  # all at once: each takes a moment to exit
        if server.process is not None:
            server.process.terminate()
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials so that no test can reach real AWS by accident."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def psql_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


@pytest.fixture
def env_url(iasql: RunningServer) -> str:
    """A fresh environment database and its own login role, made with iasql_connect() on the
    admin database as a user would; the URL reaches it through the proxy."""
    alias = f"env_{secrets.token_hex(4)}"
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        url = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert url is not None
    return str(url[0])


@pytest.fixture
def envdb(env_url: str) -> Iterator[psycopg.Connection]:
    """A session on a fresh environment database, in autocommit mode."""
    with psycopg.connect(env_url, autocommit=True) as conn:
        yield conn


def rows(conn: psycopg.Connection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def one(conn: psycopg.Connection, sql: str) -> Any:
    """The single value the query returns."""
    [(value,)] = rows(conn, sql)
    return value


def commit(conn: psycopg.Connection) -> None:
    """Commits, and checks that nothing is left to do."""
    conn.execute("SELECT * FROM iasql_commit()")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def in_cloud(moto: MotoServer, scenario: Callable[[AwsCloud], Awaitable[T]]) -> T:
    """Runs `scenario` with the engine's own AWS access, pointed at moto (the credentials
    add_credentials gives an environment)."""

    async def run() -> T:
        cloud = AwsCloud(Credentials("AKIDTEST", "a-very-secret-key", None, moto.endpoint))
        try:
            return await scenario(cloud)
        finally:
            await cloud.close()

    return asyncio.run(run())


def only_regions(conn: psycopg.Connection, *regions: str) -> None:
    """Reads the account's regions, then enables only `regions` (us-east-1 by default):
    installs and syncs then read those alone, where moto offers thirty-odd."""
    conn.execute("SELECT * FROM iasql_sync()")
    enabled = list(regions or ("us-east-1",))
    conn.execute("UPDATE aws_regions SET is_enabled = (region = ANY(%s))", (enabled,))


def add_credentials(conn: psycopg.Connection, moto: MotoServer) -> None:
    conn.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES ('AKIDTEST', 'a-very-secret-key', %s)",
        (moto.endpoint,),
    )
