"""Module functions (RPCs) through the proxy: how the engine runs them, whatever the module."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.env import add_credentials, only_regions, rows


@pytest.fixture
def rpc_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any]:
    moto: MotoServer = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb, "us-east-1", "eu-west-1")
    return envdb, moto


def test_a_module_function_needs_its_module(rpc_env: Any) -> None:
    conn, _moto = rpc_env
    with pytest.raises(psycopg.errors.UndefinedFunction) as missing:
        conn.execute("SELECT * FROM access_key_request('nobody')")
    assert "aws_iam, which is not installed" in str(missing.value)
    assert missing.value.diag.message_hint == "SELECT * FROM iasql_install('aws_iam')"
    listed = {r[0] for r in rows(conn, "SELECT name FROM iasql_help()")}
    assert "iasql_commit" in listed and "access_key_request" not in listed
    conn.execute("SELECT * FROM iasql_install('aws_iam')")
    modules = dict(rows(conn, "SELECT name, module FROM iasql_help()"))
    assert modules["access_key_request"] == "aws_iam"
    assert modules["iasql_commit"] == "iasql_functions"


def test_a_function_runs_as_its_own_transaction_and_syncs_its_tables(rpc_env: Any) -> None:
    conn, moto = rpc_env
    conn.execute("SELECT * FROM iasql_install('aws_iam')")
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint)
    iam.create_user(UserName="deployer")
    conn.execute("SELECT * FROM iasql_sync()")

    [(status, key_id, secret)] = rows(
        conn, "SELECT status, access_key_id, secret_access_key FROM access_key_request('deployer')"
    )
    assert status == "SUCCESS" and secret
    assert [
        k["AccessKeyId"] for k in iam.list_access_keys(UserName="deployer")["AccessKeyMetadata"]
    ] == [key_id]
    # The key is a row at once (the sync after the function), without its secret anywhere.
    assert rows(conn, "SELECT user_name, status FROM access_key") == [("deployer", "Active")]
    assert rows(
        conn, f"SELECT count(*) FROM iasql_audit_log WHERE change::text LIKE '%{secret}%'"
    ) == [(0,)]
    # It ran as a transaction of its own, now closed.
    assert rows(
        conn,
        "SELECT outcome FROM iasql_transaction WHERE transaction_id = (SELECT transaction_id"
        " FROM iasql_audit_log WHERE message = 'access_key_request()')",
    ) == [("committed",)]
    assert rows(conn, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(0,)]

    # Inside an open infrastructure transaction it joins it, leaving it open.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("SELECT * FROM access_key_request('deployer')")
    assert rows(conn, "SELECT count(*) FROM access_key") == [(2,)]
    assert rows(conn, "SELECT count(*) FROM iasql_transaction WHERE closed_at IS NULL") == [(1,)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert len(iam.list_access_keys(UserName="deployer")["AccessKeyMetadata"]) == 2


def test_function_errors(rpc_env: Any) -> None:
    conn, _moto = rpc_env
    conn.execute("SELECT * FROM iasql_install('aws_iam', 'aws_acm')")
    # The cloud's refusal, as one line, and the implicit transaction closed as failed.
    with pytest.raises(psycopg.errors.lookup("58000")) as failed:
        conn.execute("SELECT * FROM access_key_request('nobody')")
    assert str(failed.value).startswith("access_key_request() failed:")
    assert "nobody" in str(failed.value)
    assert rows(conn, "SELECT outcome FROM iasql_transaction ORDER BY opened_at DESC LIMIT 1") == [
        ("failed",)
    ]
    # Not inside a client's transaction block: its ROLLBACK could not undo the cloud.
    with conn.transaction(), pytest.raises(psycopg.errors.ActiveSqlTransaction):
        conn.execute("SELECT * FROM access_key_request('nobody')")
    # A missing argument names the signature; a left-out region is the default one.
    with pytest.raises(psycopg.errors.UndefinedFunction) as missing:
        conn.execute("SELECT * FROM access_key_request()")
    assert "access_key_request(user_name text)" in (missing.value.diag.message_hint or "")
    conn.execute("SELECT default_aws_region('eu-west-1')")
    [(arn,)] = rows(conn, "SELECT arn FROM certificate_request('shop.example.com')")
    assert arn.startswith("arn:aws:acm:eu-west-1:")
    assert rows(conn, "SELECT domain_name, region FROM certificate") == [
        ("shop.example.com", "eu-west-1")
    ]
