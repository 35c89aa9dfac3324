"""aws_vpc's routing tables through SQL (begin / preview / commit), each effect read back with
boto3 from a moto server: DHCP option sets, elastic IPs, internet and NAT gateways, route
tables, their associations and routes, and the defaults AWS makes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_vpc.routing import (
    is_aws_route,
    is_default_dhcp,
    normalize_destination,
    normalize_dhcp_configurations,
)
from tests.support.env import RunningServer, add_credentials, commit, one, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

REGION = "us-east-1"


def connect_env(iasql: RunningServer, moto: MotoServer) -> psycopg.Connection:
    """A new environment database on the moto account, with aws_account set up and only
    REGION enabled (every read of every other region costs time on moto)."""
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        alias = f"env_{secrets.token_hex(4)}"
        url = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
    assert url is not None
    conn = psycopg.connect(str(url[0]), autocommit=True)
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn, REGION)
    return conn


def ec2_of(moto: MotoServer) -> Any:
    # Explicit dummy keys: a module-scoped fixture runs before the per-test environment.
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def fresh_env(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[psycopg.Connection, Any]]:
    """A new account, for a test that builds with boto3 before installing aws_vpc."""
    moto: MotoServer = moto_accounts()
    with connect_env(iasql, moto) as conn:
        yield conn, ec2_of(moto)


@pytest.fixture(scope="module")
def vpc_env(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[psycopg.Connection, Any]]:
    """One account with aws_vpc installed, shared by the life-cycle tests: each works in its
    own VPC and removes what it made."""
    moto: MotoServer = moto_accounts()
    with connect_env(iasql, moto) as conn:
        install(conn)
        yield conn, ec2_of(moto)


def install(conn: psycopg.Connection) -> dict[str, int]:
    found = rows(conn, "SELECT created_table_name, record_count FROM iasql_install('aws_vpc')")
    return dict(found)


def preview(conn: psycopg.Connection) -> list[tuple[str, str, dict[str, Any]]]:
    return rows(conn, "SELECT action, table_name, changes FROM iasql_preview() ORDER BY 2, 1")


def tags(pairs: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in pairs or () if not t["Key"].startswith("iasql:")}


def route_table(ec2: Any, table_id: str) -> dict[str, Any]:
    return dict(ec2.describe_route_tables(RouteTableIds=[table_id])["RouteTables"][0])


def routes(ec2: Any, table_id: str) -> dict[str, dict[str, Any]]:
    return {
        r.get("DestinationCidrBlock") or r["DestinationIpv6CidrBlock"]: r
        for r in route_table(ec2, table_id)["Routes"]
    }


# --- normalisation -------------------------------------------------------------------------


def test_dhcp_configurations_normalised() -> None:
    given = (
        '[{"Key": "domain-name-servers", "Values": ["10.0.0.2", {"Value": "10.0.0.3"}]},'
        ' {"Key": "domain-name", "Values": [{"Value": "corp"}]}]'
    )
    assert normalize_dhcp_configurations(given) == [
        {"Key": "domain-name", "Values": [{"Value": "corp"}]},
        # The servers' order is kept: it is the order clients ask them in.
        {"Key": "domain-name-servers", "Values": [{"Value": "10.0.0.2"}, {"Value": "10.0.0.3"}]},
    ]
    assert normalize_dhcp_configurations([]) is None
    default = [
        {"Key": "domain-name-servers", "Values": ["AmazonProvidedDNS"]},
        {"Key": "domain-name", "Values": ["eu-west-1.compute.internal"]},
    ]
    assert is_default_dhcp({"dhcp_configurations": default, "region": "eu-west-1"})
    assert not is_default_dhcp({"dhcp_configurations": default, "region": "us-east-1"})


def test_route_destination_and_aws_routes() -> None:
    assert normalize_destination("10.0.0.1/16") == "10.0.0.0/16"
    assert normalize_destination("2001:DB8::/64") == "2001:db8::/64"
    assert normalize_destination("pl-63a5400a") == "pl-63a5400a"
    assert is_aws_route({"gateway_id": "local"})
    assert is_aws_route({"gateway_id": "vpce-0abc"})
    assert is_aws_route({"gateway_id": "igw-1", "origin": "CreateRouteTable"})
    assert not is_aws_route({"gateway_id": "igw-1", "origin": "CreateRoute"})


# --- import and AWS's defaults -------------------------------------------------------------


def make_network(ec2: Any) -> dict[str, str]:
    """What a user built with boto3 before installing: a VPC with its own DHCP options, a
    public subnet behind a route table to an internet gateway, a NAT gateway on an elastic IP.
    Also a stand-in for what AWS gives each region and moto doesn't: the default DHCP set, and
    the default VPC's internet gateway."""
    made: dict[str, str] = {}
    default = ec2.create_dhcp_options(
        DhcpConfigurations=[
            {"Key": "domain-name", "Values": ["ec2.internal"]},
            {"Key": "domain-name-servers", "Values": ["AmazonProvidedDNS"]},
        ]
    )
    made["default_dhcp"] = default["DhcpOptions"]["DhcpOptionsId"]
    corp = ec2.create_dhcp_options(
        DhcpConfigurations=[{"Key": "domain-name", "Values": ["corp.example"]}],
    )
    made["dhcp"] = corp["DhcpOptions"]["DhcpOptionsId"]
    # moto drops the TagSpecifications of create_dhcp_options.
    ec2.create_tags(Resources=[made["dhcp"]], Tags=[{"Key": "Name", "Value": "corp"}])
    made["vpc"] = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    ec2.associate_dhcp_options(DhcpOptionsId=made["dhcp"], VpcId=made["vpc"])
    made["subnet"] = ec2.create_subnet(
        VpcId=made["vpc"], CidrBlock="10.20.1.0/24", AvailabilityZone="us-east-1a"
    )["Subnet"]["SubnetId"]
    made["igw"] = ec2.create_internet_gateway(
        TagSpecifications=[
            {"ResourceType": "internet-gateway", "Tags": [{"Key": "Name", "Value": "gw"}]}
        ]
    )["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=made["igw"], VpcId=made["vpc"])
    [default_vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    made["default_vpc"] = default_vpc["VpcId"]
    made["default_igw"] = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=made["default_igw"], VpcId=made["default_vpc"])
    made["eip"] = ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[
            {"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "nat"}]}
        ],
    )["AllocationId"]
    made["nat"] = ec2.create_nat_gateway(SubnetId=made["subnet"], AllocationId=made["eip"])[
        "NatGateway"
    ]["NatGatewayId"]
    made["rtb"] = ec2.create_route_table(
        VpcId=made["vpc"],
        TagSpecifications=[
            {"ResourceType": "route-table", "Tags": [{"Key": "Name", "Value": "public"}]}
        ],
    )["RouteTable"]["RouteTableId"]
    ec2.create_route(
        RouteTableId=made["rtb"], DestinationCidrBlock="0.0.0.0/0", GatewayId=made["igw"]
    )
    made["assoc"] = ec2.associate_route_table(RouteTableId=made["rtb"], SubnetId=made["subnet"])[
        "AssociationId"
    ]
    return made


def test_import_at_install_and_protected_defaults(fresh_env: Any) -> None:
    conn, ec2 = fresh_env
    made = make_network(ec2)
    counts = install(conn)
    assert counts["dhcp_options"] == 2 and counts["elastic_ip"] == 1
    assert counts["internet_gateway"] == 2 and counts["nat_gateway"] == 1
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # Every reference is a row's id, and holds the cloud's resource.
    assert rows(
        conn,
        "SELECT d.dhcp_options_id, d.dhcp_configurations::text, d.tags::text FROM vpc"
        f" JOIN dhcp_options d ON d.id = vpc.dhcp_options_id WHERE vpc.vpc_id = '{made['vpc']}'",
    ) == [
        (
            made["dhcp"],
            json.dumps([{"Key": "domain-name", "Values": [{"Value": "corp.example"}]}]),
            '{"Name": "corp"}',
        )
    ]
    assert dict(
        rows(
            conn,
            "SELECT g.internet_gateway_id, v.vpc_id FROM internet_gateway g"
            " JOIN vpc v ON v.id = g.vpc_id",
        )
    ) == {made["igw"]: made["vpc"], made["default_igw"]: made["default_vpc"]}
    assert rows(
        conn,
        "SELECT n.nat_gateway_id, n.connectivity_type, n.state, s.subnet_id, e.allocation_id,"
        " e.tags::text FROM nat_gateway n JOIN subnet s ON s.id = n.subnet_id"
        " JOIN elastic_ip e ON e.id = n.elastic_ip_id",
    ) == [(made["nat"], "public", "available", made["subnet"], made["eip"], '{"Name": "nat"}')]
    tables = rows(
        conn,
        "SELECT t.route_table_id, t.tags::text FROM route_table t JOIN vpc v ON v.id = t.vpc_id"
        f" WHERE v.vpc_id = '{made['vpc']}' ORDER BY t.tags IS NULL",
    )
    assert tables[0] == (made["rtb"], '{"Name": "public"}') and len(tables) == 2
    main_table = tables[1][0]
    assert rows(
        conn,
        "SELECT a.is_main, t.route_table_id, s.subnet_id FROM route_table_association a"
        " JOIN route_table t ON t.id = a.route_table_id LEFT JOIN subnet s ON s.id = a.subnet_id"
        f" JOIN vpc v ON v.id = a.vpc_id WHERE v.vpc_id = '{made['vpc']}' ORDER BY a.is_main",
    ) == [(False, made["rtb"], made["subnet"]), (True, main_table, None)]
    assert rows(
        conn,
        "SELECT r.destination, r.gateway_id FROM route r JOIN route_table t"
        f" ON t.id = r.route_table_id WHERE t.route_table_id = '{made['rtb']}' ORDER BY 1",
    ) == [("0.0.0.0/0", made["igw"]), ("10.20.0.0/16", "local")]

    # What AWS made can't be deleted by accident: the rows come back and the cloud keeps it.
    before = {
        table: one(conn, f"SELECT count(*) FROM {table}")
        for table in (
            "dhcp_options",
            "internet_gateway",
            "route_table",
            "route_table_association",
            "route",
        )
    }
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM dhcp_options WHERE dhcp_configurations::text LIKE '%ec2.internal%'")
    conn.execute(
        f"DELETE FROM internet_gateway WHERE internet_gateway_id = '{made['default_igw']}'"
    )
    # The main table, with its main association and its local route (ON DELETE CASCADE).
    conn.execute(f"DELETE FROM route_table WHERE route_table_id = '{main_table}'")
    conn.execute("DELETE FROM route WHERE gateway_id = 'local'")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    commit(conn)
    after = {table: one(conn, f"SELECT count(*) FROM {table}") for table in before}
    assert after == before
    assert ec2.describe_dhcp_options(DhcpOptionsIds=[made["default_dhcp"]])["DhcpOptions"]
    igw = ec2.describe_internet_gateways(InternetGatewayIds=[made["default_igw"]])
    assert igw["InternetGateways"][0]["Attachments"][0]["VpcId"] == made["default_vpc"]
    main = route_table(ec2, main_table)
    assert [a["Main"] for a in main["Associations"]] == [True]
    assert [r["GatewayId"] for r in main["Routes"]] == ["local"]
    assert "10.20.0.0/16" in routes(ec2, made["rtb"])


# --- dhcp_options and vpc.dhcp_options_id ---------------------------------------------------

CORP = [
    {"Key": "domain-name", "Values": [{"Value": "corp.example"}]},
    {"Key": "domain-name-servers", "Values": [{"Value": "10.50.0.2"}]},
]


def test_dhcp_options_life_cycle(vpc_env: Any) -> None:
    conn, ec2 = vpc_env
    conn.execute("SELECT * FROM iasql_begin()")
    # AWS's form, options in any order: what is compared is the canonical form.
    conn.execute(
        'INSERT INTO dhcp_options (dhcp_configurations, tags) VALUES (%s, \'{"Name": "corp"}\')',
        (json.dumps(list(reversed(CORP))),),
    )
    conn.execute(
        "INSERT INTO vpc (cidr_block, dhcp_options_id)"
        " SELECT '10.50.0.0/16', id FROM dhcp_options WHERE tags::jsonb = '{\"Name\": \"corp\"}'"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("create", "dhcp_options"), ("create", "vpc")]
    assert planned[0][2]["tags"] == {"old": None, "new": {"Name": "corp"}}
    set_row = one(conn, "SELECT id FROM dhcp_options WHERE tags IS NOT NULL")
    assert planned[1][2]["dhcp_options_id"] == {"old": None, "new": f"(new dhcp_options {set_row})"}
    commit(conn)
    first = one(conn, f"SELECT dhcp_options_id FROM dhcp_options WHERE id = {set_row}")
    vpc_id = one(conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.50.0.0/16'")
    options = ec2.describe_dhcp_options(DhcpOptionsIds=[first])["DhcpOptions"][0]
    assert normalize_dhcp_configurations(options["DhcpConfigurations"]) == CORP
    assert tags(options["Tags"]) == {"Name": "corp"}
    assert ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["DhcpOptionsId"] == first

    # Tags change in place.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f'UPDATE dhcp_options SET tags = \'{{"Name": "corp-2"}}\' WHERE id = {set_row}')
    assert preview(conn) == [
        ("update", "dhcp_options", {"tags": {"old": {"Name": "corp"}, "new": {"Name": "corp-2"}}})
    ]
    commit(conn)
    options = ec2.describe_dhcp_options(DhcpOptionsIds=[first])["DhcpOptions"][0]
    assert tags(options["Tags"]) == {"Name": "corp-2"}

    # New options: a new set takes the old one's place in its VPC, and the VPC is untouched.
    other = [{"Key": "domain-name", "Values": [{"Value": "other.example"}]}]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE dhcp_options SET dhcp_configurations = %s WHERE id = {set_row}",
        (json.dumps(other),),
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("update", "dhcp_options")]
    assert planned[0][2] == {"dhcp_configurations": {"old": CORP, "new": other}}
    commit(conn)
    second = one(conn, f"SELECT dhcp_options_id FROM dhcp_options WHERE id = {set_row}")
    assert second != first
    assert ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["DhcpOptionsId"] == second
    assert one(conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.50.0.0/16'") == vpc_id
    left = ec2.describe_dhcp_options(Filters=[{"Name": "dhcp-options-id", "Values": [first]}])
    assert left["DhcpOptions"] == []
    options = ec2.describe_dhcp_options(DhcpOptionsIds=[second])["DhcpOptions"][0]
    assert normalize_dhcp_configurations(options["DhcpConfigurations"]) == other
    assert tags(options["Tags"]) == {"Name": "corp-2"}

    # NULL is no options at all ("default"); then the set can go.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE vpc SET dhcp_options_id = NULL WHERE cidr_block = '10.50.0.0/16'")
    assert preview(conn) == [("update", "vpc", {"dhcp_options_id": {"old": second, "new": None}})]
    commit(conn)
    assert ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["DhcpOptionsId"] == "default"
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM dhcp_options WHERE id = {set_row}")
    assert [(a, t) for a, t, _ in preview(conn)] == [("delete", "dhcp_options")]
    commit(conn)
    left = ec2.describe_dhcp_options(Filters=[{"Name": "dhcp-options-id", "Values": [second]}])
    assert left["DhcpOptions"] == []


# --- elastic_ip, internet_gateway, nat_gateway ---------------------------------------------

SUBNETS = """
INSERT INTO vpc (cidr_block) VALUES ('10.30.0.0/16');
INSERT INTO subnet (vpc_id, cidr_block, availability_zone)
    SELECT id, cidr, 'us-east-1a' FROM vpc, (VALUES ('10.30.1.0/24'), ('10.30.2.0/24')) AS s(cidr)
    WHERE cidr_block = '10.30.0.0/16';
"""


def test_gateways_life_cycle(vpc_env: Any) -> None:
    conn, ec2 = vpc_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(SUBNETS)
    conn.execute('INSERT INTO elastic_ip (tags) VALUES (\'{"Name": "nat"}\')')
    conn.execute('INSERT INTO internet_gateway (tags) VALUES (\'{"Name": "gw"}\')')  # detached
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [
        ("create", "elastic_ip"),
        ("create", "internet_gateway"),
        ("create", "subnet"),
        ("create", "subnet"),
        ("create", "vpc"),
    ]
    commit(conn)
    vpc_row, vpc_id = rows(conn, "SELECT id, vpc_id FROM vpc WHERE cidr_block = '10.30.0.0/16'")[0]
    igw = one(conn, "SELECT internet_gateway_id FROM internet_gateway")
    gateway = ec2.describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"][0]
    assert gateway["Attachments"] == [] and tags(gateway["Tags"]) == {"Name": "gw"}
    allocation, public_ip = rows(conn, "SELECT allocation_id, public_ip FROM elastic_ip")[0]
    address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
    assert address["PublicIp"] == public_ip and tags(address["Tags"]) == {"Name": "nat"}

    # Attach in place.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE internet_gateway SET vpc_id = {vpc_row}")
    assert preview(conn) == [
        ("update", "internet_gateway", {"vpc_id": {"old": None, "new": vpc_id}})
    ]
    commit(conn)
    gateway = ec2.describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"][0]
    assert [a["VpcId"] for a in gateway["Attachments"]] == [vpc_id]
    assert one(conn, "SELECT internet_gateway_id FROM internet_gateway") == igw

    # A public NAT gateway on the address, a private one without.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id, elastic_ip_id, tags)"
        " SELECT 'public', s.id, e.id, '{\"Name\": \"out\"}' FROM subnet s, elastic_ip e"
        " WHERE s.cidr_block = '10.30.1.0/24'"
    )
    conn.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id)"
        " SELECT 'private', id FROM subnet WHERE cidr_block = '10.30.1.0/24'"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("create", "nat_gateway"), ("create", "nat_gateway")]
    public_changes = next(c for _, _, c in planned if c["connectivity_type"]["new"] == "public")
    assert public_changes["elastic_ip_id"] == {"old": None, "new": allocation}
    commit(conn)
    gateways = {
        t: (n, s)
        for t, n, s in rows(
            conn, "SELECT connectivity_type, nat_gateway_id, state FROM nat_gateway"
        )
    }
    assert {s for _, s in gateways.values()} == {"available"}
    public = ec2.describe_nat_gateways(NatGatewayIds=[gateways["public"][0]])["NatGateways"][0]
    assert public["NatGatewayAddresses"][0]["AllocationId"] == allocation
    assert tags(public["Tags"]) == {"Name": "out"}
    private = ec2.describe_nat_gateways(NatGatewayIds=[gateways["private"][0]])["NatGateways"][0]
    assert private["ConnectivityType"] == "private" and private["SubnetId"] != ""

    # In place: the tags of all three. Replaced: the private gateway, moved to another subnet.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE nat_gateway SET tags = '{\"Name\": \"out-2\"}' WHERE connectivity_type = 'public'"
    )
    conn.execute('UPDATE elastic_ip SET tags = \'{"Name": "nat-2"}\'')
    conn.execute("UPDATE internet_gateway SET tags = NULL")
    conn.execute(
        "UPDATE nat_gateway SET subnet_id = (SELECT id FROM subnet WHERE cidr_block = '10.30.2.0/24')"
        " WHERE connectivity_type = 'private'"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [
        ("update", "elastic_ip"),
        ("update", "internet_gateway"),
        ("replace", "nat_gateway"),
        ("update", "nat_gateway"),
    ]
    assert planned[2][2]["subnet_id"]["forces_replace"] is True
    assert planned[1][2] == {"tags": {"old": {"Name": "gw"}, "new": None}}
    commit(conn)
    assert tags(ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]["Tags"]) == {
        "Name": "nat-2"
    }
    gateway = ec2.describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"][0]
    assert tags(gateway["Tags"]) == {}
    public = ec2.describe_nat_gateways(NatGatewayIds=[gateways["public"][0]])["NatGateways"][0]
    assert tags(public["Tags"]) == {"Name": "out-2"}
    new_private = one(
        conn, "SELECT nat_gateway_id FROM nat_gateway WHERE connectivity_type = 'private'"
    )
    assert new_private != gateways["private"][0]
    old = ec2.describe_nat_gateways(NatGatewayIds=[gateways["private"][0]])["NatGateways"][0]
    assert old["State"] == "deleted"
    moved = ec2.describe_nat_gateways(NatGatewayIds=[new_private])["NatGateways"][0]
    subnet_2 = one(conn, "SELECT subnet_id FROM subnet WHERE cidr_block = '10.30.2.0/24'")
    assert moved["SubnetId"] == subnet_2 and moved["State"] == "available"

    # A private gateway has no address, and there is no third kind.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO nat_gateway (connectivity_type, subnet_id, elastic_ip_id)"
            " SELECT 'private', s.id, e.id FROM subnet s, elastic_ip e LIMIT 1"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO nat_gateway (connectivity_type, subnet_id)"
            " SELECT 'hybrid', id FROM subnet LIMIT 1"
        )
    assert rows(conn, "SELECT count(*) FROM nat_gateway") == [(2,)]
    found = ec2.describe_nat_gateways(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    # The two of the rows, and the private one replaced before.
    assert sorted(g["State"] for g in found["NatGateways"]) == ["available", "available", "deleted"]

    # Detach in place, then everything goes in one commit, in dependency order.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE internet_gateway SET vpc_id = NULL")
    assert preview(conn) == [
        ("update", "internet_gateway", {"vpc_id": {"old": vpc_id, "new": None}})
    ]
    commit(conn)
    gateway = ec2.describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"][0]
    assert gateway["Attachments"] == []
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM nat_gateway; DELETE FROM elastic_ip; DELETE FROM internet_gateway;"
        f" DELETE FROM subnet WHERE vpc_id = {vpc_row}; DELETE FROM vpc WHERE id = {vpc_row}"
    )
    commit(conn)
    states = ec2.describe_nat_gateways(NatGatewayIds=[gateways["public"][0], new_private])
    assert {g["State"] for g in states["NatGateways"]} == {"deleted"}
    assert (
        ec2.describe_addresses(Filters=[{"Name": "allocation-id", "Values": [allocation]}])[
            "Addresses"
        ]
        == []
    )
    assert (
        ec2.describe_internet_gateways(Filters=[{"Name": "internet-gateway-id", "Values": [igw]}])[
            "InternetGateways"
        ]
        == []
    )
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


