"""The first modules together through begin / preview / commit: a bucket, a log group, a
queue, a VPC with a subnet and security groups whose rule references another group. Every
cloud effect is read back with boto3."""

from __future__ import annotations

import json
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.env import add_credentials, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

MODULES = ("aws_s3", "aws_cloudwatch", "aws_sqs", "aws_vpc", "aws_security_group")


@pytest.fixture
def network_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any]:
    moto: MotoServer = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb)
    envdb.execute(f"SELECT * FROM iasql_install({', '.join(repr(m) for m in MODULES)})")
    return envdb, boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint)


STACK = """
INSERT INTO bucket (name) VALUES ('stack-assets');
INSERT INTO log_group (log_group_name) VALUES ('/stack/app');
INSERT INTO queue (name) VALUES ('stack-jobs');
INSERT INTO vpc (cidr_block, tags) VALUES ('10.1.0.0/16', '{"Name": "stack"}');
INSERT INTO subnet (vpc_id, cidr_block, availability_zone)
    SELECT id, '10.1.1.0/24', 'us-east-1a' FROM vpc WHERE cidr_block = '10.1.0.0/16';
INSERT INTO security_group (group_name, description, vpc_id)
    SELECT name, name || ' tier', id FROM vpc, (VALUES ('web'), ('app')) AS g(name)
    WHERE cidr_block = '10.1.0.0/16';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, source_security_group)
    SELECT app.id, false, 'tcp', 8080, 8080, web.id
    FROM security_group app, security_group web
    WHERE app.group_name = 'app' AND web.group_name = 'web';
"""


def stack_vpc(ec2: Any) -> dict[str, Any]:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.1.0.0/16"]}])["Vpcs"]
    assert len(vpcs) == 1
    return dict(vpcs[0])


def groups_by_name(ec2: Any, vpc_id: str) -> dict[str, Any]:
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return {g["GroupName"]: g for g in groups["SecurityGroups"]}


