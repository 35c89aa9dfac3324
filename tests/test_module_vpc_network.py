"""aws_vpc's network ACLs, peering connections and endpoints: their canonical forms, the import
of resources made with boto3, and each table's life cycle through begin / preview / commit on
moto, read back with boto3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules._aws.tags import user_tags
from modules.aws_vpc.network import (
    NETWORK_ACL,
    normalize_dns_record_type,
    normalize_endpoint_policy,
    normalize_entries,
    normalize_route_tables,
    service_name,
    short_service,
)
from tests.support.env import RunningServer, add_credentials, one, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

REGION = "us-east-1"
MINE = (
    "'network_acl', 'subnet', 'peering_connection', 'endpoint_gateway', 'endpoint_interface',"
    " 'endpoint_interface_subnets'"
)
FULL_ACCESS = {
    "Version": "2008-10-17",
    "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}],
}


def policy(action: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": action, "Resource": "*"}],
    }


# --- canonical forms -----------------------------------------------------------------------


def test_normalize_entries() -> None:
    written = [
        {
            "rule_number": 20,
            "protocol": "TCP",
            "rule_action": "ALLOW",
            "cidr_block": "10.0.0.1/8",
            "port_range": {"from": 443, "to": 443},
        },
        {
            "RuleNumber": 10,
            "Protocol": "all",
            "RuleAction": "deny",
            "CidrBlock": "0.0.0.0/0",
            "PortRange": {"From": 1, "To": 2},
            "Egress": True,
        },
        {"RuleNumber": 32767, "Protocol": "-1", "RuleAction": "deny", "CidrBlock": "0.0.0.0/0"},
        {
            "RuleNumber": 30,
            "Protocol": 1,
            "RuleAction": "allow",
            "CidrBlock": "10.1.0.0/16",
            "IcmpTypeCode": {"Type": 8, "Code": -1},
        },
    ]
    assert normalize_entries(json.dumps(written)) == [
        {
            "RuleNumber": 20,
            "Egress": False,
            "Protocol": "6",
            "RuleAction": "allow",
            "CidrBlock": "10.0.0.0/8",
            "PortRange": {"From": 443, "To": 443},
        },
        {
            "RuleNumber": 30,
            "Egress": False,
            "Protocol": "1",
            "RuleAction": "allow",
            "CidrBlock": "10.1.0.0/16",
            "IcmpTypeCode": {"Code": -1, "Type": 8},
        },
        # No port range for all protocols: AWS keeps none.
        {
            "RuleNumber": 10,
            "Egress": True,
            "Protocol": "-1",
            "RuleAction": "deny",
            "CidrBlock": "0.0.0.0/0",
        },
    ]
    # Only AWS's fixed last rule, or nothing at all: no entries.
    assert normalize_entries(written[2:3]) is None
    assert normalize_entries([]) is None and normalize_entries(None) is None


def test_endpoint_policies_services_and_route_tables() -> None:
    # AWS's full-access default (either version, a JSON string or not) is no policy.
    assert normalize_endpoint_policy(json.dumps(FULL_ACCESS)) is None
    assert normalize_endpoint_policy({**FULL_ACCESS, "Version": "2012-10-17"}) is None
    narrow = policy("s3:GetObject")
    assert normalize_endpoint_policy(narrow) == normalize_endpoint_policy(json.dumps(narrow))
    assert normalize_endpoint_policy(narrow) != normalize_endpoint_policy(policy("s3:*"))

    assert service_name("s3", REGION) == "com.amazonaws.us-east-1.s3"
    assert service_name("s3-global.accesspoint", REGION) == "com.amazonaws.s3-global.accesspoint"
    assert service_name("aws.sagemaker.us-east-1.notebook", REGION).startswith("aws.")
    for short in ("ecr.api", "s3-global.accesspoint", "aws.sagemaker.us-east-1.notebook"):
        assert short_service(service_name(short, REGION), REGION) == short

    assert normalize_route_tables(["rtb-2", "rtb-1", "rtb-2"]) == ["rtb-1", "rtb-2"]
    assert normalize_route_tables([]) is None
    assert normalize_dns_record_type(None) == "ipv4" == normalize_dns_record_type("IPV4")


def test_default_acl_is_protected() -> None:
    assert NETWORK_ACL.protected is not None
    assert NETWORK_ACL.protected({"is_default": True})
    assert not NETWORK_ACL.protected({"is_default": False})


# --- through the proxy ---------------------------------------------------------------------


def install(envdb: psycopg.Connection, moto: MotoServer) -> None:
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb, REGION)  # on moto every read of every other region costs time
    envdb.execute("SELECT * FROM iasql_install('aws_vpc')")


@pytest.fixture(scope="module")
def net_env(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[psycopg.Connection, Any]]:
    """aws_vpc installed on an account of its own, shared by the life cycle tests (installing
    takes a while): each uses VPCs of its own and removes what it made."""
    moto: MotoServer = moto_accounts()
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('vpc_network')").fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        install(conn, moto)
        # Keys given here: the autouse fixture that sets dummy ones is function-scoped.
        ec2 = boto3.client(
            "ec2",
            region_name=REGION,
            endpoint_url=moto.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        yield conn, ec2


def preview(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(a, t) for a, t in rows(conn, "SELECT action, table_name FROM iasql_preview()")]


def changes(conn: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    query = f"SELECT changes FROM iasql_preview() WHERE table_name = '{table}' ORDER BY id"
    return [r[0] for r in rows(conn, query)]


def settled(conn: psycopg.Connection) -> None:
    """Nothing left to do, and the rows are what the cloud has (compared canonically)."""
    assert rows(conn, "SELECT action, table_name, description FROM iasql_preview()") == []
    drift = rows(
        conn, f"SELECT table_name, changes FROM iasql_drift() WHERE table_name IN ({MINE})"
    )
    assert drift == []


def replay_sql(conn: psycopg.Connection) -> list[str]:
    """The last transaction's SQL for another account: no cloud id of a VPC, subnet, ACL,
    peering connection or endpoint in it (route_table_ids hold cloud ids, as in IaSQL)."""
    sql = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert sql
    for statement in sql:
        for prefix in ("'vpc-", "'subnet-", "'acl-", "'pcx-", "'vpce-"):
            assert prefix not in statement, statement
    return sql


def acl_entries(ec2: Any, acl_id: str) -> list[dict[str, Any]]:
    [acl] = ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"]
    return normalize_entries(acl["Entries"]) or []


def acl_of_subnet(ec2: Any, subnet_id: str) -> str:
    filters = [{"Name": "association.subnet-id", "Values": [subnet_id]}]
    [acl] = ec2.describe_network_acls(Filters=filters)["NetworkAcls"]
    return str(acl["NetworkAclId"])


def row_acl_of_subnet(conn: psycopg.Connection, subnet_id: str) -> str:
    """The cloud id of the ACL the subnet's row names."""
    return str(
        one(
            conn,
            "SELECT a.network_acl_id FROM subnet s JOIN network_acl a ON a.id = s.network_acl_id"
            f" WHERE s.subnet_id = '{subnet_id}'",
        )
    )


