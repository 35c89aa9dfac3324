"""Infrastructure transactions through the proxy: begin, preview, commit, rollback, sync and
drift, against a moto server, every cloud effect checked with boto3."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import asyncpg
import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.env import add_credentials, only_regions, rows


@pytest.fixture
def moto_env(
    envdb: psycopg.Connection, moto_accounts: Any
) -> tuple[psycopg.Connection, MotoServer]:
    """An environment with its own fresh AWS account, logs and sqs installed."""
    moto = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb, "us-east-1", "eu-west-1")
    envdb.execute("SELECT * FROM iasql_install('aws_cloudwatch', 'aws_sqs')")
    return envdb, moto


def logs(moto: MotoServer, region: str = "us-east-1") -> Any:
    return boto3.client("logs", region_name=region, endpoint_url=moto.endpoint)


def sqs(moto: MotoServer, region: str = "us-east-1") -> Any:
    return boto3.client("sqs", region_name=region, endpoint_url=moto.endpoint)


def cloud_log_groups(moto: MotoServer, region: str = "us-east-1") -> list[str]:
    pages = logs(moto, region).get_paginator("describe_log_groups").paginate()
    return sorted(g["logGroupName"] for page in pages for g in page["logGroups"])


def preview(conn: psycopg.Connection) -> list[tuple]:
    return rows(
        conn,
        "SELECT action, table_name, description, changes FROM iasql_preview()"
        " ORDER BY table_name, action, description",
    )


def test_create_update_delete_through_begin_preview_commit(moto_env: Any) -> None:
    conn, moto = moto_env
    begun = rows(conn, "SELECT * FROM iasql_begin()")
    assert begun[0][0] == "transaction open"
    transaction_id = begun[0][1]
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/app/web')")
    conn.execute("INSERT INTO queue (name, visibility_timeout) VALUES ('jobs', 45)")
    assert preview(conn) == [
        (
            "create",
            "log_group",
            "/app/web/us-east-1",
            {
                "log_group_name": {"old": None, "new": "/app/web"},
                "region": {"old": None, "new": "us-east-1"},
            },
        ),
        (
            "create",
            "queue",
            "jobs/us-east-1",
            {
                "name": {"old": None, "new": "jobs"},
                "fifo_queue": {"old": None, "new": False},
                "visibility_timeout": {"old": None, "new": 45},
                "delay_seconds": {"old": None, "new": 0},
                "receive_message_wait_time_seconds": {"old": None, "new": 0},
                "message_retention_period": {"old": None, "new": 345600},
                "maximum_message_size": {"old": None, "new": 262144},
                "region": {"old": None, "new": "us-east-1"},
            },
        ),
    ]
    committed = rows(conn, "SELECT action, table_name FROM iasql_commit('first') ORDER BY 2")
    assert committed == [("create", "log_group"), ("create", "queue")]
    assert cloud_log_groups(moto) == ["/app/web"]
    url = sqs(moto).get_queue_url(QueueName="jobs")["QueueUrl"]
    attributes = sqs(moto).get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "45"
    # Cloud-assigned values were written back; nothing is left to do.
    arn, queue_url = rows(conn, "SELECT log_group_arn, (SELECT url FROM queue) FROM log_group")[0]
    assert arn.startswith("arn:aws:logs:us-east-1:") and queue_url == url
    assert preview(conn) == []
    events = conn.execute(
        "SELECT change_type::text, message FROM iasql_audit_log WHERE transaction_id = %s"
        " AND change_type NOT IN ('INSERT', 'UPDATE', 'DELETE') ORDER BY id",
        (transaction_id,),
    ).fetchall()
    assert events == [
        ("OPEN_TRANSACTION", None),
        ("START_COMMIT", None),
        ("SET_COMMIT_MESSAGE", "first"),
        ("END_COMMIT", "first"),
        ("CLOSE_TRANSACTION", "committed"),
    ]

    # An in-place update and a delete in the next transaction.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE queue SET visibility_timeout = 60 WHERE name = 'jobs'")
    conn.execute("DELETE FROM log_group WHERE log_group_name = '/app/web'")
    assert rows(conn, "SELECT action, table_name, changes FROM iasql_preview() ORDER BY 2") == [
        (
            "delete",
            "log_group",
            {
                "log_group_name": {"old": "/app/web", "new": None},
                "region": {"old": "us-east-1", "new": None},
            },
        ),
        ("update", "queue", {"visibility_timeout": {"old": 45, "new": 60}}),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert cloud_log_groups(moto) == []
    attributes = sqs(moto).get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "60"
    assert preview(conn) == []


def test_region_change_is_a_delete_and_a_create(moto_env: Any) -> None:
    conn, moto = moto_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/moving')")
    conn.execute("SELECT * FROM iasql_commit()")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE log_group SET region = 'eu-west-1'")
    assert rows(conn, "SELECT action, description FROM iasql_preview() ORDER BY 1") == [
        ("create", "/moving/eu-west-1"),
        ("delete", "/moving/us-east-1"),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert cloud_log_groups(moto, "us-east-1") == []
    assert cloud_log_groups(moto, "eu-west-1") == ["/moving"]
    assert rows(conn, "SELECT log_group_name, region FROM log_group") == [("/moving", "eu-west-1")]


def test_rollback_restores_rows_and_leaves_the_cloud_alone(moto_env: Any) -> None:
    conn, moto = moto_env
    logs(moto).create_log_group(logGroupName="/kept")
    conn.execute("SELECT * FROM iasql_sync()")
    before = rows(conn, "SELECT id, log_group_name, log_group_arn, region FROM log_group")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM log_group")
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/never')")
    conn.execute("INSERT INTO queue (name) VALUES ('never')")
    discarded = rows(
        conn, "SELECT action, table_name, description FROM iasql_rollback() ORDER BY 2, 1"
    )
    assert discarded == [
        ("create", "log_group", "/never/us-east-1"),
        ("delete", "log_group", "/kept/us-east-1"),
        ("create", "queue", "never/us-east-1"),
    ]
    # The same row is back (same serial id), the new ones are gone, the cloud is untouched.
    assert rows(conn, "SELECT id, log_group_name, log_group_arn, region FROM log_group") == before
    assert rows(conn, "SELECT count(*) FROM queue") == [(0,)]
    assert cloud_log_groups(moto) == ["/kept"]
    assert preview(conn) == []
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
        conn.execute("SELECT * FROM iasql_rollback()")


def test_changes_outside_a_transaction_are_picked_up_by_the_next_commit(moto_env: Any) -> None:
    conn, moto = moto_env
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/early')")
    assert [r[0] for r in preview(conn)] == ["create"]
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction) as error:
        conn.execute("SELECT * FROM iasql_commit()")
    assert "iasql_begin()" in (error.value.diag.message_hint or "")
    # A sync does not overwrite the uncommitted change.
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT log_group_name FROM log_group") == [("/early",)]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("SELECT * FROM iasql_commit()")
    assert cloud_log_groups(moto) == ["/early"]


def test_failed_commit_reverts_cloud_and_rows(moto_env: Any) -> None:
    conn, moto = moto_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO log_group (log_group_name) SELECT '/ok/' || i FROM generate_series(1, 5) i"
    )
    conn.execute("INSERT INTO queue (name, maximum_message_size) VALUES ('broken', 1)")
    with pytest.raises(psycopg.errors.SystemError) as error:
        conn.execute("SELECT * FROM iasql_commit()")
    message = error.value.diag.message_primary or ""
    assert "queue broken/us-east-1" in message and "MaximumMessageSize" in message
    assert error.value.diag.message_detail == (
        "the changes made were undone; the transaction's SQL is still in"
        " iasql_get_sql_for_transaction()"
    )
    assert cloud_log_groups(moto) == []
    assert sqs(moto).list_queues().get("QueueUrls", []) == []
    assert rows(conn, "SELECT count(*) FROM log_group") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM queue") == [(0,)]
    assert rows(
        conn,
        "SELECT change_type::text FROM iasql_audit_log WHERE change_type IN"
        " ('START_REVERT', 'END_REVERT', 'ERROR') ORDER BY id",
    ) == [("START_REVERT",), ("END_REVERT",), ("ERROR",)]
    # The transaction is closed and nothing is pending.
    assert preview(conn) == []
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("SELECT * FROM iasql_rollback()")


def test_cloud_changing_functions_refuse_a_transaction_block(moto_env: Any) -> None:
    conn, _moto = moto_env
    for call in ("iasql_commit()", "iasql_rollback()", "iasql_install('aws_s3')", "iasql_sync()"):
        with conn.transaction(), pytest.raises(psycopg.errors.ActiveSqlTransaction) as error:
            conn.execute(f"SELECT * FROM {call}")
        assert "autocommit" in (error.value.diag.message_hint or "")
    # Reading functions work inside one.
    with conn.transaction():
        assert conn.execute("SELECT count(*) FROM iasql_preview()").fetchone() == (0,)


async def test_begin_refuses_a_transaction_block_and_leaves_no_lock(env_url: str) -> None:
    """psycopg (by default), SQLAlchemy's engine.begin() and JDBC open a block: an
    iasql_begin() there would outlive the client's ROLLBACK and lock the database (55P03)."""
    with psycopg.connect(env_url) as conn:
        with pytest.raises(psycopg.errors.ActiveSqlTransaction) as error:
            conn.execute("SELECT * FROM iasql_begin()")
        hint = error.value.diag.message_hint or ""
        for advice in (
            "psycopg autocommit=True",
            'SQLAlchemy isolation_level="AUTOCOMMIT"',
            "JDBC setAutoCommit(true)",
            "asyncpg outside conn.transaction()",
        ):
            assert advice in hint
        conn.rollback()
    aconn = await asyncpg.connect(env_url)
    try:
        with pytest.raises(asyncpg.PostgresError) as refused:
            async with aconn.transaction():
                await aconn.fetch("SELECT * FROM iasql_begin()")
        assert refused.value.sqlstate == "25001"
        assert "autocommit" in (refused.value.hint or "")
    finally:
        await aconn.close()
    # Nothing was left open: a new autocommit session begins at once.
    with psycopg.connect(env_url, autocommit=True) as conn:
        assert rows(conn, "SELECT message FROM iasql_begin()") == [("transaction open",)]
        conn.execute("SELECT * FROM iasql_rollback()")


