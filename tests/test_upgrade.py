"""Upgrading iasql in place: a module (tests/fixtures/upgrade, test_queues) in two schema
versions, served by `iasql serve --module-path` first at v1, then, on the same data dir, at
v2. The databases keep their rows, ids, audit log and open transaction; the audit log's SQL
comes out in the new schema and replays in another account; a database whose migration
fails stays on v1, read-only; SQL from a v1 server promotes into a v2 one, not back."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from iasql.postgres import free_port
from iasql.sandbox import MotoServer
from tests.support.cli import IASQL, Server, cli_env
from tests.support.env import commit, only_regions, reachable_tempdir, rows

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "upgrade"
V1, V2 = str(FIXTURES / "v1"), str(FIXTURES / "v2")
ACCOUNTS = {"alpha": "111111111111", "gamma": "222222222222", "beta": "333333333333"}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = reachable_tempdir("iasql-upgrade-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve(
    workdir: Path, name: str, module_path: str, moto: MotoServer, port: int | None = None
) -> tuple[Server, str]:
    """`iasql serve` on the data dir `name`: at a restart, on the port it had (the URLs
    handed out name it)."""
    server = Server(
        workdir / name,
        port or free_port(),
        "--module-path",
        module_path,
        "--cloud-endpoint",
        moto.endpoint,
    )
    return server, server.start().admin_url


def create_db(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        [(url,)] = rows(admin, f"SELECT url FROM iasql_connect('{name}')")
    return str(url)


def set_up(url: str, account: str, moto: MotoServer) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    conn.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES (%s, 'unused', %s)",
        (account, moto.endpoint),
    )
    only_regions(conn)
    conn.execute("SELECT * FROM iasql_install('test_queues')")
    return conn


def sqs(moto: MotoServer, account: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id=account,
        aws_secret_access_key="x",
    )


def queue_attributes(moto: MotoServer, account: str, name: str) -> dict[str, str]:
    client = sqs(moto, account)
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    return dict(client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])


def upgrade_cli(admin_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("upgrade", "--url", admin_url, *args)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IASQL, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )


def test_upgrade_in_place(workdir: Path, moto_accounts: Callable[[], MotoServer]) -> None:
    moto, other_moto = moto_accounts(), moto_accounts()
    old, admin = serve(workdir, "data", V1, moto)
    try:
        alpha_url, gamma_url = create_db(admin, "alpha"), create_db(admin, "gamma")
        with set_up(alpha_url, ACCOUNTS["alpha"], moto) as alpha:
            # A history of several transactions, in schema 1.
            alpha.execute("SELECT * FROM iasql_begin()")
            alpha.execute(
                "INSERT INTO test_queue (name, visibility_timeout) VALUES"
                " ('orders', '45'), ('billing', '30'), ('scratch', '10')"
            )
            commit(alpha)
            alpha.execute("SELECT * FROM iasql_begin()")
            alpha.execute("UPDATE test_queue SET visibility_timeout = '60' WHERE name = 'orders'")
            alpha.execute("DELETE FROM test_queue WHERE name = 'scratch'")
            commit(alpha)
            # Left open across the upgrade: carried into the new schema.
            alpha.execute("SELECT * FROM iasql_begin()")
            alpha.execute("UPDATE test_queue SET delay_seconds = 5 WHERE name = 'orders'")
            before = rows(alpha, "SELECT id, name, visibility_timeout FROM test_queue ORDER BY id")
            [audit] = rows(alpha, "SELECT count(*), max(id) FROM iasql_audit_log")
        # Set in the cloud by hand: what the new column and the new table import.
        billing = sqs(moto, ACCOUNTS["alpha"]).get_queue_url(QueueName="billing")["QueueUrl"]
        sqs(moto, ACCOUNTS["alpha"]).set_queue_attributes(
            QueueUrl=billing, Attributes={"MaximumMessageSize": "2048"}
        )
        sqs(moto, ACCOUNTS["alpha"]).tag_queue(QueueUrl=billing, Tags={"team": "payments"})
        with set_up(gamma_url, ACCOUNTS["gamma"], moto) as gamma:
            # A value schema 2 cannot convert: gamma's migration fails.
            gamma.execute("SELECT * FROM iasql_begin()")
            gamma.execute(
                "INSERT INTO test_queue (name, visibility_timeout) VALUES ('odd', '30 seconds')"
            )
        code, _rest = old.stop(signal.SIGTERM)
        assert code == 0, old.stderr()
    finally:
        old.close()

    new, admin = serve(workdir, "data", V2, moto, port=old.port)
    try:
        check_upgraded(alpha_url, before, audit, moto)
        check_not_upgraded(gamma_url)
        # A tenant's transaction holding gamma's table: the upgrade gives up within its lock
        # timeout, leaves gamma as it was, and says so.
        with psycopg.connect(gamma_url) as holder:
            holder.execute("SELECT * FROM test_queue")
            busy = upgrade_cli(admin)
        assert busy.returncode == 1, busy.stderr
        assert busy.stdout.startswith(
            "gamma: busy: upgrade of gamma not started: canceling statement due to lock timeout"
        ), busy.stdout
        # Twice does nothing; the dry run lists what gamma still needs.
        again = upgrade_cli(admin)
        assert again.returncode == 1, again.stderr
        assert "gamma: test_queues schema 1 -> 2: failed" in again.stdout
        assert "alpha" not in again.stdout
        dry = upgrade_cli(admin, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("-- gamma: test_queues schema 1 -> 2\n")
        assert 'ALTER TABLE "test_queue" RENAME COLUMN "name" TO "queue_name";' in dry.stdout
        with psycopg.connect(alpha_url, autocommit=True) as alpha:
            assert rows(alpha, "SELECT * FROM iasql_upgrade()") == []
            statements = [s for (s,) in rows(alpha, "SELECT sql FROM iasql_get_sql_since()")]
        replay_in_another_account(create_db(admin, "beta"), statements, alpha_url, other_moto)
        new.stop(signal.SIGTERM)
    finally:
        new.close()
    go_back_fix_and_upgrade_again(workdir, moto, new.port, alpha_url, gamma_url)


def go_back_fix_and_upgrade_again(
    workdir: Path, moto: MotoServer, port: int, alpha_url: str, gamma_url: str
) -> None:
    """What the README says to do about gamma: back on v1, roll the bad row back; on v2 again,
    gamma upgrades. Meanwhile v1 refuses to touch alpha, which v2 upgraded."""
    old, _admin = serve(workdir, "data", V1, moto, port=port)
    try:
        with psycopg.connect(gamma_url, autocommit=True) as gamma:
            gamma.execute("SELECT * FROM iasql_rollback()")
            assert rows(gamma, "SELECT count(*) FROM test_queue") == [(0,)]
        with (
            psycopg.connect(alpha_url, autocommit=True) as alpha,
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="by a newer iasql"),
        ):
            alpha.execute("DELETE FROM test_queue")
        old.stop(signal.SIGTERM)
    finally:
        old.close()
    new, _admin = serve(workdir, "data", V2, moto, port=port)
    try:
        with psycopg.connect(gamma_url, autocommit=True) as gamma:
            assert rows(
                gamma,
                "SELECT schema_version FROM iasql_modules_installed()"
                " WHERE module_name = 'test_queues'",
            ) == [(2,)]
            # Its log holds a value schema 2 cannot hold: kept as written, the rest is read.
            statements = [s for (s,) in rows(gamma, "SELECT sql FROM iasql_get_sql_since()")]
            assert statements == [
                'INSERT INTO "test_queue" ("queue_name", "visibility_timeout", "delay_seconds",'
                " \"region\") VALUES ('odd', '30 seconds', 0, 'us-east-1');"
            ]
        with psycopg.connect(alpha_url, autocommit=True) as alpha:
            alpha.execute("SELECT * FROM iasql_begin()")
            alpha.execute("UPDATE test_queue SET delay_seconds = 1 WHERE queue_name = 'billing'")
            alpha.execute("SELECT * FROM iasql_rollback()")
    finally:
        new.close()


def check_upgraded(
    url: str, before: list[tuple[Any, ...]], audit: tuple[int, int], moto: MotoServer
) -> None:
    with psycopg.connect(url, autocommit=True) as alpha:
        installed = rows(
            alpha,
            "SELECT module_version, schema_version FROM iasql_modules_installed()"
            " WHERE module_name = 'test_queues'",
        )
        assert installed == [("2.0.0", 2)]
        after = rows(alpha, "SELECT id, queue_name, visibility_timeout FROM test_queue ORDER BY id")
        assert after == [(i, name, int(timeout)) for i, name, timeout in before]
        assert rows(
            alpha, "SELECT queue_name, maximum_message_size FROM test_queue ORDER BY id"
        ) == [("orders", 262144), ("billing", 2048)]
        assert rows(
            alpha,
            "SELECT q.queue_name, t.key, t.value FROM test_queue_tag t"
            " JOIN test_queue q ON q.id = t.queue_id",
        ) == [("billing", "team", "payments")]
        # Nothing lost from the audit log: the upgrade and the imports only added to it.
        kept = alpha.execute("SELECT count(*) FROM iasql_audit_log WHERE id <= %s", (audit[1],))
        assert kept.fetchall() == [(audit[0],)]
        assert rows(
            alpha, "SELECT count(*) FROM iasql_audit_log WHERE change_type = 'UPGRADE'"
        ) == [(1,)]
        # The open transaction came across: its change, in the new schema, commits.
        preview = rows(alpha, "SELECT action, table_name FROM iasql_preview()")
        assert preview == [("update", "test_queue")]
        commit(alpha)
        assert queue_attributes(moto, ACCOUNTS["alpha"], "orders")["DelaySeconds"] == "5"
        assert rows(alpha, "SELECT * FROM iasql_drift()") == []


def check_not_upgraded(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as gamma:
        [(message,)] = rows(gamma, "SELECT message FROM iasql_get_errors() LIMIT 1")
        assert message.startswith("upgrade of test_queues from schema 1 to 2 failed: invalid")
        assert '"30 seconds"' in message
        installed = rows(
            gamma,
            "SELECT schema_version FROM iasql_modules_installed() WHERE module_name = 'test_queues'",
        )
        assert installed == [(1,)]
        # Readable as it was; not writable, by hand or through the engine.
        assert rows(gamma, "SELECT name, visibility_timeout FROM test_queue") == [
            ("odd", "30 seconds")
        ]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            gamma.execute("DELETE FROM test_queue")
        assert "gamma is not upgraded: test_queues is on schema 1" in str(refused.value)
        # The tenant cannot lift the guard itself: the table is the engine's.
        for lift in (
            "DROP TRIGGER iasql_outdated ON test_queue",
            "ALTER TABLE test_queue DISABLE TRIGGER iasql_outdated",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                gamma.execute(lift)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as engine_refused:
            gamma.execute("SELECT * FROM iasql_rollback()")
        assert "not upgraded" in str(engine_refused.value)


def replay_in_another_account(
    url: str, statements: list[str], source_url: str, moto: MotoServer
) -> None:
    """The whole history's SQL, in schema 2, replays in a database made on v2."""
    text = "\n".join(statements)
    assert '"queue_name"' in text and '"name"' not in text, text
    assert "'60'" not in text and "60" in text  # written as the number it now is
    with set_up(url, ACCOUNTS["beta"], moto) as beta:
        beta.execute("SELECT * FROM iasql_begin()")
        for statement in statements:
            beta.execute(statement)
        commit(beta)
        replayed = rows(
            beta, "SELECT queue_name, visibility_timeout, delay_seconds FROM test_queue ORDER BY 1"
        )
        assert rows(beta, "SELECT * FROM iasql_drift()") == []
    with psycopg.connect(source_url, autocommit=True) as alpha:
        assert replayed == rows(
            alpha, "SELECT queue_name, visibility_timeout, delay_seconds FROM test_queue ORDER BY 1"
        )
    assert replayed == [("billing", 30, 0), ("orders", 60, 5)]
    assert queue_attributes(moto, ACCOUNTS["beta"], "orders")["VisibilityTimeout"] == "60"


