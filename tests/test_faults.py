"""Honest failures when the cloud goes away: with aws_credentials.endpoint_url on a relay in
front of moto, each fault (an HTTP 500, dropped connections, a refused port, a host that
does not answer) makes install, preview, sync, drift and a module RPC fail with 08001 or
58000 naming the endpoint or the AWS operation, never XX000, within a generous guard; and
everything works again once the fault is gone.

`pytest --durations=0 tests/test_faults.py` shows how long each failure takes."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from engine.cloud import cloud_failure
from tests.support.env import RunningServer, only_regions, rows
from tests.support.http_relay import RelayThread

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

SECRET = "a-very-secret-key"
GUARD = 60.0  # seconds: a statement still running then is cancelled (and the test fails)
FAULTS = ("500", "drop", "refuse", "dark")
EXPECTED = {"500": "58000", "drop": "08001", "refuse": "08001", "dark": "08001"}


@pytest.fixture(scope="module")
def relay(moto_accounts: Any) -> Iterator[RelayThread]:
    with RelayThread(moto_accounts().endpoint, 0) as relay:
        yield relay


@pytest.fixture(autouse=True)
def _healthy_after(relay: RelayThread) -> Iterator[None]:
    yield
    relay.fault = None


def environment(iasql: RunningServer, relay: RelayThread) -> psycopg.Connection:
    """A new environment database with aws_account, credentials on the relay, us-east-1."""
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        url = admin.execute(
            "SELECT url FROM iasql_connect(%s)", (f"faults_{secrets.token_hex(4)}",)
        ).fetchone()
    assert url is not None
    conn = psycopg.connect(str(url[0]), autocommit=True)
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    conn.execute(
        "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
        " VALUES ('AKIDTEST', %s, %s)",
        (SECRET, relay.endpoint),
    )
    only_regions(conn, "us-east-1")
    return conn


@pytest.fixture(scope="module")
def bare(iasql: RunningServer, relay: RelayThread) -> Iterator[psycopg.Connection]:
    """Only aws_account: the place to install aws_sqs."""
    with environment(iasql, relay) as conn:
        yield conn


@pytest.fixture(scope="module")
def full(iasql: RunningServer, relay: RelayThread) -> Iterator[psycopg.Connection]:
    """aws_sqs and aws_acm installed, and a queue row no commit has applied yet."""
    with environment(iasql, relay) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_sqs', 'aws_acm')")
        conn.execute("INSERT INTO queue (name) VALUES ('faults')")
        yield conn


def timed(conn: psycopg.Connection, sql: str) -> tuple[psycopg.Error | None, float]:
    """Runs `sql`: (its error or None, seconds taken). Cancelled after GUARD seconds."""
    guard = threading.Timer(GUARD, conn.cancel_safe)
    guard.start()
    started = time.monotonic()
    try:
        conn.execute(sql).fetchall()
        error = None
    except psycopg.Error as exc:
        error = exc
    finally:
        guard.cancel()
    return error, time.monotonic() - started


def sqs_installed(conn: psycopg.Connection) -> bool:
    return ("aws_sqs",) in rows(conn, "SELECT module_name FROM iasql_modules_installed()")


@pytest.fixture
def clean_bare(bare: psycopg.Connection) -> psycopg.Connection:
    if sqs_installed(bare):
        bare.execute("SELECT * FROM iasql_uninstall('aws_sqs')")
    return bare


CALLS = {
    "install": ("bare", "SELECT * FROM iasql_install('aws_sqs')"),
    "preview": ("full", "SELECT * FROM iasql_preview()"),
    "sync": ("full", "SELECT * FROM iasql_sync()"),
    "drift": ("full", "SELECT * FROM iasql_drift()"),
    "rpc": ("full", "SELECT * FROM certificate_request('faults.example.com')"),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("fault", FAULTS)
def test_cloud_fault_is_an_honest_error(
    fault: str, call: str, relay: RelayThread, request: pytest.FixtureRequest
) -> None:
    where, sql = CALLS[call]
    conn: psycopg.Connection = request.getfixturevalue("clean_bare" if where == "bare" else where)
    before = relay.requests
    relay.fault = fault

    error, seconds = timed(conn, sql)

    assert error is not None, f"{call} succeeded under the fault {fault}"
    diag = error.diag
    text = " ".join(
        str(part) for part in (diag.message_primary, diag.message_detail, diag.message_hint)
    )
    report = f"{call} under {fault}: {diag.sqlstate} {text} after {seconds:.1f} s"
    assert diag.sqlstate in ("08001", "58000"), report
    if call != "rpc":  # an RPC reports its own failure or the sync after it
        assert diag.sqlstate == EXPECTED[fault], report
    message = str(diag.message_primary)
    if diag.sqlstate == "08001":
        assert relay.endpoint in message, report
        assert "aws_credentials.endpoint_url" in str(diag.message_hint), report
    else:
        assert re.search(r"AWS [A-Z]\w+ failed|certificate_request\(\) failed", message), report
    assert "\n" not in message, report
    assert SECRET not in text, report
    assert "internal error" not in text, report
    assert seconds < GUARD, report
    print(report)  # pytest -s: what each failure says, and when
    if fault in ("500", "drop"):
        assert relay.requests > before, report  # the call did reach the relay

    # The fault gone, the same call works.
    relay.fault = None
    error, seconds = timed(conn, sql)
    assert error is None, f"{call} after {fault}: {error}"
    if call == "install":
        assert sqs_installed(conn)
    pending = 1 if where == "full" else 0  # the queue row
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(pending,)]
    assert rows(conn, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(0,)]


@pytest.mark.parametrize("call", ["install", "preview"])
def test_one_server_error_is_retried(
    call: str, relay: RelayThread, request: pytest.FixtureRequest
) -> None:
    """A single HTTP 500 with a body that is no AWS document (a threaded moto server's
    HTML page, a proxy's text) is a blip: botocore's retry absorbs it, the call succeeds."""
    where, sql = CALLS[call]
    conn: psycopg.Connection = request.getfixturevalue("clean_bare" if where == "bare" else where)
    relay.fault = "500-once"
    error, _ = timed(conn, sql)
    assert error is None, f"{call} after one HTTP 500: {error}"
    assert relay.fault is None  # the relay did answer one request with its 500


def test_cloud_failure_looks_into_groups_and_causes() -> None:
    refused = EndpointConnectionError(
        endpoint_url="http://user:pw@127.0.0.1:1/?Action=ListQueues",
        error=ConnectionRefusedError(111, "Connection refused"),
    )
    failure = cloud_failure(ExceptionGroup("reads", [ValueError("not ours"), refused]))
    assert failure is not None and failure.sqlstate == "08001"
    assert failure.message == "cannot reach the AWS endpoint http://127.0.0.1:1: connection refused"

    denied = ClientError(
        {
            "Error": {"Code": "AccessDenied", "Message": "not allowed\nsecond line"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "ListQueues",
    )
    try:
        raise RuntimeError("wrapped") from denied
    except RuntimeError as exc:
        failure = cloud_failure(exc)
    assert failure is not None and failure.sqlstate == "58000"
    assert failure.message == "AWS ListQueues failed: AccessDenied: not allowed"
    assert failure.hint is None  # an answer, not an outage

    assert cloud_failure(ValueError("a bug of ours")) is None