def acl_exists(ec2: Any, acl_id: str) -> bool:
    # Listed whole: moto has no network-acl-id filter.
    return acl_id in {a["NetworkAclId"] for a in ec2.describe_network_acls()["NetworkAcls"]}


def endpoint(ec2: Any, endpoint_id: str) -> dict[str, Any]:
    [found] = ec2.describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])["VpcEndpoints"]
    return dict(found)


IMPORTED_ENTRIES = [
    {
        "RuleNumber": 100,
        "Protocol": "6",
        "RuleAction": "allow",
        "Egress": False,
        "CidrBlock": "10.0.0.0/8",
        "PortRange": {"From": 443, "To": 443},
    },
    {
        "RuleNumber": 100,
        "Protocol": "-1",
        "RuleAction": "allow",
        "Egress": True,
        "CidrBlock": "0.0.0.0/0",
    },
]


def test_install_imports_acls_peerings_and_endpoints(
    envdb: psycopg.Connection, moto_accounts: Any
) -> None:
    moto: MotoServer = moto_accounts()
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.endpoint)
    vpc_a = ec2.create_vpc(CidrBlock="10.80.0.0/16")["Vpc"]["VpcId"]
    vpc_b = ec2.create_vpc(CidrBlock="10.81.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_a, CidrBlock="10.80.1.0/24", AvailabilityZone="us-east-1a")
    subnet_id = subnet["Subnet"]["SubnetId"]
    acl_id = ec2.create_network_acl(
        VpcId=vpc_a,
        TagSpecifications=[
            {"ResourceType": "network-acl", "Tags": [{"Key": "Name", "Value": "imported"}]}
        ],
    )["NetworkAcl"]["NetworkAclId"]
    for entry in IMPORTED_ENTRIES:
        ec2.create_network_acl_entry(NetworkAclId=acl_id, **entry)
    association = ec2.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}]
    )["NetworkAcls"][0]["Associations"][0]["NetworkAclAssociationId"]
    ec2.replace_network_acl_association(AssociationId=association, NetworkAclId=acl_id)
    peering = ec2.create_vpc_peering_connection(VpcId=vpc_a, PeerVpcId=vpc_b)
    peering_id = peering["VpcPeeringConnection"]["VpcPeeringConnectionId"]
    ec2.accept_vpc_peering_connection(VpcPeeringConnectionId=peering_id)
    route_table = ec2.create_route_table(VpcId=vpc_a)["RouteTable"]["RouteTableId"]
    gateway = ec2.create_vpc_endpoint(
        VpcEndpointType="Gateway",
        VpcId=vpc_a,
        ServiceName="com.amazonaws.us-east-1.s3",
        RouteTableIds=[route_table],
        PolicyDocument=json.dumps(policy("s3:GetObject")),
    )["VpcEndpoint"]["VpcEndpointId"]
    interface = ec2.create_vpc_endpoint(
        VpcEndpointType="Interface",
        VpcId=vpc_a,
        ServiceName="com.amazonaws.us-east-1.lambda",
        SubnetIds=[subnet_id],
        PrivateDnsEnabled=False,
        TagSpecifications=[{"ResourceType": "vpc-endpoint", "Tags": [{"Key": "k", "Value": "v"}]}],
    )["VpcEndpoint"]["VpcEndpointId"]

    install(envdb, moto)

    vpc_row = {
        r[0]: r[1] for r in rows(envdb, "SELECT vpc_id, id FROM vpc WHERE vpc_id IS NOT NULL")
    }
    acls = rows(
        envdb,
        "SELECT network_acl_id, is_default, entries::text, tags::text FROM network_acl"
        f" WHERE vpc_id = {vpc_row[vpc_a]} ORDER BY is_default",
    )
    assert [(a[0], a[1], json.loads(a[2]), json.loads(a[3])) for a in acls[:1]] == [
        (acl_id, False, normalize_entries(IMPORTED_ENTRIES), {"Name": "imported"})
    ]
    # The default ACL AWS made with the VPC: allow all both ways.
    default_entries = json.loads(acls[1][2])
    assert acls[1][1] is True and {e["RuleAction"] for e in default_entries} == {"allow"}
    assert row_acl_of_subnet(envdb, subnet_id) == acl_id
    # Every VPC's subnets point at an ACL row, the default VPC's included.
    assert one(envdb, "SELECT count(*) FROM subnet WHERE network_acl_id IS NULL") == 0

    assert rows(
        envdb, "SELECT peering_connection_id, state, requester_id, accepter_id, region"
        " FROM peering_connection",
    ) == [(peering_id, "active", vpc_row[vpc_a], vpc_row[vpc_b], REGION)]  # fmt: skip
    [(gateway_id, service, route_tables, state, gateway_policy)] = rows(
        envdb,
        "SELECT vpc_endpoint_id, service, route_table_ids, state, policy FROM endpoint_gateway",
    )
    assert (gateway_id, service, route_tables, state) == (gateway, "s3", [route_table], "available")
    assert normalize_endpoint_policy(gateway_policy) == normalize_endpoint_policy(
        policy("s3:GetObject")
    )
    assert rows(
        envdb,
        "SELECT vpc_endpoint_id, service, policy, private_dns_enabled, dns_name_record_type,"
        " tags::text FROM endpoint_interface",
    ) == [(interface, "lambda", None, False, "ipv4", '{"k": "v"}')]
    assert rows(
        envdb,
        "SELECT e.vpc_endpoint_id, s.subnet_id, j.region FROM endpoint_interface_subnets j"
        " JOIN endpoint_interface e ON e.id = j.endpoint_interface_id"
        " JOIN subnet s ON s.id = j.subnet_id",
    ) == [(interface, subnet_id, REGION)]
    settled(envdb)

    # Uninstalling leaves the cloud alone and takes the module's trigger functions along.
    envdb.execute("SELECT * FROM iasql_uninstall('aws_vpc')")
    functions = (
        "SELECT count(*) FROM pg_proc WHERE proname IN ('subnet_default_network_acl',"
        " 'peering_connection_region', 'endpoint_interface_subnets_region')"
    )
    assert one(envdb, functions) == 0
    assert endpoint(ec2, interface)["State"] == "available"


