"""A whole application stack through the networking and compute modules, in a staging account
and promoted into a prod account with `iasql promote`, every cloud effect read with boto3.

1. One transaction: a VPC, subnets in two zones, an internet gateway, a route table whose
   default route goes to that gateway, a NAT gateway on an elastic IP, security groups (one
   rule naming the other group) and an IAM role; one iasql_commit(), no retry pass.
2. A second: two instances behind a load balancer (naming its subnets by cloud id, as in
   IaSQL), a target group and an HTTPS listener on a certificate imported by RPC.
3. The application tier, in one transaction: a Route 53 record aliased to the load balancer,
   a CloudFront distribution in front of an S3 bucket on the certificate, an SNS topic, an SQS
   queue, a DynamoDB table, a secret, a Lambda function with a role and the VPC's subnets, an
   HTTP API and an AppSync API; then the queue's subscription to the topic (the topic's ARN
   exists once the first commit made it).
4. Each transaction replayed in prod by `iasql promote --commit`, with no edit.
5. One transaction deleting all of it, in reverse dependency order.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import subprocess
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.aws import make_certificate
from tests.support.cli import IASQL, cli_env
from tests.support.env import RunningServer, add_credentials, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

REGION = "us-east-1"
MODULES = ("aws_vpc", "aws_security_group", "aws_iam", "aws_acm", "aws_elb", "aws_ec2")
APP_MODULES = (
    "aws_route53",
    "aws_cloudfront",
    "aws_s3",
    "aws_sns",
    "aws_sqs",
    "aws_dynamo",
    "aws_secrets_manager",
    "aws_lambda",
    "aws_api_gateway",
    "aws_appsync",
)
# CloudFront's managed CachingOptimized policy.
CACHE_POLICY = "658327ea-f89d-4fab-a63d-7e88639e58f6"
ORIGIN = {
    "Id": "assets",
    "DomainName": "shop-assets.s3.amazonaws.com",
    "S3OriginConfig": {"OriginAccessIdentity": ""},
}
BEHAVIOR = {
    "TargetOriginId": "assets",
    "ViewerProtocolPolicy": "redirect-to-https",
    "CachePolicyId": CACHE_POLICY,
}
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

NETWORK = f"""
INSERT INTO vpc (cidr_block, enable_dns_support, enable_dns_hostnames, tags)
    VALUES ('10.60.0.0/16', true, true, '{{"Name": "shop"}}');
INSERT INTO subnet (vpc_id, cidr_block, availability_zone)
    SELECT v.id, s.cidr, s.zone FROM vpc v,
        (VALUES ('10.60.1.0/24', 'us-east-1a'), ('10.60.2.0/24', 'us-east-1b')) AS s(cidr, zone)
    WHERE v.cidr_block = '10.60.0.0/16';
INSERT INTO internet_gateway (vpc_id, tags)
    SELECT id, '{{"Name": "shop"}}' FROM vpc WHERE cidr_block = '10.60.0.0/16';
INSERT INTO route_table (vpc_id, tags)
    SELECT id, '{{"Name": "shop-public"}}' FROM vpc WHERE cidr_block = '10.60.0.0/16';
INSERT INTO route (route_table_id, destination, internet_gateway)
    SELECT t.id, '0.0.0.0/0', g.id FROM route_table t, internet_gateway g
    WHERE t.tags ->> 'Name' = 'shop-public' AND g.tags ->> 'Name' = 'shop';
INSERT INTO route_table_association (route_table_id, subnet_id, vpc_id)
    SELECT t.id, s.id, s.vpc_id FROM route_table t, subnet s
    WHERE t.tags ->> 'Name' = 'shop-public' AND s.cidr_block IN ('10.60.1.0/24', '10.60.2.0/24');
INSERT INTO elastic_ip (tags) VALUES ('{{"Name": "shop-nat"}}');
INSERT INTO nat_gateway (connectivity_type, subnet_id, elastic_ip_id, tags)
    SELECT 'public', s.id, e.id, '{{"Name": "shop"}}' FROM subnet s, elastic_ip e
    WHERE s.cidr_block = '10.60.1.0/24' AND e.tags ->> 'Name' = 'shop-nat';