def test_second_begin_waits_then_names_the_holder(moto_env: Any, env_url: str) -> None:
    conn, _moto = moto_env
    conn.execute("SELECT * FROM iasql_begin()")
    database = conn.info.dbname
    other_url = env_url.rsplit("/", 1)[0] + "/" + database
    with psycopg.connect(other_url, autocommit=True) as other:
        with pytest.raises(psycopg.errors.LockNotAvailable) as error:
            other.execute("SELECT * FROM iasql_begin()")
        assert "another infrastructure transaction is open" in str(error.value)
        assert conn.info.user in str(error.value)
        # Once the first one closes during the wait, the second gets in.
        releaser = threading.Timer(0.3, lambda: conn.execute("SELECT * FROM iasql_rollback()"))
        releaser.start()
        assert other.execute("SELECT message FROM iasql_begin()").fetchone() == (
            "transaction open",
        )
        releaser.join()
        other.execute("SELECT * FROM iasql_rollback()")


def test_drift_and_sync(moto_env: Any) -> None:
    conn, moto = moto_env
    logs(moto).create_log_group(logGroupName="/outside")
    assert rows(conn, "SELECT action, table_name, description FROM iasql_drift()") == [
        ("insert", "log_group", "/outside/us-east-1")
    ]
    assert rows(conn, "SELECT count(*) FROM log_group") == [(0,)]
    synced = rows(conn, "SELECT action, description FROM iasql_sync()")
    assert synced == [("insert", "/outside/us-east-1")]
    assert rows(conn, "SELECT log_group_name FROM log_group") == [("/outside",)]
    assert rows(conn, "SELECT * FROM iasql_drift()") == []


