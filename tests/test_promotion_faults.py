"""Promotion when the target's cloud fails: the promotion stops with an honest error, the
target's rows and ledger are as before, and the next run promotes the same transaction."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.support.env import RunningServer, rows
from tests.support.http_relay import RelayThread
from tests.test_promotion import URLS, environment, promote


@pytest.fixture
def relay(moto_accounts: Any) -> Iterator[RelayThread]:
    with RelayThread(moto_accounts().endpoint, 0) as relay:
        yield relay


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_failing_cloud_leaves_the_target_and_its_ledger_as_they_were(
    iasql: RunningServer, moto_accounts: Any, relay: RelayThread, fault: str
) -> None:
    staging = environment(iasql, f"stagingfault_{secrets.token_hex(3)}", moto_accounts())
    # Prod's AWS endpoint is the relay (anything with an `endpoint` will do).
    prod = environment(iasql, f"prodfault_{secrets.token_hex(3)}", relay)  # type: ignore[arg-type]
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
