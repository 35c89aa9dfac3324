"""aws_vpc, the routing half: DHCP option sets, elastic IPs, internet and NAT gateways, route
tables, their associations and their routes.

Route tables, associations and routes all come from one call, describe_route_tables: an
association and a route have no describe call (nor id, for a route) of their own.
"""

from __future__ import annotations

import json
from typing import Any

from modules._aws.cidr import normalize_cidr
from modules._aws.region import region_column
from modules._aws.tags import (
    sync_tags,
    tag_specifications,
    tags_as_text,
    tags_column,
    update_tags,
    user_tags,
    with_token,
)
from modules._aws.waiters import wait_for
from modules.errors import ignoring
from modules.spec import TOKEN, Cloud, CloudError, Column, Record, Ref, Table, foreign_key

# --- dhcp_options --------------------------------------------------------------------------


def _values(values: Any) -> list[str]:
    """A DHCP option's values, as AWS reports them ({"Value": v}) or as plain strings."""
    return [str(v["Value"] if isinstance(v, dict) else v) for v in values or ()]


def normalize_dhcp_configurations(value: Any) -> list[dict[str, Any]] | None:
    """DhcpConfigurations in AWS's describe form, options sorted by key (AWS keeps no order
    between options), values in the order given (it does keep the order of DNS servers)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    options = [(str(o["Key"]), _values(o.get("Values"))) for o in value]
    return [
        {"Key": key, "Values": [{"Value": v} for v in values]}
        for key, values in sorted(options, key=lambda option: option[0])
    ] or None


def default_dhcp_configurations(region: str | None) -> list[dict[str, Any]]:
    """What AWS puts in the DHCP option set it makes in every region."""
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return [
        {"Key": "domain-name", "Values": [{"Value": domain}]},
        {"Key": "domain-name-servers", "Values": [{"Value": "AmazonProvidedDNS"}]},
    ]


def is_default_dhcp(record: Record) -> bool:
    """AWS does not flag its own set: it is told by its exact content. A user's set with the
    very same options is interchangeable with it, so protecting that one too does no harm."""
    configurations = normalize_dhcp_configurations(record.get("dhcp_configurations"))
    return configurations == default_dhcp_configurations(record.get("region"))


def _dhcp_record(options: dict[str, Any], region: str | None) -> Record:
    record = {
        "dhcp_options_id": options["DhcpOptionsId"],
        "dhcp_configurations": normalize_dhcp_configurations(options.get("DhcpConfigurations")),
        "tags": user_tags(options.get("Tags")),
        "region": region,
    }
    return with_token(record, options.get("Tags"))


async def associate_dhcp_options(
    ec2: Any, vpc_id: str, wanted: str | None, current: str | None
) -> None:
    """Gives the VPC the set `wanted` (None: no options, "default" to AWS). From one set to
    another it goes through "default": moto keeps the old set marked as in use otherwise, so
    that it can never be deleted. On AWS the VPC is without options for a moment, which only
    matters to an instance renewing its lease just then."""
    if wanted == current:
        return
    if wanted is not None and current is not None:
        await ec2.associate_dhcp_options(DhcpOptionsId="default", VpcId=vpc_id)
    await ec2.associate_dhcp_options(DhcpOptionsId=wanted or "default", VpcId=vpc_id)


class DhcpOptionsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_dhcp_options").paginate()
            return [_dhcp_record(o, region) async for page in pages for o in page["DhcpOptions"]]

    async def _create(self, ec2: Any, record: Record) -> str:
        configurations = normalize_dhcp_configurations(record.get("dhcp_configurations")) or []
        answer = await ec2.create_dhcp_options(
            DhcpConfigurations=[
                {"Key": o["Key"], "Values": _values(o["Values"])} for o in configurations
            ],
            TagSpecifications=tag_specifications(
                "dhcp-options", record.get("tags"), record.get(TOKEN)
            ),
        )
        options_id = str(answer["DhcpOptions"]["DhcpOptionsId"])
        if not answer["DhcpOptions"].get("Tags"):
            # moto ignores TagSpecifications here (AWS honours them): tag it afterwards.
            for spec in tag_specifications("dhcp-options", record.get("tags"), record.get(TOKEN)):
                await ec2.create_tags(Resources=[options_id], Tags=spec["Tags"])
        return options_id

    async def _read_one(self, ec2: Any, options_id: str, region: str) -> Record:
        answer = await ec2.describe_dhcp_options(DhcpOptionsIds=[options_id])
        return _dhcp_record(answer["DhcpOptions"][0], region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        async with cloud.client("ec2", record["region"]) as ec2:
            return await self._read_one(ec2, await self._create(ec2, record), record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region = current["region"]
        old = current["dhcp_options_id"]
        async with cloud.client("ec2", region) as ec2:
            same = normalize_dhcp_configurations(
                record.get("dhcp_configurations")
            ) == normalize_dhcp_configurations(current.get("dhcp_configurations"))
            if same:
                await sync_tags(ec2, old, record.get("tags"), current.get("tags"))
                return await self._read_one(ec2, old, region)
            # AWS can't change a set's options. Rather than a replace, which would replace the
            # VPCs using the set with it, a new set takes the old one's place in every VPC.
            new = await self._create(ec2, record)
            answer = await ec2.describe_vpcs(Filters=[{"Name": "dhcp-options-id", "Values": [old]}])
            for vpc in answer["Vpcs"]:
                await associate_dhcp_options(ec2, vpc["VpcId"], new, old)
            with ignoring("InvalidDhcpOptionID.NotFound", "InvalidDhcpOptionsID.NotFound"):
                await ec2.delete_dhcp_options(DhcpOptionsId=old)
            return await self._read_one(ec2, new, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidDhcpOptionID.NotFound", "InvalidDhcpOptionsID.NotFound"):
                await ec2.delete_dhcp_options(DhcpOptionsId=current["dhcp_options_id"])


DHCP_OPTIONS = Table(
    name="dhcp_options",
    extra_ddl=tags_as_text("dhcp_options"),
    columns=(
        Column("dhcp_options_id", "varchar", cloud_assigned=True),
        # Changing the options makes a new set in place of the old one (see the mapper).
        Column("dhcp_configurations", "json", normalize=normalize_dhcp_configurations),
        tags_column(),
        region_column(),
    ),
    mapper=DhcpOptionsMapper(),
    # A set has no name: what it holds is what it is, and two sets holding the same options
    # are interchangeable. The engine's SQL compares json columns as jsonb.
    natural_key=("dhcp_configurations", "region"),
    cloud_id=("dhcp_options_id",),
    protected=is_default_dhcp,
)

# --- elastic_ip ----------------------------------------------------------------------------


def _address_record(address: dict[str, Any], region: str | None) -> Record:
    record = {
        "allocation_id": address["AllocationId"],
        "public_ip": address.get("PublicIp"),
        "tags": user_tags(address.get("Tags")),
        "region": region,
    }
    return with_token(record, address.get("Tags"))


class ElasticIpMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.describe_addresses(Filters=[{"Name": "domain", "Values": ["vpc"]}])
        return [_address_record(a, region) for a in answer["Addresses"]]

    async def _read_one(self, ec2: Any, allocation_id: str, region: str) -> Record:
        answer = await ec2.describe_addresses(AllocationIds=[allocation_id])
        return _address_record(answer["Addresses"][0], region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        async with cloud.client("ec2", record["region"]) as ec2:
            answer = await ec2.allocate_address(
                Domain="vpc",
                TagSpecifications=tag_specifications(
                    "elastic-ip", record.get("tags"), record.get(TOKEN)
                ),
            )
            return await self._read_one(ec2, answer["AllocationId"], record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await update_tags(cloud, record, current, "allocation_id", self._read_one)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidAllocationID.NotFound"):
                await ec2.release_address(AllocationId=current["allocation_id"])


ELASTIC_IP = Table(
    name="elastic_ip",
    extra_ddl=tags_as_text("elastic_ip"),
    columns=(
        Column("allocation_id", "varchar", cloud_assigned=True),
        Column("public_ip", "varchar", cloud_assigned=True),
        tags_column(),
        region_column(),
    ),
    mapper=ElasticIpMapper(),
    # AWS picks the address; the tags are all a user gives an address, so they are what tells
    # one apart in another account (compared as jsonb). Untagged addresses of a region are
    # interchangeable: tag an address (e.g. Name) to name it in replayed SQL.
    natural_key=("tags", "region"),
    cloud_id=("allocation_id",),
)

# --- internet_gateway ----------------------------------------------------------------------


def _gateway_record(gateway: dict[str, Any], region: str | None, defaults: set[str]) -> Record:
    attached = [
        a["VpcId"]
        for a in gateway.get("Attachments") or ()
        if a.get("State") in ("attached", "available", "attaching")
    ]
    vpc_id = attached[0] if attached else None
    record = {
        "internet_gateway_id": gateway["InternetGatewayId"],
        "tags": user_tags(gateway.get("Tags")),
        "region": region,
        "vpc_id": vpc_id,
        "default_vpc": vpc_id in defaults,  # not a column: for `protected`
    }
    return with_token(record, gateway.get("Tags"))


async def _default_vpcs(ec2: Any) -> set[str]:
    answer = await ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    return {v["VpcId"] for v in answer["Vpcs"]}


class InternetGatewayMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            defaults = await _default_vpcs(ec2)
            pages = ec2.get_paginator("describe_internet_gateways").paginate()
            return [
                _gateway_record(g, region, defaults)
                async for page in pages
                for g in page["InternetGateways"]
            ]

    async def _read_one(self, ec2: Any, gateway_id: str, region: str) -> Record:
        answer = await ec2.describe_internet_gateways(InternetGatewayIds=[gateway_id])
        return _gateway_record(answer["InternetGateways"][0], region, await _default_vpcs(ec2))

    async def _attach(self, ec2: Any, gateway_id: str, wanted: str | None, now: str | None) -> None:
        """Moves the gateway from VPC `now` to VPC `wanted` (None: detached)."""
        if wanted == now:
            return
        if now is not None:
            with ignoring("Gateway.NotAttached"):
                await ec2.detach_internet_gateway(InternetGatewayId=gateway_id, VpcId=now)
        if wanted is not None:
            await ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=wanted)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_internet_gateway(
                TagSpecifications=tag_specifications(
                    "internet-gateway", record.get("tags"), record.get(TOKEN)
                )
            )
            gateway_id = answer["InternetGateway"]["InternetGatewayId"]
            await wait_for(ec2, "internet_gateway_exists", InternetGatewayIds=[gateway_id])
            await self._attach(ec2, gateway_id, record.get("vpc_id"), None)
            return await self._read_one(ec2, gateway_id, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        gateway_id = current["internet_gateway_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            await self._attach(ec2, gateway_id, record.get("vpc_id"), current.get("vpc_id"))
            await sync_tags(ec2, gateway_id, record.get("tags"), current.get("tags"))
            return await self._read_one(ec2, gateway_id, current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        gateway_id = current["internet_gateway_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidInternetGatewayID.NotFound"):
                await self._attach(ec2, gateway_id, None, current.get("vpc_id"))
                await ec2.delete_internet_gateway(InternetGatewayId=gateway_id)


INTERNET_GATEWAY = Table(
    name="internet_gateway",
    extra_ddl=tags_as_text("internet_gateway"),
    columns=(
        Column("internet_gateway_id", "varchar", cloud_assigned=True),
        tags_column(),
        region_column(),
        # Attached to this VPC; NULL: detached. Changing it detaches and attaches in place.
        foreign_key("vpc_id", "vpc", "vpc_id", nullable=True, replaces=False),
    ),
    mapper=InternetGatewayMapper(),
    # A VPC has at most one gateway attached, so an attached gateway is known by its VPC; a
    # detached one only by its tags (compared as jsonb). Both are in the key, which has to be
    # one tuple: without the tags, a replayed UPDATE or DELETE of a detached gateway would
    # match every detached gateway of the region.
    natural_key=("vpc_id", "tags", "region"),
    cloud_id=("internet_gateway_id",),
    # AWS gives the default VPC its gateway.
    protected=lambda record: bool(record.get("default_vpc")),
)

# --- nat_gateway ---------------------------------------------------------------------------

# Gone or on their way out: nothing can be done with them, and AWS lists them for an hour.
_NAT_GONE = ("deleting", "deleted")


def _nat_allocation(gateway: dict[str, Any]) -> str | None:
    """The elastic IP of a public gateway: its primary address's allocation."""
    addresses = [a for a in gateway.get("NatGatewayAddresses") or () if a.get("AllocationId")]
    primary = [a for a in addresses if a.get("IsPrimary")] or addresses
    return primary[0]["AllocationId"] if primary else None


