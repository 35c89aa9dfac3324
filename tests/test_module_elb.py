"""aws_elb (with aws_vpc, aws_security_group and aws_acm): load balancers, target groups,
listeners and load balancer security groups made with boto3 and imported at install; each
table's create, in-place update, replace and delete through begin / preview / commit; an HTTPS
listener with an imported certificate. Every cloud effect is read back with boto3."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_elb import (
    LOAD_BALANCER,
    LOAD_BALANCER_SECURITY_GROUPS,
    TARGET_GROUP,
    _listener_record,
    attribute_list,
    attribute_pairs,
    normalize_attributes,
    normalize_list,
    region_of,
    visible_groups,
)
from modules.spec import TOKEN
from tests.support.aws import REGION, make_certificate, mapper, only_one_region
from tests.support.env import add_credentials, commit, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

ASSIGNED = "iasql:assigned-security-groups"

# --- helpers -------------------------------------------------------------------------------


def test_normalisation() -> None:
    assert normalize_attributes(None) is None
    assert normalize_attributes('{"b": true, "a": 60, "c": null}') == {
        "a": "60",
        "b": "true",
        "c": "",
    }
    assert list(normalize_attributes({"z": "1", "a": "2"}) or {}) == ["a", "z"]
    # IaSQL's form, AWS's own: the same attributes compare equal whatever the form and order.
    iasql = [{"Key": "z", "Value": "1"}, {"Key": "a", "Value": "2"}]
    assert normalize_attributes(iasql) == normalize_attributes({"a": "2", "z": "1"})
    assert attribute_list(attribute_pairs(json.dumps(iasql))) == sorted(iasql, key=str)
    # A malformed value compares as itself (the table's trigger refuses it at the statement).
    assert normalize_attributes([{"Key": "a"}]) == [{"Key": "a"}]
    for malformed in ('"x"', [1], [{"Key": "a"}], [{"Key": "a", "Value": []}], {"Key": "a"}):
        with pytest.raises(ValueError):
            attribute_pairs(malformed)
    with pytest.raises(ValueError, match="twice"):
        attribute_pairs([{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}])
    assert normalize_list(["subnet-b", "subnet-a"]) == ["subnet-a", "subnet-b"]
    assert normalize_list([]) is None and normalize_list(None) is None
    arn = "arn:aws:elasticloadbalancing:eu-west-2:123456789012:loadbalancer/app/x/1"
    assert region_of(arn) == "eu-west-2"


def test_visible_groups() -> None:
    lb = {"SecurityGroups": ["sg-default"]}
    marker = [{"Key": ASSIGNED, "Value": "sg-default"}]
    assert visible_groups(lb, marker) == []  # AWS's own choice: no rows
    assert visible_groups(lb, None) == ["sg-default"]  # imported: we can't tell, so shown
    assert visible_groups({"SecurityGroups": ["sg-default", "sg-web"]}, marker) == [
        "sg-default",
        "sg-web",
    ]
    assert visible_groups({}, None) == []


def test_listener_records() -> None:
    base = {"ListenerArn": "l", "LoadBalancerArn": "lb", "Port": 80, "Protocol": "HTTP"}
    forward = {**base, "DefaultActions": [{"Type": "forward", "TargetGroupArn": "tg"}]}
    assert _listener_record(forward) == {
        "listener_arn": "l",
        "port": 80,
        "protocol": "HTTP",
        "action_type": "forward",
        "ssl_policy": None,
        "load_balancer_id": "lb",
        "target_group_id": "tg",
        "certificate_id": None,
    }
    weighted = {"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": "t1"}]}}
    assert _listener_record({**base, "DefaultActions": [weighted]})["target_group_id"] == "t1"
    two = {"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": "t1"}] * 2}}
    # Actions the table has no columns for are left out rather than shown wrongly.
    assert _listener_record({**base, "DefaultActions": [two]}) is None
    assert _listener_record({**base, "DefaultActions": [{"Type": "redirect"}]}) is None
    acm = "arn:aws:acm:us-east-1:123456789012:certificate/"
    certificates = [{"CertificateArn": acm + "2"}, {"CertificateArn": acm + "1", "IsDefault": True}]
    assert (
        _listener_record({**forward, "Certificates": certificates})["certificate_id"] == acm + "1"
    )
    iam = [{"CertificateArn": "arn:aws:iam::123456789012:server-certificate/old"}]
    assert _listener_record({**forward, "Certificates": iam})["certificate_id"] is None


# --- cloud set-up --------------------------------------------------------------------------


class Aws:
    """boto3 clients on one moto account, and the network the tests build on."""

    def __init__(self, moto: MotoServer) -> None:
        options = {"region_name": REGION, "endpoint_url": moto.endpoint}
        self.moto = moto
        self.ec2 = boto3.client("ec2", **options)
        self.elb = boto3.client("elbv2", **options)
        self.acm = boto3.client("acm", **options)
        self.vpc = self.ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
        self.subnets = [
            self.ec2.create_subnet(
                VpcId=self.vpc, CidrBlock=f"10.8.{i}.0/24", AvailabilityZone=f"{REGION}{zone}"
            )["Subnet"]["SubnetId"]
            for i, zone in enumerate("abc", start=1)
        ]
        self.groups = {
            name: self.ec2.create_security_group(GroupName=name, Description=name, VpcId=self.vpc)[
                "GroupId"
            ]
            for name in ("web", "admin")
        }

    def balancer(self, name: str) -> dict[str, Any]:
        found = self.elb.describe_load_balancers(Names=[name])["LoadBalancers"]
        return dict(found[0])

    def target_group(self, name: str) -> dict[str, Any]:
        return dict(self.elb.describe_target_groups(Names=[name])["TargetGroups"][0])

    def listeners(self, name: str) -> dict[int, dict[str, Any]]:
        arn = self.balancer(name)["LoadBalancerArn"]
        found = self.elb.describe_listeners(LoadBalancerArn=arn)["Listeners"]
        return {listener["Port"]: listener for listener in found}


def test_security_group_rows_leave_aws_assigned_groups_alone(moto: MotoServer) -> None:
    """AWS gives an application load balancer made without groups its VPC's default group
    (moto does not): the mapper marks those at create, hides them as rows, drops them when a
    row names a group, and gives them back when the last row goes."""
    aws = Aws(moto)
    default = aws.ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [aws.vpc]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"][0]["GroupId"]
    arn = aws.elb.create_load_balancer(
        Name="assigned",
        Subnets=aws.subnets[:2],
        SecurityGroups=[default],
        Tags=[{"Key": ASSIGNED, "Value": default}],
    )["LoadBalancers"][0]["LoadBalancerArn"]
    joins = mapper(LOAD_BALANCER_SECURITY_GROUPS)
    web = {"load_balancer_id": arn, "security_group_id": aws.groups["web"]}
    admin = {"load_balancer_id": arn, "security_group_id": aws.groups["admin"]}

    def groups() -> list[str]:
        return sorted(aws.balancer("assigned")["SecurityGroups"])

    def tags() -> list[str]:
        found = aws.elb.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]["Tags"]
        return [t["Key"] for t in found]

    async def scenario(cloud: Any) -> None:  # one client for all the steps: they cost seconds
        async def ours() -> list[str]:
            records = await joins.read(cloud, REGION)
            return sorted(r["security_group_id"] for r in records if r["load_balancer_id"] == arn)

        assert await ours() == []
        await joins.create(cloud, web)
        assert groups() == [aws.groups["web"]] and ASSIGNED not in tags()
        await joins.create(cloud, admin)
        assert groups() == sorted(aws.groups.values()) == await ours()
        await joins.delete(cloud, web)
        assert groups() == [aws.groups["admin"]]
        await joins.delete(cloud, admin)
        assert groups() == [default] and ASSIGNED in tags() and await ours() == []
        await joins.delete(cloud, admin)  # already gone: nothing to do

    in_cloud(moto, scenario)
    aws.elb.delete_load_balancer(LoadBalancerArn=arn)


def test_mapper_defaults_and_concurrent_group_changes(moto: MotoServer) -> None:
    aws = Aws(moto)
    balancers, joins = mapper(LOAD_BALANCER), mapper(LOAD_BALANCER_SECURITY_GROUPS)
    wanted = {
        "load_balancer_name": "no-subnets",
        "scheme": "internal",
        "load_balancer_type": "application",
        "ip_address_type": "ipv4",
        "subnets": None,
        "attributes": None,
        "region": REGION,
        "vpc": aws.vpc,
        TOKEN: "tok-1",
    }
    created = in_cloud(moto, lambda cloud: balancers.create(cloud, wanted))
    # No subnets named: one per zone of the VPC.
    assert created["subnets"] == sorted(aws.subnets)
    assert created["availability_zones"] == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert (created["scheme"], created["state"], created["vpc"]) == ("internal", "active", aws.vpc)
    [read] = [
        r
        for r in in_cloud(moto, lambda cloud: balancers.read(cloud, REGION))
        if r["load_balancer_name"] == "no-subnets"
    ]
    assert read[TOKEN] == "tok-1"  # a create cut short can be found again

    # Two rows of one load balancer at once: neither set_security_groups loses the other.
    arn = created["load_balancer_arn"]
    changes = [{"load_balancer_id": arn, "security_group_id": g} for g in aws.groups.values()]

    async def both(cloud: Any) -> None:
        await asyncio.gather(*(joins.create(cloud, r) for r in changes))

    in_cloud(moto, both)
    assert sorted(aws.balancer("no-subnets")["SecurityGroups"]) == sorted(aws.groups.values())

    in_cloud(moto, lambda cloud: balancers.delete(cloud, created))
    names = [lb["LoadBalancerName"] for lb in aws.elb.describe_load_balancers()["LoadBalancers"]]
    assert "no-subnets" not in names
    in_cloud(moto, lambda cloud: balancers.delete(cloud, created))  # already gone: fine


def test_target_group_mapper_without_a_token(moto: MotoServer) -> None:
    """A create that undoes a delete has no token: AWS takes no empty tag list."""
    groups = mapper(TARGET_GROUP)
    wanted = {
        "target_group_name": "fn-tg",
        "target_type": "lambda",
        "health_check_enabled": True,
        "health_check_interval_seconds": 60,
        "region": REGION,
    }
    created = in_cloud(moto, lambda cloud: groups.create(cloud, wanted))
    assert (created["target_type"], created["vpc"], created["protocol"]) == ("lambda", None, None)
    assert created["health_check_interval_seconds"] == 60
    assert TOKEN not in created
    changed = {**created, "health_check_interval_seconds": 90, "health_check_path": "/ping"}
    updated = in_cloud(moto, lambda cloud: groups.update(cloud, changed, created))
    assert updated["target_group_arn"] == created["target_group_arn"]
    found = boto3.client("elbv2", region_name=REGION, endpoint_url=moto.endpoint)
    [group] = found.describe_target_groups(Names=["fn-tg"])["TargetGroups"]
    assert (group["HealthCheckIntervalSeconds"], group["HealthCheckPath"]) == (90, "/ping")
    in_cloud(moto, lambda cloud: groups.delete(cloud, updated))
    assert all(
        g["TargetGroupName"] != "fn-tg" for g in found.describe_target_groups()["TargetGroups"]
    )


def test_target_group_mapper_defaults_to_the_default_vpc(moto: MotoServer) -> None:
    """A row with no VPC (when the vpc table has no default VPC for the trigger to name):
    the region's default VPC, as in IaSQL."""
    groups = mapper(TARGET_GROUP)
    wanted = {"target_group_name": "no-vpc", "target_type": "ip", "protocol": "HTTP"}
    wanted |= {"port": 80, "vpc": None, "region": REGION}
    created = in_cloud(moto, lambda cloud: groups.create(cloud, wanted))
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.endpoint)
    [default] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert created["vpc"] == default["VpcId"]
    in_cloud(moto, lambda cloud: groups.delete(cloud, created))