ENTRIES = (
    '[{"RuleNumber": 100, "Protocol": "tcp", "RuleAction": "allow", "CidrBlock": "10.0.0.9/8",'
    ' "PortRange": {"From": 22, "To": 22}},'
    ' {"RuleNumber": 200, "Protocol": "udp", "RuleAction": "deny", "CidrBlock": "0.0.0.0/0",'
    ' "PortRange": {"From": 53, "To": 53}},'
    ' {"RuleNumber": 100, "Protocol": "-1", "RuleAction": "allow", "CidrBlock": "0.0.0.0/0",'
    ' "Egress": true}]'
)
NEW_ENTRIES = (
    '[{"RuleNumber": 100, "Protocol": "6", "RuleAction": "allow", "CidrBlock": "10.0.0.0/8",'
    ' "PortRange": {"From": 22, "To": 23}},'
    ' {"RuleNumber": 300, "Protocol": "tcp", "RuleAction": "allow", "CidrBlock": "0.0.0.0/0",'
    ' "PortRange": {"From": 443, "To": 443}},'
    ' {"RuleNumber": 100, "Protocol": "-1", "RuleAction": "allow", "CidrBlock": "0.0.0.0/0",'
    ' "Egress": true}]'
)


def test_network_acl_lifecycle_and_subnet_association(net_env: Any) -> None:
    conn, ec2 = net_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO vpc (cidr_block) VALUES ('10.90.0.0/16'), ('10.91.0.0/16')")
    conn.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
        " SELECT id, '10.90.1.0/24', 'us-east-1a' FROM vpc WHERE cidr_block = '10.90.0.0/16'"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    vpc1, vpc1_id = rows(conn, "SELECT id, vpc_id FROM vpc WHERE cidr_block = '10.90.0.0/16'")[0]
    vpc2 = one(conn, "SELECT id FROM vpc WHERE cidr_block = '10.91.0.0/16'")
    subnet_id = one(conn, "SELECT subnet_id FROM subnet WHERE cidr_block = '10.90.1.0/24'")
    # The new VPC's default ACL came in with the commit, and the subnet names it.
    default_acl = one(
        conn, f"SELECT network_acl_id FROM network_acl WHERE vpc_id = {vpc1} AND is_default"
    )
    assert acl_of_subnet(ec2, subnet_id) == default_acl
    assert row_acl_of_subnet(conn, subnet_id) == default_acl
    settled(conn)

    # A new ACL, and the subnet moved to it in place, in one commit.
    conn.execute("SELECT * FROM iasql_begin()")
    acl_row = one(
        conn,
        "INSERT INTO network_acl (vpc_id, entries, tags)"
        f" VALUES ({vpc1}, '{ENTRIES}', '{{\"Name\": \"private\"}}') RETURNING id",
    )
    conn.execute(f"UPDATE subnet SET network_acl_id = {acl_row} WHERE subnet_id = '{subnet_id}'")
    assert sorted(preview(conn)) == [("create", "network_acl"), ("update", "subnet")]
    assert changes(conn, "subnet") == [
        {"network_acl_id": {"old": default_acl, "new": f"(new network_acl {acl_row})"}}
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    acl_id = one(conn, f"SELECT network_acl_id FROM network_acl WHERE id = {acl_row}")
    assert acl_id.startswith("acl-") and acl_id != default_acl
    assert acl_of_subnet(ec2, subnet_id) == acl_id
    assert acl_entries(ec2, acl_id) == normalize_entries(ENTRIES)
    [acl] = ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"]
    assert {t["Key"]: t["Value"] for t in acl["Tags"]}["Name"] == "private"
    # Replayed elsewhere, the subnet finds its ACL by VPC and tags, never by a cloud id.
    sql = replay_sql(conn)
    assert any(s.startswith('UPDATE "subnet" SET "network_acl_id" = (SELECT') for s in sql)
    assert any('"tags"::jsonb = \'{"Name": "private"}\'::jsonb' in s for s in sql)
    settled(conn)

    # Entries changed in place: one replaced, one added, one removed; a tag added.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE network_acl SET entries = '{NEW_ENTRIES}',"
        f' tags = \'{{"Name": "private", "tier": "db"}}\' WHERE id = {acl_row}'
    )
    assert preview(conn) == [("update", "network_acl")]
    [diff] = changes(conn, "network_acl")
    assert set(diff) == {"entries", "tags"} and "forces_replace" not in diff["entries"]
    conn.execute("SELECT * FROM iasql_commit()")
    assert acl_entries(ec2, acl_id) == normalize_entries(NEW_ENTRIES)
    assert one(conn, f"SELECT network_acl_id FROM network_acl WHERE id = {acl_row}") == acl_id
    settled(conn)

    # Back to the default ACL (NULL means it), and the ACL moved to the other VPC: replaced.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE subnet SET network_acl_id = NULL WHERE subnet_id = '{subnet_id}'")
    conn.execute(f"UPDATE network_acl SET vpc_id = {vpc2} WHERE id = {acl_row}")
    assert sorted(preview(conn)) == [("replace", "network_acl"), ("update", "subnet")]
    assert changes(conn, "network_acl")[0]["vpc_id"]["forces_replace"] is True
    conn.execute("SELECT * FROM iasql_commit()")
    assert acl_of_subnet(ec2, subnet_id) == default_acl
    moved = one(conn, f"SELECT network_acl_id FROM network_acl WHERE id = {acl_row}")
    assert moved != acl_id
    assert not acl_exists(ec2, acl_id)
    [acl] = ec2.describe_network_acls(NetworkAclIds=[moved])["NetworkAcls"]
    assert acl["VpcId"] != vpc1_id and acl_entries(ec2, moved) == normalize_entries(NEW_ENTRIES)
    settled(conn)

    # Deleting an ACL's row sends its subnets back to their default ACL before it goes.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE network_acl SET vpc_id = {vpc1} WHERE id = {acl_row};"
        f" UPDATE subnet SET network_acl_id = {acl_row} WHERE subnet_id = '{subnet_id}'"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    acl_id = one(conn, f"SELECT network_acl_id FROM network_acl WHERE id = {acl_row}")
    assert acl_of_subnet(ec2, subnet_id) == acl_id
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM network_acl WHERE id = {acl_row}")
    assert sorted(preview(conn)) == [("delete", "network_acl"), ("update", "subnet")]
    conn.execute("SELECT * FROM iasql_commit()")
    assert acl_of_subnet(ec2, subnet_id) == default_acl
    assert not acl_exists(ec2, acl_id)
    settled(conn)

    # The default ACL can't be deleted: its row comes back, AWS keeps it. (The subnets its
    # row's deletion set to NULL show as a no-op update: NULL is the default ACL.)
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM network_acl WHERE vpc_id = {vpc1} AND is_default")
    assert "network_acl" not in {t for _, t in preview(conn)}
    conn.execute("SELECT * FROM iasql_commit()")
    assert rows(conn, f"SELECT network_acl_id FROM network_acl WHERE vpc_id = {vpc1}") == [
        (default_acl,)
    ]
    assert acl_of_subnet(ec2, subnet_id) == default_acl
    assert row_acl_of_subnet(conn, subnet_id) == default_acl
    settled(conn)

    # The VPCs go with their subnet and ACLs in one commit; AWS removes the default ACLs.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"DELETE FROM subnet WHERE vpc_id = {vpc1}; DELETE FROM vpc WHERE id IN ({vpc1}, {vpc2})"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc1_id]}])["Vpcs"] == []
    assert one(conn, f"SELECT count(*) FROM network_acl WHERE vpc_id IN ({vpc1}, {vpc2})") == 0
    settled(conn)


