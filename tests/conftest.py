"""Real parts for every test: a throwaway Postgres cluster, moto servers, the iasql server.

Fixtures only; the helpers they and the tests share are in `tests/support/`."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import psycopg
import pytest

from engine.transaction import TransactionSettings
from iasql.certs import ensure_certificate, names_for
from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from proxy.server import ProxyServer
from proxy.tls import server_context
from tests.support.env import (
    PASSWORD,
    SUPERUSER,
    RunningServer,
    TlsServer,
    in_process_server,
    reachable_tempdir,
)


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


@pytest.fixture(scope="session")
def iasql(postgres: LocalPostgres) -> Iterator[RunningServer]:
    settings = {"transactions": TransactionSettings(begin_timeout=1.0)}
    with in_process_server(postgres, "iasql-server", settings) as server:
        yield server


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


class MotoAccounts:
    """Starts moto servers on demand; each one is a separate AWS account. A server lives as
    long as the fixture that asked for it: one a test (or its function-scoped fixtures)
    started stops after that test, one a module-scoped fixture started after that module,
    the session's after the session (`stop_since`). Each holds some 250 MB: kept to the end,
    a whole suite's would not fit in memory. With IASQL_TEST_MOTO_LOGS=<folder>, each server's
    output (moto's tracebacks) goes there."""

    def __init__(self) -> None:
        self.started: list[MotoServer] = []
        self.stopping: list[MotoServer] = []
        self.kept: list[MotoServer] = []  # the session's: stopped at its end only
        self.logs = os.environ.get("IASQL_TEST_MOTO_LOGS")
        self.count = 0

    def __call__(self) -> MotoServer:
        log = Path(self.logs, f"moto-{self.count}.log") if self.logs else None
        self.count += 1
        server = MotoServer(log_path=log)
        server.start()
        self.started.append(server)
        return server

    def stop_since(self, first: int) -> None:
        """Stops the servers started since the first `first` ones (not the session's), without
        waiting for them to exit."""
        going = [s for s in self.started[first:] if s not in self.kept]
        for server in going:
            if server.process is not None:
                server.process.terminate()
        self.stopping += going
        self.started = [s for s in self.started if s not in going]

    def stop_all(self) -> None:
        self.kept.clear()
        self.stop_since(0)
        for server in self.stopping:
            server.stop()


@pytest.fixture(scope="session")
def moto_accounts() -> Iterator[MotoAccounts]:
    accounts = MotoAccounts()
    yield accounts
    accounts.stop_all()


@pytest.fixture(scope="module", autouse=True)
def _module_moto_accounts(moto_accounts: MotoAccounts) -> Iterator[None]:
    first = len(moto_accounts.started)
    yield
    moto_accounts.stop_since(first)


@pytest.fixture(autouse=True)
def _test_moto_accounts(moto_accounts: MotoAccounts) -> Iterator[None]:
    first = len(moto_accounts.started)
    yield
    moto_accounts.stop_since(first)


@pytest.fixture(scope="session")
def moto(moto_accounts: MotoAccounts) -> MotoServer:
    server = moto_accounts()
    moto_accounts.kept.append(server)
    return server


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials so that no test can reach real AWS by accident."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def env_url(iasql: RunningServer) -> Iterator[str]:
    """A fresh environment database and its own login role, made with iasql_connect() on the
    admin database as a user would; the URL reaches it through the proxy. Dropped after the
    test with iasql_disconnect(), which also frees the server's pool and AWS clients for it."""
    alias = f"env_{secrets.token_hex(4)}"
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        url = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert url is not None
    yield str(url[0])
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        found = admin.execute("SELECT alias FROM iasql_db_list() WHERE alias = %s", (alias,))
        if found.fetchone() is not None:  # a test may have dropped it itself
            admin.execute("SELECT * FROM iasql_disconnect(%s)", (alias,))


@pytest.fixture
def envdb(env_url: str) -> Iterator[psycopg.Connection]:
    """A session on a fresh environment database, in autocommit mode."""
    with psycopg.connect(env_url, autocommit=True) as conn:
        yield conn