INSERT INTO security_group (group_name, description, vpc_id)
    SELECT g.name, g.name || ' tier', v.id FROM vpc v, (VALUES ('shop-lb'), ('shop-app')) AS g(name)
    WHERE v.cidr_block = '10.60.0.0/16';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, cidr_ipv4)
    SELECT id, false, 'tcp', 443, 443, '0.0.0.0/0' FROM security_group WHERE group_name = 'shop-lb';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, source_security_group)
    SELECT app.id, false, 'tcp', 80, 80, lb.id FROM security_group app, security_group lb
    WHERE app.group_name = 'shop-app' AND lb.group_name = 'shop-lb';
INSERT INTO iam_role (role_name, assume_role_policy_document, description)
    VALUES ('shop-app', '{json.dumps(EC2_TRUST)}', 'the shop instances');
"""

COMPUTE = f"""
INSERT INTO instance (ami, instance_type, subnet_id, role_name, tags)
    SELECT '{AMI}', 't3.micro', s.id, 'shop-app', json_build_object('Name', 'shop-' || n)
    FROM subnet s JOIN (VALUES (1, '10.60.1.0/24'), (2, '10.60.2.0/24')) AS i(n, cidr)
        ON s.cidr_block = i.cidr;
INSERT INTO instance_security_groups (instance_id, security_group_id)
    SELECT i.id, g.id FROM instance i, security_group g
    WHERE i.tags ->> 'Name' LIKE 'shop-%' AND g.group_name = 'shop-app';
INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)
    SELECT 'shop-web', 'instance', 'HTTP', 80, id FROM vpc WHERE cidr_block = '10.60.0.0/16';
INSERT INTO load_balancer
    (load_balancer_name, scheme, load_balancer_type, ip_address_type, subnets, vpc)
    SELECT 'shop', 'internet-facing', 'application', 'ipv4',
        ARRAY(SELECT subnet_id FROM subnet WHERE cidr_block IN ('10.60.1.0/24', '10.60.2.0/24')),
        id
    FROM vpc WHERE cidr_block = '10.60.0.0/16';
INSERT INTO load_balancer_security_groups (load_balancer_id, security_group_id)
    SELECT b.id, g.id FROM load_balancer b, security_group g
    WHERE b.load_balancer_name = 'shop' AND g.group_name = 'shop-lb';
INSERT INTO listener (load_balancer_id, port, protocol, action_type, target_group_id, certificate_id)
    SELECT b.id, 443, 'HTTPS', 'forward', t.id, c.id
    FROM load_balancer b, target_group t, certificate c
    WHERE b.load_balancer_name = 'shop' AND t.target_group_name = 'shop-web'
        AND c.domain_name = 'shop.example.com';
INSERT INTO registered_instance (instance, target_group_id, port)
    SELECT i.id, t.id, 80 FROM instance i, target_group t
    WHERE i.tags ->> 'Name' LIKE 'shop-%' AND t.target_group_name = 'shop-web';
"""


def function_zip() -> str:
    """A Lambda deployment package: one handler, base64 as `zip_b64` holds it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return {'ok': True}\n")
    return base64.b64encode(buffer.getvalue()).decode()


