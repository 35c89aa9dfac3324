"""Crash safety and locking across processes: `kill -9` of a real `iasql serve` in the middle
of a commit of 200 resources, and two servers on one backing database racing to commit."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer
from tests.support.cli import Server
from tests.support.env import add_credentials, reachable_tempdir

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

COUNT = 200


@pytest.fixture
def server_dir() -> Iterator[Path]:
    folder = reachable_tempdir("iasql-crash-")
    yield folder / "data"


def backend_url(postgres: LocalPostgres, database: str) -> str:
    return postgres.dsn().rsplit("/", 1)[0] + "/" + database


def wait_for(
    conn: psycopg.Connection,
    sql: str,
    at_least: int,
    seconds: float = 90,
    worker: BackgroundCommit | None = None,
) -> int:
    deadline = time.monotonic() + seconds
    while True:
        value = (conn.execute(sql).fetchone() or (0,))[0]
        if value >= at_least:
            return int(value)
        ended = worker is not None and not worker.is_alive()
        assert not ended, f"the commit ended first ({worker and worker.outcome}); {sql}: {value}"
        assert time.monotonic() < deadline, f"waited {seconds} s for {sql} (at {value})"
        time.sleep(0.01)


def log_groups(moto: MotoServer) -> set[str]:
    client = boto3.client("logs", region_name="us-east-1", endpoint_url=moto.endpoint)
    pages = client.get_paginator("describe_log_groups").paginate()
    return {g["logGroupName"] for page in pages for g in page["logGroups"]}


def prepare(server: Server, moto: MotoServer, alias: str) -> str:
    """An environment database with logs installed and 200 uncommitted log groups."""
    banner = server.start()
    with psycopg.connect(banner.admin_url, autocommit=True) as admin:
        row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert row is not None
    url = str(row[0])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(conn, moto)
        conn.execute("SELECT * FROM iasql_install('aws_cloudwatch')")
        conn.execute("SELECT * FROM iasql_begin()")
        conn.execute(
            "INSERT INTO log_group (log_group_name)"
            f" SELECT '/crash/' || i FROM generate_series(1, {COUNT}) i"
        )
    return url


class BackgroundCommit(threading.Thread):
    """iasql_commit() on its own connection; `outcome` says how it ended."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.outcome = "running"

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SELECT * FROM iasql_commit()")
            self.outcome = "committed"
        except psycopg.Error as error:  # expected: the server is killed under it
            self.outcome = f"{type(error).__name__}: {error}"


def committing_in_background(url: str) -> BackgroundCommit:
    worker = BackgroundCommit(url)
    worker.start()
    return worker


def test_kill_9_mid_commit_then_restart_undoes_it(
    postgres: LocalPostgres, moto_accounts: Any, server_dir: Path
) -> None:
    moto = moto_accounts()
    server = Server(server_dir, free_port(), "--backend-url", postgres.dsn())
    alias = "crash_env"
    try:
        url = prepare(server, moto, alias)
        worker = committing_in_background(url)
        with psycopg.connect(backend_url(postgres, alias), autocommit=True) as direct:
            done_sql = "SELECT count(*) FROM iasql_commit_journal WHERE state = 'done'"
            wait_for(direct, done_sql, 40, worker=worker)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            worker.join(30)
            created = log_groups(moto)
            assert 40 <= len(created) < COUNT, "the kill did not land mid-commit"
            assert direct.execute(
                "SELECT outcome FROM iasql_transaction WHERE closed_at IS NULL"
            ).fetchone() == ("committing",)

            # The restarted server finds the interrupted commit on its own and undoes it.
            server.close()
            server = Server(server_dir, server.port, "--backend-url", postgres.dsn())
            server.start()
            wait_for(
                direct,
                "SELECT count(*) FROM iasql_transaction WHERE outcome = 'recovered'",
                1,
            )
            assert log_groups(moto) == set()
            assert direct.execute("SELECT count(*) FROM log_group").fetchone() == (0,)
            assert direct.execute(
                "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL"
            ).fetchone() == (0,)
            errors = direct.execute(
                "SELECT message FROM iasql_audit_log WHERE change_type = 'ERROR'"
            ).fetchall()
            assert errors == [("commit interrupted (the server stopped); undone",)]
        # The lock is free: the same changes commit cleanly now.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT * FROM iasql_begin()")
            conn.execute(
                "INSERT INTO log_group (log_group_name)"
                f" SELECT '/crash/' || i FROM generate_series(1, {COUNT}) i"
            )
            conn.execute("SELECT * FROM iasql_commit()")
            names = {r[0] for r in conn.execute("SELECT log_group_name FROM log_group")}
        assert names == log_groups(moto) and len(names) == COUNT
    finally:
        server.close()


def test_two_servers_on_one_database_cannot_commit_at_once(
    postgres: LocalPostgres, moto_accounts: Any, server_dir: Path
) -> None:
    moto = moto_accounts()
    first = Server(server_dir, free_port(), "--backend-url", postgres.dsn())
    second = Server(server_dir.with_name("second"), free_port(), "--backend-url", postgres.dsn())
    alias = "race_env"
    try:
        url = prepare(first, moto, alias)
        second_banner = second.start()
        second_url = url.replace(f":{first.port}/", f":{second_banner.port}/")
        worker = committing_in_background(url)
        with psycopg.connect(backend_url(postgres, alias), autocommit=True) as direct:
            wait_for(direct, "SELECT count(*) FROM iasql_commit_journal", 5)
            with (
                psycopg.connect(second_url, autocommit=True) as other,
                pytest.raises(psycopg.errors.LockNotAvailable) as error,
            ):
                other.execute("SELECT * FROM iasql_commit()")
            assert "a commit is running" in str(error.value)
            worker.join(120)
            assert direct.execute(
                "SELECT outcome FROM iasql_transaction ORDER BY opened_at DESC LIMIT 1"
            ).fetchone() == ("committed",)
            assert direct.execute(
                "SELECT count(*), count(DISTINCT token) FROM iasql_commit_journal"
            ).fetchone() == (COUNT, COUNT)
        assert len(log_groups(moto)) == COUNT
    finally:
        first.close()
        second.close()