# --- through SQL ---------------------------------------------------------------------------


@pytest.fixture
def elb_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Aws]:
    """An environment on its own moto account where boto3 made a target group, a load
    balancer with a security group and an HTTP listener before aws_elb was installed."""
    aws = Aws(moto_accounts())
    group = aws.elb.create_target_group(
        Name="pre-tg", Protocol="HTTP", Port=80, VpcId=aws.vpc, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    lb = aws.elb.create_load_balancer(
        Name="pre-lb", Subnets=aws.subnets[:2], SecurityGroups=[aws.groups["web"]]
    )["LoadBalancers"][0]["LoadBalancerArn"]
    aws.elb.create_listener(
        LoadBalancerArn=lb,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group}],
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, aws.moto)
    envdb.execute("SELECT * FROM iasql_install('aws_acm')")  # cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_elb')")
    return envdb, aws


def check_import(conn: psycopg.Connection, aws: Aws) -> None:
    """What boto3 made before install is in the tables, and previews as nothing to do."""
    installed = {r[0] for r in rows(conn, "SELECT module_name FROM iasql_modules_installed()")}
    assert {"aws_elb", "aws_acm", "aws_vpc", "aws_security_group"} <= installed
    pre_tg, pre_lb = aws.target_group("pre-tg"), aws.balancer("pre-lb")
    assert rows(
        conn,
        "SELECT target_group_arn, target_type, protocol, port, health_check_path,"
        " health_check_port, (SELECT vpc_id FROM vpc WHERE vpc.id = target_group.vpc)"
        " FROM target_group",
    ) == [(pre_tg["TargetGroupArn"], "instance", "HTTP", 80, "/", "traffic-port", aws.vpc)]
    assert rows(
        conn,
        "SELECT load_balancer_arn, dns_name, scheme, load_balancer_type, state, ip_address_type,"
        " subnets, availability_zones, (SELECT vpc_id FROM vpc WHERE vpc.id = load_balancer.vpc)"
        " FROM load_balancer",
    ) == [
        (
            pre_lb["LoadBalancerArn"],
            pre_lb["DNSName"],
            "internet-facing",
            "application",
            "active",
            "ipv4",
            sorted(aws.subnets[:2]),
            ["us-east-1a", "us-east-1b"],
            aws.vpc,
        )
    ]
    # Attributes in IaSQL's form, AWS's: an array of {"Key": ..., "Value": ...}, sorted by key.
    attributes = rows(conn, "SELECT attributes FROM load_balancer")[0][0]
    assert {"Key": "deletion_protection.enabled", "Value": "false"} in attributes
    assert [a["Key"] for a in attributes] == sorted(a["Key"] for a in attributes)
    assert rows(
        conn,
        "SELECT group_id FROM load_balancer_security_groups j"
        " JOIN security_group g ON g.id = j.security_group_id",
    ) == [(aws.groups["web"],)]
    assert rows(
        conn,
        "SELECT l.port, l.protocol, l.action_type, t.target_group_name, b.load_balancer_name"
        " FROM listener l JOIN target_group t ON t.id = l.target_group_id"
        " JOIN load_balancer b ON b.id = l.load_balancer_id",
    ) == [(80, "HTTP", "forward", "pre-tg", "pre-lb")]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def preview(conn: psycopg.Connection) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The preview by table: (action, changes) pairs."""
    planned: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for table, action, changes in rows(
        conn, "SELECT table_name, action, changes FROM iasql_preview() ORDER BY action"
    ):
        planned.setdefault(table, []).append((action, changes))
    return planned


STACK = """  -- one statement at a time: psycopg sends parameters
INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)
    SELECT 'web-tg', 'instance', 'HTTP', 80, id FROM vpc WHERE vpc_id = %(vpc)s;
