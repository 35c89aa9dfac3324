"""aws_security_group: security groups and their rules."""

from __future__ import annotations

from typing import Any

from modules import VERSION
from modules._aws.cidr import normalize_cidr
from modules._aws.region import region_column
from modules._aws.tags import tag_specifications, with_token
from modules._aws.waiters import wait_for
from modules.errors import ignoring
from modules.spec import (
    TOKEN,
    Cloud,
    CloudError,
    Column,
    ModuleSpec,
    Record,
    Table,
    foreign_key,
)

# --- security_group ------------------------------------------------------------------------


def _group_record(group: dict[str, Any], region: str | None) -> Record:
    record = {
        "description": group["Description"],
        "group_name": group["GroupName"],
        "owner_id": group.get("OwnerId"),
        "group_id": group["GroupId"],
        "region": region,
        "vpc_id": group.get("VpcId"),
    }
    return with_token(record, group.get("Tags"))


async def _revoke_egress(ec2: Any, group_id: str) -> None:
    """Removes the allow-all egress rule AWS gives every new group. The rule table is the
    whole truth about a group's rules (as in IaSQL): a group without egress rows has no egress,
    and a user's own allow-all egress row does not collide with AWS's as a duplicate."""
    answer = await ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [group_id]}]
    )
    egress = [r["SecurityGroupRuleId"] for r in answer["SecurityGroupRules"] if r["IsEgress"]]
    if egress:
        await ec2.revoke_security_group_egress(GroupId=group_id, SecurityGroupRuleIds=egress)


class SecurityGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_security_groups").paginate()
            return [
                _group_record(g, region) async for page in pages for g in page["SecurityGroups"]
            ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        vpc = {"VpcId": record["vpc_id"]} if record.get("vpc_id") else {}  # none: the default
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_security_group(
                GroupName=record["group_name"],
                Description=record["description"],
                TagSpecifications=tag_specifications("security-group", None, record.get(TOKEN)),
                **vpc,
            )
            group_id = answer["GroupId"]
            await wait_for(ec2, "security_group_exists", GroupIds=[group_id])
            await _revoke_egress(ec2, group_id)
            found = await ec2.describe_security_groups(GroupIds=[group_id])
        return _group_record(found["SecurityGroups"][0], region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # AWS can change neither name, description nor VPC: they replace

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidGroup.NotFound"):
                await ec2.delete_security_group(GroupId=current["group_id"])


# A group made without a VPC lands in its region's default VPC: the row says so from the start,
# so that it matches what the cloud reports.
_DEFAULT_VPC_TRIGGER = (
    """CREATE OR REPLACE FUNCTION security_group_default_vpc() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.vpc_id IS NULL THEN
            NEW.vpc_id := (SELECT id FROM vpc WHERE is_default AND region = NEW.region LIMIT 1);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER security_group_default_vpc BEFORE INSERT ON security_group
        FOR EACH ROW EXECUTE FUNCTION security_group_default_vpc()""",
)

SECURITY_GROUP = Table(
    name="security_group",
    columns=(
        Column("description", "varchar", nullable=False, replaces=True),
        Column("group_name", "varchar", nullable=False, replaces=True),
        Column("owner_id", "varchar", cloud_assigned=True),
        Column("group_id", "varchar", cloud_assigned=True),
        region_column(),
        foreign_key("vpc_id", "vpc", "vpc_id", nullable=True),
    ),
    mapper=SecurityGroupMapper(),
    # AWS keeps group names unique per VPC (and the VPC brings the region).
    natural_key=("group_name", "vpc_id", "region"),
    cloud_id=("group_id",),
    # Every VPC's own group: AWS makes it and removes it with the VPC.
    protected=lambda record: record.get("group_name") == "default",
    extra_ddl=_DEFAULT_VPC_TRIGGER,
)

# --- security_group_rule -------------------------------------------------------------------

# AWS answers with the names of these protocols whatever form they were given in.
_PROTOCOL_NAMES = {"all": "-1", "1": "icmp", "6": "tcp", "17": "udp", "58": "icmpv6"}


def normalize_protocol(value: Any) -> str | None:
    """AWS's form of an IP protocol: "tcp" for "TCP" or "6", "-1" for all ("all")."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return _PROTOCOL_NAMES.get(text, text)


def normalize_port(value: Any) -> int | None:
    """-1 is AWS's "any" (all ICMP types, every port of protocol -1), the same as no port."""
    return None if value is None or int(value) == -1 else int(value)


def normalize_description(value: Any) -> str | None:
    return value or None  # AWS does not tell an empty description from none


# The column naming who a rule lets in or out -> (IpPermission list, its item's key), and the
# key of modify_security_group_rules' SecurityGroupRuleRequest.
_TARGETS = {
    "cidr_ipv4": ("IpRanges", "CidrIp", "CidrIpv4"),
    "cidr_ipv6": ("Ipv6Ranges", "CidrIpv6", "CidrIpv6"),
    "prefix_list_id": ("PrefixListIds", "PrefixListId", "PrefixListId"),
    "source_security_group": ("UserIdGroupPairs", "GroupId", "ReferencedGroupId"),
}


def _target(record: Record) -> tuple[str, Any]:
    """The rule's one target column and its value."""
    found = [c for c in _TARGETS if record.get(c) is not None]
    if len(found) != 1:
        raise CloudError(
            "a security group rule needs exactly one of cidr_ipv4, cidr_ipv6, prefix_list_id"
            " and source_security_group"
        )
    column = found[0]
    value = record[column]
    return column, normalize_cidr(value) if column.startswith("cidr_") else value


def _protocol_and_ports(record: Record) -> dict[str, Any]:
    protocol = normalize_protocol(record.get("ip_protocol"))
    if protocol is None and record.get("source_security_group") is not None:
        # As in IaSQL: a rule from a group with no protocol lets all its traffic in. One rule,
        # protocol -1, which the row's trigger names already.
        protocol = "-1"
    if protocol is None:
        raise CloudError(
            "a security group rule on a CIDR or prefix list needs an ip_protocol"
            " ('tcp', 'udp', 'icmp', or '-1' for all traffic)"
        )
    fields: dict[str, Any] = {"IpProtocol": protocol}
    if protocol == "-1":
        return fields  # every port: AWS ignores any given
    for column, key in (("from_port", "FromPort"), ("to_port", "ToPort")):
        port = normalize_port(record.get(column))
        if port is not None:
            fields[key] = port
    return fields


def ip_permission(record: Record) -> dict[str, Any]:
    """The rule as the one IpPermission of an authorize call."""
    column, value = _target(record)
    list_key, item_key, _ = _TARGETS[column]
    item = {item_key: value}
    if record.get("description"):
        item["Description"] = record["description"]
    return {**_protocol_and_ports(record), list_key: [item]}


def rule_request(record: Record) -> dict[str, Any]:
    """The rule as a SecurityGroupRuleRequest of modify_security_group_rules."""
    column, value = _target(record)
    return {
        **_protocol_and_ports(record),
        _TARGETS[column][2]: value,
        "Description": record.get("description") or "",
    }


def _rule_record(rule: dict[str, Any], region: str | None) -> Record:
    protocol = rule.get("IpProtocol")
    every_port = protocol == "-1"  # AWS reports -1 or nothing for the ports: no ports
    record = {
        "security_group_rule_id": rule["SecurityGroupRuleId"],
        "is_egress": bool(rule.get("IsEgress")),
        "ip_protocol": protocol,
        "from_port": None if every_port else rule.get("FromPort"),
        "to_port": None if every_port else rule.get("ToPort"),
        "cidr_ipv4": normalize_cidr(rule.get("CidrIpv4")),
        "cidr_ipv6": normalize_cidr(rule.get("CidrIpv6")),
        "prefix_list_id": rule.get("PrefixListId"),
        "description": rule.get("Description") or None,
        "region": region,
        "security_group_id": rule["GroupId"],
        "source_security_group": rule.get("ReferencedGroupInfo", {}).get("GroupId"),
    }
    return with_token(record, rule.get("Tags"))


class SecurityGroupRuleMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_security_group_rules").paginate()
            return [
                _rule_record(r, region) async for page in pages for r in page["SecurityGroupRules"]
            ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("security_group_id") is None:
            raise CloudError("a security group rule needs its security_group_id")
        permission = ip_permission(record)
        async with cloud.client("ec2", record["region"]) as ec2:
            authorize = (
                ec2.authorize_security_group_egress
                if record["is_egress"]
                else ec2.authorize_security_group_ingress
            )
            answer = await authorize(
                GroupId=record["security_group_id"],
                IpPermissions=[permission],
                TagSpecifications=tag_specifications(
                    "security-group-rule", None, record.get(TOKEN)
                ),
            )
        # One permission with one target makes exactly one rule, reported in full.
        [rule] = answer["SecurityGroupRules"]
        return _rule_record(rule, record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        rule_id = current["security_group_rule_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            await ec2.modify_security_group_rules(
                GroupId=current["security_group_id"],
                SecurityGroupRules=[
                    {"SecurityGroupRuleId": rule_id, "SecurityGroupRule": rule_request(record)}
                ],
            )
            found = await ec2.describe_security_group_rules(SecurityGroupRuleIds=[rule_id])
        return _rule_record(found["SecurityGroupRules"][0], current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            revoke = (
                ec2.revoke_security_group_egress
                if current["is_egress"]
                else ec2.revoke_security_group_ingress
            )
            # The rule, or its whole group, may be gone already.
            with ignoring(
                "InvalidPermission.NotFound",
                "InvalidSecurityGroupRuleId.NotFound",
                "InvalidGroup.NotFound",
            ):
                await revoke(
                    GroupId=current["security_group_id"],
                    SecurityGroupRuleIds=[current["security_group_rule_id"]],
                )


# IaSQL's rule from a source group with no protocol means all traffic from that group (IaSQL
# sends no protocol, and AWS expands it into tcp, udp and icmp rules, three rows). Here it is
# the one rule AWS keeps for all traffic, protocol -1 and every port: the row says so from the
# start, as the cloud will report it, and stays one row.
_ALL_TRAFFIC_TRIGGER = (
    """CREATE OR REPLACE FUNCTION security_group_rule_all_traffic() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.ip_protocol IS NULL AND NEW.source_security_group IS NOT NULL THEN
            NEW.ip_protocol := '-1';
            NEW.from_port := NULL;
            NEW.to_port := NULL;
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER security_group_rule_all_traffic BEFORE INSERT OR UPDATE
        ON security_group_rule FOR EACH ROW EXECUTE FUNCTION security_group_rule_all_traffic()""",
)

SECURITY_GROUP_RULE = Table(
    name="security_group_rule",
    columns=(
        Column("security_group_rule_id", "varchar", cloud_assigned=True),
        Column("is_egress", "boolean", nullable=False, replaces=True),
        Column("ip_protocol", "varchar", normalize=normalize_protocol),
        Column("from_port", "integer", normalize=normalize_port),
        Column("to_port", "integer", normalize=normalize_port),
        # The target replaces the rule: moto's modify_security_group_rules keeps the old target
        # beside a new one of another kind (a CIDR for a source group), and a replace is right
        # on AWS too.
        Column("cidr_ipv4", "cidr", replaces=True, normalize=normalize_cidr),
        Column("cidr_ipv6", "cidr", replaces=True, normalize=normalize_cidr),
        Column("prefix_list_id", "varchar", replaces=True),
        Column("description", "varchar", normalize=normalize_description),
        region_column(),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", nullable=True
        ),
        foreign_key(
            "source_security_group",
            "security_group",
            "group_id",
            on_delete="CASCADE",
            nullable=True,
        ),
    ),
    mapper=SecurityGroupRuleMapper(),
    # A rule has no name: AWS tells rules apart by everything but the description (the same
    # permission twice is InvalidPermission.Duplicate).
    natural_key=(
        "security_group_id",
        "is_egress",
        "ip_protocol",
        "from_port",
        "to_port",
        "cidr_ipv4",
        "cidr_ipv6",
        "prefix_list_id",
        "source_security_group",
    ),
    cloud_id=("security_group_rule_id",),
    # At most one target: a row can't stand for the several rules AWS would make of two. (Not
    # exactly one: a group of another account as the source reads back as NULL.)
    extra_ddl=(
        "ALTER TABLE security_group_rule ADD CONSTRAINT security_group_rule_one_target"
        " CHECK (num_nonnulls(cidr_ipv4, cidr_ipv6, prefix_list_id, source_security_group) <= 1)",
        *_ALL_TRAFFIC_TRIGGER,
    ),
)

MODULE = ModuleSpec(
    name="aws_security_group",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc"),
    description="Security groups and their rules",
    tables=(SECURITY_GROUP, SECURITY_GROUP_RULE),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS security_group_default_vpc()",
        "DROP FUNCTION IF EXISTS security_group_rule_all_traffic()",
    ),
)
