"""The in-process server as tests see it, SQL helpers for an environment database, and AWS
access pointed at moto. The pytest fixtures that start these are in `tests/conftest.py`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import uvloop

from engine import Engine, EngineConfig
from engine.admin import PublicAddress
from engine.cloud import AwsCloud, Credentials
from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer
from proxy.server import BackendAddress, ProxyServer

SUPERUSER = "iasql_test"
PASSWORD = "test-pw-'\"-é"

T = TypeVar("T")


def reachable_tempdir(prefix: str) -> Path:
    """A folder the unprivileged Postgres user can enter (pytest's own tmp is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


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


@contextlib.contextmanager
def in_process_server(
    postgres: LocalPostgres,
    name: str,
    engine_options: dict[str, Any] | None = None,
    **proxy_options: Any,
) -> Iterator[RunningServer]:
    """An engine (EngineConfig options: `engine_options`) and a proxy (ProxyServer options:
    `proxy_options`, max_message 1 MiB unless given) on the suite's Postgres, served by a
    uvloop of their own on thread `name`. The proxy may be closed inside: its close on the way
    out then does nothing."""
    proxy_options.setdefault("max_message", 1 << 20)
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    port = free_port()
    address = PublicAddress("127.0.0.1", port)
    engine = Engine(EngineConfig(postgres.dsn(), address, **(engine_options or {})))
    assert postgres.port is not None, "the cluster is not started"
    backend = BackendAddress("127.0.0.1", postgres.port)

    async def start() -> ProxyServer:
        await engine.start()
        proxy = ProxyServer(engine, backend, **proxy_options)
        await proxy.listen("127.0.0.1", port)
        return proxy

    proxy = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield RunningServer("127.0.0.1", port, loop, proxy)
    finally:
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


def psql_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def rows(conn: psycopg.Connection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def preview(conn: psycopg.Connection) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """iasql_preview()'s (action, changes) per table, actions in order."""
    planned: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for table, action, changes in rows(
        conn, "SELECT table_name, action, changes FROM iasql_preview() ORDER BY action"
    ):
        planned.setdefault(table, []).append((action, changes))
    return planned


def no_drift(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


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