INSERT INTO load_balancer
    (load_balancer_name, scheme, load_balancer_type, ip_address_type, subnets, vpc, attributes)
    SELECT 'web-lb', 'internet-facing', 'application', 'ipv4', %(subnets)s, id,
        '{"idle_timeout.timeout_seconds": 90}'
    FROM vpc WHERE vpc_id = %(vpc)s;
INSERT INTO load_balancer_security_groups (load_balancer_id, security_group_id)
    SELECT b.id, g.id FROM load_balancer b, security_group g
    WHERE b.load_balancer_name = 'web-lb' AND g.group_name = 'web';
INSERT INTO listener (load_balancer_id, target_group_id, port, protocol)
    SELECT b.id, t.id, 80, 'HTTP' FROM load_balancer b, target_group t
    WHERE b.load_balancer_name = 'web-lb' AND t.target_group_name = 'web-tg';
"""


def life_cycle(conn: psycopg.Connection, aws: Aws) -> None:
    """Each table's create, update in place, replace and delete."""
    s1, s2, s3 = aws.subnets

    # Create all four kinds in one commit, in dependency order.
    conn.execute("SELECT * FROM iasql_begin()")
    for statement in STACK.split(";")[:-1]:
        conn.execute(statement, {"vpc": aws.vpc, "subnets": [s1, s2]})
    # The attributes, written as a JSON object of values, are held in IaSQL's form.
    assert rows(
        conn, "SELECT attributes FROM load_balancer WHERE load_balancer_name = 'web-lb'"
    ) == [([{"Key": "idle_timeout.timeout_seconds", "Value": "90"}],)]
    planned = preview(conn)
    assert {t: [a for a, _ in ops] for t, ops in planned.items()} == {
        "target_group": ["create"],
        "load_balancer": ["create"],
        "load_balancer_security_groups": ["create"],
        "listener": ["create"],
    }
    assert planned["target_group"][0][1]["port"] == {"old": None, "new": 80}
    assert planned["load_balancer"][0][1]["subnets"] == {"old": None, "new": [s1, s2]}
    tg_row = rows(conn, "SELECT id FROM target_group WHERE target_group_name = 'web-tg'")[0][0]
    assert planned["listener"][0][1]["target_group_id"] == {
        "old": None,
        "new": f"(new target_group {tg_row})",
    }
    commit(conn)
    lb = aws.balancer("web-lb")
    group = aws.target_group("web-tg")
    assert lb["SecurityGroups"] == [aws.groups["web"]]
    assert sorted(z["SubnetId"] for z in lb["AvailabilityZones"]) == sorted([s1, s2])
    attributes = aws.elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])
    assert {"Key": "idle_timeout.timeout_seconds", "Value": "90"} in attributes["Attributes"]
    [listener] = aws.listeners("web-lb").values()
    assert listener["DefaultActions"][0]["TargetGroupArn"] == group["TargetGroupArn"]
    assert rows(
        conn,
        "SELECT load_balancer_arn, dns_name FROM load_balancer WHERE id = (SELECT id FROM load_balancer WHERE load_balancer_name = 'web-lb')",
    ) == [(lb["LoadBalancerArn"], lb["DNSName"])]
    assert rows(
        conn,
        "SELECT listener_arn FROM listener WHERE port = 80 AND load_balancer_id = (SELECT id FROM load_balancer WHERE load_balancer_name = 'web-lb')",
    ) == [(listener["ListenerArn"],)]
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 4 and not any("arn:aws" in sql for sql in replay)
    [listener_sql] = [sql for sql in replay if sql.startswith('INSERT INTO "listener"')]
    assert """"load_balancer_name" = 'web-lb'""" in listener_sql
    assert """"target_group_name" = 'web-tg'""" in listener_sql
    # The load balancer's subnets, cloud ids in the row, are sub-selects by natural key that
    # find the same subnets here (and prod's own subnets there).
    [balancer_sql] = [sql for sql in replay if sql.startswith('INSERT INTO "load_balancer"')]
    assert "subnet-" not in balancer_sql
    subnets_sql = balancer_sql[balancer_sql.index("ARRAY[(SELECT") :].split("::varchar[]")[0]
    assert sorted(rows(conn, f"SELECT unnest({subnets_sql}::varchar[])")) == sorted([(s1,), (s2,)])
    # AWS's health check defaults came back with the sync that ends the commit.
    assert rows(
        conn,
        "SELECT health_check_path, health_check_interval_seconds FROM target_group"
        " WHERE target_group_name = 'web-tg'",
    ) == [("/", 30)]

    # In place: health checks, subnets, attributes, IP address type, a listener's port, and a
    # second security group (the full list is set).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE target_group SET health_check_path = '/health', health_check_interval_seconds = 15"
        " WHERE target_group_name = 'web-tg'"
    )
    conn.execute(
        "UPDATE load_balancer SET subnets = %s, ip_address_type = 'dualstack',"
        """ attributes = '[{"Key": "deletion_protection.enabled", "Value": "true"}]'"""
        " WHERE load_balancer_name = 'web-lb'",
        ([s3, s1],),
    )
    conn.execute(
        "UPDATE listener SET port = 8080 WHERE load_balancer_id ="
        " (SELECT id FROM load_balancer WHERE load_balancer_name = 'web-lb')"
    )
    conn.execute(
        "INSERT INTO load_balancer_security_groups (load_balancer_id, security_group_id)"
        " SELECT b.id, g.id FROM load_balancer b, security_group g"
        " WHERE b.load_balancer_name = 'web-lb' AND g.group_name = 'admin'"
    )
    planned = preview(conn)
    assert planned["target_group"] == [
        (
            "update",
            {
                "health_check_path": {"old": "/", "new": "/health"},
                "health_check_interval_seconds": {"old": 30, "new": 15},
            },
        )
    ]
    [(action, changes)] = planned["load_balancer"]
    assert action == "update" and set(changes) == {"subnets", "ip_address_type", "attributes"}
    assert changes["ip_address_type"] == {"old": "ipv4", "new": "dualstack"}
    assert planned["listener"] == [("update", {"port": {"old": 80, "new": 8080}})]
    assert [a for a, _ in planned["load_balancer_security_groups"]] == ["create"]
    commit(conn)
    updated_group = aws.target_group("web-tg")
    assert updated_group["TargetGroupArn"] == group["TargetGroupArn"]
    assert (updated_group["HealthCheckPath"], updated_group["HealthCheckIntervalSeconds"]) == (
        "/health",
        15,
    )
    updated = aws.balancer("web-lb")
    assert updated["LoadBalancerArn"] == lb["LoadBalancerArn"]
    assert sorted(z["SubnetId"] for z in updated["AvailabilityZones"]) == sorted([s1, s3])
    assert updated["IpAddressType"] == "dualstack"
    assert sorted(updated["SecurityGroups"]) == sorted(aws.groups.values())
    attributes = aws.elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])
    assert {"Key": "deletion_protection.enabled", "Value": "true"} in attributes["Attributes"]
    assert list(aws.listeners("web-lb")) == [8080]
    assert aws.listeners("web-lb")[8080]["ListenerArn"] == listener["ListenerArn"]

    # A security group row goes: the rest of the list stays.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM load_balancer_security_groups WHERE security_group_id ="
        " (SELECT id FROM security_group WHERE group_id = %s) AND load_balancer_id ="
        " (SELECT id FROM load_balancer WHERE load_balancer_name = 'web-lb')",
        (aws.groups["web"],),
    )
    assert [a for a, _ in preview(conn)["load_balancer_security_groups"]] == ["delete"]
    commit(conn)
    assert aws.balancer("web-lb")["SecurityGroups"] == [aws.groups["admin"]]

    # A target group's port can't change in place: it is replaced, and the listener on it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE target_group SET port = 8081 WHERE target_group_name = 'web-tg'")
    planned = preview(conn)
    assert planned["target_group"] == [
        ("replace", {"port": {"old": 80, "new": 8081, "forces_replace": True}})
    ]
    assert [a for a, _ in planned["listener"]] == ["replace"]
    commit(conn)
    replaced = aws.target_group("web-tg")
    assert replaced["TargetGroupArn"] != group["TargetGroupArn"] and replaced["Port"] == 8081
    new_listener = aws.listeners("web-lb")[8080]
    assert new_listener["DefaultActions"][0]["TargetGroupArn"] == replaced["TargetGroupArn"]
    assert rows(
        conn, "SELECT target_group_arn FROM target_group WHERE target_group_name = 'web-tg'"
    ) == [(replaced["TargetGroupArn"],)]

    # A scheme can't change in place: the load balancer is replaced with its listener and its
    # security group rows.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE load_balancer SET scheme = 'internal' WHERE load_balancer_name = 'web-lb'")
    planned = preview(conn)
    assert planned["load_balancer"] == [
        (
            "replace",
            {"scheme": {"old": "internet-facing", "new": "internal", "forces_replace": True}},
        )
    ]
    assert [a for a, _ in planned["listener"]] == ["replace"]
    assert [a for a, _ in planned["load_balancer_security_groups"]] == ["replace"]
    commit(conn)
    internal = aws.balancer("web-lb")
    assert internal["LoadBalancerArn"] != lb["LoadBalancerArn"]
    assert internal["Scheme"] == "internal"
    assert internal["SecurityGroups"] == [aws.groups["admin"]]
    assert list(aws.listeners("web-lb")) == [8080]