# --- route_table, route_table_association, route -------------------------------------------

NETWORK = """
INSERT INTO vpc (cidr_block) VALUES ('10.40.0.0/16');
INSERT INTO subnet (vpc_id, cidr_block, availability_zone)
    SELECT id, cidr, 'us-east-1a' FROM vpc, (VALUES ('10.40.1.0/24'), ('10.40.2.0/24')) AS s(cidr)
    WHERE cidr_block = '10.40.0.0/16';
INSERT INTO internet_gateway (vpc_id) SELECT id FROM vpc WHERE cidr_block = '10.40.0.0/16';
"""

VPC_40 = "(SELECT id FROM vpc WHERE cidr_block = '10.40.0.0/16')"
SUBNET_1 = "(SELECT id FROM subnet WHERE cidr_block = '10.40.1.0/24')"


def test_public_nat_gateway_gets_an_elastic_ip(vpc_env: Any) -> None:
    """IaSQL's SQL: a public gateway inserted without elastic_ip_id gets a new address, tagged
    as the gateway, as an elastic_ip row; deleting the gateway leaves the address, which goes
    with its row."""
    conn, ec2 = vpc_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO vpc (cidr_block) VALUES ('10.31.0.0/16');"
        " INSERT INTO subnet (availability_zone, vpc_id, cidr_block)"
        " SELECT 'us-east-1a', id, '10.31.1.0/24' FROM vpc WHERE cidr_block = '10.31.0.0/16'"
    )
    commit(conn)
    before = one(conn, "SELECT count(*) FROM elastic_ip")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id, tags)"
        " SELECT 'public', subnet.id, '{\"Name\": \"pub-ng\"}' FROM subnet"
        " WHERE cidr_block = '10.31.1.0/24'"
    )
    # The address is a row at once, and the preview says it will be made.
    assert rows(
        conn, "SELECT tags::text, region FROM elastic_ip WHERE tags ->> 'Name' = 'pub-ng'"
    ) == [('{"Name": "pub-ng"}', REGION)]
    assert [(a, t) for a, t, _ in preview(conn)] == [
        ("create", "elastic_ip"),
        ("create", "nat_gateway"),
    ]
    commit(conn)
    gateway_id, allocation = rows(
        conn,
        "SELECT n.nat_gateway_id, e.allocation_id FROM nat_gateway n"
        " JOIN elastic_ip e ON e.id = n.elastic_ip_id WHERE n.tags ->> 'Name' = 'pub-ng'",
    )[0]
    assert allocation is not None
    # Replayed elsewhere, only the gateway is written: its address names the one made here,
    # by natural key, which is not there, so the same trigger makes it there (once).
    sql = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert not [s for s in sql if s.startswith('INSERT INTO "elastic_ip"')]
    [insert] = [s for s in sql if s.startswith('INSERT INTO "nat_gateway"')]
    assert 'FROM "elastic_ip"' in insert and allocation not in insert
    gateway = ec2.describe_nat_gateways(NatGatewayIds=[gateway_id])["NatGateways"][0]
    assert gateway["NatGatewayAddresses"][0]["AllocationId"] == allocation
    address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
    assert tags(address["Tags"]) == {"Name": "pub-ng"}
    assert one(conn, "SELECT count(*) FROM elastic_ip") == before + 1
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # A private gateway made public gets one too (a replace).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id, tags)"
        " SELECT 'private', id, '{\"Name\": \"priv-ng\"}' FROM subnet"
        " WHERE cidr_block = '10.31.1.0/24'"
    )
    commit(conn)
    conn.execute(
        "SELECT * FROM iasql_begin();"
        " UPDATE nat_gateway SET connectivity_type = 'public' WHERE tags ->> 'Name' = 'priv-ng'"
    )
    assert [(a, t) for a, t, _ in preview(conn)] == [
        ("create", "elastic_ip"),
        ("replace", "nat_gateway"),
    ]
    commit(conn)
    made = one(
        conn,
        "SELECT e.allocation_id FROM nat_gateway n JOIN elastic_ip e ON e.id = n.elastic_ip_id"
        " WHERE n.tags ->> 'Name' = 'priv-ng'",
    )
    assert made is not None and made != allocation

    # Deleting the gateways leaves their addresses, as in IaSQL; their rows release them.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM nat_gateway WHERE tags ->> 'Name' IN ('pub-ng', 'priv-ng')")
    commit(conn)
    assert ec2.describe_addresses(AllocationIds=[allocation])["Addresses"] != []
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "DELETE FROM elastic_ip WHERE tags ->> 'Name' IN ('pub-ng', 'priv-ng');"
        " DELETE FROM subnet WHERE cidr_block = '10.31.1.0/24';"
        " DELETE FROM vpc WHERE cidr_block = '10.31.0.0/16'"
    )
    commit(conn)
    for gone in (allocation, made):
        found = ec2.describe_addresses(Filters=[{"Name": "allocation-id", "Values": [gone]}])
        assert found["Addresses"] == []
    assert one(conn, "SELECT count(*) FROM elastic_ip") == before
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def table_row(name: str) -> str:
    return f'(SELECT id FROM route_table WHERE tags::jsonb = \'{{"Name": "{name}"}}\')'


