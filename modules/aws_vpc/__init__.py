"""aws_vpc: availability zones, VPCs and subnets (here); DHCP option sets, elastic IPs, internet
and NAT gateways, route tables, their associations and routes (`routing.py`); network ACLs,
peering connections, gateway and interface endpoints and the subnets of an interface endpoint
(`network.py`): fifteen tables in all."""

from __future__ import annotations

import asyncio
from typing import Any

from modules import VERSION
from modules._aws.cidr import normalize_cidr
from modules._aws.region import region_column
from modules._aws.tags import (
    sync_tags,
    tag_specifications,
    tags_as_text,
    tags_as_text_teardown,
    tags_column,
    user_tags,
    with_token,
)
from modules._aws.waiters import wait_for
from modules.aws_vpc.network import (
    ENDPOINT_GATEWAY,
    ENDPOINT_INTERFACE,
    ENDPOINT_INTERFACE_SUBNETS,
    NETWORK_ACL,
    NETWORK_TEARDOWN,
    PEERING_CONNECTION,
    SUBNET_ACL_DDL,
    associate_network_acl,
    network_acls_of_subnets,
    subnet_network_acl_column,
)
from modules.aws_vpc.routing import DHCP_OPTIONS, ROUTING_TABLES, associate_dhcp_options
from modules.errors import ignoring
from modules.spec import (
    TOKEN,
    Cloud,
    CloudError,
    Column,
    ModuleSpec,
    Record,
    Ref,
    Table,
    foreign_key,
)

# --- availability_zone ---------------------------------------------------------------------