def test_peering_connection_lifecycle(net_env: Any) -> None:
    conn, ec2 = net_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO vpc (cidr_block) VALUES ('10.92.0.0/16'), ('10.93.0.0/16'), ('10.94.0.0/16')"
    )
    ids = {c: i for i, c in rows(conn, "SELECT id, cidr_block FROM vpc WHERE NOT is_default")}
    a, b, c = ids["10.92.0.0/16"], ids["10.93.0.0/16"], ids["10.94.0.0/16"]
    row = one(
        conn,
        "INSERT INTO peering_connection (requester_id, accepter_id, tags)"
        f' VALUES ({a}, {b}, \'{{"Name": "a-b"}}\') RETURNING id',
    )
    assert sorted(preview(conn)) == [("create", "peering_connection")] + [("create", "vpc")] * 3
    conn.execute("SELECT * FROM iasql_commit()")
    vpc_ids = dict(rows(conn, f"SELECT id, vpc_id FROM vpc WHERE id IN ({a}, {b}, {c})"))
    [insert] = [s for s in replay_sql(conn) if "peering_connection" in s]
    assert "'10.92.0.0/16'" in insert and "'10.93.0.0/16'" in insert
    peering_id, state, region = rows(
        conn,
        f"SELECT peering_connection_id, state, region FROM peering_connection WHERE id = {row}",
    )[0]
    assert (state, region) == ("active", REGION)
    [found] = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id])[
        "VpcPeeringConnections"
    ]
    assert found["Status"]["Code"] == "active"
    assert found["RequesterVpcInfo"]["VpcId"] == vpc_ids[a]
    assert found["AccepterVpcInfo"]["VpcId"] == vpc_ids[b]
    settled(conn)

    # Tags change in place.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f'UPDATE peering_connection SET tags = \'{{"Name": "ab"}}\' WHERE id = {row}')
    assert preview(conn) == [("update", "peering_connection")]
    assert changes(conn, "peering_connection") == [
        {"tags": {"old": {"Name": "a-b"}, "new": {"Name": "ab"}}}
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    [found] = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id])[
        "VpcPeeringConnections"
    ]
    assert {t["Key"]: t["Value"] for t in found["Tags"]}["Name"] == "ab"
    settled(conn)

    # Another accepter is another connection.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE peering_connection SET accepter_id = {c} WHERE id = {row}")
    assert preview(conn) == [("replace", "peering_connection")]
    assert changes(conn, "peering_connection")[0]["accepter_id"]["forces_replace"] is True
    conn.execute("SELECT * FROM iasql_commit()")
    new_id = one(conn, f"SELECT peering_connection_id FROM peering_connection WHERE id = {row}")
    assert new_id != peering_id
    both = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id, new_id])
    status = {p["VpcPeeringConnectionId"]: p for p in both["VpcPeeringConnections"]}
    assert status[peering_id]["Status"]["Code"] == "deleted"
    assert status[new_id]["Status"]["Code"] == "active"
    assert status[new_id]["AccepterVpcInfo"]["VpcId"] == vpc_ids[c]
    settled(conn)

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM peering_connection; DELETE FROM vpc WHERE id IN ({a}, {b}, {c})")
    assert sorted(preview(conn)) == [("delete", "peering_connection")] + [("delete", "vpc")] * 3
    conn.execute("SELECT * FROM iasql_commit()")
    [found] = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[new_id])[
        "VpcPeeringConnections"
    ]
    assert found["Status"]["Code"] == "deleted"
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_ids[a]]}])["Vpcs"] == []
    settled(conn)


