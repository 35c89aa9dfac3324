"""Engine trust under concurrency and faults: edits made while a commit, a sync or an import
runs are never lost, and a cloud that goes away mid-commit gets an honest answer and a later
cleanup. AWS calls go through the delaying relay (tests/support/http_relay.py), which holds
each request long enough for another session to act meanwhile, and can drop connections on
demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.env import only_regions, rows
from tests.support.http_relay import RelayThread

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

DELAY = 0.15  # per AWS request: a commit of a few resources takes a second or two


@pytest.fixture
def relayed(
    envdb: psycopg.Connection, env_url: str, moto_accounts: Callable[[], MotoServer]
) -> Iterator[tuple[psycopg.Connection, psycopg.Connection, MotoServer, RelayThread]]:
    """An environment whose AWS endpoint is a delaying relay in front of its own moto
    account, with logs and sqs installed, and a second session on the same database."""
    moto = moto_accounts()
    with RelayThread(moto.endpoint, 0) as relay:
        envdb.execute("SELECT * FROM iasql_install('aws_account')")
        envdb.execute(
            "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
            " VALUES ('AKIDTEST', 'a-very-secret-key', %s)",
            (relay.endpoint,),
        )
        only_regions(envdb, "us-east-1")
        envdb.execute("SELECT * FROM iasql_install('aws_cloudwatch', 'aws_sqs')")
        with psycopg.connect(env_url, autocommit=True) as other:
            yield envdb, other, moto, relay


def logs(moto: MotoServer) -> Any:
    return boto3.client("logs", region_name="us-east-1", endpoint_url=moto.endpoint)


def sqs(moto: MotoServer) -> Any:
    return boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint)


def cloud_log_groups(moto: MotoServer) -> list[str]:
    pages = logs(moto).get_paginator("describe_log_groups").paginate()
    return sorted(g["logGroupName"] for page in pages for g in page["logGroups"])


def cloud_queues(moto: MotoServer) -> list[str]:
    urls = sqs(moto).list_queues().get("QueueUrls", [])
    return sorted(url.rsplit("/", 1)[1] for url in urls)


class Background:
    """Runs one statement on its own connection in a thread, keeping its error."""

    def __init__(self, url: str, sql: str) -> None:
        self.error: BaseException | None = None
        self.notices: list[str] = []
        self._url, self._sql = url, sql
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True) as conn:
                conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
                conn.execute(self._sql)
        except psycopg.Error as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(120)
        assert not self._thread.is_alive()


def wait_until(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"waited {seconds} s"
        time.sleep(0.01)


def journal_count(conn: psycopg.Connection, state: str) -> int:
    return int(
        one_value(conn, f"SELECT count(*) FROM iasql_commit_journal WHERE state = '{state}'")
    )


def one_value(conn: psycopg.Connection, sql: str) -> Any:
    [(value,)] = rows(conn, sql)
    return value


def test_edits_made_while_a_commit_runs_stay_pending(relayed: Any, env_url: str) -> None:
    conn, other, moto, relay = relayed
    logs(moto).create_log_group(logGroupName="/old")
    sqs(moto).create_queue(QueueName="kept", Attributes={"VisibilityTimeout": "30"})
    conn.execute("SELECT * FROM iasql_sync()")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO log_group (log_group_name) SELECT '/now/' || i FROM generate_series(1, 4) i"
    )
    relay.relay.delay_seconds = DELAY
    commit = Background(env_url, "SELECT * FROM iasql_commit()")
    wait_until(lambda: journal_count(other, "started") + journal_count(other, "done") > 0)
    # Another session, while the commit applies: an insert, an update and a delete.
    other.execute("INSERT INTO log_group (log_group_name) VALUES ('/late')")
    other.execute("UPDATE queue SET visibility_timeout = 99 WHERE name = 'kept'")
    other.execute("DELETE FROM log_group WHERE log_group_name = '/old'")
    commit.join()
    relay.relay.delay_seconds = 0
    assert commit.error is None, commit.error
    # Progress goes on after the last operation, while what it made is read back.
    last_step = max(i for i, n in enumerate(commit.notices) if n.endswith(": done"))
    assert any(n.startswith("read ") for n in commit.notices[last_step:]), commit.notices
    assert cloud_log_groups(moto) == ["/now/1", "/now/2", "/now/3", "/now/4", "/old"]
    # The later edits are still in the rows, and nothing of the engine undid them.
    names = [r[0] for r in rows(conn, "SELECT log_group_name FROM log_group ORDER BY 1")]
    assert names == ["/late", "/now/1", "/now/2", "/now/3", "/now/4"]
    assert one_value(conn, "SELECT visibility_timeout FROM queue WHERE name = 'kept'") == 99
    engine_deletes = rows(
        conn,
        "SELECT change->'original'->>'log_group_name' FROM iasql_audit_log"
        " WHERE change_type = 'DELETE' AND \"user\" <> current_user",
    )
    assert engine_deletes == []
    # The rows the commit created got their arns from the cloud.
    assert (
        one_value(
            conn,
            "SELECT count(*) FROM log_group WHERE log_group_name LIKE '/now/%' AND log_group_arn IS NOT NULL",
        )
        == 4
    )
    # They are what the next preview shows, and the next commit applies them.
    planned = rows(
        conn, "SELECT action, table_name, description FROM iasql_preview() ORDER BY 2, 1"
    )
    assert planned == [
        ("create", "log_group", "/late/us-east-1"),
        ("delete", "log_group", "/old/us-east-1"),
        ("update", "queue", "kept/us-east-1"),
    ]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("SELECT * FROM iasql_commit()")
    assert cloud_log_groups(moto) == ["/late", "/now/1", "/now/2", "/now/3", "/now/4"]
    url = sqs(moto).get_queue_url(QueueName="kept")["QueueUrl"]
    attributes = sqs(moto).get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "99"
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


@pytest.mark.parametrize("call", ["SELECT * FROM iasql_sync()", "install"])
def test_edits_made_while_a_sync_or_an_import_runs_are_kept(
    relayed: Any, env_url: str, call: str
) -> None:
    conn, other, moto, relay = relayed
    sqs(moto).create_queue(QueueName="outside")
    logs(moto).create_log_group(logGroupName="/outside")
    if call == "install":
        conn.execute("SELECT * FROM iasql_uninstall('aws_sqs')")
        call = "SELECT * FROM iasql_install('aws_sqs')"
    relay.relay.delay_seconds = DELAY
    seen = relay.requests
    work = Background(env_url, call)
    wait_until(lambda: relay.requests > seen)  # reading the cloud now
    if "install" in call:
        wait_until(lambda: one_value(other, "SELECT to_regclass('queue') IS NOT NULL"))
    other.execute("INSERT INTO queue (name) VALUES ('mine')")
    work.join()
    relay.relay.delay_seconds = 0
    assert work.error is None, work.error
    assert any(n.startswith("read ") for n in work.notices), work.notices
    assert rows(conn, "SELECT name FROM queue ORDER BY 1") == [("mine",), ("outside",)]
    assert rows(conn, "SELECT action, description FROM iasql_preview()") == [
        ("create", "mine/us-east-1")
    ]


@pytest.mark.parametrize("fault", ["drop", "dark", "500"])
def test_a_cloud_going_away_mid_commit_is_reported_and_cleaned_up_later(
    relayed: Any, env_url: str, fault: str
) -> None:
    conn, other, moto, relay = relayed
    conn.execute("SELECT * FROM iasql_begin()")
    transaction_id = one_value(
        conn, "SELECT transaction_id FROM iasql_transaction WHERE closed_at IS NULL"
    )
    conn.execute("INSERT INTO queue (name) SELECT 'q' || i FROM generate_series(1, 40) i")
    relay.relay.delay_seconds = DELAY
    commit = Background(env_url, "SELECT * FROM iasql_commit()")
    wait_until(lambda: journal_count(other, "done") >= 4)
    relay.fault = fault
    started = time.monotonic()
    commit.join()
    took = time.monotonic() - started
    relay.relay.delay_seconds = 0
    error = commit.error
    assert isinstance(error, psycopg.Error) and error.sqlstate == "58000", error
    left = sorted(cloud_queues(moto))
    assert left, "the queues created before the endpoint went away are still there"
    detail = error.diag.message_detail or ""
    assert "left in the cloud" in detail
    for name in left:
        assert f"queue {name}/us-east-1" in detail
    print(f"commit answered {took:.1f} s after the endpoint went away")
    # Honest bookkeeping: nothing claims to be undone, the transaction is closed as failed.
    assert journal_count(conn, "undone") == 0
    assert (
        one_value(
            conn, f"SELECT outcome FROM iasql_transaction WHERE transaction_id = '{transaction_id}'"
        )
        == "failed"
    )
    [(message,)] = rows(conn, "SELECT message FROM iasql_get_errors()")
    assert "left in the cloud" in message and f"queue {left[0]}/us-east-1" in message
    assert rows(conn, "SELECT count(*) FROM queue") == [(0,)]
    # While the endpoint is still away, a sync fails honestly and imports nothing.
    with pytest.raises(psycopg.Error) as still_down:
        conn.execute("SELECT * FROM iasql_sync()")
    assert still_down.value.sqlstate in ("08001", "58000")
    assert rows(conn, "SELECT count(*) FROM queue") == [(0,)]
    # Once it is back, the next begin undoes the leftovers, and says so.
    relay.fault = None
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("SELECT * FROM iasql_begin()")
    assert any("left changes in the cloud: undoing them" in n for n in notices), notices
    assert cloud_queues(moto) == []
    assert journal_count(conn, "done") == 0 and journal_count(conn, "started") == 0
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT count(*) FROM queue") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    conn.execute("SELECT * FROM iasql_rollback()")


def test_a_failed_commit_keeps_what_another_session_changed_meanwhile(
    relayed: Any, env_url: str
) -> None:
    conn, other, moto, relay = relayed
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO queue (name, visibility_timeout) VALUES ('good', 30)")
    conn.execute("INSERT INTO queue (name, maximum_message_size) VALUES ('broken', 1)")
    relay.relay.delay_seconds = DELAY
    commit = Background(env_url, "SELECT * FROM iasql_commit()")
    wait_until(lambda: journal_count(other, "started") + journal_count(other, "done") > 0)
    other.execute("UPDATE queue SET visibility_timeout = 99 WHERE name = 'good'")
    commit.join()
    relay.relay.delay_seconds = 0
    assert isinstance(commit.error, psycopg.Error) and commit.error.sqlstate == "58000"
    assert cloud_queues(moto) == []
    # The failed transaction's own rows are undone; the later edit is not.
    assert rows(conn, "SELECT name, visibility_timeout FROM queue") == [("good", 99)]
    assert rows(conn, "SELECT action, description FROM iasql_preview()") == [
        ("create", "good/us-east-1")
    ]


def test_a_row_deleted_while_its_resource_is_created_stays_deleted(
    relayed: Any, env_url: str
) -> None:
    """The VPC id is assigned by AWS: the row's DELETE, made before the id is written back,
    names no VPC. The VPC is not imported back as a row, and the next commit deletes it."""
    conn, other, moto, relay = relayed
    conn.execute("SELECT * FROM iasql_install('aws_vpc')")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO vpc (cidr_block, tags) VALUES ('10.7.0.0/16', '{\"Name\": \"gone\"}')"
    )
    relay.relay.delay_seconds = DELAY
    commit = Background(env_url, "SELECT * FROM iasql_commit()")
    wait_until(lambda: journal_count(other, "started") > 0)
    other.execute("DELETE FROM vpc WHERE cidr_block = '10.7.0.0/16'")
    commit.join()
    relay.relay.delay_seconds = 0
    assert commit.error is None, commit.error
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint)
    made = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.7.0.0/16"]}])
    assert len(made["Vpcs"]) == 1
    assert rows(conn, "SELECT count(*) FROM vpc WHERE cidr_block = '10.7.0.0/16'") == [(0,)]
    assert rows(
        conn, "SELECT action, table_name FROM iasql_preview() WHERE table_name = 'vpc'"
    ) == [("delete", "vpc")]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("SELECT * FROM iasql_commit()")
    made = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.7.0.0/16"]}])
    assert made["Vpcs"] == []