def test_help_errors_and_deprecated_names(moto_env: Any) -> None:
    conn, _moto = moto_env
    helped = {r[1]: r for r in rows(conn, "SELECT * FROM iasql_help()")}
    assert {"iasql_begin", "iasql_preview", "iasql_commit", "iasql_rollback"} <= set(helped)
    assert helped["iasql_commit"][2] == "iasql_commit(message text DEFAULT NULL)"
    assert helped["iasql_install"][4] == "SELECT * FROM iasql_install('aws_s3', 'aws_vpc')"
    assert "iasql_connect" not in helped and "iasql_apply" not in helped
    assert rows(conn, "SELECT * FROM iasql_get_errors()") == []
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO queue (name, maximum_message_size) VALUES ('broken', 1)")
    with pytest.raises(psycopg.errors.SystemError):
        conn.execute("SELECT * FROM iasql_commit()")
    errors = rows(conn, "SELECT message FROM iasql_get_errors()")
    assert len(errors) == 1 and "queue broken/us-east-1" in errors[0][0]
    for old, new in (("iasql_apply", "iasql_commit()"), ("iasql_preview_apply", "iasql_preview()")):
        with pytest.raises(psycopg.errors.UndefinedFunction) as error:
            conn.execute(f"SELECT * FROM {old}()")
        assert new in str(error.value)