def test_endpoint_lifecycles(net_env: Any) -> None:
    conn, ec2 = net_env
    conn.execute("SELECT * FROM iasql_begin()")
    vpc = one(conn, "INSERT INTO vpc (cidr_block) VALUES ('10.95.0.0/16') RETURNING id")
    conn.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone)"
        f" VALUES ({vpc}, '10.95.1.0/24', 'us-east-1a'), ({vpc}, '10.95.2.0/24', 'us-east-1b')"
    )
    # Endpoints name route tables by cloud id: the table must be made first.
    conn.execute(f'INSERT INTO route_table (vpc_id, tags) VALUES ({vpc}, \'{{"Name": "s3"}}\')')
    conn.execute("SELECT * FROM iasql_commit()")
    vpc_id = one(conn, f"SELECT vpc_id FROM vpc WHERE id = {vpc}")
    subnets = dict(rows(conn, f"SELECT cidr_block, id FROM subnet WHERE vpc_id = {vpc}"))
    cloud_subnets = dict(rows(conn, f"SELECT id, subnet_id FROM subnet WHERE vpc_id = {vpc}"))
    s1, s2 = subnets["10.95.1.0/24"], subnets["10.95.2.0/24"]
    route_table = one(
        conn, f"SELECT route_table_id FROM route_table WHERE vpc_id = {vpc} AND tags IS NOT NULL"
    )

    conn.execute("SELECT * FROM iasql_begin()")
    gateway = one(
        conn,
        "INSERT INTO endpoint_gateway (vpc_id, service, route_table_ids, policy) VALUES"
        f" ({vpc}, 's3', ARRAY['{route_table}'], '{json.dumps(policy('s3:GetObject'))}')"
        " RETURNING id",
    )
    interface = one(
        conn,
        "INSERT INTO endpoint_interface (vpc_id, service, tags)"
        f" VALUES ({vpc}, 'lambda', '{{\"Name\": \"fn\"}}') RETURNING id",
    )
    conn.execute(
        "INSERT INTO endpoint_interface_subnets (endpoint_interface_id, subnet_id)"
        f" VALUES ({interface}, {s1}), ({interface}, {s2})"
    )
    assert sorted(preview(conn)) == [
        ("create", "endpoint_gateway"),
        ("create", "endpoint_interface"),
        ("create", "endpoint_interface_subnets"),
        ("create", "endpoint_interface_subnets"),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    sql = replay_sql(conn)
    # The endpoint's statement gave it its VPC's subnets (one per zone: both) by trigger,
    # which the next statement's subnets replaced by trigger: the replay writes only the two
    # statements, and the same triggers do the rest where it runs.
    assert sum(s.startswith('INSERT INTO "endpoint_interface_subnets"') for s in sql) == 2
    assert not [s for s in sql if s.startswith('DELETE FROM "endpoint_interface_subnets"')]
    # The route table by its VPC and tags, not its id.
    [insert] = [s for s in sql if s.startswith('INSERT INTO "endpoint_gateway"')]
    assert route_table not in insert and 'SELECT "route_table_id" FROM "route_table"' in insert
    gateway_id, state = rows(
        conn, f"SELECT vpc_endpoint_id, state FROM endpoint_gateway WHERE id = {gateway}"
    )[0]
    assert state == "available"
    found = endpoint(ec2, gateway_id)
    assert (found["VpcEndpointType"], found["ServiceName"]) == (
        "Gateway",
        "com.amazonaws.us-east-1.s3",
    )
    assert found["RouteTableIds"] == [route_table]
    assert json.loads(found["PolicyDocument"]) == policy("s3:GetObject")
    routes = ec2.describe_route_tables(RouteTableIds=[route_table])["RouteTables"][0]["Routes"]
    assert [r["GatewayId"] for r in routes if "DestinationPrefixListId" in r] == [gateway_id]
    interface_id = one(
        conn, f"SELECT vpc_endpoint_id FROM endpoint_interface WHERE id = {interface}"
    )
    found = endpoint(ec2, interface_id)
    assert (found["VpcEndpointType"], found["ServiceName"]) == (
        "Interface",
        "com.amazonaws.us-east-1.lambda",
    )
    # AWS would turn private DNS on by default; the column's default is off.
    assert found["PrivateDnsEnabled"] is False
    assert sorted(found["SubnetIds"]) == sorted(cloud_subnets.values())
    settled(conn)

    # Policies and tags change in place; a subnet leaves the interface endpoint.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE endpoint_gateway SET policy = '{json.dumps(policy('s3:*'))}' WHERE id = {gateway};"
        f" UPDATE endpoint_interface SET policy = '{json.dumps(policy('lambda:InvokeFunction'))}',"
        f' tags = \'{{"Name": "fn", "env": "test"}}\' WHERE id = {interface};'
        f" DELETE FROM endpoint_interface_subnets WHERE subnet_id = {s2}"
    )
    assert sorted(preview(conn)) == [
        ("delete", "endpoint_interface_subnets"),
        ("update", "endpoint_gateway"),
        ("update", "endpoint_interface"),
    ]
    assert set(changes(conn, "endpoint_interface")[0]) == {"policy", "tags"}
    conn.execute("SELECT * FROM iasql_commit()")
    assert json.loads(endpoint(ec2, gateway_id)["PolicyDocument"]) == policy("s3:*")
    found = endpoint(ec2, interface_id)
    assert json.loads(found["PolicyDocument"]) == policy("lambda:InvokeFunction")
    assert user_tags(found["Tags"]) == {"Name": "fn", "env": "test"}  # and the create token
    assert found["SubnetIds"] == [cloud_subnets[s1]]
    settled(conn)

    # No policy is AWS's full-access one; the route table leaves the gateway endpoint.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE endpoint_gateway SET policy = NULL, route_table_ids = NULL WHERE id = {gateway}"
    )
    assert changes(conn, "endpoint_gateway")[0]["route_table_ids"] == {
        "old": [route_table],
        "new": None,
    }
    conn.execute("SELECT * FROM iasql_commit()")
    found = endpoint(ec2, gateway_id)
    assert found["RouteTableIds"] == []
    assert normalize_endpoint_policy(found["PolicyDocument"]) is None
    assert one(conn, f"SELECT policy FROM endpoint_gateway WHERE id = {gateway}") is None
    settled(conn)

    # Another service is another endpoint; the interface endpoint's subnets follow it.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE endpoint_gateway SET service = 'dynamodb' WHERE id = {gateway}")
    conn.execute(
        "UPDATE endpoint_interface SET service = 'sqs', private_dns_enabled = true"
        f" WHERE id = {interface}"
    )
    assert sorted(preview(conn)) == [
        ("replace", "endpoint_gateway"),
        ("replace", "endpoint_interface"),
        ("replace", "endpoint_interface_subnets"),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert endpoint(ec2, gateway_id)["State"] == "deleted"
    assert endpoint(ec2, interface_id)["State"] == "deleted"
    new_gateway = one(conn, f"SELECT vpc_endpoint_id FROM endpoint_gateway WHERE id = {gateway}")
    new_interface = one(
        conn, f"SELECT vpc_endpoint_id FROM endpoint_interface WHERE id = {interface}"
    )
    assert endpoint(ec2, new_gateway)["ServiceName"] == "com.amazonaws.us-east-1.dynamodb"
    found = endpoint(ec2, new_interface)
    assert found["ServiceName"] == "com.amazonaws.us-east-1.sqs"
    assert found["PrivateDnsEnabled"] is True
    assert found["SubnetIds"] == [cloud_subnets[s1]]
    settled(conn)

    # Deleting the interface endpoint's row takes its subnet rows along (ON DELETE CASCADE).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM endpoint_gateway; DELETE FROM endpoint_interface;"
        f" DELETE FROM route_table WHERE vpc_id = {vpc} AND tags IS NOT NULL"
    )
    assert sorted(preview(conn)) == [
        ("delete", "endpoint_gateway"),
        ("delete", "endpoint_interface"),
        ("delete", "endpoint_interface_subnets"),
        ("delete", "route_table"),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert endpoint(ec2, new_gateway)["State"] == "deleted"
    assert endpoint(ec2, new_interface)["State"] == "deleted"
    assert one(conn, "SELECT count(*) FROM endpoint_interface_subnets") == 0
    settled(conn)

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM subnet WHERE vpc_id = {vpc}; DELETE FROM vpc WHERE id = {vpc}")
    conn.execute("SELECT * FROM iasql_commit()")
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
    settled(conn)


def test_interface_endpoint_without_subnets_gets_one_per_zone(net_env: Any) -> None:
    """IaSQL's SQL: an interface endpoint inserted alone gets its VPC's subnets (one per zone
    here), as rows before the commit; subnets given in a later statement replace those."""
    conn, ec2 = net_env
    conn.execute("SELECT * FROM iasql_begin()")
    vpc = one(conn, "INSERT INTO vpc (cidr_block) VALUES ('10.96.0.0/16') RETURNING id")
    conn.execute(
        "INSERT INTO subnet (vpc_id, cidr_block, availability_zone) VALUES"
        f" ({vpc}, '10.96.1.0/24', 'us-east-1a'), ({vpc}, '10.96.2.0/24', 'us-east-1a'),"
        f" ({vpc}, '10.96.3.0/24', 'us-east-1b')"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    subnets = dict(rows(conn, f"SELECT cidr_block, id FROM subnet WHERE vpc_id = {vpc}"))
    cloud = dict(rows(conn, f"SELECT id, subnet_id FROM subnet WHERE vpc_id = {vpc}"))
    first_a, second_a, b = (subnets[f"10.96.{n}.0/24"] for n in (1, 2, 3))

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO endpoint_interface (service, vpc_id, tags)"
        f" SELECT 'lambda', id, '{{\"Name\": \"fn-default\"}}' FROM vpc WHERE id = {vpc}"
    )
    interface = one(conn, "SELECT id FROM endpoint_interface WHERE tags ->> 'Name' = 'fn-default'")
    given = "SELECT subnet_id FROM endpoint_interface_subnets WHERE endpoint_interface_id = "
    assert sorted(r[0] for r in rows(conn, given + str(interface))) == sorted([first_a, b])
    assert sorted(preview(conn)) == [
        ("create", "endpoint_interface"),
        ("create", "endpoint_interface_subnets"),
        ("create", "endpoint_interface_subnets"),
    ]
    # Another one, whose subnet comes in a statement of its own.
    other = one(
        conn,
        f"INSERT INTO endpoint_interface (service, vpc_id) VALUES ('sqs', {vpc}) RETURNING id",
    )
    conn.execute(
        "INSERT INTO endpoint_interface_subnets (endpoint_interface_id, subnet_id)"
        f" VALUES ({other}, {second_a})"
    )
    assert [r[0] for r in rows(conn, given + str(other))] == [second_a]
    conn.execute("SELECT * FROM iasql_commit()")
    endpoint_id = one(
        conn, f"SELECT vpc_endpoint_id FROM endpoint_interface WHERE id = {interface}"
    )
    assert sorted(endpoint(ec2, endpoint_id)["SubnetIds"]) == sorted([cloud[first_a], cloud[b]])
    other_id = one(conn, f"SELECT vpc_endpoint_id FROM endpoint_interface WHERE id = {other}")
    assert endpoint(ec2, other_id)["SubnetIds"] == [cloud[second_a]]
    assert sorted(r[0] for r in rows(conn, given + str(interface))) == sorted([first_a, b])
    settled(conn)

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"DELETE FROM endpoint_interface WHERE vpc_id = {vpc};"
        f" DELETE FROM subnet WHERE vpc_id = {vpc}; DELETE FROM vpc WHERE id = {vpc}"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    settled(conn)


# --- two regions ---------------------------------------------------------------------------

WEST = "us-west-2"


@pytest.fixture(scope="module")
def two_regions(
    iasql: RunningServer, moto_accounts: Any
) -> Iterator[tuple[psycopg.Connection, Any, Any]]:
    """aws_vpc on an account of its own with two regions enabled; boto3 for each."""
    moto: MotoServer = moto_accounts()
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('vpc_regions')").fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(conn, moto)
        only_regions(conn, REGION, WEST)
        conn.execute("SELECT * FROM iasql_install('aws_vpc')")
        clients = [
            boto3.client(
                "ec2",
                region_name=region,
                endpoint_url=moto.endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            for region in (REGION, WEST)
        ]
        yield conn, clients[0], clients[1]


def test_vpc_and_subnet_move_to_another_region(two_regions: Any) -> None:
    """IaSQL's multi-region script: the VPC and its subnet go to another region in one commit
    (both replaced), the subnet on its new VPC's default ACL."""
    conn, east, west = two_regions
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO vpc (cidr_block, tags, region)"
        f" VALUES ('10.70.0.0/16', '{{\"name\": \"mover\"}}', '{WEST}');"
        " INSERT INTO subnet (availability_zone, vpc_id, cidr_block, region)"
        f" SELECT '{WEST}a', id, '10.70.0.0/16', '{WEST}' FROM vpc"
        f" WHERE is_default = false AND cidr_block = '10.70.0.0/16' AND region = '{WEST}'"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    old_vpc = one(conn, "SELECT vpc_id FROM vpc WHERE tags ->> 'name' = 'mover'")
    settled(conn)

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "WITH updated_subnet AS ("
        f" UPDATE subnet SET region = '{REGION}', availability_zone = '{REGION}a'"
        f" WHERE cidr_block = '10.70.0.0/16' AND availability_zone = '{WEST}a'"
        f" AND region = '{WEST}')"
        f" UPDATE vpc SET region = '{REGION}'"
        " WHERE cidr_block = '10.70.0.0/16' AND state = 'available'"
        f" AND tags ->> 'name' = 'mover' AND region = '{WEST}'"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    vpc_row, vpc_id, region = rows(
        conn, "SELECT id, vpc_id, region FROM vpc WHERE tags ->> 'name' = 'mover'"
    )[0]
    assert region == REGION and vpc_id != old_vpc
    assert west.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [old_vpc]}])["Vpcs"] == []
    subnet_id, subnet_region = rows(
        conn, f"SELECT subnet_id, region FROM subnet WHERE vpc_id = {vpc_row}"
    )[0]
    assert subnet_region == REGION
    [subnet] = east.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
    assert subnet["VpcId"] == vpc_id and subnet["AvailabilityZone"] == f"{REGION}a"
    default_acl = one(
        conn, f"SELECT network_acl_id FROM network_acl WHERE vpc_id = {vpc_row} AND is_default"
    )
    assert acl_of_subnet(east, subnet_id) == default_acl
    settled(conn)

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"DELETE FROM subnet WHERE vpc_id = {vpc_row}; DELETE FROM vpc WHERE id = {vpc_row}"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    assert east.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
    settled(conn)