def test_promotion_from_an_older_schema_translates_and_back_is_refused(
    workdir: Path, moto_accounts: Callable[[], MotoServer]
) -> None:
    moto, other_moto = moto_accounts(), moto_accounts()
    old, old_admin = serve(workdir, "staging", V1, moto)
    new, new_admin = serve(workdir, "prod", V2, other_moto)
    try:
        staging_url, prod_url = create_db(old_admin, "staging"), create_db(new_admin, "prod")
        with set_up(staging_url, ACCOUNTS["alpha"], moto) as staging:
            staging.execute("SELECT * FROM iasql_begin()")
            staging.execute(
                "INSERT INTO test_queue (name, visibility_timeout) VALUES ('web', '20')"
            )
            commit(staging)
        set_up(prod_url, ACCOUNTS["beta"], other_moto).close()

        promoted = run_cli("promote", "--from", staging_url, "--to", prod_url, "--commit")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        with psycopg.connect(prod_url, autocommit=True) as prod:
            assert rows(prod, "SELECT queue_name, visibility_timeout FROM test_queue") == [
                ("web", 20)
            ]
            assert rows(prod, "SELECT status FROM iasql_promotions()") == [("applied",)]
        assert queue_attributes(other_moto, ACCOUNTS["beta"], "web")["VisibilityTimeout"] == "20"

        back = run_cli("promote", "--from", prod_url, "--to", staging_url, "--commit")
        assert back.returncode == 1
        assert back.stderr == (
            "iasql: the source's iasql writes newer module schemas than the target's:"
            " test_queues (source 2, target 1); upgrade the target's iasql server first,"
            " then promote\n"
        )
    finally:
        old.close()
        new.close()


