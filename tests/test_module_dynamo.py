"""aws_dynamo: DynamoDB tables through SQL, against moto, checked with boto3.

moto's DescribeTable has no TableId and no TableClassSummary, so `table_id` stays NULL here and
a table class is kept in the tag `iasql:table_class` (see the module's docstring)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules.aws_dynamo import (
    CLASS_TAG,
    DYNAMO_TABLE,
    _record,
    canonical_primary_key,
    canonical_throughput,
)
from modules.spec import TOKEN
from tests.support.aws import REGION, mapper
from tests.support.env import add_credentials, commit, in_cloud, one, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

IA = "STANDARD_INFREQUENT_ACCESS"


@pytest.fixture(scope="module")
def moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    """One moto account for this file."""
    return moto_accounts()


def dynamo_client(moto: MotoServer) -> Any:
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=moto.endpoint)


def describe(dynamo: Any, name: str) -> dict[str, Any]:
    table: dict[str, Any] = dynamo.describe_table(TableName=name)["Table"]
    return table


def class_tag(dynamo: Any, name: str) -> str | None:
    arn = describe(dynamo, name)["TableArn"]
    tags = dynamo.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
    return next((t["Value"] for t in tags if t["Key"] == CLASS_TAG), None)


def key_schema(dynamo: Any, name: str) -> list[tuple[str, str, str]]:
    table = describe(dynamo, name)
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    return [
        (k["AttributeName"], k["KeyType"], types[k["AttributeName"]]) for k in table["KeySchema"]
    ]


def preview(conn: psycopg.Connection) -> dict[str, tuple[str, dict[str, Any]]]:
    """The open transaction's operations, by table name (the description is name/region)."""
    found = rows(conn, "SELECT action, description, changes FROM iasql_preview()")
    named = {str(d).split("/")[0]: (a, c) for a, d, c in found}
    assert len(named) == len(found) and all(str(d).endswith(f"/{REGION}") for _, d, _ in found)
    return named