APP = f"""
INSERT INTO hosted_zone (domain_name) VALUES ('shop.example.com');
INSERT INTO alias_target (load_balancer_id)
    SELECT id FROM load_balancer WHERE load_balancer_name = 'shop';
INSERT INTO resource_record_set (name, record_type, parent_hosted_zone_id, alias_target_id)
    SELECT 'www.shop.example.com', 'A', z.id, a.id FROM hosted_zone z, alias_target a
    WHERE z.domain_name = 'shop.example.com';
INSERT INTO bucket (name) VALUES ('shop-assets');
INSERT INTO distribution (caller_reference, comment, default_cache_behavior, origins,
        alternate_domain_names, custom_ssl_certificate_id)
    SELECT 'shop-cdn', 'shop assets', '{json.dumps(BEHAVIOR)}', '{json.dumps([ORIGIN])}',
        ARRAY['cdn.shop.example.com'], id
    FROM certificate WHERE domain_name = 'shop.example.com';
INSERT INTO topic (name) VALUES ('shop-orders');
INSERT INTO queue (name) VALUES ('shop-orders');
INSERT INTO dynamo_table (table_name, table_class, throughput, primary_key)
    VALUES ('shop-orders', 'STANDARD', '"PAY_PER_REQUEST"', '{{"orderId": "S", "at": "N"}}');
INSERT INTO secret (name, description, value) VALUES ('shop-db', 'the database', 'staging-pw');
INSERT INTO iam_role (role_name, assume_role_policy_document)
    VALUES ('shop-fn', '{json.dumps(LAMBDA_TRUST)}');
INSERT INTO lambda_function (name, zip_b64, handler, runtime, role_name, subnets, memory_size)
    SELECT 'shop-fn', '{function_zip()}', 'index.handler', 'python3.9', 'shop-fn',
        ARRAY(SELECT subnet_id FROM subnet WHERE cidr_block IN ('10.60.1.0/24', '10.60.2.0/24')),
        256;
INSERT INTO lambda_function_security_groups (lambda_function_id, security_group_id)
    SELECT f.id, g.id FROM lambda_function f, security_group g
    WHERE f.name = 'shop-fn' AND g.group_name = 'shop-app';
INSERT INTO api (name, protocol_type) VALUES ('shop-api', 'HTTP');
INSERT INTO graphql_api (name, authentication_type) VALUES ('shop-graph', 'API_KEY');
"""
SUBSCRIBE = """
INSERT INTO subscription (endpoint, protocol, topic)
    SELECT q.arn, 'sqs', t.arn FROM queue q, topic t
    WHERE q.name = 'shop-orders' AND t.name = 'shop-orders';
"""

TEARDOWN = """
DELETE FROM subscription;
DELETE FROM topic WHERE name = 'shop-orders';
DELETE FROM queue WHERE name = 'shop-orders';
DELETE FROM graphql_api WHERE name = 'shop-graph';
DELETE FROM api WHERE name = 'shop-api';
DELETE FROM lambda_function_security_groups;
DELETE FROM lambda_function WHERE name = 'shop-fn';
DELETE FROM iam_role WHERE role_name = 'shop-fn';
DELETE FROM secret WHERE name = 'shop-db';
DELETE FROM dynamo_table WHERE table_name = 'shop-orders';
DELETE FROM distribution WHERE caller_reference = 'shop-cdn';
DELETE FROM bucket WHERE name = 'shop-assets';
DELETE FROM resource_record_set WHERE name = 'www.shop.example.com.';
DELETE FROM alias_target;
DELETE FROM hosted_zone WHERE domain_name IN ('shop.example.com', 'shop.example.com.');
DELETE FROM registered_instance;
DELETE FROM listener;
DELETE FROM load_balancer WHERE load_balancer_name = 'shop';
DELETE FROM target_group WHERE target_group_name = 'shop-web';
DELETE FROM instance WHERE tags ->> 'Name' LIKE 'shop-%';
DELETE FROM nat_gateway WHERE tags ->> 'Name' = 'shop';
DELETE FROM elastic_ip WHERE tags ->> 'Name' = 'shop-nat';
DELETE FROM route_table WHERE tags ->> 'Name' = 'shop-public';
DELETE FROM internet_gateway WHERE tags ->> 'Name' = 'shop';
DELETE FROM security_group  -- the VPC's default group too: AWS deletes it with the VPC
    WHERE vpc_id = (SELECT id FROM vpc WHERE cidr_block = '10.60.0.0/16');
DELETE FROM subnet WHERE cidr_block IN ('10.60.1.0/24', '10.60.2.0/24');
DELETE FROM vpc WHERE cidr_block = '10.60.0.0/16';
DELETE FROM iam_role WHERE role_name = 'shop-app';
"""