def https_listener(conn: psycopg.Connection, aws: Aws) -> None:
    """An HTTPS listener on a certificate imported with the RPC; another certificate in place."""
    certificates = {}
    for domain in ("one.example.com", "two.example.com"):
        pem, key = make_certificate(domain)
        [(arn,)] = conn.execute("SELECT arn FROM certificate_import(%s, %s)", (pem, key)).fetchall()
        certificates[domain] = arn
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO listener (load_balancer_id, target_group_id, port, protocol, ssl_policy,"
        " certificate_id)"
        " SELECT b.id, t.id, 443, 'HTTPS', 'ELBSecurityPolicy-2016-08', c.id"
        " FROM load_balancer b, target_group t, certificate c"
        " WHERE b.load_balancer_name = 'pre-lb' AND t.target_group_name = 'pre-tg'"
        " AND c.domain_name = 'one.example.com'"
    )
    [(action, changes)] = preview(conn)["listener"]
    assert action == "create" and changes["protocol"] == {"old": None, "new": "HTTPS"}
    assert changes["certificate_id"]["new"] == certificates["one.example.com"]
    commit(conn)
    https = aws.listeners("pre-lb")[443]
    assert https["Protocol"] == "HTTPS" and https["SslPolicy"] == "ELBSecurityPolicy-2016-08"
    assert https["Certificates"] == [{"CertificateArn": certificates["one.example.com"]}]
    in_use = aws.acm.describe_certificate(CertificateArn=certificates["one.example.com"])
    assert in_use["Certificate"]["InUseBy"] == [https["ListenerArn"]]

    # Another certificate, policy and target group: modify_listener, same listener.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE listener SET ssl_policy = 'ELBSecurityPolicy-TLS-1-2-2017-01', certificate_id ="
        " (SELECT id FROM certificate WHERE domain_name = 'two.example.com'), target_group_id ="
        " (SELECT id FROM target_group WHERE target_group_name = 'web-tg') WHERE port = 443"
    )
    [(action, changes)] = preview(conn)["listener"]
    web_tg = aws.target_group("web-tg")["TargetGroupArn"]
    assert action == "update"
    assert changes == {
        "ssl_policy": {
            "old": "ELBSecurityPolicy-2016-08",
            "new": "ELBSecurityPolicy-TLS-1-2-2017-01",
        },
        "certificate_id": {
            "old": certificates["one.example.com"],
            "new": certificates["two.example.com"],
        },
        "target_group_id": {"old": aws.target_group("pre-tg")["TargetGroupArn"], "new": web_tg},
    }
    commit(conn)
    modified = aws.listeners("pre-lb")[443]
    assert modified["ListenerArn"] == https["ListenerArn"]
    assert modified["Certificates"] == [{"CertificateArn": certificates["two.example.com"]}]
    assert modified["SslPolicy"] == "ELBSecurityPolicy-TLS-1-2-2017-01"
    assert modified["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": web_tg}]

    # The listener and then its certificate go.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM listener WHERE port = 443;"
        " DELETE FROM certificate WHERE domain_name = 'two.example.com'"
    )
    assert {t: [a for a, _ in ops] for t, ops in preview(conn).items()} == {
        "listener": ["delete"],
        "certificate": ["delete"],
    }
    commit(conn)
    assert list(aws.listeners("pre-lb")) == [80]
    remaining = aws.acm.list_certificates()["CertificateSummaryList"]
    assert [c["DomainName"] for c in remaining] == ["one.example.com"]


