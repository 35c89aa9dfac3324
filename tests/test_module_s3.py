"""aws_s3: import through the proxy, the mappers against moto, the canonical forms."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from engine.cloud import AwsCloud, Credentials
from iasql.sandbox import MotoServer
from modules.aws_s3 import (
    BucketMapper,
    PublicAccessBlockMapper,
    WebsiteMapper,
    canonical_policy,
    canonical_tags,
)
from modules.spec import TOKEN, CloudError, Record
from tests.support.env import add_credentials, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def s3_client(moto: MotoServer, region: str) -> Any:
    return boto3.client("s3", region_name=region, endpoint_url=moto.endpoint)


def read_policy(bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as error:
        call()
    return str(error.value.response["Error"]["Code"])


# 1. Import: buckets made outside iasql become rows at install.


def test_install_imports_buckets_and_their_settings(
    envdb: psycopg.Connection,
    moto_accounts: Callable[[], MotoServer],
) -> None:
    moto = moto_accounts()
    east, west = s3_client(moto, "us-east-1"), s3_client(moto, "eu-west-1")
    east.create_bucket(Bucket="imp-east")
    east.put_bucket_website(
        Bucket="imp-east",
        WebsiteConfiguration={
            "IndexDocument": {"Suffix": "index.html"},
            "ErrorDocument": {"Key": "404.html"},
        },
    )
    west.create_bucket(
        Bucket="imp-west", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    west.put_bucket_policy(Bucket="imp-west", Policy=json.dumps(read_policy("imp-west")))
    west.put_bucket_tagging(
        Bucket="imp-west",
        Tagging={"TagSet": [{"Key": "team", "Value": "data"}, {"Key": "env", "Value": "dev"}]},
    )
    west.put_public_access_block(
        Bucket="imp-west",
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": False,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": True,
        },
    )

    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    assert rows(envdb, "SELECT * FROM iasql_install('aws_s3')") == [
        ("aws_s3", "bucket", 2),
        ("aws_s3", "public_access_block", 1),
        ("aws_s3", "bucket_website", 1),
        ("aws_s3", "bucket_object", 0),
    ]

    assert rows(envdb, "SELECT name, policy, tags, region FROM bucket ORDER BY name") == [
        ("imp-east", None, None, "us-east-1"),
        ("imp-west", read_policy("imp-west"), {"team": "data", "env": "dev"}, "eu-west-1"),
    ]
    listed = {b["Name"]: b["CreationDate"] for b in east.list_buckets()["Buckets"]}
    created = dict(rows(envdb, "SELECT name, created_at FROM bucket"))
    assert created == {n: d.astimezone(dt.UTC).replace(tzinfo=None) for n, d in listed.items()}
    assert rows(envdb, "SELECT * FROM public_access_block") == [
        (True, False, False, True, "imp-west")
    ]
    assert rows(envdb, "SELECT * FROM bucket_website") == [("index.html", "404.html", "imp-east")]
    # A bucket's settings go with its row.
    assert rows(
        envdb,
        "SELECT conrelid::regclass::text, confdeltype FROM pg_constraint"
        " WHERE confrelid = 'bucket'::regclass ORDER BY 1",
    ) == [("bucket_object", "a"), ("bucket_website", "c"), ("public_access_block", "c")]


# 2. The mappers against moto, each step checked with boto3 too.


def test_mapper_lifecycle(moto_accounts: Callable[[], MotoServer]) -> None:
    moto = moto_accounts()
    credentials = Credentials("AKIDTEST", "a-very-secret-key", None, moto.endpoint)

    async def run() -> None:
        cloud = AwsCloud(credentials)
        try:
            await bucket_lifecycle(cloud, s3_client(moto, "eu-west-1"))
            await us_east_1_bucket(cloud, s3_client(moto, "us-east-1"))
            await settings_lifecycle(cloud, s3_client(moto, "eu-west-1"))
        finally:
            await cloud.close()

    asyncio.run(run())


def same(record: Record, expected: Record) -> bool:
    """Equal once policies and tags are in canonical form (the engine compares that way)."""

    def canonical(r: Record) -> Record:
        return {
            **r,
            "policy": canonical_policy(r.get("policy")),
            "tags": canonical_tags(r.get("tags")),
        }

    keys = expected.keys() - {TOKEN}
    return {k: canonical(record)[k] for k in keys} == {k: canonical(expected)[k] for k in keys}


async def bucket_lifecycle(cloud: AwsCloud, s3: Any) -> None:
    mapper = BucketMapper()
    wanted: Record = {
        "name": "life-west",
        "region": "eu-west-1",
        "policy": read_policy("life-west"),
        "tags": {"team": "data", "env": "dev"},
        TOKEN: "token-1",
    }
    created = await mapper.create(cloud, wanted)
    assert same(created, wanted)
    assert isinstance(created["created_at"], dt.datetime)
    assert created["created_at"].tzinfo is None
    assert await mapper.create(cloud, wanted) == created  # a retried create is fine
    assert await mapper.read(cloud, "eu-west-1") == [created]
    assert await mapper.read(cloud, "us-east-1") == []
    assert s3.get_bucket_location(Bucket="life-west")["LocationConstraint"] == "eu-west-1"
    assert json.loads(s3.get_bucket_policy(Bucket="life-west")["Policy"]) == wanted["policy"]
    tag_set = s3.get_bucket_tagging(Bucket="life-west")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tag_set} == wanted["tags"]

    # The policy as a JSON string with a bare statement; one tag fewer, one changed.
    statement = {**read_policy("life-west")["Statement"][0], "Sid": "Other"}
    changed = {
        **created,
        "policy": json.dumps({"Version": "2012-10-17", "Statement": statement}),
        "tags": {"env": "prod"},
    }
    updated = await mapper.update(cloud, changed, created)
    assert same(updated, changed)
    assert updated["created_at"] == created["created_at"]
    assert await mapper.read(cloud, "eu-west-1") == [updated]
    assert json.loads(s3.get_bucket_policy(Bucket="life-west")["Policy"])["Statement"] == statement
    assert s3.get_bucket_tagging(Bucket="life-west")["TagSet"] == [{"Key": "env", "Value": "prod"}]

    cleared = await mapper.update(cloud, {**updated, "policy": None, "tags": {}}, updated)
    assert (cleared["policy"], cleared["tags"]) == (None, None)
    assert error_code(lambda: s3.get_bucket_policy(Bucket="life-west")) == "NoSuchBucketPolicy"
    assert error_code(lambda: s3.get_bucket_tagging(Bucket="life-west")) == "NoSuchTagSet"

    # The name is taken by this bucket, in another region than the one asked for.
    with pytest.raises(CloudError, match="already exists in eu-west-1"):
        await mapper.create(cloud, {**wanted, "region": "us-east-1"})

    await mapper.delete(cloud, cleared)
    assert await mapper.read(cloud, "eu-west-1") == []
    assert error_code(lambda: s3.head_bucket(Bucket="life-west")) == "404"
    await mapper.delete(cloud, cleared)  # already gone


async def us_east_1_bucket(cloud: AwsCloud, s3: Any) -> None:
    """us-east-1 takes no LocationConstraint and answers a repeated create with success."""
    mapper = BucketMapper()
    wanted: Record = {"name": "life-east", "region": "us-east-1", "policy": None, "tags": None}
    created = await mapper.create(cloud, wanted)
    assert same(created, wanted)
    assert await mapper.create(cloud, wanted) == created
    assert await mapper.read(cloud, "us-east-1") == [created]
    assert s3.get_bucket_location(Bucket="life-east")["LocationConstraint"] is None
    await mapper.delete(cloud, created)
    assert await mapper.read(cloud, "us-east-1") == []


async def settings_lifecycle(cloud: AwsCloud, s3: Any) -> None:
    """A public access block and a website, on a bucket away from the global endpoint."""
    s3.create_bucket(Bucket="site", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    blocks, website = PublicAccessBlockMapper(), WebsiteMapper()
    assert await blocks.read(cloud, None) == []
    assert await website.read(cloud, None) == []

    flags = ("block_public_acls", "ignore_public_acls", "block_public_policy")
    block: Record = {"bucket_name": "site", **dict.fromkeys(flags, True)}
    block["restrict_public_buckets"] = True
    assert await blocks.create(cloud, block) == block
    assert await blocks.create(cloud, block) == block
    opened = {**block, "block_public_policy": False, "restrict_public_buckets": False}
    assert await blocks.update(cloud, opened, block) == opened
    assert await blocks.read(cloud, None) == [opened]
    assert s3.get_public_access_block(Bucket="site")["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False,
    }

    page: Record = {"bucket_name": "site", "index_document": "index.html", "error_document": None}
    assert await website.create(cloud, page) == page
    with_errors = {**page, "error_document": "error.html"}
    assert await website.update(cloud, with_errors, page) == with_errors
    assert await website.read(cloud, None) == [with_errors]
    config = s3.get_bucket_website(Bucket="site")
    assert (config["IndexDocument"], config["ErrorDocument"]) == (
        {"Suffix": "index.html"},
        {"Key": "error.html"},
    )

    await blocks.delete(cloud, opened)
    await website.delete(cloud, with_errors)
    assert await blocks.read(cloud, None) == []
    assert await website.read(cloud, None) == []
    code = error_code(lambda: s3.get_public_access_block(Bucket="site"))
    assert code == "NoSuchPublicAccessBlockConfiguration"
    assert error_code(lambda: s3.get_bucket_website(Bucket="site")) == "NoSuchWebsiteConfiguration"
    await blocks.delete(cloud, opened)  # already gone

    # Settings go with their bucket; deleting them afterwards is not an error.
    await blocks.create(cloud, block)
    await BucketMapper().delete(cloud, {"name": "site", "region": "eu-west-1"})
    await blocks.delete(cloud, block)
    await website.delete(cloud, with_errors)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        await blocks.create(cloud, block)


# 3. The canonical forms.


def test_canonical_policy() -> None:
    policy = read_policy("b")
    reordered = {
        "Statement": [dict(reversed(policy["Statement"][0].items()))],
        "Version": "2012-10-17",
    }
    bare = {**policy, "Statement": policy["Statement"][0]}
    as_string = json.dumps(policy, indent=4)
    listed_action = {**policy, "Statement": {**policy["Statement"][0], "Action": ["s3:GetObject"]}}
    assert (
        canonical_policy(policy)
        == canonical_policy(reordered)
        == canonical_policy(bare)
        == canonical_policy(as_string)
        == canonical_policy(listed_action)
    )
    two_actions = {**bare, "Statement": {**bare["Statement"], "Action": ["s3:A", "s3:B"]}}
    assert canonical_policy(two_actions) != canonical_policy(policy)
    assert canonical_policy(None) is None
    assert canonical_policy("not json") == "not json"


def test_canonical_tags() -> None:
    assert canonical_tags({"b": "1", "a": "2"}) == canonical_tags({"a": "2", "b": "1"})
    assert list(canonical_tags({"b": "1", "a": "2"}) or {}) == ["a", "b"]
    assert canonical_tags('{"b": "1", "a": "2"}') == {"a": "2", "b": "1"}
    assert canonical_tags({"n": 1}) == {"n": "1"}
    assert canonical_tags(None) is canonical_tags({}) is canonical_tags("{}") is None
    assert canonical_tags({"a": "1"}) != canonical_tags({"a": "2"})