def wait_for(conn: psycopg.Connection, sql: str, at_least: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while (conn.execute(sql).fetchone() or (0,))[0] < at_least:
        assert time.monotonic() < deadline, f"waited {seconds} s for {sql}"
        time.sleep(0.01)


def test_cancel_request_stops_a_commit_and_undoes_it(moto_env: Any, env_url: str) -> None:
    conn, moto = moto_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO log_group (log_group_name) SELECT '/c/' || i FROM generate_series(1, 300) i"
    )
    outcome: dict[str, BaseException] = {}

    def commit() -> None:
        try:
            conn.execute("SELECT * FROM iasql_commit()")
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=commit)
    worker.start()
    with psycopg.connect(env_url, autocommit=True) as watcher:
        wait_for(watcher, "SELECT count(*) FROM iasql_commit_journal WHERE state = 'done'", 20)
        conn.cancel_safe()
        worker.join(120)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
        assert "undone" in str(outcome["error"])
        assert cloud_log_groups(moto) == []
        assert watcher.execute("SELECT count(*) FROM log_group").fetchone() == (0,)
        assert watcher.execute("SELECT DISTINCT state FROM iasql_commit_journal").fetchall() == [
            ("undone",)
        ]
    # The session is usable and the database is free for the next transaction.
    assert rows(conn, "SELECT message FROM iasql_begin()") == [("transaction open",)]
    conn.execute("SELECT * FROM iasql_rollback()")


def test_commit_reports_progress_and_fills_cloud_values_from_the_sync(moto_env: Any) -> None:
    conn, moto = moto_env
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO log_group (log_group_name) SELECT '/progress/' || i FROM generate_series(1, 120) i"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    progress = [n for n in notices if n.endswith(": done")]
    # A big commit reports about every 5%, and always its last step.
    assert 20 <= len(progress) <= 21
    assert progress[-1].startswith("120/120 creating log_group")
    assert len(cloud_log_groups(moto)) == 120
    # The arn and creation time, not echoed by create_log_group, come from the closing sync.
    missing = rows(
        conn, "SELECT count(*) FROM log_group WHERE log_group_arn IS NULL OR creation_time IS NULL"
    )
    assert missing == [(0,)]
    assert preview(conn) == []


