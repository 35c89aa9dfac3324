"""aws_s3.bucket_object: objects made with boto3 found at install and by iasql_sync(), uploaded
with IaSQL's s3_upload_object RPC, deleted as rows (alone, or with their bucket), an INSERT
or a rename refused, an e_tag edit restored, a rollback; every effect read back with boto3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from iasql.sandbox import MotoServer
from modules.aws_s3 import MODULE
from modules.aws_s3.objects import (
    BUCKET_OBJECT,
    S3_UPLOAD_OBJECT,
    BucketObjectMapper,
    s3_upload_object,
)
from modules.spec import CloudError
from tests.support.env import add_credentials, in_cloud, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

EAST, WEST = "us-east-1", "eu-west-1"


@pytest.fixture(scope="module")
def account(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    """One moto account for the file; each test uses buckets of its own."""
    return moto_accounts()


def s3_client(moto: MotoServer, region: str = EAST) -> Any:
    return boto3.client("s3", region_name=region, endpoint_url=moto.endpoint)


def make_bucket(moto: MotoServer, name: str, region: str = EAST) -> Any:
    s3 = s3_client(moto, region)
    config = {} if region == EAST else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=name, **config)
    return s3


def e_tag(s3: Any, bucket: str, key: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"])


def absent(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        return str(error.response["Error"]["Code"]) == "404"
    return False


def no_changes(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


# --- the spec ------------------------------------------------------------------------------


def test_table_and_function_are_declared() -> None:
    assert [t.name for t in MODULE.tables] == [
        "bucket",
        "public_access_block",
        "bucket_website",
        "bucket_object",
    ]
    columns = {c.name: (c.type, c.nullable, c.default) for c in BUCKET_OBJECT.columns}
    assert columns == {
        "id": ("serial", False, None),
        "key": ("varchar", False, None),
        "bucket_name": ("varchar", False, None),
        "region": ("varchar", False, "default_aws_region()"),
        "e_tag": ("varchar", True, None),
    }
    reference = BUCKET_OBJECT.column("bucket_name").ref
    assert reference is not None and (reference.table, reference.key) == ("bucket", "name")
    assert reference.on_delete == "NO ACTION"  # IaSQL's: the object rows go first
    # IaSQL's argument order and result columns.
    assert [p for p, _ in S3_UPLOAD_OBJECT.params] == [
        "name",
        "object_key",
        "content",
        "content_type",
    ]
    assert [c for c, _ in S3_UPLOAD_OBJECT.columns] == [
        "bucket",
        "key",
        "status",
        "response_message",
    ]
    assert S3_UPLOAD_OBJECT in MODULE.functions


# --- mapper and RPC against moto ------------------------------------------------------------


def test_mapper_and_rpc(account: MotoServer) -> None:
    west = make_bucket(account, "map-west", WEST)
    west.put_object(Bucket="map-west", Key="one.txt", Body=b"1")
    objects = BucketObjectMapper()

    async def scenario(cloud: Any) -> None:
        found = await objects.read(cloud, WEST)
        assert found == [
            {
                "key": "one.txt",
                "bucket_name": "map-west",
                "region": WEST,
                "e_tag": e_tag(west, "map-west", "one.txt"),
            }
        ]
        assert [r for r in await objects.read(cloud, EAST) if r["bucket_name"] == "map-west"] == []

        # The RPC puts into the bucket's own region, with its content type.
        result = await s3_upload_object(
            cloud, "map-west", "dir/two.json", '{"a": 1}', "application/json"
        )
        assert result == [
            {
                "bucket": "map-west",
                "key": "dir/two.json",
                "status": "OK",
                "response_message": "Bucket content has been updated",
            }
        ]
        got = west.get_object(Bucket="map-west", Key="dir/two.json")
        assert (got["Body"].read(), got["ContentType"]) == (b'{"a": 1}', "application/json")
        wanted = [
            {"bucket_name": "map-west", "key": "dir/two.json"},
            {"bucket_name": "map-west", "key": "no"},
        ]
        [two] = await objects.read_some(cloud, WEST, wanted)
        assert two["e_tag"] == e_tag(west, "map-west", "dir/two.json")
        assert sorted(r["key"] for r in await objects.read(cloud, WEST)) == [
            "dir/two.json",
            "one.txt",
        ]

        with pytest.raises(CloudError, match="s3_upload_object"):
            await objects.create(cloud, {**two, "key": "three.txt"})
        with pytest.raises(CloudError, match="bucket no-such-bucket does not exist"):
            await s3_upload_object(cloud, "no-such-bucket", "k", "x")
        with pytest.raises(CloudError, match="name the bucket"):
            await s3_upload_object(cloud, "map-west", "", "x")

        await objects.delete(cloud, two)
        assert absent(west, "map-west", "dir/two.json")
        await objects.delete(cloud, two)  # already gone: fine
        west.delete_object(Bucket="map-west", Key="one.txt")
        west.delete_bucket(Bucket="map-west")
        await objects.delete(cloud, found[0])  # gone with its bucket: fine
        assert await objects.read_some(cloud, WEST, wanted) == []

    in_cloud(account, scenario)


# --- through SQL ---------------------------------------------------------------------------


@pytest.fixture
def env(
    envdb: psycopg.Connection, account: MotoServer
) -> Iterator[tuple[psycopg.Connection, Any, Any]]:
    """Objects in two buckets, made with boto3 before the install."""
    east = make_bucket(account, "sql-east")
    east.put_object(Bucket="sql-east", Key="a.txt", Body=b"hello")
    east.put_object(Bucket="sql-east", Key="dir/b.json", Body=b"{}")
    west = make_bucket(account, "sql-west", WEST)
    west.put_object(Bucket="sql-west", Key="w.txt", Body=b"west")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, account)
    installed = rows(envdb, "SELECT * FROM iasql_install('aws_s3')")
    assert ("aws_s3", "bucket_object", 3) in installed
    only_regions(envdb, EAST, WEST)
    yield envdb, east, west


def test_objects_through_sql(env: Any) -> None:
    conn, east, west = env
    listed = "SELECT bucket_name, key, region, e_tag FROM bucket_object ORDER BY bucket_name, key"
    assert rows(conn, listed) == [
        ("sql-east", "a.txt", EAST, e_tag(east, "sql-east", "a.txt")),
        ("sql-east", "dir/b.json", EAST, e_tag(east, "sql-east", "dir/b.json")),
        ("sql-west", "w.txt", WEST, e_tag(west, "sql-west", "w.txt")),
    ]
    no_changes(conn)
    # The object rows hold their bucket (NO ACTION, as IaSQL's); the settings go with it.
    assert rows(
        conn,
        "SELECT conrelid::regclass::text, confdeltype FROM pg_constraint"
        " WHERE confrelid = 'bucket'::regclass ORDER BY 1",
    ) == [("bucket_object", "a"), ("bucket_website", "c"), ("public_access_block", "c")]

    # An object put outside iasql is drift, and iasql_sync() brings its row.
    east.put_object(Bucket="sql-east", Key="late.txt", Body=b"late")
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_drift()")
    assert changes["key"]["new"] == "late.txt" or changes["key"]["old"] == "late.txt", action
    conn.execute("SELECT * FROM iasql_sync()")
    late = "SELECT region, e_tag FROM bucket_object WHERE key = 'late.txt'"
    assert rows(conn, late) == [(EAST, e_tag(east, "sql-east", "late.txt"))]
    no_changes(conn)

    # IaSQL's RPC call; the sync after it adds the row, in the bucket's region.
    [result] = rows(
        conn,
        "SELECT * FROM s3_upload_object('sql-west', 'up.json', '{\"name\": \"Iasql\"}', 'application/json')",
    )
    assert result == ("sql-west", "up.json", "OK", "Bucket content has been updated")
    got = west.get_object(Bucket="sql-west", Key="up.json")
    assert (got["Body"].read(), got["ContentType"]) == (b'{"name": "Iasql"}', "application/json")
    uploaded = "SELECT region, e_tag FROM bucket_object WHERE key = 'up.json'"
    assert rows(conn, uploaded) == [(WEST, e_tag(west, "sql-west", "up.json"))]
    # Uploading again replaces the content: the row's e_tag follows.
    first = e_tag(west, "sql-west", "up.json")
    conn.execute("SELECT * FROM s3_upload_object('sql-west', 'up.json', 'v2')")
    assert e_tag(west, "sql-west", "up.json") != first
    assert rows(conn, uploaded) == [(WEST, e_tag(west, "sql-west", "up.json"))]
    no_changes(conn)
    with pytest.raises(psycopg.Error) as missing:
        conn.execute("SELECT * FROM s3_upload_object('no-such-bucket', 'k', 'x')")
    assert missing.value.sqlstate == "58000" and "does not exist" in str(missing.value)
    with pytest.raises(psycopg.Error) as bad:
        conn.execute("SELECT * FROM s3_upload_object('sql-west', '', 'x')")
    assert bad.value.sqlstate == "22023"

    # An INSERT, or a rename, is refused at once, naming the RPC.
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        conn.execute("INSERT INTO bucket_object (key, bucket_name) VALUES ('new.txt', 'sql-east')")
    assert "s3_upload_object('sql-east', 'new.txt'" in (refused.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("UPDATE bucket_object SET key = 'moved.txt' WHERE key = 'a.txt'")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("UPDATE bucket_object SET region = 'eu-west-1' WHERE key = 'a.txt'")

    # A rolled back DELETE changes nothing.
    conn.execute("DELETE FROM bucket_object WHERE bucket_name = 'sql-east' AND key = 'a.txt'")
    assert rows(conn, "SELECT action FROM iasql_preview()") == [("delete",)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT count(*) FROM bucket_object WHERE key = 'a.txt'") == [(1,)]
    assert not absent(east, "sql-east", "a.txt")
    no_changes(conn)

    # A DELETE deletes the object; an edited e_tag is restored from the cloud.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM bucket_object WHERE bucket_name = 'sql-east' AND key = 'a.txt'")
    conn.execute("UPDATE bucket_object SET e_tag = 'edited' WHERE key = 'dir/b.json'")
    preview = {
        action: (description, changes)
        for action, description, changes in rows(
            conn, "SELECT action, description, changes FROM iasql_preview()"
        )
    }
    assert preview["delete"] == (
        "sql-east/a.txt",
        {
            "key": {"old": "a.txt", "new": None},
            "bucket_name": {"old": "sql-east", "new": None},
            "region": {"old": EAST, "new": None},
        },
    )
    b_tag = e_tag(east, "sql-east", "dir/b.json")
    assert preview["update"][1] == {
        "e_tag": {"old": "edited", "new": b_tag, "restored_from_cloud": True}
    }
    statements = [s for (s,) in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert statements == [
        'DELETE FROM "bucket_object" WHERE "bucket_name" = \'sql-east\' AND "key" = \'a.txt\';'
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert absent(east, "sql-east", "a.txt")
    assert rows(conn, "SELECT e_tag FROM bucket_object WHERE key = 'dir/b.json'") == [(b_tag,)]
    assert rows(conn, "SELECT count(*) FROM bucket_object WHERE key = 'a.txt'") == [(0,)]
    no_changes(conn)

    # A bucket row goes only after its objects' rows; together, objects are deleted first.
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("DELETE FROM bucket WHERE name = 'sql-west'")
    conn.execute("DELETE FROM bucket_object WHERE bucket_name = 'sql-west'")
    conn.execute("DELETE FROM bucket WHERE name = 'sql-west'")
    statements = [s for (s,) in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert sorted(statements[:2]) == [
        'DELETE FROM "bucket_object" WHERE "bucket_name" = \'sql-west\' AND "key" = \'up.json\';',
        'DELETE FROM "bucket_object" WHERE "bucket_name" = \'sql-west\' AND "key" = \'w.txt\';',
    ]
    assert statements[2:] == ['DELETE FROM "bucket" WHERE "name" = \'sql-west\';']
    assert all("e_tag" not in s and "arn:" not in s for s in statements)
    conn.execute("SELECT * FROM iasql_commit()")
    assert "sql-west" not in [b["Name"] for b in west.list_buckets()["Buckets"]]
    assert rows(conn, "SELECT count(*) FROM bucket_object WHERE bucket_name = 'sql-west'") == [(0,)]
    no_changes(conn)
