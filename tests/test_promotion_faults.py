"""Promotion when the target's cloud fails: the promotion stops with an honest error, the
target's rows and ledger are as before, and the next run promotes the same transaction."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from tests.support.env import RunningServer, add_credentials, only_regions, rows
from tests.support.http_relay import RelayThread
from tests.test_promotion import URLS, environment, promote


@pytest.fixture
def relay(moto_accounts: Any) -> Iterator[RelayThread]:
    with RelayThread(moto_accounts().endpoint, 0) as relay:
        yield relay


def behind(iasql: RunningServer, relay: RelayThread) -> psycopg.Connection:
    """An environment whose AWS endpoint is the relay."""
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        found = admin.execute(
            "SELECT url FROM iasql_connect(%s)", (f"prodfault_{secrets.token_hex(3)}",)
        ).fetchone()
    assert found is not None
    conn = psycopg.connect(str(found[0]), autocommit=True)
    URLS[id(conn)] = str(found[0])
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, relay)  # type: ignore[arg-type]  # anything with an endpoint
    only_regions(conn)
    conn.execute("SELECT * FROM iasql_install('aws_cloudwatch')")
    return conn


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_failing_cloud_leaves_the_target_and_its_ledger_as_they_were(
    iasql: RunningServer, moto_accounts: Any, relay: RelayThread, fault: str
) -> None:
    staging = environment(iasql, f"stagingfault_{secrets.token_hex(3)}", moto_accounts())
    prod = behind(iasql, relay)
    try:
        staging.execute("SELECT * FROM iasql_begin()")
        staging.execute("INSERT INTO log_group (log_group_name) VALUES ('/orders')")
        staging.execute("SELECT * FROM iasql_commit()")
        source, target = URLS[id(staging)], URLS[id(prod)]

        relay.fault = fault
        failed = promote("--from", source, "--to", target, "--commit")
        relay.fault = None
        assert failed.returncode == 1, failed.stdout
        assert "internal error" not in failed.stderr and "XX000" not in failed.stderr
        assert failed.stderr.startswith("iasql: "), failed.stderr
        assert rows(prod, "SELECT count(*) FROM iasql_promotions()") == [(0,)]
        assert rows(prod, "SELECT count(*) FROM log_group WHERE log_group_name = '/orders'") == [
            (0,)
        ]
        assert rows(prod, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [
            (0,)
        ]

        # The cloud is back: the same transaction is promoted, once.
        again = promote("--from", source, "--to", target, "--commit")
        assert again.returncode == 0, again.stderr
        logs = boto3.client("logs", region_name="us-east-1", endpoint_url=relay.endpoint)
        names = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
        assert names == ["/orders"]
        assert rows(prod, "SELECT status FROM iasql_promotions()") == [("applied",)]
    finally:
        staging.close()
        prod.close()