def subselect(statement: str, table: str) -> str:
    """The first sub-select on `table` in a generated statement."""
    start = statement.index(f'(SELECT "id" FROM "{table}"')
    depth = 0
    for end, char in enumerate(statement[start:], start):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return statement[start : end + 1]
    raise AssertionError(f"unbalanced: {statement}")


def check_replayable(conn: psycopg.Connection, table_row: int) -> None:
    """The transaction's SQL names the route table by its natural key (its VPC's and its
    tags), which finds exactly that row."""
    statements = [s for (s,) in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    route = next(s for s in statements if s.startswith('INSERT INTO "route" '))
    assert '"tags"::jsonb = \'{"Name": "public"}\'::jsonb' in route
    # The gateway, named by its cloud id in the row as in IaSQL, is written as a sub-select by
    # its natural key, so the route reaches prod's own gateway.
    assert "igw-" not in route
    gateway = subselect(route, "internet_gateway")
    assert rows(conn, f"SELECT {gateway}") == rows(
        conn,
        f"SELECT internet_gateway FROM route WHERE route_table_id = {table_row}"
        " AND destination = '0.0.0.0/0'",
    )
    assert rows(conn, f"SELECT {subselect(route, 'route_table')}") == [(table_row,)]
    association = next(s for s in statements if "route_table_association" in s)
    assert rows(conn, f"SELECT {subselect(association, 'subnet')}") == rows(
        conn, f"SELECT {SUBNET_1}"
    )


def test_route_tables_life_cycle(vpc_env: Any) -> None:
    conn, ec2 = vpc_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(NETWORK)
    commit(conn)
    vpc_row, vpc_id = rows(conn, "SELECT id, vpc_id FROM vpc WHERE cidr_block = '10.40.0.0/16'")[0]
    igw = one(conn, f"SELECT internet_gateway_id FROM internet_gateway WHERE vpc_id = {vpc_row}")
    subnet_1 = one(conn, f"SELECT subnet_id FROM subnet WHERE id = {SUBNET_1}")
    subnets = f"(SELECT id FROM subnet WHERE vpc_id = {vpc_row})"
    # The VPC's commit brought in its main table, main association and local route.
    main_table = one(
        conn,
        "SELECT t.route_table_id FROM route_table t JOIN route_table_association a"
        f" ON a.route_table_id = t.id WHERE a.is_main AND a.vpc_id = {VPC_40}",
    )

    # A table, a route in it to the gateway, and a subnet associated with it, in one commit.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f'INSERT INTO route_table (vpc_id, tags) VALUES ({VPC_40}, \'{{"Name": "public"}}\')'
    )
    conn.execute(
        "INSERT INTO route (route_table_id, destination, gateway_id)"
        f" VALUES ({table_row('public')}, '0.0.0.0/0', '{igw}')"
    )
    conn.execute(
        "INSERT INTO route_table_association (route_table_id, subnet_id, vpc_id)"
        f" VALUES ({table_row('public')}, {SUBNET_1}, {VPC_40})"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [
        ("create", "route"),
        ("create", "route_table"),
        ("create", "route_table_association"),
    ]
    public_row = one(conn, f"SELECT id FROM route_table WHERE id = {table_row('public')}")
    assert planned[0][2] == {
        "destination": {"old": None, "new": "0.0.0.0/0"},
        "gateway_id": {"old": None, "new": igw},
        "internet_gateway": {"old": None, "new": igw},  # the same target, as a foreign key
        "region": {"old": None, "new": REGION},
        "route_table_id": {"old": None, "new": f"(new route_table {public_row})"},
    }
    commit(conn)
    check_replayable(conn, public_row)
    public = one(conn, f"SELECT route_table_id FROM route_table WHERE id = {public_row}")
    found = route_table(ec2, public)
    assert tags(found["Tags"]) == {"Name": "public"} and found["VpcId"] == vpc_id
    assert {d: r.get("GatewayId") for d, r in routes(ec2, public).items()} == {
        "0.0.0.0/0": igw,
        "10.40.0.0/16": "local",
    }
    [association] = found["Associations"]
    assert association["SubnetId"] == subnet_1 and not association["Main"]
    assert rows(
        conn,
        "SELECT route_table_association_id, is_main FROM route_table_association"
        f" WHERE subnet_id = {SUBNET_1}",
    ) == [(association["RouteTableAssociationId"], False)]
    assert rows(
        conn,
        f"SELECT destination, gateway_id FROM route WHERE route_table_id = {public_row} ORDER BY 1",
    ) == [("0.0.0.0/0", igw), ("10.40.0.0/16", "local")]

    # A new target in place (replace_route); a new destination replaces the route.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO nat_gateway (connectivity_type, subnet_id)"
        " SELECT 'private', id FROM subnet WHERE cidr_block = '10.40.2.0/24'"
    )
    commit(conn)
    nat = one(conn, f"SELECT nat_gateway_id FROM nat_gateway WHERE subnet_id IN {subnets}")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE route SET gateway_id = NULL, nat_gateway_id = '{nat}'"
        f" WHERE route_table_id = {public_row} AND destination = '0.0.0.0/0'"
    )
    conn.execute(
        "INSERT INTO route (route_table_id, destination, gateway_id)"
        f" VALUES ({public_row}, '2001:db8::/64', '{igw}')"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("create", "route"), ("update", "route")]
    assert planned[1][2] == {  # the foreign-key columns follow the cloud ids
        "gateway_id": {"old": igw, "new": None},
        "internet_gateway": {"old": igw, "new": None},
        "nat_gateway_id": {"old": None, "new": nat},
        "nat_gateway": {"old": None, "new": nat},
    }
    commit(conn)
    found_routes = routes(ec2, public)
    assert found_routes["0.0.0.0/0"].get("NatGatewayId") == nat
    assert "GatewayId" not in found_routes["0.0.0.0/0"]
    assert found_routes["2001:db8::/64"]["GatewayId"] == igw
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"UPDATE route SET destination = '2001:db8:1::/64' WHERE gateway_id = '{igw}'")
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("create", "route"), ("delete", "route")]
    commit(conn)
    assert set(routes(ec2, public)) == {"0.0.0.0/0", "10.40.0.0/16", "2001:db8:1::/64"}
    # AWS's form of a destination only: anything else would never match what AWS reports.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO route (route_table_id, destination, gateway_id)"
            f" VALUES ({public_row}, '10.9.0.1/16', '{igw}')"
        )

    # The subnet moves to another table, in place; then that table becomes the VPC's main one.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f'INSERT INTO route_table (vpc_id, tags) VALUES ({VPC_40}, \'{{"Name": "private"}}\')'
    )
    commit(conn)
    private = one(conn, f"SELECT route_table_id FROM route_table WHERE id = {table_row('private')}")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE route_table_association SET route_table_id = {table_row('private')}"
        f" WHERE subnet_id = {SUBNET_1}"
    )
    assert preview(conn) == [
        (
            "update",
            "route_table_association",
            {"route_table_id": {"old": public, "new": private}},
        )
    ]
    commit(conn)
    [association] = route_table(ec2, private)["Associations"]
    assert association["SubnetId"] == subnet_1
    assert route_table(ec2, public)["Associations"] == []
    assert (
        one(
            conn,
            f"SELECT route_table_association_id FROM route_table_association WHERE subnet_id = {SUBNET_1}",
        )
        == association["RouteTableAssociationId"]
    )

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"UPDATE route_table_association SET route_table_id = {public_row}"
        f" WHERE is_main AND vpc_id = {VPC_40}"
    )
    assert preview(conn) == [
        (
            "update",
            "route_table_association",
            {"route_table_id": {"old": main_table, "new": public}},
        )
    ]
    commit(conn)
    [main] = route_table(ec2, public)["Associations"]
    assert main["Main"] is True
    assert route_table(ec2, main_table)["Associations"] == []
    assert (
        one(
            conn,
            f"SELECT route_table_association_id FROM route_table_association WHERE is_main AND vpc_id = {VPC_40}",
        )
        == main["RouteTableAssociationId"]
    )

    # The old main table is an ordinary one now: it can be deleted, and a table retagged.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM route_table WHERE route_table_id = '{main_table}'")
    conn.execute(f'UPDATE route_table SET tags = \'{{"Name": "main"}}\' WHERE id = {public_row}')
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("delete", "route_table"), ("update", "route_table")]
    commit(conn)
    assert (
        ec2.describe_route_tables(Filters=[{"Name": "route-table-id", "Values": [main_table]}])[
            "RouteTables"
        ]
        == []
    )
    assert tags(route_table(ec2, public)["Tags"]) == {"Name": "main"}

    # Another subnet for the association replaces it (disassociate, associate).
    old_association = one(
        conn,
        f"SELECT route_table_association_id FROM route_table_association WHERE subnet_id = {SUBNET_1}",
    )
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE route_table_association SET subnet_id ="
        " (SELECT id FROM subnet WHERE cidr_block = '10.40.2.0/24') WHERE NOT is_main"
        f" AND vpc_id = {VPC_40}"
    )
    planned = preview(conn)
    assert [(a, t) for a, t, _ in planned] == [("replace", "route_table_association")]
    assert planned[0][2]["subnet_id"]["forces_replace"] is True
    commit(conn)
    [association] = route_table(ec2, private)["Associations"]
    subnet_2 = one(conn, "SELECT subnet_id FROM subnet WHERE cidr_block = '10.40.2.0/24'")
    assert association["SubnetId"] == subnet_2
    assert association["RouteTableAssociationId"] != old_association

    # A subnet's association goes; the main one can't (its row comes back).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM route_table_association WHERE vpc_id = {VPC_40}")
    assert [(a, t) for a, t, _ in preview(conn)] == [("delete", "route_table_association")]
    commit(conn)
    assert route_table(ec2, private)["Associations"] == []
    assert [a["Main"] for a in route_table(ec2, public)["Associations"]] == [True]
    assert rows(conn, f"SELECT is_main FROM route_table_association WHERE vpc_id = {VPC_40}") == [
        (True,)
    ]

    # The whole VPC goes: its tables' rows follow it (ON DELETE CASCADE), the gateways first.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        f"DELETE FROM nat_gateway WHERE subnet_id IN {subnets};"
        f" DELETE FROM internet_gateway WHERE vpc_id = {vpc_row};"
        f" DELETE FROM subnet WHERE vpc_id = {vpc_row}; DELETE FROM vpc WHERE id = {vpc_row}"
    )
    commit(conn)
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
    assert (
        ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["RouteTables"]
        == []
    )
    assert rows(conn, f"SELECT count(*) FROM route_table WHERE vpc_id = {vpc_row}") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def test_route_table_moves_to_another_vpc_by_replace(vpc_env: Any) -> None:
    """A route table's VPC can't change in place: the table is replaced, and the new table
    comes with its own local route (AWS's)."""
    conn, ec2 = vpc_env
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO vpc (cidr_block) VALUES ('10.61.0.0/16'), ('10.62.0.0/16')")
    conn.execute(
        "INSERT INTO route_table (vpc_id, tags)"
        " SELECT id, '{\"Name\": \"moving\"}' FROM vpc WHERE cidr_block = '10.61.0.0/16'"
    )
    commit(conn)
    old_id = one(conn, f"SELECT route_table_id FROM route_table WHERE id = {table_row('moving')}")

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE route_table SET vpc_id = (SELECT id FROM vpc WHERE cidr_block = '10.62.0.0/16')"
        f" WHERE id = {table_row('moving')}"
    )
    planned = [(a, t) for a, t, _ in preview(conn)]
    assert planned == [("replace", "route_table")]
    commit(conn)
    new_id = one(conn, f"SELECT route_table_id FROM route_table WHERE id = {table_row('moving')}")
    assert new_id != old_id
    moved = route_table(ec2, new_id)
    target_vpc = one(conn, "SELECT vpc_id FROM vpc WHERE cidr_block = '10.62.0.0/16'")
    assert moved["VpcId"] == target_vpc and tags(moved["Tags"]) == {"Name": "moving"}
    assert set(routes(ec2, new_id)) == {"10.62.0.0/16"}  # the new VPC's local route
    assert not ec2.describe_route_tables(Filters=[{"Name": "route-table-id", "Values": [old_id]}])[
        "RouteTables"
    ]
    assert rows(
        conn,
        "SELECT r.destination, r.gateway_id FROM route r JOIN route_table t"
        f" ON t.id = r.route_table_id WHERE t.route_table_id = '{new_id}'",
    ) == [("10.62.0.0/16", "local")]

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(f"DELETE FROM route_table WHERE id = {table_row('moving')}")
    conn.execute("DELETE FROM vpc WHERE cidr_block IN ('10.61.0.0/16', '10.62.0.0/16')")
    commit(conn)
    assert not ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.61.0.0/16"]}])[
        "Vpcs"
    ]