def test_peering_connection_between_regions(two_regions: Any) -> None:
    """IaSQL's SQL: a connection between VPCs of two regions, requested from the requester's
    region and accepted from the accepter's; one row, in the requester's region."""
    conn, east, west = two_regions
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO vpc (cidr_block, region) VALUES"
        f" ('10.71.0.0/16', '{REGION}'), ('10.72.0.0/16', '{WEST}')"
    )
    conn.execute(
        "INSERT INTO peering_connection (requester_id, accepter_id, tags)"
        ' SELECT r.id, a.id, \'{"Name": "east-west"}\' FROM vpc r, vpc a'
        " WHERE r.cidr_block = '10.71.0.0/16' AND a.cidr_block = '10.72.0.0/16'"
    )
    assert rows(conn, "SELECT region, accepter_region FROM peering_connection") == [(REGION, WEST)]
    conn.execute("SELECT * FROM iasql_commit()")
    ids = dict(rows(conn, "SELECT cidr_block, vpc_id FROM vpc WHERE NOT is_default"))
    peering_id, state = rows(conn, "SELECT peering_connection_id, state FROM peering_connection")[0]
    assert state == "active"
    for ec2 in (east, west):
        [found] = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id])[
            "VpcPeeringConnections"
        ]
        assert found["Status"]["Code"] == "active"
        assert found["RequesterVpcInfo"]["VpcId"] == ids["10.71.0.0/16"]
        assert (found["AccepterVpcInfo"]["VpcId"], found["AccepterVpcInfo"]["Region"]) == (
            ids["10.72.0.0/16"],
            WEST,
        )
    settled(conn)
    [insert] = [s for s in replay_sql(conn) if "peering_connection" in s]
    assert "'10.71.0.0/16'" in insert and "'10.72.0.0/16'" in insert

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM peering_connection;"
        " DELETE FROM vpc WHERE cidr_block IN ('10.71.0.0/16', '10.72.0.0/16')"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    [found] = east.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id])[
        "VpcPeeringConnections"
    ]
    assert found["Status"]["Code"] == "deleted"
    settled(conn)