class Account:
    """One environment database and its AWS account (a moto server)."""

    def __init__(self, iasql: RunningServer, alias: str, moto: MotoServer) -> None:
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
        assert row is not None
        self.url = str(row[0])
        self.moto = moto
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(self.conn, moto)
        only_regions(self.conn, REGION)
        modules = (*MODULES, *APP_MODULES)
        self.conn.execute(f"SELECT * FROM iasql_install({', '.join(map(repr, modules))})")

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.moto.endpoint)

    def import_certificate(self) -> str:
        """shop.example.com's certificate, imported through the aws_acm RPC."""
        pem, key = make_certificate("shop.example.com")
        found = self.conn.execute(
            "SELECT arn FROM certificate_import(%s, %s, 'us-east-1')", (pem, key)
        ).fetchall()
        assert len(found) == 1
        return str(found[0][0])

    def shop(self) -> dict[str, Any]:
        """The stack as this account's cloud has it."""
        ec2 = self.client("ec2")
        [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.60.0.0/16"]}])[
            "Vpcs"
        ]
        vpc_filter = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
        subnets = {s["CidrBlock"]: s for s in ec2.describe_subnets(Filters=vpc_filter)["Subnets"]}
        gateways = ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}]
        )["InternetGateways"]
        tables = ec2.describe_route_tables(Filters=vpc_filter)["RouteTables"]
        nats = [
            n
            for n in ec2.describe_nat_gateways(Filter=vpc_filter)["NatGateways"]
            if n["State"] != "deleted"
        ]
        groups = {
            g["GroupName"]: g
            for g in ec2.describe_security_groups(Filters=vpc_filter)["SecurityGroups"]
        }
        return {
            "vpc": vpc,
            "subnets": subnets,
            "gateways": gateways,
            "tables": tables,
            "nats": nats,
            "groups": groups,
        }

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def accounts(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[Account, Account]]:
    tag = secrets.token_hex(3)
    staging = Account(iasql, f"stack_staging_{tag}", moto_accounts())
    prod = Account(iasql, f"stack_prod_{tag}", moto_accounts())
    try:
        yield staging, prod
    finally:
        staging.close()
        prod.close()


