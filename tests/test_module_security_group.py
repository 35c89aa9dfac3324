"""aws_security_group (with aws_vpc): import through the proxy, its mappers against a moto
server, and its normalisation helpers."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_network
from typing import Any

import psycopg
import pytest

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules.aws_security_group import (
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    ip_permission,
    normalize_description,
    normalize_port,
    normalize_protocol,
    rule_request,
)
from modules.aws_vpc import MODULE as VPC_MODULE
from modules.aws_vpc import VPC
from modules.spec import TOKEN, TOKEN_TAG, CloudError, Record
from tests.support.aws import REGION, ec2_client, mapper, new_vpc, only_one_region, read_by
from tests.support.env import add_credentials, commit, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

# --- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("tcp", "tcp"),
        ("TCP", "tcp"),
        ("6", "tcp"),  # AWS answers with the name
        ("17", "udp"),
        ("58", "icmpv6"),
        ("all", "-1"),
        ("-1", "-1"),
        (-1, "-1"),
        ("50", "50"),  # ESP has no name in AWS's answers
        (None, None),
    ],
)
def test_normalize_protocol(given: Any, canonical: str | None) -> None:
    assert normalize_protocol(given) == canonical


def test_normalize_port_and_description() -> None:
    assert [normalize_port(p) for p in (None, -1, 0, 443, "22")] == [None, None, 0, 443, 22]
    assert [normalize_description(d) for d in (None, "", "web")] == [None, None, "web"]


def test_rule_as_aws_request() -> None:
    rule = {"ip_protocol": "6", "from_port": 443, "to_port": 443, "cidr_ipv4": "10.0.0.1/8"}
    assert ip_permission({**rule, "description": "web"}) == {
        "IpProtocol": "tcp",
        "FromPort": 443,
        "ToPort": 443,
        "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "web"}],
    }
    assert rule_request(rule) == {
        "IpProtocol": "tcp",
        "FromPort": 443,
        "ToPort": 443,
        "CidrIpv4": "10.0.0.0/8",
        "Description": "",
    }
    everything = {"ip_protocol": "all", "from_port": -1, "to_port": -1, "cidr_ipv6": "::/0"}
    assert ip_permission(everything) == {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    source = {"ip_protocol": "tcp", "from_port": 22, "to_port": 22, "source_security_group": "sg-1"}
    assert ip_permission(source)["UserIdGroupPairs"] == [{"GroupId": "sg-1"}]
    assert rule_request(source)["ReferencedGroupId"] == "sg-1"
    prefix = {"ip_protocol": "tcp", "from_port": 1, "to_port": 2, "prefix_list_id": "pl-1"}
    assert ip_permission(prefix)["PrefixListIds"] == [{"PrefixListId": "pl-1"}]


def test_rule_needs_a_protocol_and_one_target() -> None:
    # From a source group, no protocol is all traffic (as in IaSQL and AWS); ports mean nothing.
    assert ip_permission({"source_security_group": "sg-1", "from_port": 80}) == {
        "IpProtocol": "-1",
        "UserIdGroupPairs": [{"GroupId": "sg-1"}],
    }
    with pytest.raises(CloudError, match="ip_protocol"):
        ip_permission({"cidr_ipv4": "10.0.0.0/8"})
    with pytest.raises(CloudError, match="exactly one"):
        ip_permission({"ip_protocol": "-1"})
    with pytest.raises(CloudError, match="exactly one"):
        rule_request({"ip_protocol": "-1", "cidr_ipv4": "0.0.0.0/0", "cidr_ipv6": "::/0"})


def test_default_groups_are_protected() -> None:
    assert SECURITY_GROUP.protected is not None
    assert SECURITY_GROUP.protected({"group_name": "default"})
    assert not SECURITY_GROUP.protected({"group_name": "web"})


# --- import through the proxy --------------------------------------------------------------


def test_install_imports_vpcs_subnets_groups_and_rules(
    envdb: psycopg.Connection,
    moto_accounts: Callable[[], MotoServer],
) -> None:
    moto = moto_accounts()  # a fresh account: only AWS's defaults besides what is made here
    ec2 = ec2_client(moto)
    vpc_id = ec2.create_vpc(
        CidrBlock="10.50.0.0/16",
        TagSpecifications=[
            {
                "ResourceType": "vpc",
                "Tags": [{"Key": "Name", "Value": "imported"}, {"Key": TOKEN_TAG, "Value": "t"}],
            }
        ],
    )["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(
        VpcId=vpc_id, CidrBlock="10.50.1.0/24", AvailabilityZone="us-east-1c"
    )["Subnet"]["SubnetId"]
    web = ec2.create_security_group(GroupName="web", Description="web tier", VpcId=vpc_id)
    app = ec2.create_security_group(GroupName="app", Description="app tier", VpcId=vpc_id)
    ec2.authorize_security_group_ingress(
        GroupId=app["GroupId"],
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8080,
                "ToPort": 8080,
                # No description: moto drops a group pair's from describe_security_group_rules.
                "UserIdGroupPairs": [{"GroupId": web["GroupId"]}],
            }
        ],
    )

    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    installed = rows(envdb, "SELECT module_name, created_table_name FROM iasql_install('aws_vpc')")
    assert installed == [("aws_vpc", t.name) for t in VPC_MODULE.tables]
    envdb.execute("SELECT * FROM iasql_install('aws_security_group')")

    assert rows(
        envdb,
        "SELECT cidr_block, is_default, state, tags::text, enable_dns_support FROM vpc"
        " WHERE region = 'us-east-1' ORDER BY cidr_block",
    ) == [
        ("10.50.0.0/16", False, "available", '{"Name": "imported"}', True),  # no token tag
        ("172.31.0.0/16", True, "available", None, True),
    ]
    # Every region is read: each has its default VPC.
    assert rows(envdb, "SELECT count(*) FROM vpc WHERE is_default") == rows(
        envdb, "SELECT count(*) FROM aws_regions"
    )
    # Our subnet in our VPC and a known zone; the default VPC's subnets, one per zone.
    assert envdb.execute(
        "SELECT v.vpc_id, s.cidr_block, z.name FROM subnet s JOIN vpc v ON v.id = s.vpc_id"
        " JOIN availability_zone z ON z.name = s.availability_zone WHERE s.subnet_id = %s",
        (subnet_id,),
    ).fetchall() == [(vpc_id, "10.50.1.0/24", "us-east-1c")]
    assert rows(
        envdb,
        "SELECT count(*) FROM subnet s JOIN vpc v ON v.id = s.vpc_id"
        " WHERE v.is_default AND s.region = 'us-east-1'",
    ) == [(len(ec2.describe_availability_zones()["AvailabilityZones"]),)]
    [(default_vpc,)] = rows(
        envdb, "SELECT vpc_id FROM vpc WHERE is_default AND region = 'us-east-1'"
    )
    assert rows(
        envdb,
        "SELECT g.group_name, g.description, v.vpc_id FROM security_group g"
        " JOIN vpc v ON v.id = g.vpc_id WHERE g.region = 'us-east-1' ORDER BY v.is_default, 1",
    ) == [
        ("app", "app tier", vpc_id),
        ("default", "default VPC security group", vpc_id),
        ("web", "web tier", vpc_id),
        ("default", "default VPC security group", default_vpc),
    ]
    # The rule's two foreign keys point at the right groups.
    assert rows(
        envdb,
        "SELECT g.group_id, r.ip_protocol, r.from_port, r.to_port, s.group_id"
        " FROM security_group_rule r JOIN security_group g ON g.id = r.security_group_id"
        " JOIN security_group s ON s.id = r.source_security_group WHERE NOT r.is_egress"
        " AND g.group_name = 'app'",
    ) == [(app["GroupId"], "tcp", 8080, 8080, web["GroupId"])]
    # AWS's allow-all egress rule of a group made outside iasql is imported like any rule.
    assert envdb.execute(
        "SELECT r.ip_protocol, r.from_port, r.cidr_ipv4 FROM security_group_rule r"
        " JOIN security_group g ON g.id = r.security_group_id"
        " WHERE r.is_egress AND g.group_id = %s",
        (web["GroupId"],),
    ).fetchall() == [("-1", None, ip_network("0.0.0.0/0"))]

    # A group inserted without a VPC belongs to its region's default VPC.
    envdb.execute("INSERT INTO security_group (description, group_name) VALUES ('d', 'no-vpc')")
    assert rows(
        envdb,
        "SELECT v.is_default FROM security_group g JOIN vpc v ON v.id = g.vpc_id"
        " WHERE g.group_name = 'no-vpc'",
    ) == [(True,)]
    # A row can't stand for two rules.
    with pytest.raises(psycopg.errors.CheckViolation):
        envdb.execute(
            "INSERT INTO security_group_rule (is_egress, ip_protocol, cidr_ipv4, cidr_ipv6,"
            " security_group_id) SELECT true, '-1', '0.0.0.0/0', '::/0', id FROM security_group"
            " WHERE group_name = 'no-vpc'"
        )


def test_iasql_rules_through_sql(
    envdb: psycopg.Connection, moto_accounts: Callable[[], MotoServer]
) -> None:
    """IaSQL's SQL, unchanged: groups with no VPC, and a rule from a source group with no
    protocol, which lets all of that group's traffic in (protocol -1, every port)."""
    moto = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_sync()")  # fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_security_group')")
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO security_group (description, group_name)"
        " VALUES ('web tier', 'web'), ('app tier', 'app'), ('db tier', 'db')"
    )
    # group_id is UNIQUE, as the cloud id the engine pairs rows with: rows not yet made all
    # have none, which it allows.
    assert rows(envdb, "SELECT count(*) FROM security_group WHERE group_id IS NULL") == [(3,)]
    envdb.execute(
        "INSERT INTO security_group_rule (is_egress, security_group_id, source_security_group)"
        " SELECT false, (SELECT id FROM security_group WHERE group_name = 'app'),"
        " (SELECT id FROM security_group WHERE group_name = 'web')"
    )
    rule = (
        "SELECT r.ip_protocol, r.from_port, r.to_port, r.security_group_rule_id IS NOT NULL"
        " FROM security_group_rule r JOIN security_group g ON g.id = r.security_group_id"
        " WHERE g.group_name = 'app'"
    )
    assert rows(envdb, rule) == [("-1", None, None, False)]  # says so before the commit
    commit(envdb)
    ec2 = ec2_client(moto)
    ids = {
        g["GroupName"]: g["GroupId"]
        for g in ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": ["web", "app", "db"]}]
        )["SecurityGroups"]
    }
    [made] = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [ids["app"]]}]
    )["SecurityGroupRules"]
    assert (made["IpProtocol"], made["IsEgress"]) == ("-1", False)
    assert made["ReferencedGroupInfo"]["GroupId"] == ids["web"]
    assert rows(envdb, rule) == [("-1", None, None, True)]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    # Replayed elsewhere, the rule is written out in full, and no group_id is in the SQL.
    replay = [r[0] for r in rows(envdb, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    [rule_sql] = [sql for sql in replay if sql.startswith('INSERT INTO "security_group_rule"')]
    assert "'-1'" in rule_sql and not any("sg-" in sql for sql in replay)

    # A rule on a CIDR still needs a protocol: the commit says which, and is undone.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO security_group_rule (is_egress, security_group_id, cidr_ipv4)"
        " SELECT false, id, '10.0.0.0/8' FROM security_group WHERE group_name = 'db'"
    )
    with pytest.raises(psycopg.errors.SystemError) as failed:
        envdb.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate == "58000"
    assert "needs an ip_protocol" in (failed.value.diag.message_primary or "")
    assert rows(
        envdb,
        "SELECT count(*) FROM security_group_rule WHERE cidr_ipv4 IS NOT NULL"
        " AND security_group_id = (SELECT id FROM security_group WHERE group_name = 'db')",
    ) == [(0,)]


# --- mappers against moto ------------------------------------------------------------------


def new_group(name: str, vpc_id: str | None, token: str) -> Record:
    return {
        "group_name": name,
        "description": f"{name} group",
        "vpc_id": vpc_id,
        "region": REGION,
        TOKEN: token,
    }


def test_security_group_lifecycle(moto: MotoServer) -> None:
    groups = mapper(SECURITY_GROUP)

    async def scenario(cloud: AwsCloud) -> tuple[str, str]:
        vpc = await mapper(VPC).create(cloud, new_vpc("10.60.0.0/16", "tok-sg-vpc"))
        created = await groups.create(cloud, new_group("life", vpc["vpc_id"], "tok-sg"))
        assert created["group_id"].startswith("sg-")
        assert (created["group_name"], created["vpc_id"], created[TOKEN]) == (
            "life",
            vpc["vpc_id"],
            "tok-sg",
        )
        assert created["owner_id"]
        assert (await read_by(SECURITY_GROUP, cloud, "group_id"))[created["group_id"]] == created
        # AWS's allow-all egress rule is gone: the group has the rules its rows say, none yet.
        rules = await mapper(SECURITY_GROUP_RULE).read(cloud, REGION)
        assert [r for r in rules if r["security_group_id"] == created["group_id"]] == []
        # Its VPC's own group is protected.
        by_vpc = [g for g in await groups.read(cloud, REGION) if g["vpc_id"] == vpc["vpc_id"]]
        assert SECURITY_GROUP.protected is not None
        assert [g["group_name"] for g in by_vpc if SECURITY_GROUP.protected(g)] == ["default"]

        await groups.delete(cloud, created)
        await groups.delete(cloud, created)  # already gone: fine
        assert created["group_id"] not in await read_by(SECURITY_GROUP, cloud, "group_id")
        await mapper(VPC).delete(cloud, vpc)
        return created["group_id"], vpc["vpc_id"]

    group_id, _ = in_cloud(moto, scenario)
    assert (
        ec2_client(moto).describe_security_groups(
            Filters=[{"Name": "group-id", "Values": [group_id]}]
        )["SecurityGroups"]
        == []
    )


def test_group_without_vpc_lands_in_the_default_vpc(moto: MotoServer) -> None:
    async def scenario(cloud: AwsCloud) -> None:
        default = next(v for v in await mapper(VPC).read(cloud, REGION) if v["is_default"])
        created = await mapper(SECURITY_GROUP).create(cloud, new_group("anywhere", None, "tok"))
        assert created["vpc_id"] == default["vpc_id"]
        await mapper(SECURITY_GROUP).delete(cloud, created)

    in_cloud(moto, scenario)


def new_rule(group_id: str, token: str, **columns: Any) -> Record:
    rule: Record = {
        "is_egress": False,
        "ip_protocol": None,
        "from_port": None,
        "to_port": None,
        "cidr_ipv4": None,
        "cidr_ipv6": None,
        "prefix_list_id": None,
        "description": None,
        "region": REGION,
        "security_group_id": group_id,
        "source_security_group": None,
        TOKEN: token,
    }
    return {**rule, **columns}


def without_id(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != "security_group_rule_id"}


def test_security_group_rule_lifecycle(moto: MotoServer) -> None:
    rules = mapper(SECURITY_GROUP_RULE)

    async def scenario(cloud: AwsCloud) -> list[str]:
        vpc = await mapper(VPC).create(cloud, new_vpc("10.70.0.0/16", "tok-rule-vpc"))
        group = await mapper(SECURITY_GROUP).create(cloud, new_group("g", vpc["vpc_id"], "t1"))
        other = await mapper(SECURITY_GROUP).create(cloud, new_group("o", vpc["vpc_id"], "t2"))
        wanted = [
            new_rule(
                group["group_id"],
                "tok-cidr",
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                cidr_ipv4="10.0.0.0/8",
                description="https",
            ),
            new_rule(
                group["group_id"],
                "tok-source",
                ip_protocol="tcp",
                from_port=5432,
                to_port=5432,
                source_security_group=other["group_id"],
            ),
            new_rule(group["group_id"], "tok-egress", is_egress=True, ip_protocol="-1")
            | {"cidr_ipv6": "::/0"},
        ]
        created = [await rules.create(cloud, w) for w in wanted]
        for want, got in zip(wanted, created, strict=True):
            assert got["security_group_rule_id"].startswith("sgr-")
            assert without_id(got) == want
        in_cloud_now = await read_by(SECURITY_GROUP_RULE, cloud, "security_group_rule_id")
        for got in created:
            assert in_cloud_now[got["security_group_rule_id"]] == got

        # In place: protocol, ports and description (the target replaces the rule).
        changed = {
            **created[0],
            "ip_protocol": "17",
            "from_port": 53,
            "to_port": 54,
            "description": None,
        }
        updated = await rules.update(cloud, changed, created[0])
        assert updated == {**changed, "ip_protocol": "udp"}  # the same rule id
        in_cloud_now = await read_by(SECURITY_GROUP_RULE, cloud, "security_group_rule_id")
        assert in_cloud_now[updated["security_group_rule_id"]] == updated
        described = {**created[1], "description": "from o"}
        assert await rules.update(cloud, described, created[1]) == described

        for rule in (updated, described, created[2]):
            await rules.delete(cloud, rule)
            await rules.delete(cloud, rule)  # already gone: fine
        ids = [r["security_group_rule_id"] for r in created]
        left = await read_by(SECURITY_GROUP_RULE, cloud, "security_group_rule_id")
        assert not set(ids) & set(left)
        for g in (group, other):
            await mapper(SECURITY_GROUP).delete(cloud, g)
        # A rule of a group that is gone: nothing to do.
        await rules.delete(cloud, created[0])
        await mapper(VPC).delete(cloud, vpc)
        return ids

    ids = in_cloud(moto, scenario)
    left = ec2_client(moto).describe_security_group_rules()["SecurityGroupRules"]
    assert not set(ids) & {r["SecurityGroupRuleId"] for r in left}