def test_preview_with_no_transaction_open_shows_what_the_next_commit_applies(
    moto_env: Any,
) -> None:
    """Changes made with no transaction open are applied by the next commit, so a preview
    then shows them too (IaSQL refuses it), and a notice says no transaction is open."""
    conn, moto = moto_env
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/outside')")
    assert [r[:3] for r in preview(conn)] == [("create", "log_group", "/outside/us-east-1")]
    assert notices == [
        "no infrastructure transaction is open: this is what the next commit would apply;"
        " SELECT * FROM iasql_begin() opens one"
    ]
    notices.clear()
    conn.execute("SELECT * FROM iasql_begin()")
    assert [r[:3] for r in preview(conn)] == [("create", "log_group", "/outside/us-east-1")]
    assert notices == []
    conn.execute("SELECT * FROM iasql_commit()")
    assert cloud_log_groups(moto) == ["/outside"]


def test_a_changed_cloud_assigned_column_is_previewed_and_restored_by_the_commit(
    moto_env: Any,
) -> None:
    """As in IaSQL: `UPDATE ... SET arn = 'dummy'` previews as an update of that row, and the
    commit puts the cloud's value back (nothing is done in the cloud)."""
    conn, moto = moto_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/app')")
    conn.execute("SELECT * FROM iasql_commit()")
    [(arn,)] = rows(conn, "SELECT log_group_arn FROM log_group WHERE log_group_name = '/app'")
    assert arn.startswith("arn:aws:logs:us-east-1:")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE log_group SET log_group_arn = 'dummy' WHERE log_group_name = '/app'")
    restore = (
        "update",
        "log_group",
        "/app/us-east-1",
        {"log_group_arn": {"old": "dummy", "new": arn, "restored_from_cloud": True}},
    )
    assert preview(conn) == [restore]
    # With a create in the same table, whose read-back alone would miss the restored row.
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/other')")
    assert [r[:3] for r in preview(conn)] == [
        ("create", "log_group", "/other/us-east-1"),
        restore[:3],
    ]
    committed = rows(
        conn,
        "SELECT action, table_name, description, changes FROM iasql_commit()"
        " ORDER BY table_name, action, description",
    )
    assert [r[:3] for r in committed] == [("create", "log_group", "/other/us-east-1"), restore[:3]]
    assert committed[1] == restore  # the commit answers what the preview showed
    assert rows(conn, "SELECT log_group_arn FROM log_group WHERE log_group_name = '/app'") == [
        (arn,)
    ]
    assert cloud_log_groups(moto) == ["/app", "/other"]
    assert preview(conn) == []
    # Setting it and setting it back is no change at all.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE log_group SET log_group_arn = 'dummy' WHERE log_group_name = '/app'")
    conn.execute("UPDATE log_group SET log_group_arn = %s WHERE log_group_name = '/app'", (arn,))
    assert preview(conn) == []
    conn.execute("SELECT * FROM iasql_rollback()")


def test_iam_role_arn_change_is_restored_as_in_iasql(moto_env: Any) -> None:
    """IaSQL's own test: a role's arn set to 'dummy' previews as one row, and the commit
    undoes it."""
    conn, moto = moto_env
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    arn = iam.create_role(RoleName="task", AssumeRolePolicyDocument=json.dumps(trust))["Role"][
        "Arn"
    ]
    conn.execute("SELECT * FROM iasql_install('aws_iam')")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE iam_role SET arn = 'dummy' WHERE role_name = 'task'")
    assert rows(conn, "SELECT action, table_name, id FROM iasql_preview()") == [
        ("update", "iam_role", "task")
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert rows(conn, "SELECT arn FROM iam_role WHERE role_name = 'task'") == [(arn,)]
    assert rows(conn, "SELECT * FROM iasql_preview()") == []