def failed_commit(conn: psycopg.Connection, aws: Aws) -> None:
    """A load balancer in a subnet that does not exist fails; the target group created before
    it in the same commit is deleted again and both rows are gone."""
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)"
        " SELECT 'doomed-tg', 'ip', 'HTTP', 80, id FROM vpc WHERE vpc_id = %s",
        (aws.vpc,),
    )
    conn.execute(
        "INSERT INTO load_balancer (load_balancer_name, scheme, load_balancer_type,"
        " ip_address_type, subnets) VALUES ('doomed-lb', 'internal', 'application', 'ipv4',"
        " ARRAY['subnet-00000000000000000'])"
    )
    with pytest.raises(psycopg.errors.SystemError) as error:
        conn.execute("SELECT * FROM iasql_commit()")
    assert "doomed-lb" in str(error.value)
    names = [g["TargetGroupName"] for g in aws.elb.describe_target_groups()["TargetGroups"]]
    assert "doomed-tg" not in names
    assert rows(
        conn,
        "SELECT (SELECT count(*) FROM target_group WHERE target_group_name = 'doomed-tg'),"
        " (SELECT count(*) FROM load_balancer WHERE load_balancer_name = 'doomed-lb')",
    ) == [(0, 0)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def default_vpc_id(aws: Aws) -> str:
    [vpc] = aws.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    return str(vpc["VpcId"])


def iasql_scripts(conn: psycopg.Connection, aws: Aws) -> None:
    """IaSQL's own SQL, unchanged: a target group with no VPC is in the default VPC (a Lambda
    one has none), and a load balancer's attributes are a JSON array of {"Key", "Value"}."""
    default = default_vpc_id(aws)
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc,"
        " health_check_path) VALUES ('iasql-tg', 'instance', 'HTTP', 8888, null, '/health')"
    )
    conn.execute(
        "INSERT INTO target_group (target_group_name, target_type) VALUES ('iasql-fn', 'lambda')"
    )
    conn.execute(
        "INSERT INTO load_balancer (load_balancer_name, scheme, vpc, load_balancer_type,"
        " ip_address_type, attributes) VALUES ('iasql-lb', 'internet-facing', null,"
        """ 'application', 'ipv4', '[{"Key": "idle_timeout.timeout_seconds", "Value": "120"},"""
        """ {"Key": "deletion_protection.enabled", "Value": false}]')"""
    )
    # The row names the default VPC at once, as a security group's does.
    vpcs = "SELECT target_group_name, (SELECT vpc_id FROM vpc WHERE id = t.vpc) FROM target_group t"
    iasql_groups = f"{vpcs} WHERE target_group_name LIKE 'iasql-%' ORDER BY 1"
    assert rows(conn, iasql_groups) == [("iasql-fn", None), ("iasql-tg", default)]
    assert rows(
        conn, "SELECT attributes FROM load_balancer WHERE load_balancer_name = 'iasql-lb'"
    ) == [
        (
            [
                {"Key": "deletion_protection.enabled", "Value": "false"},
                {"Key": "idle_timeout.timeout_seconds", "Value": "120"},
            ],
        )
    ]
    commit(conn)
    assert aws.target_group("iasql-tg")["VpcId"] == default
    assert "VpcId" not in aws.target_group("iasql-fn")
    assert rows(conn, iasql_groups) == [("iasql-fn", None), ("iasql-tg", default)]
    arn = aws.balancer("iasql-lb")["LoadBalancerArn"]
    found = aws.elb.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]
    assert {"Key": "idle_timeout.timeout_seconds", "Value": "120"} in found
    [(attributes,)] = rows(
        conn, "SELECT attributes FROM load_balancer WHERE load_balancer_name = 'iasql-lb'"
    )
    assert sorted(found, key=lambda a: a["Key"]) == attributes  # all of AWS's, its form
    # The load balancer, with no VPC or subnets named, is in the default VPC, and says so.
    assert rows(
        conn,
        "SELECT (SELECT vpc_id FROM vpc WHERE id = b.vpc) FROM load_balancer b"
        " WHERE load_balancer_name = 'iasql-lb'",
    ) == [(default,)]

    # Setting vpc to NULL means the default VPC, where the group is: nothing to replace.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE target_group SET vpc = NULL WHERE target_group_name = 'iasql-tg'")
    conn.execute(
        "UPDATE load_balancer SET attributes ="
        """ '[{"Key": "idle_timeout.timeout_seconds", "Value": "30"}]'"""
        " WHERE load_balancer_name = 'iasql-lb'"
    )
    assert preview(conn) == {
        "load_balancer": [
            (
                "update",
                {
                    "attributes": {
                        "old": attributes,
                        "new": [{"Key": "idle_timeout.timeout_seconds", "Value": "30"}],
                    }
                },
            )
        ]
    }
    commit(conn)
    found = aws.elb.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]
    assert {"Key": "idle_timeout.timeout_seconds", "Value": "30"} in found

    # Malformed attributes are refused at the statement, with what to write instead.
    bad = [
        ('"idle_timeout.timeout_seconds=60"', "not a JSON string"),
        ('{"Key": "idle_timeout.timeout_seconds", "Value": "60"}', "not one such object"),
        ("[60]", "60 is not a"),
        ('[{"Key": "idle_timeout.timeout_seconds"}]', "is not a"),
        ('[{"key": "idle_timeout.timeout_seconds", "value": "60"}]', "is not a"),
        ('[{"Key": "idle_timeout.timeout_seconds", "Value": {"s": 60}}]', "is not text"),
        ('[{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}]', "names a twice"),
    ]
    for value, message in bad:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            conn.execute(
                "UPDATE load_balancer SET attributes = %s WHERE load_balancer_name = 'iasql-lb'",
                (value,),
            )
        primary = refused.value.diag.message_primary or ""
        assert message in primary and "\n" not in primary
        hint = refused.value.diag.message_hint or ""
        assert value == bad[-1][0] or '"Key": "idle_timeout.timeout_seconds"' in hint
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):  # not JSON: Postgres says so
        conn.execute("UPDATE load_balancer SET attributes = 'idle' WHERE id = 0")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM load_balancer WHERE load_balancer_name = 'iasql-lb'")
    conn.execute("DELETE FROM target_group WHERE target_group_name LIKE 'iasql-%'")
    commit(conn)