def no_drift(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def test_canonical_forms() -> None:
    assert canonical_throughput('"PAY_PER_REQUEST"') == "PAY_PER_REQUEST"
    assert canonical_throughput({"WriteCapacityUnits": "2", "ReadCapacityUnits": 1}) == {
        "ReadCapacityUnits": 1,
        "WriteCapacityUnits": 2,
    }
    # The order says which attribute is the partition key (a create follows it), but a
    # rollback restores rows through jsonb, which re-sorts keys: the comparison leaves it out.
    assert canonical_primary_key({"b": "S", "a": "N"}) == [["a", "N"], ["b", "S"]]
    assert canonical_primary_key('{"b": "S", "a": "N"}') == [["a", "N"], ["b", "S"]]
    assert canonical_primary_key({"b": "S"}) != canonical_primary_key({"b": "N"})


def test_table_class_as_aws_and_moto_describe_it() -> None:
    base = {
        "TableName": "t",
        "TableArn": "arn:aws:dynamodb:us-east-1:123456789012:table/t",
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    }
    aws = {**base, "TableId": "0a1b2c3d-0000-0000-0000-000000000000"}
    # AWS: no TableClassSummary is STANDARD, whatever a tag says; a summary is the class.
    assert _record(aws, REGION, IA)["table_class"] == "STANDARD"
    summary = {"TableClassSummary": {"TableClass": IA}}
    assert _record({**aws, **summary}, REGION)["table_class"] == IA
    assert _record(aws, REGION)["table_id"] == aws["TableId"]
    # moto (no TableId, no summary): the class kept in the tag, else STANDARD.
    assert _record(base, REGION, IA)["table_class"] == IA
    assert _record(base, REGION, None)["table_class"] == "STANDARD"
    assert _record(base, REGION, "bogus")["table_class"] == "STANDARD"
    assert _record(base, REGION)["throughput"] == "PAY_PER_REQUEST"


def test_mapper_create_and_delete_are_idempotent(moto: MotoServer) -> None:
    row = {
        "table_name": "retried",
        "table_class": IA,
        "throughput": {"ReadCapacityUnits": 1, "WriteCapacityUnits": 2},
        "primary_key": {"id": "S"},
        "region": REGION,
        TOKEN: "token-1",
    }

    async def scenario(cloud: AwsCloud) -> None:
        tables = mapper(DYNAMO_TABLE)
        first = await tables.create(cloud, row)
        # A commit retried after a crash finds the table it made.
        assert await tables.create(cloud, row) == first
        assert first["table_class"] == IA and first["throughput"] == row["throughput"]
        # A table of that name with another key is not ours: AWS's error stands.
        with pytest.raises(Exception, match="ResourceInUseException"):
            await tables.create(cloud, {**row, "primary_key": {"other": "N"}})
        await tables.delete(cloud, first)
        await tables.delete(cloud, first)  # already gone: done

    in_cloud(moto, scenario)
    assert "retried" not in dynamo_client(moto).list_tables()["TableNames"]


def test_dynamo_tables_through_sql(envdb: psycopg.Connection, moto: MotoServer) -> None:
    conn, dynamo = envdb, dynamo_client(moto)
    # 1. Import: a table made before the install becomes a row.
    dynamo.create_table(
        TableName="imp-before",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        # RANGE listed first: the row's key still starts with the partition key.
        KeySchema=[
            {"AttributeName": "sk", "KeyType": "RANGE"},
            {"AttributeName": "pk", "KeyType": "HASH"},
        ],
        ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
    )
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn, REGION)
    assert rows(conn, "SELECT * FROM iasql_install('aws_dynamo')") == [
        ("aws_dynamo", "dynamo_table", 1)
    ]
    created = describe(dynamo, "imp-before")["CreationDateTime"]
    assert rows(
        conn,
        "SELECT table_name, table_class, throughput::jsonb, primary_key::text, table_id,"
        " created_at, region FROM dynamo_table",
    ) == [
        (
            "imp-before",
            "STANDARD",
            {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
            '{"pk": "S", "sk": "N"}',
            None,  # moto gives no TableId
            created.astimezone(dt.UTC).replace(tzinfo=None),
            REGION,
        )
    ]
    no_drift(conn)

    # ... and one made later comes in with iasql_sync().
    dynamo.create_table(
        TableName="imp-sync",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn,
        "SELECT table_class, throughput::text, primary_key::text FROM dynamo_table"
        " WHERE table_name = 'imp-sync'",
    ) == [("STANDARD", '"PAY_PER_REQUEST"', '{"pk": "S"}')]
    no_drift(conn)

    # 2.-4. Create (IaSQL's own example SQL), update in place, and replace, in one commit.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO dynamo_table (table_name, table_class, throughput, primary_key)"
        """ VALUES ('orders', 'STANDARD', '"PAY_PER_REQUEST"', '{"userId": "S", "ts": "N"}')"""
    )
    conn.execute(
        "UPDATE dynamo_table SET table_class = 'STANDARD_INFREQUENT_ACCESS',"
        """ throughput = '{"ReadCapacityUnits": 10, "WriteCapacityUnits": 4}'"""
        " WHERE table_name = 'imp-before'"
    )
    conn.execute(
        """UPDATE dynamo_table SET primary_key = '{"pk": "N"}' WHERE table_name = 'imp-sync'"""
    )
    planned = preview(conn)
    assert planned["orders"][0] == "create"
    assert planned["orders"][1]["table_name"] == {"old": None, "new": "orders"}
    assert planned["orders"][1]["primary_key"] == {"old": None, "new": {"userId": "S", "ts": "N"}}
    assert planned["imp-before"] == (
        "update",
        {
            "table_class": {"old": "STANDARD", "new": IA},
            "throughput": {
                "old": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
                "new": {"ReadCapacityUnits": 10, "WriteCapacityUnits": 4},
            },
        },
    )
    assert planned["imp-sync"] == (
        "replace",
        {"primary_key": {"old": {"pk": "S"}, "new": {"pk": "N"}, "forces_replace": True}},
    )
    commit(conn)
    orders = describe(dynamo, "orders")
    assert orders["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert key_schema(dynamo, "orders") == [("userId", "HASH", "S"), ("ts", "RANGE", "N")]
    before = describe(dynamo, "imp-before")
    assert before["CreationDateTime"] == created  # in place
    assert before["ProvisionedThroughput"]["ReadCapacityUnits"] == 10
    assert before["ProvisionedThroughput"]["WriteCapacityUnits"] == 4
    assert class_tag(dynamo, "imp-before") == IA  # moto keeps no class: the tag does
    assert key_schema(dynamo, "imp-sync") == [("pk", "HASH", "N")]
    assert rows(
        conn,
        "SELECT table_name, table_class, created_at IS NOT NULL FROM dynamo_table ORDER BY 1",
    ) == [("imp-before", IA, True), ("imp-sync", "STANDARD", True), ("orders", "STANDARD", True)]
    no_drift(conn)
    # The SQL that replays this elsewhere names tables by name and region, no cloud ids.
    replay = [s for (s,) in rows(conn, "SELECT * FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3, replay
    assert not any("arn:aws" in s or "created_at" in s or "table_id" in s for s in replay)
    [insert] = [s for s in replay if s.startswith('INSERT INTO "dynamo_table"')]
    # The key as it was written: its first attribute is the partition key.
    assert """'{"userId": "S", "ts": "N"}'::json""" in insert, insert
    assert all('"table_name" = \'' in s for s in replay if s.startswith("UPDATE"))

    # Drift: a change made outside iasql shows, and a sync takes it in.
    dynamo.update_table(
        TableName="imp-before",
        ProvisionedThroughput={"ReadCapacityUnits": 7, "WriteCapacityUnits": 7},
    )
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_drift()")
    assert action == "update" and set(changes) == {"throughput"}, changes
    conn.execute("SELECT * FROM iasql_sync()")
    assert one(
        conn, "SELECT throughput::jsonb FROM dynamo_table WHERE table_name = 'imp-before'"
    ) == {"ReadCapacityUnits": 7, "WriteCapacityUnits": 7}
    no_drift(conn)

    # Rollback: an uncommitted change is undone, and the cloud never sees it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("""UPDATE dynamo_table SET throughput = '"PAY_PER_REQUEST"'""")
    conn.execute("DELETE FROM dynamo_table WHERE table_name = 'orders'")
    planned = preview(conn)
    assert (planned["imp-before"][0], planned["orders"][0]) == ("update", "delete")
    assert len(planned) == 2  # imp-sync already bills per request
    conn.execute("SELECT * FROM iasql_rollback()")
    assert one(conn, "SELECT count(*) FROM dynamo_table") == 3
    # The restored row went through jsonb ("ts" now comes first in its text): the same key,
    # and no replace is planned.
    assert one(conn, "SELECT primary_key::jsonb FROM dynamo_table WHERE table_name = 'orders'") == {
        "userId": "S",
        "ts": "N",
    }
    assert one(
        conn, "SELECT throughput::jsonb FROM dynamo_table WHERE table_name = 'imp-before'"
    ) == {"ReadCapacityUnits": 7, "WriteCapacityUnits": 7}
    assert sorted(dynamo.list_tables()["TableNames"]) == ["imp-before", "imp-sync", "orders"]
    no_drift(conn)

    # 5. Delete; and back to on-demand billing and the STANDARD class, in place.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM dynamo_table WHERE table_name IN ('orders', 'imp-sync')")
    conn.execute(
        """UPDATE dynamo_table SET throughput = '"PAY_PER_REQUEST"', table_class = 'STANDARD'"""
        " WHERE table_name = 'imp-before'"
    )
    planned = preview(conn)
    assert planned["orders"][0] == "delete" and planned["imp-sync"][0] == "delete"
    assert planned["imp-before"][0] == "update"
    commit(conn)
    assert dynamo.list_tables()["TableNames"] == ["imp-before"]
    before = describe(dynamo, "imp-before")
    assert before["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert before["CreationDateTime"] == created
    assert class_tag(dynamo, "imp-before") == "STANDARD"
    assert rows(conn, "SELECT table_name, table_class, throughput::text FROM dynamo_table") == [
        ("imp-before", "STANDARD", '"PAY_PER_REQUEST"')
    ]
    no_drift(conn)

    # Bad forms are refused by the table itself.
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO dynamo_table (table_name, table_class, throughput, primary_key)"
            """ VALUES ('bad', 'STANDARD', '{"read": 1}', '{"id": "S"}')"""
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO dynamo_table (table_name, table_class, throughput, primary_key)"
            """ VALUES ('bad', 'GLACIER', '"PAY_PER_REQUEST"', '{"id": "S"}')"""
        )
    conn.execute("SELECT * FROM iasql_rollback()")
