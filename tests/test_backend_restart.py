"""A real `iasql serve` whose backing Postgres stops and starts again under it: the server
retries with backoff, one log line per attempt and no traceback, and once Postgres is back
it undoes an interrupted commit by itself, before any client calls. The cluster is this
test's own, so that stopping it disturbs no other test."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer
from tests.support.cli import Server
from tests.support.env import PASSWORD, SUPERUSER, add_credentials, reachable_tempdir

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

ATTEMPT = re.compile(
    r"the backing Postgres is unreachable \(attempt (\d+): [^\n]+\); next attempt in ([\d.]+) s"
)
BACK = re.compile(r"the backing Postgres is back \(attempt (\d+)\)")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+: ")


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    folder = reachable_tempdir("iasql-restart-pg-")
    cluster = LocalPostgres(
        folder / "pgdata",
        superuser=SUPERUSER,
        password=PASSWORD,
        settings={"fsync": "off", "synchronous_commit": "off"},
    )
    cluster.init()
    cluster.start()  # picks a port, which later starts reuse
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.05)


def direct(postgres: LocalPostgres, database: str) -> psycopg.Connection:
    return psycopg.connect(postgres.dsn(database), autocommit=True)


def test_postgres_restart_is_noticed_and_an_interrupted_commit_recovered_without_a_call(
    own_postgres: LocalPostgres, moto: MotoServer
) -> None:
    folder = reachable_tempdir("iasql-restart-")
    server = Server(folder / "data", free_port(), "--backend-url", own_postgres.dsn())
    try:
        banner = server.start()
        with psycopg.connect(banner.admin_url, autocommit=True) as admin:
            row = admin.execute("SELECT url FROM iasql_connect('restart_env')").fetchone()
        assert row is not None
        url = str(row[0])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT * FROM iasql_install('aws_account')")
            add_credentials(conn, moto)
            conn.execute("SELECT * FROM iasql_begin()")
        # A commit cut short: marked committing, its lock free, nothing journaled yet. The
        # running server recovers commits only at its start, after a restart of Postgres,
        # or at a client's begin, commit, rollback or sync: none of those has happened.
        with direct(own_postgres, "restart_env") as db:
            db.execute(
                "UPDATE iasql_transaction SET outcome = 'committing', applying_through = 0"
                " WHERE closed_at IS NULL"
            )
        logged = len(server.stderr_path.read_text())

        own_postgres.stop()
        wait_until(
            lambda: len(ATTEMPT.findall(server.stderr_path.read_text()[logged:])) >= 3,
            30,
            "three reconnect attempts",
        )
        own_postgres.start()

        with direct(own_postgres, "restart_env") as db:
            wait_until(
                lambda: (
                    db.execute(
                        "SELECT outcome FROM iasql_transaction WHERE outcome IS NOT NULL"
                    ).fetchall()
                    == [("recovered",)]
                ),
                30,
                "the interrupted commit to be recovered",
            )
            assert db.execute(
                "SELECT message FROM iasql_audit_log WHERE change_type = 'ERROR'"
            ).fetchall() == [("commit interrupted (the server stopped); undone",)]

        log = server.stderr_path.read_text()[logged:]
        assert "Traceback" not in log, log
        lines = log.splitlines()
        assert all(LOG_LINE.match(line) for line in lines), log  # each record is one line
        attempts = [(int(n), float(delay)) for n, delay in ATTEMPT.findall(log)]
        numbers = [n for n, _ in attempts]
        assert numbers == list(range(1, len(numbers) + 1)), log
        delays = [delay for _, delay in attempts]
        assert delays == [min(0.5 * 2**i, 10.0) for i in range(len(delays))], log
        assert [int(n) for n in BACK.findall(log)] == [len(numbers) + 1], log
        assert sum(1 for line in lines if "attempt" in line) == len(numbers) + 1, log

        # The pools work again: the first calls after the restart answer, not XX000.
        with psycopg.connect(url, autocommit=True) as conn:
            errors = conn.execute("SELECT message FROM iasql_get_errors()").fetchall()
            assert errors == [("commit interrupted (the server stopped); undone",)]
            conn.execute("SELECT * FROM iasql_begin()")
            conn.execute("SELECT * FROM iasql_rollback()")
        with psycopg.connect(banner.admin_url, autocommit=True) as admin:
            aliases = [r[0] for r in admin.execute("SELECT alias FROM iasql_db_list()")]
            assert aliases == ["restart_env"]
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