class AvailabilityZoneMapper:
    """The zones AWS offers in a region: read-only."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.describe_availability_zones()
        return [{"name": z["ZoneName"], "region": region} for z in answer["AvailabilityZones"]]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(
            f"{record['name']} is not an availability zone of {record['region']};"
            " availability zones come from AWS and cannot be created"
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current

    async def delete(self, cloud: Cloud, current: Record) -> None:
        raise CloudError(
            f"availability zone {current['name']} belongs to AWS: it cannot be deleted"
        )


AVAILABILITY_ZONE = Table(
    name="availability_zone",
    columns=(Column("name", "varchar", nullable=False), region_column()),
    mapper=AvailabilityZoneMapper(),
    natural_key=("name",),
    cloud_id=("name",),
    primary_key=("name",),
    protected=lambda record: True,
)


def availability_zone_column() -> Column:
    """The zone a resource is in (a subnet, a volume): moving it means a new resource."""
    return Column(
        "availability_zone",
        "varchar",
        nullable=False,
        ref=Ref("availability_zone", key="name"),
        replaces=True,
    )


# --- vpc -----------------------------------------------------------------------------------

# column -> the VPC attribute; describe_vpc_attribute takes the name, modify_vpc_attribute a
# capitalised keyword, and only one attribute per call.
_ATTRIBUTES = {
    "enable_dns_support": "enableDnsSupport",
    "enable_dns_hostnames": "enableDnsHostnames",
    "enable_network_address_usage_metrics": "enableNetworkAddressUsageMetrics",
}


def attribute_order(record: Record) -> list[str]:
    """The order to set the attributes in: AWS refuses DNS hostnames without DNS support, so
    support is switched on before hostnames, and hostnames off before support."""
    support, hostnames, metrics = _ATTRIBUTES
    return [support, hostnames, metrics] if record.get(support) else [hostnames, support, metrics]


def _capitalised(attribute: str) -> str:
    return attribute[0].upper() + attribute[1:]


async def _read_attributes(ec2: Any, vpc_id: str) -> Record:
    async def one(attribute: str) -> bool:
        answer = await ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute=attribute)
        return bool(answer[_capitalised(attribute)]["Value"])

    values = await asyncio.gather(*(one(a) for a in _ATTRIBUTES.values()))
    return dict(zip(_ATTRIBUTES, values, strict=True))


async def _vpc_record(ec2: Any, vpc: dict[str, Any], region: str | None) -> Record:
    record = {
        "vpc_id": vpc["VpcId"],
        "cidr_block": normalize_cidr(vpc["CidrBlock"]),
        "state": vpc.get("State"),
        "is_default": bool(vpc.get("IsDefault")),
        **await _read_attributes(ec2, vpc["VpcId"]),
        "tags": user_tags(vpc.get("Tags")),
        "region": region,
        # "default" is AWS's word for no DHCP options at all.
        "dhcp_options_id": None
        if vpc.get("DhcpOptionsId") in (None, "default")
        else vpc["DhcpOptionsId"],
    }
    return with_token(record, vpc.get("Tags"))


class VpcMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_vpcs").paginate()
            vpcs = [vpc async for page in pages for vpc in page["Vpcs"]]
            return list(await asyncio.gather(*(_vpc_record(ec2, v, region) for v in vpcs)))

    async def _read_one(self, ec2: Any, vpc_id: str, region: str) -> Record:
        answer = await ec2.describe_vpcs(VpcIds=[vpc_id])
        return await _vpc_record(ec2, answer["Vpcs"][0], region)

    async def _set_attributes(self, ec2: Any, record: Record, current: Record) -> None:
        for column in attribute_order(record):
            wanted = bool(record.get(column))
            if wanted != current[column]:
                attribute = _ATTRIBUTES[column]
                await ec2.modify_vpc_attribute(
                    VpcId=current["vpc_id"], **{_capitalised(attribute): {"Value": wanted}}
                )

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_vpc(
                CidrBlock=normalize_cidr(record["cidr_block"]),
                TagSpecifications=tag_specifications("vpc", record.get("tags"), record.get(TOKEN)),
            )
            vpc_id = answer["Vpc"]["VpcId"]
            await wait_for(ec2, "vpc_available", VpcIds=[vpc_id])
            # A new VPC has AWS's attribute defaults (DNS support on); the row may differ.
            await self._set_attributes(ec2, record, await self._read_one(ec2, vpc_id, region))
            # No set named: the VPC keeps the one AWS gives it (the region's default set),
            # and the sync after the commit writes that into the row.
            if record.get("dhcp_options_id") is not None:
                given = answer["Vpc"].get("DhcpOptionsId")
                await associate_dhcp_options(
                    ec2,
                    vpc_id,
                    record["dhcp_options_id"],
                    None if given in (None, "default") else given,
                )
            return await self._read_one(ec2, vpc_id, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region = current["region"]
        async with cloud.client("ec2", region) as ec2:
            await self._set_attributes(ec2, record, current)
            await associate_dhcp_options(
                ec2,
                current["vpc_id"],
                record.get("dhcp_options_id"),
                current.get("dhcp_options_id"),
            )
            await sync_tags(ec2, current["vpc_id"], record.get("tags"), current.get("tags"))
            return await self._read_one(ec2, current["vpc_id"], region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidVpcID.NotFound"):
                await ec2.delete_vpc(VpcId=current["vpc_id"])


VPC = Table(
    name="vpc",
    extra_ddl=tags_as_text("vpc"),
    columns=(
        Column("vpc_id", "varchar", cloud_assigned=True),
        Column("cidr_block", "varchar", nullable=False, replaces=True, normalize=normalize_cidr),
        Column("state", "varchar", check="state IN ('pending', 'available')", cloud_assigned=True),
        # Only AWS makes a default VPC (one per region); create_vpc never does.
        Column("is_default", "boolean", nullable=False, default="false", cloud_assigned=True),
        Column("enable_dns_hostnames", "boolean", nullable=False, default="false"),
        Column("enable_dns_support", "boolean", nullable=False, default="false"),
        Column("enable_network_address_usage_metrics", "boolean", nullable=False, default="false"),
        tags_column(),
        region_column(),
        # NULL: no DHCP options ("default" to AWS). Changed in place.
        foreign_key(
            "dhcp_options_id",
            "dhcp_options",
            "dhcp_options_id",
            nullable=True,
            replaces=False,
            optional=True,
        ),
    ),
    mapper=VpcMapper(),
    # A VPC has no name of its own. In another account, the default VPC of a region is found by
    # is_default (its CIDR is the same everywhere, 172.31.0.0/16) and a user's VPC by its CIDR
    # in its region, which is unique as long as no two VPCs of a region share a CIDR. Tags
    # can't be part of it: json has no equality operator for the sub-selects.
    natural_key=("cidr_block", "is_default", "region"),
    cloud_id=("vpc_id",),
    protected=lambda record: bool(record.get("is_default")),
)

# --- subnet --------------------------------------------------------------------------------


def _subnet_record(subnet: dict[str, Any], region: str | None, acls: dict[str, str]) -> Record:
    record = {
        "state": subnet.get("State"),
        "available_ip_address_count": subnet.get("AvailableIpAddressCount"),
        "cidr_block": normalize_cidr(subnet.get("CidrBlock")),
        "subnet_id": subnet["SubnetId"],
        "owner_id": subnet.get("OwnerId"),
        "subnet_arn": subnet.get("SubnetArn"),
        "region": region,
        "availability_zone": subnet["AvailabilityZone"],
        "vpc_id": subnet["VpcId"],
        "network_acl_id": acls.get(subnet["SubnetId"]),
        "default_for_az": bool(subnet.get("DefaultForAz")),  # not a column: for `protected`
    }
    return with_token(record, subnet.get("Tags"))


class SubnetMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_subnets").paginate()
            subnets = [s async for page in pages for s in page["Subnets"]]
            acls = await network_acls_of_subnets(ec2)
        return [_subnet_record(s, region, acls) for s in subnets]

    async def _read_one(self, ec2: Any, subnet_id: str, region: str) -> Record:
        found = await ec2.describe_subnets(SubnetIds=[subnet_id])
        return _subnet_record(found["Subnets"][0], region, await network_acls_of_subnets(ec2))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("vpc_id") is None:
            raise CloudError("a subnet needs its vpc_id")
        async with cloud.client("ec2", record["region"]) as ec2:
            answer = await ec2.create_subnet(
                VpcId=record["vpc_id"],
                CidrBlock=normalize_cidr(record.get("cidr_block")),
                AvailabilityZone=record["availability_zone"],
                TagSpecifications=tag_specifications("subnet", None, record.get(TOKEN)),
            )
            subnet_id = answer["Subnet"]["SubnetId"]
            await wait_for(ec2, "subnet_available", SubnetIds=[subnet_id])
            # A new subnet uses its VPC's default ACL; NULL asks for just that.
            if record.get("network_acl_id") is not None:
                await associate_network_acl(
                    ec2, subnet_id, record["vpc_id"], record["network_acl_id"]
                )
            return await self._read_one(ec2, subnet_id, record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # Only the network ACL changes in place; the other columns are AWS's or replace.
        async with cloud.client("ec2", current["region"]) as ec2:
            await associate_network_acl(
                ec2, current["subnet_id"], current["vpc_id"], record.get("network_acl_id")
            )
            return await self._read_one(ec2, current["subnet_id"], current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidSubnetID.NotFound"):
                await ec2.delete_subnet(SubnetId=current["subnet_id"])


SUBNET = Table(
    name="subnet",
    columns=(
        Column(
            "state",
            "varchar",
            check="state IN ('pending', 'available', 'unavailable', 'failed',"
            " 'failed-insufficient-capacity')",
            cloud_assigned=True,
        ),
        Column("available_ip_address_count", "integer", cloud_assigned=True),
        Column("cidr_block", "varchar", replaces=True, normalize=normalize_cidr),
        Column("subnet_id", "varchar", cloud_assigned=True),
        Column("owner_id", "varchar", cloud_assigned=True),
        Column("subnet_arn", "varchar", cloud_assigned=True),
        region_column(),
        availability_zone_column(),
        foreign_key("vpc_id", "vpc", "vpc_id"),
        subnet_network_acl_column(),
    ),
    mapper=SubnetMapper(),
    # A subnet's CIDR is unique within its VPC (and the VPC brings the region).
    natural_key=("vpc_id", "cidr_block"),
    cloud_id=("subnet_id",),
    # The default VPC's subnets, one per zone, are AWS's.
    protected=lambda record: bool(record.get("default_for_az")),
    extra_ddl=SUBNET_ACL_DDL,
)

_TABLES = (
    AVAILABILITY_ZONE,
    DHCP_OPTIONS,
    VPC,
    NETWORK_ACL,
    SUBNET,
    *ROUTING_TABLES,
    PEERING_CONNECTION,
    ENDPOINT_GATEWAY,
    ENDPOINT_INTERFACE,
    ENDPOINT_INTERFACE_SUBNETS,
)

MODULE = ModuleSpec(
    name="aws_vpc",
    version=VERSION,
    dependencies=("aws_account",),
    description="VPCs, subnets and availability zones",
    tables=_TABLES,
    teardown_sql=(
        *NETWORK_TEARDOWN,
        "DROP FUNCTION IF EXISTS route_target_rows() CASCADE",
        "DROP FUNCTION IF EXISTS nat_gateway_elastic_ip() CASCADE",
        *(tags_as_text_teardown(t.name) for t in _TABLES if "tags" in t.column_names),
    ),
)