def test_an_upgrade_stands_when_the_cloud_is_dark_for_its_import(
    workdir: Path, moto_accounts: Callable[[], MotoServer]
) -> None:
    moto = moto_accounts()
    old, admin = serve(workdir, "dark", V1, moto)
    try:
        url = create_db(admin, "dark")
        with set_up(url, ACCOUNTS["alpha"], moto) as conn:
            conn.execute("SELECT * FROM iasql_begin()")
            conn.execute("INSERT INTO test_queue (name) VALUES ('kept')")
            commit(conn)
        old.stop(signal.SIGTERM)
    finally:
        old.close()
    moto.stop()  # the account's endpoint now refuses connections

    new, admin = serve(workdir, "dark", V2, moto, port=old.port)
    try:
        done = upgrade_cli(admin)
        assert (done.returncode, done.stdout) == (
            0,
            "every environment database is on this server's module schemas\n",
        ), done.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            [(message,)] = rows(conn, "SELECT message FROM iasql_get_errors() LIMIT 1")
            assert message.startswith(
                "upgraded, but reading the new columns and tables from the cloud failed:"
            ), message
            assert message.endswith("SELECT * FROM iasql_sync() reads them")
            assert rows(
                conn,
                "SELECT queue_name, visibility_timeout, maximum_message_size FROM test_queue",
            ) == [("kept", 30, 262144)]
            assert rows(
                conn,
                "SELECT schema_version FROM iasql_modules_installed()"
                " WHERE module_name = 'test_queues'",
            ) == [(2,)]
            # Upgraded: the engine acts on it again (and says the cloud is dark: not XX000).
            with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection):
                conn.execute("SELECT * FROM iasql_sync()")
    finally:
        new.close()