def delete_everything(conn: psycopg.Connection, aws: Aws) -> None:
    """Every row goes: the cloud follows in dependency order."""
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM listener; DELETE FROM load_balancer_security_groups;"
        " DELETE FROM load_balancer; DELETE FROM target_group"
    )
    planned = preview(conn)
    assert {t: sorted(a for a, _ in ops) for t, ops in planned.items()} == {
        "listener": ["delete", "delete"],
        "load_balancer_security_groups": ["delete", "delete"],
        "load_balancer": ["delete", "delete"],
        "target_group": ["delete", "delete"],
    }
    commit(conn)
    assert aws.elb.describe_load_balancers()["LoadBalancers"] == []
    assert aws.elb.describe_target_groups()["TargetGroups"] == []
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def test_elb_through_sql(elb_env: Any) -> None:
    """One environment for the whole story: each moto account and install costs seconds."""
    conn, aws = elb_env
    check_import(conn, aws)
    life_cycle(conn, aws)
    https_listener(conn, aws)
    failed_commit(conn, aws)
    iasql_scripts(conn, aws)
    delete_everything(conn, aws)


def test_a_target_group_replaced_outside_iasql_keeps_its_row(elb_env: Any) -> None:
    """A resource deleted and made again under the same name outside iasql (a new ARN) is the
    same row after a sync: same id, the new ARN and settings. Inserting a row for it failed
    on the table's unique name until the old row was gone."""
    conn, aws = elb_env

    def make(port: int) -> str:
        made = aws.elb.create_target_group(
            Name="lone-tg", Protocol="HTTP", Port=port, VpcId=aws.vpc, TargetType="ip"
        )
        return str(made["TargetGroups"][0]["TargetGroupArn"])

    first = make(80)
    conn.execute("SELECT * FROM iasql_sync()")
    [(row_id,)] = rows(conn, "SELECT id FROM target_group WHERE target_group_name = 'lone-tg'")
    aws.elb.delete_target_group(TargetGroupArn=first)
    second = make(8080)
    assert second != first
    # Before the sync, drift pairs them the same way: one change of the row, not a create of
    # the old resource beside a delete of the new one.
    assert rows(conn, "SELECT table_name, action FROM iasql_drift()") == [
        ("target_group", "update")
    ]
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn,
        "SELECT id, target_group_arn, port FROM target_group WHERE target_group_name = 'lone-tg'",
    ) == [(row_id, second, 8080)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