def test_stack_create_replace_rollback_fail_and_delete(network_env: Any) -> None:
    conn, ec2 = network_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(STACK)
    planned = rows(conn, "SELECT action, table_name FROM iasql_preview() ORDER BY 2")
    assert planned == [
        ("create", "bucket"),
        ("create", "log_group"),
        ("create", "queue"),
        ("create", "security_group"),
        ("create", "security_group"),
        ("create", "security_group_rule"),
        ("create", "subnet"),
        ("create", "vpc"),
    ]
    vpc_row = rows(conn, "SELECT id FROM vpc WHERE cidr_block = '10.1.0.0/16'")[0][0]
    subnet_changes = rows(conn, "SELECT changes FROM iasql_preview() WHERE table_name = 'subnet'")
    assert subnet_changes[0][0]["vpc_id"] == {"old": None, "new": f"(new vpc {vpc_row})"}
    assert subnet_changes[0][0]["cidr_block"] == {"old": None, "new": "10.1.1.0/24"}

    conn.execute("SELECT * FROM iasql_commit()")
    vpc = stack_vpc(ec2)
    assert rows(conn, f"SELECT vpc_id FROM vpc WHERE id = {vpc_row}") == [(vpc["VpcId"],)]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    assert [s["CidrBlock"] for s in subnets["Subnets"]] == ["10.1.1.0/24"]
    groups = groups_by_name(ec2, vpc["VpcId"])
    assert {"web", "app"} <= set(groups)
    ingress = groups["app"]["IpPermissions"]
    assert len(ingress) == 1 and ingress[0]["FromPort"] == 8080
    assert ingress[0]["UserIdGroupPairs"][0]["GroupId"] == groups["web"]["GroupId"]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # Rolling back a deletion restores the row, same id, and the cloud keeps the rule.
    rule = rows(conn, "SELECT * FROM security_group_rule WHERE from_port = 8080")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM security_group_rule WHERE from_port = 8080")
    assert rows(conn, "SELECT action FROM iasql_rollback()") == [("delete",)]
    assert rows(conn, "SELECT * FROM security_group_rule WHERE from_port = 8080") == rule

    # A description cannot change in place: the group is replaced, and its rule with it.
    old_group = groups["app"]["GroupId"]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE security_group SET description = 'app servers' WHERE group_name = 'app'")
    planned = rows(
        conn, "SELECT action, table_name, changes FROM iasql_preview() ORDER BY table_name"
    )
    assert [(a, t) for a, t, _ in planned] == [
        ("replace", "security_group"),
        ("replace", "security_group_rule"),
    ]
    assert planned[0][2] == {
        "description": {"old": "app tier", "new": "app servers", "forces_replace": True}
    }
    conn.execute("SELECT * FROM iasql_commit()")
    groups = groups_by_name(ec2, vpc["VpcId"])
    assert groups["app"]["GroupId"] != old_group
    assert groups["app"]["Description"] == "app servers"
    assert (
        groups["app"]["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"]
        == (groups["web"]["GroupId"])
    )
    assert rows(conn, "SELECT group_id FROM security_group WHERE group_name = 'app'") == [
        (groups["app"]["GroupId"],)
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # A subnet outside its VPC's range fails; what succeeded before it is undone.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO log_group (log_group_name) VALUES ('/stack/extra')")
    conn.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
        f" VALUES ({vpc_row}, '10.9.0.0/24', 'us-east-1a')"
    )
    with pytest.raises(psycopg.errors.SystemError) as error:
        conn.execute("SELECT * FROM iasql_commit()")
    assert "subnet" in str(error.value) and "10.9.0.0/24" in str(error.value)
    assert rows(conn, f"SELECT count(*) FROM subnet WHERE vpc_id = {vpc_row}") == [(1,)]
    assert rows(conn, "SELECT count(*) FROM log_group WHERE log_group_name = '/stack/extra'") == [
        (0,)
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # The default VPC cannot be deleted by accident.
    default_vpcs = rows(conn, "SELECT count(*) FROM vpc WHERE is_default")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM security_group WHERE vpc_id IN (SELECT id FROM vpc WHERE is_default)")
    conn.execute("DELETE FROM subnet WHERE vpc_id IN (SELECT id FROM vpc WHERE is_default)")
    conn.execute("DELETE FROM vpc WHERE is_default")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    conn.execute("SELECT * FROM iasql_commit()")
    assert rows(conn, "SELECT count(*) FROM vpc WHERE is_default") == default_vpcs
    assert len(ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]) == 1

    # Everything goes in one transaction, in dependency order.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM security_group_rule WHERE from_port = 8080;"
        f" DELETE FROM security_group WHERE vpc_id = {vpc_row};"
        f" DELETE FROM subnet WHERE vpc_id = {vpc_row}; DELETE FROM vpc WHERE id = {vpc_row};"
        " DELETE FROM bucket; DELETE FROM log_group; DELETE FROM queue"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    assert (
        ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.1.0.0/16"]}])["Vpcs"] == []
    )
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def test_s3_and_vpc_updates_in_place(network_env: Any) -> None:
    conn, ec2 = network_env
    endpoint = ec2.meta.endpoint_url
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint)
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO bucket (name, tags) VALUES ('site-bucket', '{\"team\": \"web\"}')")
    conn.execute(
        "INSERT INTO bucket_website (bucket_name, index_document) VALUES ('site-bucket', 'index.html')"
    )
    conn.execute(
        "INSERT INTO public_access_block (bucket_name, block_public_policy) VALUES ('site-bucket', false)"
    )
    conn.execute("INSERT INTO vpc (cidr_block) VALUES ('10.7.0.0/16')")
    assert sorted(r[0] for r in rows(conn, "SELECT table_name FROM iasql_preview()")) == [
        "bucket",
        "bucket_website",
        "public_access_block",
        "vpc",
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert s3.get_bucket_website(Bucket="site-bucket")["IndexDocument"] == {"Suffix": "index.html"}
    block = s3.get_public_access_block(Bucket="site-bucket")["PublicAccessBlockConfiguration"]
    assert block["BlockPublicPolicy"] is False and block["BlockPublicAcls"] is True
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::site-bucket/*",
            }
        ],
    }
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        'UPDATE bucket SET policy = %s, tags = \'{"team": "platform"}\'',
        (json.dumps(policy),),
    )
    conn.execute("UPDATE bucket_website SET error_document = 'oops.html'")
    conn.execute(
        'UPDATE vpc SET enable_dns_support = true, tags = \'{"Name": "seven"}\''
        " WHERE cidr_block = '10.7.0.0/16'"
    )
    planned = {
        r[0]: (r[1], r[2])
        for r in rows(conn, "SELECT table_name, action, changes FROM iasql_preview()")
    }
    assert planned["bucket_website"] == (
        "update",
        {"error_document": {"old": None, "new": "oops.html"}},
    )
    assert planned["vpc"][0] == "update" and set(planned["vpc"][1]) == {
        "enable_dns_support",
        "tags",
    }
    assert planned["bucket"][0] == "update" and set(planned["bucket"][1]) == {"policy", "tags"}
    vpc_id = rows(conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.7.0.0/16'")[0][0]
    conn.execute("SELECT * FROM iasql_commit()")
    assert json.loads(s3.get_bucket_policy(Bucket="site-bucket")["Policy"]) == policy
    assert s3.get_bucket_tagging(Bucket="site-bucket")["TagSet"] == [
        {"Key": "team", "Value": "platform"}
    ]
    assert s3.get_bucket_website(Bucket="site-bucket")["ErrorDocument"] == {"Key": "oops.html"}
    support = ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsSupport")
    assert support["EnableDnsSupport"]["Value"] is True
    # In-place: same VPC, and AWS's normalised policy does not show as a change.
    assert rows(conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.7.0.0/16'") == [(vpc_id,)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM bucket_website; DELETE FROM public_access_block")
    conn.execute("SELECT * FROM iasql_commit()")
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_website(Bucket="site-bucket")
