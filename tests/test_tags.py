"""Tag values (issue 15): a tag's value in a `tags` column is JSON, AWS keeps text. A JSON true
or number goes to AWS as the text it is written as in JSON ("true", "1"), never as Python's
"True", and an unchanged row then shows no drift. Here through aws_vpc, whose tags go through
the shared helpers of modules/_aws/tags.py, and whose rows store the values as text too
(the `tags_as_text` trigger every table with tags has)."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules._aws.tags import normalize_tags, tag_specifications, tag_value
from tests.support.aws import REGION
from tests.support.env import add_credentials, only_regions, rows


def test_tag_values_as_aws_keeps_them() -> None:
    assert [tag_value(v) for v in (True, False, 1, 1.5, None, "x", [1], {"a": 1})] == [
        "true",
        "false",
        "1",
        "1.5",
        "",
        "x",
        "[1]",
        '{"a":1}',
    ]
    assert normalize_tags('{"public": true, "n": 2}') == {"n": "2", "public": "true"}
    # A row holding true and AWS holding "true" compare equal.
    assert normalize_tags({"public": True}) == normalize_tags({"public": "true"})
    assert tag_specifications("vpc", {"public": True}, None) == [
        {"ResourceType": "vpc", "Tags": [{"Key": "public", "Value": "true"}]}
    ]


@pytest.mark.slow
def test_boolean_tag_through_sql(envdb: psycopg.Connection, moto_accounts: Any) -> None:
    moto: MotoServer = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb, REGION)
    envdb.execute("SELECT * FROM iasql_install('aws_vpc')")
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.endpoint)

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO vpc (cidr_block, tags) VALUES ('10.77.0.0/16', '{\"public\": true, \"n\": 1}')"
    )
    # The row holds the values as AWS will: text (a trigger of every table with tags).
    assert rows(envdb, "SELECT tags::jsonb FROM vpc WHERE cidr_block = '10.77.0.0/16'") == [
        ({"public": "true", "n": "1"},)
    ]
    envdb.execute("SELECT * FROM iasql_commit()")
    [(vpc_id,)] = rows(envdb, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.77.0.0/16'")
    [vpc] = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    tags = {t["Key"]: t["Value"] for t in vpc["Tags"] if not t["Key"].startswith("iasql:")}
    assert tags == {"public": "true", "n": "1"}
    assert rows(envdb, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # A change to a boolean value changes the tag in place.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE vpc SET tags = '{\"public\": false, \"n\": 1}' WHERE cidr_block = '10.77.0.0/16'"
    )
    envdb.execute("SELECT * FROM iasql_commit()")
    [vpc] = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    assert {t["Key"]: t["Value"] for t in vpc["Tags"]}["public"] == "false"
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]