def promote(source: Account, target: Account, transaction: str) -> None:
    """`iasql promote --commit` of one transaction, as a person would run it."""
    done = subprocess.run(
        [
            *IASQL,
            "promote",
            "--from",
            source.url,
            "--to",
            target.url,
            *("--transaction", transaction),
            "--commit",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def commit(account: Account) -> list[tuple[Any, ...]]:
    account.notices.clear()
    applied = rows(account.conn, "SELECT action, table_name FROM iasql_commit()")
    assert not any("fail" in n for n in account.notices), account.notices
    assert rows(account.conn, "SELECT * FROM iasql_preview()") == []
    return applied


def check_network(account: Account) -> None:
    shop = account.shop()
    vpc_id = shop["vpc"]["VpcId"]
    subnets = shop["subnets"]
    assert {c: s["AvailabilityZone"] for c, s in subnets.items()} == {
        "10.60.1.0/24": "us-east-1a",
        "10.60.2.0/24": "us-east-1b",
    }
    [gateway] = shop["gateways"]
    [public] = [
        t for t in shop["tables"] if {"Key": "Name", "Value": "shop-public"} in t.get("Tags", [])
    ]
    default = next(r for r in public["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
    assert default["GatewayId"] == gateway["InternetGatewayId"]
    associated = {a.get("SubnetId") for a in public["Associations"]}
    assert associated == {subnets["10.60.1.0/24"]["SubnetId"], subnets["10.60.2.0/24"]["SubnetId"]}
    [nat] = shop["nats"]
    assert nat["SubnetId"] == subnets["10.60.1.0/24"]["SubnetId"]
    [address] = account.client("ec2").describe_addresses(
        Filters=[{"Name": "tag:Name", "Values": ["shop-nat"]}]
    )["Addresses"]
    assert nat["NatGatewayAddresses"][0]["AllocationId"] == address["AllocationId"]
    groups = shop["groups"]
    [rule] = [p for p in groups["shop-app"]["IpPermissions"] if p.get("FromPort") == 80]
    assert rule["UserIdGroupPairs"][0]["GroupId"] == groups["shop-lb"]["GroupId"]
    role = account.client("iam").get_role(RoleName="shop-app")["Role"]
    assert role["Description"] == "the shop instances"
    profile = account.client("iam").get_instance_profile(InstanceProfileName="shop-app")
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == ["shop-app"]
    assert rows(account.conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.60.0.0/16'") == [
        (vpc_id,)
    ]


def check_compute(account: Account, certificate: str) -> None:
    shop = account.shop()
    subnet_ids = {s["SubnetId"] for s in shop["subnets"].values()}
    ec2, elb = account.client("ec2"), account.client("elbv2")
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": ["shop-1", "shop-2"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert {i["SubnetId"] for i in instances} == subnet_ids and len(instances) == 2
    app_group = shop["groups"]["shop-app"]["GroupId"]
    for instance in instances:
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [app_group]
        assert instance["IamInstanceProfile"]["Arn"].endswith("/shop-app")
    [balancer] = elb.describe_load_balancers(Names=["shop"])["LoadBalancers"]
    assert {z["SubnetId"] for z in balancer["AvailabilityZones"]} == subnet_ids
    assert balancer["SecurityGroups"] == [shop["groups"]["shop-lb"]["GroupId"]]
    [listener] = elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    assert (listener["Port"], listener["Protocol"]) == (443, "HTTPS")
    assert listener["Certificates"][0]["CertificateArn"] == certificate
    [group] = elb.describe_target_groups(Names=["shop-web"])["TargetGroups"]
    assert listener["DefaultActions"][0]["TargetGroupArn"] == group["TargetGroupArn"]
    health = elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])
    targets = {(t["Target"]["Id"], t["Target"]["Port"]) for t in health["TargetHealthDescriptions"]}
    assert targets == {(i["InstanceId"], 80) for i in instances}


def check_app(account: Account, certificate: str) -> None:
    """The application tier as this account's cloud has it, wired to its own resources."""
    shop = account.shop()
    elb = account.client("elbv2")
    [balancer] = elb.describe_load_balancers(Names=["shop"])["LoadBalancers"]
    route53 = account.client("route53")
    [zone] = [
        z for z in route53.list_hosted_zones()["HostedZones"] if z["Name"] == "shop.example.com."
    ]
    records = route53.list_resource_record_sets(HostedZoneId=zone["Id"])["ResourceRecordSets"]
    [www] = [r for r in records if r["Name"] == "www.shop.example.com."]
    assert balancer["DNSName"].lower() in www["AliasTarget"]["DNSName"].lower()
    [cdn] = account.client("cloudfront").list_distributions()["DistributionList"]["Items"]
    assert cdn["Aliases"]["Items"] == ["cdn.shop.example.com"]
    assert cdn["ViewerCertificate"]["ACMCertificateArn"] == certificate
    assert cdn["Origins"]["Items"][0]["DomainName"] == "shop-assets.s3.amazonaws.com"
    account.client("s3").head_bucket(Bucket="shop-assets")
    sns, sqs = account.client("sns"), account.client("sqs")
    [topic] = [
        t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(":shop-orders")
    ]
    queue_url = sqs.get_queue_url(QueueName="shop-orders")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("sqs", queue_arn)
    table = account.client("dynamodb").describe_table(TableName="shop-orders")["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["orderId", "at"]
    assert account.client("secretsmanager").describe_secret(SecretId="shop-db")["Description"] == (
        "the database"
    )
    function = account.client("lambda").get_function(FunctionName="shop-fn")["Configuration"]
    assert set(function["VpcConfig"]["SubnetIds"]) == {
        s["SubnetId"] for s in shop["subnets"].values()
    }
    assert function["VpcConfig"]["SecurityGroupIds"] == [shop["groups"]["shop-app"]["GroupId"]]
    assert function["Role"].endswith(":role/shop-fn") and function["MemorySize"] == 256
    assert [a["Name"] for a in account.client("apigatewayv2").get_apis()["Items"]] == ["shop-api"]
    graphs = account.client("appsync").list_graphql_apis()["graphqlApis"]
    assert [g["name"] for g in graphs] == ["shop-graph"]


def test_stack_in_staging_promoted_to_prod_then_deleted(accounts: Any) -> None:
    staging, prod = accounts
    # Unrelated rows in prod first, so that no serial id lines up with staging's.
    prod.conn.execute("SELECT * FROM iasql_begin()")
    prod.conn.execute("INSERT INTO vpc (cidr_block) VALUES ('10.70.0.0/16'), ('10.71.0.0/16')")
    commit(prod)

    # 1. The network, in one commit: every create is ordered by the foreign keys.
    staging.conn.execute("SELECT * FROM iasql_begin()")
    staging.conn.execute(NETWORK)
    planned = rows(staging.conn, "SELECT action, count(*) FROM iasql_preview() GROUP BY 1")
    assert planned == [("create", 15)]
    applied = commit(staging)
    assert len(applied) == 15
    check_network(staging)

    # 2. The compute tier, behind an HTTPS listener on a certificate imported by RPC.
    staging_certificate = staging.import_certificate()
    staging.conn.execute("SELECT * FROM iasql_begin()")
    staging.conn.execute(COMPUTE)
    applied = commit(staging)
    assert sorted({t for _a, t in applied}) == [
        "instance",
        "instance_security_groups",
        "listener",
        "load_balancer",
        "load_balancer_security_groups",
        "registered_instance",
        "target_group",
    ]
    check_compute(staging, staging_certificate)

    # 3. The application tier, then the subscription that needs the topic's ARN.
    staging.conn.execute("SELECT * FROM iasql_begin()")
    staging.conn.execute(APP)
    applied = commit(staging)
    assert sorted({t for _a, t in applied}) == [
        "alias_target",
        "api",
        "bucket",
        "distribution",
        "dynamo_table",
        "graphql_api",
        "hosted_zone",
        "iam_role",
        "lambda_function",
        "lambda_function_security_groups",
        "queue",
        "resource_record_set",
        "secret",
        "topic",
    ]
    staging.conn.execute("SELECT * FROM iasql_begin()")
    staging.conn.execute(SUBSCRIBE)
    commit(staging)
    check_app(staging, staging_certificate)
    secret = staging.client("secretsmanager").get_secret_value(SecretId="shop-db")
    assert secret["SecretString"] == "staging-pw"

    # 4. The transactions replayed in prod, oldest first, with no edit. Prod's certificate
    # is its own (an RPC's effect is not replayed: it is imported there too).
    transactions = [
        t
        for (t,) in rows(
            staging.conn,
            "SELECT transaction_id FROM iasql_transaction WHERE outcome = 'committed'"
            " AND EXISTS (SELECT 1 FROM iasql_audit_log a WHERE a.transaction_id ="
            " iasql_transaction.transaction_id"
            " AND a.table_name IN ('vpc', 'instance', 'hosted_zone', 'subscription'))"
            " ORDER BY opened_at",
        )
    ]
    assert len(transactions) == 4
    prod_certificate = prod.import_certificate()
    for transaction in transactions:
        promote(staging, prod, transaction)
    check_network(prod)
    check_compute(prod, prod_certificate)
    check_app(prod, prod_certificate)
    # A secret's value never leaves staging: prod's secret is made empty, for prod to fill.
    with pytest.raises(prod.client("secretsmanager").exceptions.ResourceNotFoundException):
        prod.client("secretsmanager").get_secret_value(SecretId="shop-db")
    assert prod.shop()["vpc"]["VpcId"] != staging.shop()["vpc"]["VpcId"]
    assert rows(prod.conn, "SELECT * FROM iasql_preview()") == []

    # 5. Everything deleted in one transaction; the commit orders the deletes.
    staging.conn.execute("SELECT * FROM iasql_begin()")
    staging.conn.execute(TEARDOWN)
    commit(staging)
    ec2 = staging.client("ec2")
    assert (
        ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.60.0.0/16"]}])["Vpcs"]
        == []
    )
    assert staging.client("elbv2").describe_load_balancers()["LoadBalancers"] == []
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}]
    )["Reservations"]
    assert running == []
    with pytest.raises(staging.client("iam").exceptions.NoSuchEntityException):
        staging.client("iam").get_role(RoleName="shop-app")
    assert staging.client("lambda").list_functions()["Functions"] == []
    assert staging.client("sns").list_topics()["Topics"] == []
    assert staging.client("dynamodb").list_tables()["TableNames"] == []
    assert staging.client("apigatewayv2").get_apis()["Items"] == []
    assert (
        staging.client("cloudfront").list_distributions()["DistributionList"].get("Items", []) == []
    )
    zones = staging.client("route53").list_hosted_zones()["HostedZones"]
    assert [z["Name"] for z in zones] == []
    assert rows(staging.conn, "SELECT * FROM iasql_drift()") == []