def _nat_record(gateway: dict[str, Any], region: str | None) -> Record:
    record = {
        "nat_gateway_id": gateway["NatGatewayId"],
        "connectivity_type": gateway.get("ConnectivityType", "public"),
        "state": gateway.get("State"),
        "tags": user_tags(gateway.get("Tags")),
        "region": region,
        "subnet_id": gateway["SubnetId"],
        "elastic_ip_id": _nat_allocation(gateway),
    }
    return with_token(record, gateway.get("Tags"))


class NatGatewayMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_nat_gateways").paginate()
            return [
                _nat_record(g, region)
                async for page in pages
                for g in page["NatGateways"]
                if g.get("State") not in _NAT_GONE
            ]

    async def _read_one(self, ec2: Any, gateway_id: str, region: str) -> Record:
        answer = await ec2.describe_nat_gateways(NatGatewayIds=[gateway_id])
        gateway = answer["NatGateways"][0]
        if gateway.get("State") == "failed":
            raise CloudError(
                f"NAT gateway {gateway_id} failed: {gateway.get('FailureMessage', 'no reason')}"
            )
        return _nat_record(gateway, region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        public = record.get("connectivity_type") == "public"
        allocation = record.get("elastic_ip_id")
        if public and allocation is None:
            raise CloudError(
                "a public NAT gateway needs an elastic_ip_id: set it to the id of an elastic_ip"
                " row, or insert the gateway without one to have an address allocated"
            )
        if not public and allocation is not None:
            raise CloudError("a private NAT gateway has no elastic IP")
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_nat_gateway(
                SubnetId=record["subnet_id"],
                ConnectivityType=record["connectivity_type"],
                TagSpecifications=tag_specifications(
                    "natgateway", record.get("tags"), record.get(TOKEN)
                ),
                **({"AllocationId": allocation} if public else {}),
            )
            gateway_id = answer["NatGateway"]["NatGatewayId"]
            # A few minutes on AWS; the waiter gives up early when the gateway fails.
            await wait_for(ec2, "nat_gateway_available", NatGatewayIds=[gateway_id])
            return await self._read_one(ec2, gateway_id, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await update_tags(cloud, record, current, "nat_gateway_id", self._read_one)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        gateway_id = current["nat_gateway_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("NatGatewayNotFound", "InvalidNatGatewayID.NotFound"):
                await ec2.delete_nat_gateway(NatGatewayId=gateway_id)
            # Its elastic IP and its subnet are freed only once it is gone.
            await wait_for(ec2, "nat_gateway_deleted", NatGatewayIds=[gateway_id])


# As IaSQL does: a public gateway written without an address gets a new one, tagged as the
# gateway is. Here it is a row of elastic_ip from the start (the preview shows its create, and
# the commit makes it before the gateway). Deleting the gateway leaves the address, as in
# IaSQL: DELETE its elastic_ip row to release it. Only for a gateway the user writes: a new
# row (no nat_gateway_id yet), or a private one made public (which replaces it); rows the
# engine reads from the cloud name their address already.
NAT_ELASTIC_IP_DDL = (
    """CREATE OR REPLACE FUNCTION nat_gateway_elastic_ip() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.connectivity_type = 'public' AND NEW.elastic_ip_id IS NULL AND (
                TG_OP = 'INSERT' AND NEW.nat_gateway_id IS NULL
                OR TG_OP = 'UPDATE' AND OLD.connectivity_type IS DISTINCT FROM 'public'
                    AND NEW.nat_gateway_id IS NOT DISTINCT FROM OLD.nat_gateway_id) THEN
            INSERT INTO elastic_ip (tags, region) VALUES (NEW.tags, NEW.region)
                RETURNING id INTO NEW.elastic_ip_id;
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER nat_gateway_elastic_ip BEFORE INSERT OR UPDATE ON nat_gateway
        FOR EACH ROW EXECUTE FUNCTION nat_gateway_elastic_ip()""",
)

NAT_GATEWAY = Table(
    name="nat_gateway",
    columns=(
        Column("nat_gateway_id", "varchar", cloud_assigned=True),
        Column(
            "connectivity_type",
            "varchar",
            nullable=False,
            check="connectivity_type IN ('public', 'private')",
            replaces=True,
        ),
        Column(
            "state",
            "varchar",
            check="state IN ('pending', 'failed', 'available', 'deleting', 'deleted')",
            cloud_assigned=True,
        ),
        tags_column(),
        region_column(),
        foreign_key("subnet_id", "subnet", "subnet_id"),
        foreign_key("elastic_ip_id", "elastic_ip", "allocation_id", nullable=True),
    ),
    mapper=NatGatewayMapper(),
    # A public gateway is known by its address (one gateway per address); a private one by
    # its subnet, and a subnet seldom holds two (gateways are spread one per zone).
    natural_key=("subnet_id", "connectivity_type", "elastic_ip_id"),
    cloud_id=("nat_gateway_id",),
    # A private gateway has no public address. (A public one needs one to be created, which
    # the mapper says, but a failed one may be listed without it, so that is no constraint.)
    extra_ddl=(
        *tags_as_text("nat_gateway"),
        "ALTER TABLE nat_gateway ADD CONSTRAINT nat_gateway_private_no_address"
        " CHECK (connectivity_type = 'public' OR elastic_ip_id IS NULL)",
        *NAT_ELASTIC_IP_DDL,
    ),
)

# --- route_table ---------------------------------------------------------------------------


async def _route_tables(ec2: Any, **filters: Any) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_route_tables").paginate(**filters)
    return [table async for page in pages for table in page["RouteTables"]]


async def _route_table(ec2: Any, route_table_id: str) -> dict[str, Any]:
    [table] = await _route_tables(ec2, RouteTableIds=[route_table_id])
    return table


def _table_record(table: dict[str, Any], region: str | None) -> Record:
    record = {
        "route_table_id": table["RouteTableId"],
        "tags": user_tags(table.get("Tags")),
        "region": region,
        "vpc_id": table["VpcId"],
        # Not a column: the main table comes with its VPC and can't be deleted before it.
        "main": any(a.get("Main") for a in table.get("Associations") or ()),
    }
    return with_token(record, table.get("Tags"))


class RouteTableMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            return [_table_record(t, region) for t in await _route_tables(ec2)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_route_table(
                VpcId=record["vpc_id"],
                TagSpecifications=tag_specifications(
                    "route-table", record.get("tags"), record.get(TOKEN)
                ),
            )
            return await self._read_one(ec2, answer["RouteTable"]["RouteTableId"], region)

    async def _read_one(self, ec2: Any, table_id: str, region: str) -> Record:
        return _table_record(await _route_table(ec2, table_id), region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await update_tags(cloud, record, current, "route_table_id", self._read_one)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidRouteTableID.NotFound"):
                await ec2.delete_route_table(RouteTableId=current["route_table_id"])


ROUTE_TABLE = Table(
    name="route_table",
    extra_ddl=tags_as_text("route_table"),
    columns=(
        Column("route_table_id", "varchar", cloud_assigned=True),
        tags_column(),
        region_column(),
        # Deleting a VPC's row takes its tables' rows with it: AWS deletes the main table with
        # the VPC, and refuses to delete a VPC that has other tables.
        foreign_key("vpc_id", "vpc", "vpc_id", on_delete="CASCADE"),
    ),
    mapper=RouteTableMapper(),
    # A route table has no name and nothing of its own but its VPC and its tags, so those
    # identify it in another account (the tags compared as jsonb): the main table AWS makes
    # is the VPC's untagged one, and a user's tables are told apart by their tags (e.g. Name).
    # Untagged extra tables of one VPC are interchangeable, and a sub-select naming one of
    # them fails ("more than one row") rather than pick one. Which table is main is not part
    # of it: that changes (route_table_association.is_main) and is no column here.
    natural_key=("vpc_id", "tags"),
    cloud_id=("route_table_id",),
    # Main as the cloud has it when the plan is made: a table made main by a commit can be
    # deleted in the next one, not in the same.
    protected=lambda record: bool(record.get("main")),
)

# --- route_table_association ---------------------------------------------------------------

_LIVE_ASSOCIATION = ("associated", "associating")


def _association_records(table: dict[str, Any], region: str | None) -> list[Record]:
    records = []
    for association in table.get("Associations") or ():
        state = (association.get("AssociationState") or {}).get("State", "associated")
        # An edge association (a gateway's, by GatewayId) has no row in this table.
        if state not in _LIVE_ASSOCIATION or association.get("GatewayId"):
            continue
        records.append(
            {
                "route_table_association_id": association["RouteTableAssociationId"],
                "is_main": bool(association.get("Main")),
                "region": region,
                "route_table_id": association["RouteTableId"],
                "subnet_id": association.get("SubnetId"),
                "vpc_id": table["VpcId"],
            }
        )
    return records


async def _association(ec2: Any, table_id: str, association_id: str, region: str) -> Record:
    table = await _route_table(ec2, table_id)
    found = [
        r
        for r in _association_records(table, region)
        if r["route_table_association_id"] == association_id
    ]
    if not found:
        raise CloudError(f"association {association_id} of {table_id} is not listed by AWS")
    return found[0]


class RouteTableAssociationMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            tables = await _route_tables(ec2)
        return [r for t in tables for r in _association_records(t, region)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("is_main"):
            raise CloudError(
                "a VPC's main association comes with the VPC: to make another table main,"
                " change the route_table_id of its is_main row"
            )
        if record.get("subnet_id") is None:
            raise CloudError("a route table association needs its subnet_id")
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.associate_route_table(
                RouteTableId=record["route_table_id"], SubnetId=record["subnet_id"]
            )
            return await _association(
                ec2, record["route_table_id"], answer["AssociationId"], region
            )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        """Points the subnet (or, for the main association, the VPC) at another table. AWS
        gives the association a new id."""
        region = current["region"]
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.replace_route_table_association(
                AssociationId=current["route_table_association_id"],
                RouteTableId=record["route_table_id"],
            )
            return await _association(
                ec2, record["route_table_id"], answer["NewAssociationId"], region
            )

    async def delete(self, cloud: Cloud, current: Record) -> None:
        if current.get("is_main"):
            raise CloudError("a VPC's main association can't be removed, only pointed elsewhere")
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidAssociationID.NotFound"):
                await ec2.disassociate_route_table(
                    AssociationId=current["route_table_association_id"]
                )


ROUTE_TABLE_ASSOCIATION = Table(
    name="route_table_association",
    columns=(
        Column("route_table_association_id", "varchar", cloud_assigned=True),
        # The VPC's main association (no subnet): which table the VPC's other subnets use.
        Column("is_main", "boolean", nullable=False, default="false", replaces=True),
        # Ours (IaSQL's table has none): an association carries no region of its own, and a
        # create has to know where its route table is. Same default as everywhere.
        region_column(),
        # Changed in place (replace_route_table_association), for the main one too.
        foreign_key(
            "route_table_id", "route_table", "route_table_id", on_delete="CASCADE", replaces=False
        ),
        # AWS drops a subnet's association with the subnet.
        foreign_key("subnet_id", "subnet", "subnet_id", on_delete="CASCADE", nullable=True),
        foreign_key("vpc_id", "vpc", "vpc_id", on_delete="CASCADE"),
    ),
    mapper=RouteTableAssociationMapper(),
    # A VPC has one main association, and a subnet one association.
    natural_key=("vpc_id", "is_main", "subnet_id"),
    cloud_id=("route_table_association_id",),
    # No unique index on (vpc_id) WHERE is_main: a sync inserts the new main association of a
    # replace done outside iasql before it deletes the old one.
    extra_ddl=(
        "ALTER TABLE route_table_association ADD CONSTRAINT route_table_association_main"
        " CHECK (is_main = (subnet_id IS NULL))",
    ),
    protected=lambda record: bool(record.get("is_main")),
)

# --- route ---------------------------------------------------------------------------------

# column -> the key naming a route's target in describe_route_tables, create_route and
# replace_route alike
_TARGETS = {
    "egress_only_internet_gateway_id": "EgressOnlyInternetGatewayId",
    "gateway_id": "GatewayId",
    "instance_id": "InstanceId",
    "nat_gateway_id": "NatGatewayId",
    "transit_gateway_id": "TransitGatewayId",
    "local_gateway_id": "LocalGatewayId",
    "carrier_gateway_id": "CarrierGatewayId",
    "network_interface_id": "NetworkInterfaceId",
    "vpc_peering_connection_id": "VpcPeeringConnectionId",
    "core_network_arn": "CoreNetworkArn",
}


def normalize_destination(value: Any) -> str | None:
    """A CIDR in its canonical form; a prefix list id (pl-...) as it is."""
    if value is None:
        return None
    text = str(value).strip()
    return text if text.startswith("pl-") else normalize_cidr(text)


def _destination(destination: str) -> dict[str, str]:
    if destination.startswith("pl-"):
        return {"DestinationPrefixListId": destination}
    if ":" in destination:
        return {"DestinationIpv6CidrBlock": destination}
    return {"DestinationCidrBlock": destination}


# Foreign-key columns that name a target by its row, so that a route can go to a gateway
# created in the same transaction (whose cloud id comes only at commit). A trigger keeps each
# in step with its cloud-id column: set one, and the other follows.
_TARGET_ROWS = {
    "internet_gateway": ("gateway_id", "igw-"),
    "nat_gateway": ("nat_gateway_id", "nat-"),
}


def _targets(record: Record) -> dict[str, str]:
    record = dict(record)
    for column, (cloud_column, _prefix) in _TARGET_ROWS.items():
        if record.get(cloud_column) is None:
            record[cloud_column] = record.get(column)
    targets = {key: record[c] for c, key in _TARGETS.items() if record.get(c) is not None}
    if len(targets) != 1:
        raise CloudError(f"a route needs exactly one target, one of {', '.join(_TARGETS)}")
    return targets


def is_aws_route(record: Record) -> bool:
    """Routes AWS makes and removes itself: the local route of every table (and the routes
    that come with a table), and those a gateway endpoint adds to its tables."""
    gateway = record.get("gateway_id") or ""
    return (
        gateway == "local"
        or gateway.startswith("vpce-")
        or record.get("origin") == "CreateRouteTable"
    )


def _route_record(route: dict[str, Any], table_id: str, region: str | None) -> Record:
    destination = (
        route.get("DestinationCidrBlock")
        or route.get("DestinationIpv6CidrBlock")
        or route.get("DestinationPrefixListId")
    )
    record: Record = {c: route.get(key) or None for c, key in _TARGETS.items()}
    if record["instance_id"] is not None:
        # AWS reports the instance's interface beside the instance a route was given.
        record["network_interface_id"] = None
    for column, (cloud_column, prefix) in _TARGET_ROWS.items():
        target = record.get(cloud_column) or ""
        record[column] = target if target.startswith(prefix) else None
    record.update(
        destination=normalize_destination(destination),
        instance_owner_id=route.get("InstanceOwnerId"),
        region=region,
        route_table_id=table_id,
        origin=route.get("Origin"),  # not a column: for `protected`
    )
    return record


def _route_records(table: dict[str, Any], region: str | None) -> list[Record]:
    return [
        _route_record(route, table["RouteTableId"], region)
        for route in table.get("Routes") or ()
        # Propagated routes follow a virtual private gateway: not a user's to manage.
        if route.get("Origin") != "EnableVgwRoutePropagation"
    ]


async def _route(ec2: Any, table_id: str, destination: str, region: str) -> Record:
    table = await _route_table(ec2, table_id)
    found = [r for r in _route_records(table, region) if r["destination"] == destination]
    if not found:
        raise CloudError(f"no route to {destination} in {table_id}")
    return found[0]


class RouteMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            tables = await _route_tables(ec2)
        return [r for t in tables for r in _route_records(t, region)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        targets = _targets(record)
        if targets.get("GatewayId") == "local":
            raise CloudError("the local route comes with its route table: it can't be added")
        destination = normalize_destination(record["destination"]) or ""
        async with cloud.client("ec2", record["region"]) as ec2:
            await ec2.create_route(
                RouteTableId=record["route_table_id"], **_destination(destination), **targets
            )
            return await _route(ec2, record["route_table_id"], destination, record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        """A new target for the same destination, in place."""
        destination = current["destination"]
        targets: dict[str, Any] = _targets(record)
        if targets.get("GatewayId") == "local":
            targets = {"LocalTarget": True}  # back to the VPC itself, for the local route
        async with cloud.client("ec2", current["region"]) as ec2:
            await ec2.replace_route(
                RouteTableId=current["route_table_id"], **_destination(destination), **targets
            )
            return await _route(ec2, current["route_table_id"], destination, current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidRoute.NotFound", "InvalidRouteTableID.NotFound"):
                await ec2.delete_route(
                    RouteTableId=current["route_table_id"],
                    **_destination(current["destination"]),
                )


def _target_column(name: str) -> Column:
    return Column(name, "varchar")


def _target_row_column(name: str) -> Column:
    table = name  # the column is named after the table it references
    cloud_column = f"{table}_id"
    return foreign_key(
        name,
        table,
        cloud_column,
        on_delete="CASCADE",
        nullable=True,
        replaces=False,
        optional=True,
    )


def _target_row_trigger() -> str:
    """BEFORE INSERT OR UPDATE: the cloud-id column and the row column name the same target.
    An explicit change of the cloud id wins; a change of the row sets the cloud id (NULL
    until that gateway is created: the mapper then uses the row's, and the commit's sync
    fills the id in)."""
    steps = []
    for column, (cloud_column, _prefix) in _TARGET_ROWS.items():
        by_row = f"(SELECT {column}_id FROM {column} WHERE id = NEW.{column})"
        by_id = f"(SELECT id FROM {column} WHERE {column}_id = NEW.{cloud_column})"
        steps.append(
            f"IF TG_OP = 'UPDATE' AND NEW.{cloud_column} IS DISTINCT FROM OLD.{cloud_column}"
            f" OR TG_OP = 'INSERT' AND NEW.{column} IS NULL THEN"
            f" NEW.{column} := {by_id};"
            f" ELSIF TG_OP = 'INSERT' OR NEW.{column} IS DISTINCT FROM OLD.{column} THEN"
            f" NEW.{cloud_column} := {by_row};"
            " END IF;"
        )
    return (
        "CREATE OR REPLACE FUNCTION route_target_rows() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        + " ".join(steps)
        + " RETURN NEW; END $$"
    )


ROUTE = Table(
    name="route",
    columns=(
        # A route has no id: its table and destination are its identity in the cloud too.
        Column("destination", "varchar", nullable=False, replaces=True),
        # Targets as cloud ids: a gateway, instance or interface of this account. A route to a
        # gateway created in the same transaction can't name it yet (its id comes at commit).
        _target_column("egress_only_internet_gateway_id"),
        Column("gateway_id", "varchar", cloud_ref=Ref("internet_gateway", "internet_gateway_id")),
        _target_column("instance_id"),
        Column("instance_owner_id", "varchar", cloud_assigned=True),
        Column("nat_gateway_id", "varchar", cloud_ref=Ref("nat_gateway", "nat_gateway_id")),
        _target_column("transit_gateway_id"),
        _target_column("local_gateway_id"),
        _target_column("carrier_gateway_id"),
        _target_column("network_interface_id"),
        _target_column("vpc_peering_connection_id"),
        _target_column("core_network_arn"),
        region_column(),
        foreign_key("route_table_id", "route_table", "route_table_id", on_delete="CASCADE"),
        *(_target_row_column(name) for name in _TARGET_ROWS),
    ),
    mapper=RouteMapper(),
    natural_key=("route_table_id", "destination"),
    cloud_id=("route_table_id", "destination"),
    protected=is_aws_route,
    extra_ddl=(
        # The destination is half the route's identity, compared as it is: it has to be in
        # AWS's form (no host bits, /32 spelled out) to match the route AWS reports.
        "ALTER TABLE route ADD CONSTRAINT route_destination_canonical CHECK ("
        "destination LIKE 'pl-%' OR destination = network(destination::inet)::text)",
        "ALTER TABLE route ADD CONSTRAINT route_one_target CHECK (num_nonnulls("
        + ", ".join(_TARGETS)
        + ") <= 1)",
        _target_row_trigger(),
        "CREATE TRIGGER route_target_rows BEFORE INSERT OR UPDATE ON route"
        " FOR EACH ROW EXECUTE FUNCTION route_target_rows()",
    ),
)

ROUTING_TABLES = (
    ELASTIC_IP,
    INTERNET_GATEWAY,
    NAT_GATEWAY,
    ROUTE_TABLE,
    ROUTE_TABLE_ASSOCIATION,
    ROUTE,
)
