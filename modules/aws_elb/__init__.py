"""aws_elb: Elastic Load Balancing v2 (application, network and gateway load balancers): target
groups, load balancers, their security groups and their listeners."""

from __future__ import annotations

import json
from typing import Any

from modules import VERSION
from modules._aws.arns import region_of
from modules._aws.attributes import AttributeMap
from modules._aws.region import region_column
from modules._aws.tags import tag_list, token_tag, with_token
from modules.concurrency import KeyedLocks, gather_bounded
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

_PROTOCOLS = "('GENEVE', 'HTTP', 'HTTPS', 'TCP', 'TCP_UDP', 'TLS', 'UDP')"
_TAGS_PER_CALL = 20  # DescribeTags takes at most 20 ARNs


def _token_tags(record: Record) -> dict[str, Any]:
    """The Tags argument of a create: the engine's token (a create undoing a delete may have
    none, and AWS refuses an empty tag list)."""
    tags = tag_list(token_tag(record.get(TOKEN)))
    return {"Tags": tags} if tags else {}


async def _tags(elb: Any, arns: list[str]) -> dict[str, list[dict[str, str]]]:
    """Every resource's tags, by ARN."""
    batches = [arns[i : i + _TAGS_PER_CALL] for i in range(0, len(arns), _TAGS_PER_CALL)]
    answers = await gather_bounded(elb.describe_tags(ResourceArns=b) for b in batches)
    return {d["ResourceArn"]: d.get("Tags", []) for a in answers for d in a["TagDescriptions"]}


async def _load_balancers(elb: Any, **filters: Any) -> list[dict[str, Any]]:
    pages = elb.get_paginator("describe_load_balancers").paginate(**filters)
    return [lb async for page in pages for lb in page["LoadBalancers"]]


def _present(**values: Any) -> dict[str, Any]:
    """The keyword arguments that have a value (AWS's defaults apply to the others)."""
    return {k: v for k, v in values.items() if v is not None}


# --- target_group --------------------------------------------------------------------------

# The health check columns, each a modify_target_group / create_target_group keyword (its
# name in CamelCase); all change in place.
_HEALTH_CHECK = AttributeMap(
    "health_check_protocol",
    "health_check_port",
    "health_check_enabled",
    "health_check_interval_seconds",
    "health_check_timeout_seconds",
    "healthy_threshold_count",
    "unhealthy_threshold_count",
    "health_check_path",
)


def _port_text(value: Any) -> str | None:
    """A health check port: "traffic-port" or a number, which AWS reports as text."""
    return None if value is None else str(value)


def _target_group_record(group: dict[str, Any], region: str) -> Record:
    return {
        "target_group_name": group["TargetGroupName"],
        "target_type": group.get("TargetType"),
        "target_group_arn": group["TargetGroupArn"],
        "ip_address_type": group.get("IpAddressType"),
        "protocol": group.get("Protocol"),
        "port": group.get("Port"),
        **_HEALTH_CHECK.record(group),
        "health_check_port": _port_text(group.get("HealthCheckPort")),
        "protocol_version": group.get("ProtocolVersion"),
        "region": region,
        "vpc": group.get("VpcId"),
    }


def _health_check_arguments(record: Record, current: Record | None = None) -> dict[str, Any]:
    """The health check settings the row sets (and, given `current`, that differ from it)."""
    port = _port_text(record.get("health_check_port"))
    return _HEALTH_CHECK.attributes({**record, "health_check_port": port}, current)


async def _default_vpc(cloud: Cloud, region: str, name: str) -> str:
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    found = sorted(v["VpcId"] for v in answer["Vpcs"])
    if not found:
        raise CloudError(
            f"target group {name} names no vpc and {region} has no default VPC:"
            " set target_group.vpc"
        )
    return found[0]


class TargetGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("elbv2", region) as elb:
            pages = elb.get_paginator("describe_target_groups").paginate()
            groups = [g async for page in pages for g in page["TargetGroups"]]
            tags = await _tags(elb, [g["TargetGroupArn"] for g in groups])
        return [
            with_token(_target_group_record(g, region), tags.get(g["TargetGroupArn"]))
            for g in groups
        ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        vpc = record.get("vpc")
        if vpc is None and record["target_type"] != "lambda":
            # As in IaSQL: no VPC named is the region's default VPC (a Lambda target group
            # has none). The row's trigger names it already when the vpc table has it.
            vpc = await _default_vpc(cloud, region, record["target_group_name"])
        async with cloud.client("elbv2", region) as elb:
            answer = await elb.create_target_group(
                Name=record["target_group_name"],
                TargetType=record["target_type"],
                **_present(
                    Protocol=record.get("protocol"),
                    ProtocolVersion=record.get("protocol_version"),
                    Port=record.get("port"),
                    VpcId=vpc,
                    IpAddressType=record.get("ip_address_type"),
                ),
                **_health_check_arguments(record),
                **_token_tags(record),
            )
        return _target_group_record(answer["TargetGroups"][0], region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        changes = _health_check_arguments(record, current)
        if not changes:
            return current
        async with cloud.client("elbv2", current["region"]) as elb:
            answer = await elb.modify_target_group(
                TargetGroupArn=current["target_group_arn"], **changes
            )
        return _target_group_record(answer["TargetGroups"][0], current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("elbv2", current["region"]) as elb:
            with ignoring("TargetGroupNotFound"):
                await elb.delete_target_group(TargetGroupArn=current["target_group_arn"])


def _health_check_columns() -> tuple[Column, ...]:
    return (
        Column(
            "health_check_protocol",
            "varchar",
            check=f"health_check_protocol IN {_PROTOCOLS}",
        ),
        Column("health_check_port", "varchar", normalize=_port_text),
        Column("health_check_enabled", "boolean"),
        Column("health_check_interval_seconds", "integer"),
        Column("health_check_timeout_seconds", "integer"),
        Column("healthy_threshold_count", "integer"),
        Column("unhealthy_threshold_count", "integer"),
        Column("health_check_path", "varchar"),
    )


# As in IaSQL, a target group that names no VPC is in its region's default VPC (except a
# Lambda target group, which has none): the row says so from the start, as a security group's
# does, so that it matches what the cloud reports and setting vpc to NULL replaces nothing.
_TARGET_GROUP_DEFAULT_VPC = (
    """CREATE OR REPLACE FUNCTION target_group_default_vpc() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.vpc IS NULL AND NEW.target_type IS DISTINCT FROM 'lambda' THEN
            NEW.vpc := (SELECT id FROM vpc WHERE is_default AND region = NEW.region LIMIT 1);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER target_group_default_vpc BEFORE INSERT OR UPDATE OF vpc, target_type
        ON target_group FOR EACH ROW EXECUTE FUNCTION target_group_default_vpc()""",
)

TARGET_GROUP = Table(
    name="target_group",
    columns=(
        Column("target_group_name", "varchar", nullable=False, replaces=True),
        Column(
            "target_type",
            "varchar",
            nullable=False,
            check="target_type IN ('alb', 'instance', 'ip', 'lambda')",
            replaces=True,
        ),
        Column("target_group_arn", "varchar", cloud_assigned=True),
        Column(
            "ip_address_type",
            "varchar",
            check="ip_address_type IN ('ipv4', 'ipv6')",
            replaces=True,
        ),
        Column("protocol", "varchar", check=f"protocol IN {_PROTOCOLS}", replaces=True),
        Column("port", "integer", replaces=True),
        *_health_check_columns(),
        Column(
            "protocol_version",
            "varchar",
            check="protocol_version IN ('GRPC', 'HTTP1', 'HTTP2')",
            replaces=True,
        ),
        region_column(),
        foreign_key("vpc", "vpc", "vpc_id", nullable=True),
    ),
    mapper=TargetGroupMapper(),
    extra_ddl=_TARGET_GROUP_DEFAULT_VPC,
    # AWS keeps target group names unique per region.
    natural_key=("target_group_name", "region"),
    cloud_id=("target_group_arn",),
    unique=(("target_group_arn",), ("target_group_name", "region")),
)

# --- load_balancer -------------------------------------------------------------------------


def _attribute_text(value: Any) -> str:
    """An attribute value as AWS keeps it: text, with booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def attribute_pairs(value: Any) -> dict[str, str]:
    """Load balancer attributes as a sorted dict of text values, from IaSQL's form (a JSON
    array of {"Key": ..., "Value": ...}, as AWS reports them) or a JSON object of values;
    ValueError for anything else."""
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and "Key" in value:
        raise ValueError('one {"Key": ..., "Value": ...} object must be in a JSON array')
    if isinstance(value, dict):
        value = [{"Key": k, "Value": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise ValueError(f"attributes must be a JSON array, not {json.dumps(value)}")
    pairs: dict[str, str] = {}
    for item in value:
        if not (isinstance(item, dict) and set(item) == {"Key", "Value"}):
            raise ValueError(f'{json.dumps(item)} is not a {{"Key": ..., "Value": ...}} object')
        key, text = item["Key"], item["Value"]
        if not isinstance(key, str) or isinstance(text, dict | list):
            raise ValueError(f"{json.dumps(item)} needs a text Key and Value")
        if key in pairs:
            raise ValueError(f"attribute {key} is given twice")
        pairs[key] = _attribute_text(text)
    return dict(sorted(pairs.items()))


def attribute_list(pairs: dict[str, str]) -> list[dict[str, str]]:
    """The attributes in IaSQL's form, sorted by key: the form rows hold."""
    return [{"Key": k, "Value": v} for k, v in sorted(pairs.items())]


def normalize_attributes(value: Any) -> Any:
    """Load balancer attributes as a sorted dict of text values, whichever form they are in. A
    malformed value (the table's trigger refuses them) compares as itself."""
    if value is None:
        return None
    try:
        return attribute_pairs(value)
    except ValueError:
        return value


def normalize_list(value: Any) -> list[str] | None:
    """A set of ids kept as an array (subnets, zones): order means nothing to AWS."""
    if value is None:
        return None
    return sorted(str(v) for v in value) or None


def _load_balancer_record(
    lb: dict[str, Any], attributes: list[dict[str, str]], region: str
) -> Record:
    zones = lb.get("AvailabilityZones") or []
    return {
        "load_balancer_name": lb["LoadBalancerName"],
        "load_balancer_arn": lb["LoadBalancerArn"],
        "dns_name": lb.get("DNSName"),
        "canonical_hosted_zone_id": lb.get("CanonicalHostedZoneId"),
        "created_time": lb.get("CreatedTime"),
        # AWS's default; moto leaves the scheme out when it was not given.
        "scheme": lb.get("Scheme") or "internet-facing",
        "state": lb.get("State", {}).get("Code"),
        "load_balancer_type": lb.get("Type"),
        "subnets": normalize_list([z["SubnetId"] for z in zones if z.get("SubnetId")]),
        "availability_zones": normalize_list([z["ZoneName"] for z in zones]),
        "ip_address_type": lb.get("IpAddressType") or "ipv4",
        "customer_owned_ipv4_pool": lb.get("CustomerOwnedIpv4Pool"),
        "region": region,
        "attributes": attribute_list(
            {a["Key"]: _attribute_text(a.get("Value")) for a in attributes}
        ),
        "vpc": lb.get("VpcId"),
    }


async def _full_record(elb: Any, lb: dict[str, Any], region: str) -> Record:
    answer = await elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])
    return _load_balancer_record(lb, answer["Attributes"], region)


async def _default_subnets(ec2: Any, vpc_id: str | None) -> list[str]:
    """One subnet per zone of the VPC (the region's default VPC when none is named), for a
    load balancer whose row names no subnets."""
    where = (
        [{"Name": "vpc-id", "Values": [vpc_id]}]
        if vpc_id
        else [{"Name": "default-for-az", "Values": ["true"]}]
    )
    answer = await ec2.describe_subnets(Filters=where)
    by_zone: dict[str, str] = {}
    for subnet in sorted(answer["Subnets"], key=lambda s: s["SubnetId"]):
        by_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
    if not by_zone:
        raise CloudError(f"no subnets to put the load balancer in (vpc {vpc_id or 'default'})")
    return sorted(by_zone.values())


def _attribute_changes(wanted: Any, current: Any) -> list[dict[str, str]]:
    """The attributes the row names that differ from the cloud's: the others stay as they are."""
    try:
        new = attribute_pairs(wanted) if wanted is not None else {}
    except ValueError as error:
        raise CloudError(f"load_balancer.attributes: {error}") from None
    old = normalize_attributes(current) or {}
    return [{"Key": k, "Value": v} for k, v in new.items() if old.get(k) != v]


# A tag on a load balancer that AWS gave security groups of its own at create (an application
# load balancer made without any gets its VPC's default group): these groups are AWS's choice,
# not rows of load_balancer_security_groups, until a row names a group.
_ASSIGNED_GROUPS_TAG = "iasql:assigned-security-groups"


class LoadBalancerMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("elbv2", region) as elb:
            balancers = await _load_balancers(elb)
            records = await gather_bounded(_full_record(elb, lb, region) for lb in balancers)
            tags = await _tags(elb, [lb["LoadBalancerArn"] for lb in balancers])
        return [with_token(r, tags.get(r["load_balancer_arn"])) for r in records]

    async def _read_one(self, elb: Any, arn: str, region: str) -> Record:
        [lb] = await _load_balancers(elb, LoadBalancerArns=[arn])
        return await _full_record(elb, lb, region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        subnets = record.get("subnets")
        if not subnets:
            async with cloud.client("ec2", region) as ec2:
                subnets = await _default_subnets(ec2, record.get("vpc"))
        kind = record["load_balancer_type"]
        async with cloud.client("elbv2", region) as elb:
            answer = await elb.create_load_balancer(
                Name=record["load_balancer_name"],
                Subnets=list(subnets),
                Type=kind,
                IpAddressType=record["ip_address_type"],
                # A gateway load balancer takes no scheme.
                **_present(
                    Scheme=None if kind == "gateway" else record["scheme"],
                    CustomerOwnedIpv4Pool=record.get("customer_owned_ipv4_pool"),
                ),
                **_token_tags(record),
            )
            lb = answer["LoadBalancers"][0]
            arn = lb["LoadBalancerArn"]
            if lb.get("SecurityGroups"):
                await elb.add_tags(
                    ResourceArns=[arn],
                    Tags=[{"Key": _ASSIGNED_GROUPS_TAG, "Value": " ".join(lb["SecurityGroups"])}],
                )
            await elb.get_waiter("load_balancer_available").wait(
                LoadBalancerArns=[arn], WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
            current = await self._read_one(elb, arn, region)
            changes = _attribute_changes(record.get("attributes"), current["attributes"])
            if changes:
                await elb.modify_load_balancer_attributes(LoadBalancerArn=arn, Attributes=changes)
                current = await self._read_one(elb, arn, region)
        return current

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        arn, region = current["load_balancer_arn"], current["region"]
        async with cloud.client("elbv2", region) as elb:
            subnets = normalize_list(record.get("subnets"))
            if subnets and subnets != normalize_list(current.get("subnets")):
                await elb.set_subnets(LoadBalancerArn=arn, Subnets=subnets)
            if record.get("ip_address_type") not in (None, current.get("ip_address_type")):
                await elb.set_ip_address_type(
                    LoadBalancerArn=arn, IpAddressType=record["ip_address_type"]
                )
            changes = _attribute_changes(record.get("attributes"), current.get("attributes"))
            if changes:
                await elb.modify_load_balancer_attributes(LoadBalancerArn=arn, Attributes=changes)
            return await self._read_one(elb, arn, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        arn = current["load_balancer_arn"]
        async with cloud.client("elbv2", current["region"]) as elb:
            with ignoring("LoadBalancerNotFound"):
                await elb.delete_load_balancer(LoadBalancerArn=arn)
            # A replace makes one of the same name next, which AWS refuses until this is gone.
            await elb.get_waiter("load_balancers_deleted").wait(
                LoadBalancerArns=[arn], WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )


# The attributes column holds IaSQL's form, a JSON array of {"Key": ..., "Value": ...} with
# text values, sorted by key. A JSON object of values ({"idle_timeout.timeout_seconds": 60})
# is taken too, and rewritten to that form; anything else is refused at the statement.
_ATTRIBUTES_FORM = (
    """CREATE OR REPLACE FUNCTION load_balancer_attributes_form() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        given jsonb;
        item jsonb;
        twice text;
        form CONSTANT text := 'write attributes as IaSQL does, a JSON array of'
            ' {"Key": ..., "Value": ...} objects with text values:'
            ' ''[{"Key": "idle_timeout.timeout_seconds", "Value": "60"}]''';
    BEGIN
        IF NEW.attributes IS NULL THEN
            RETURN NEW;
        END IF;
        given := NEW.attributes::jsonb;
        IF jsonb_typeof(given) = 'null' THEN
            NEW.attributes := NULL;
            RETURN NEW;
        ELSIF jsonb_typeof(given) = 'object' AND given ? 'Key' THEN
            RAISE EXCEPTION 'load_balancer.attributes must be a JSON array of'
                ' {"Key": ..., "Value": ...} objects, not one such object'
                USING ERRCODE = '22023', HINT = form;
        ELSIF jsonb_typeof(given) = 'object' THEN
            given := (SELECT coalesce(jsonb_agg(jsonb_build_object('Key', key, 'Value', value)),
                '[]') FROM jsonb_each(given));
        ELSIF jsonb_typeof(given) <> 'array' THEN
            RAISE EXCEPTION 'load_balancer.attributes must be a JSON array, not a JSON %',
                jsonb_typeof(given) USING ERRCODE = '22023', HINT = form;
        END IF;
        FOR item IN SELECT value FROM jsonb_array_elements(given) LOOP
            IF jsonb_typeof(item) <> 'object'
                OR jsonb_typeof(item -> 'Key') IS DISTINCT FROM 'string'
                OR NOT item ? 'Value'
                OR EXISTS (SELECT FROM jsonb_object_keys(item) k WHERE k NOT IN ('Key', 'Value'))
            THEN
                RAISE EXCEPTION 'load_balancer.attributes: % is not a {"Key": ..., "Value": ...}'
                    ' object', item USING ERRCODE = '22023', HINT = form;
            ELSIF jsonb_typeof(item -> 'Value') IN ('object', 'array') THEN
                RAISE EXCEPTION 'load_balancer.attributes: the value of % is not text: %',
                    item ->> 'Key', item -> 'Value' USING ERRCODE = '22023', HINT = form;
            END IF;
        END LOOP;
        SELECT e ->> 'Key' INTO twice FROM jsonb_array_elements(given) e
            GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 1;
        IF twice IS NOT NULL THEN
            RAISE EXCEPTION 'load_balancer.attributes names % twice', twice
                USING ERRCODE = '22023', HINT = 'give each attribute once';
        END IF;
        NEW.attributes := (
            SELECT coalesce(json_agg(json_build_object('Key', e ->> 'Key',
                'Value', coalesce(e ->> 'Value', '')) ORDER BY e ->> 'Key'), '[]')
            FROM jsonb_array_elements(given) e
        );
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER load_balancer_attributes_form BEFORE INSERT OR UPDATE OF attributes
        ON load_balancer FOR EACH ROW EXECUTE FUNCTION load_balancer_attributes_form()""",
)

LOAD_BALANCER = Table(
    name="load_balancer",
    columns=(
        Column("load_balancer_name", "varchar", nullable=False, replaces=True),
        Column("load_balancer_arn", "varchar", cloud_assigned=True),
        Column("dns_name", "varchar", cloud_assigned=True),
        Column("canonical_hosted_zone_id", "varchar", cloud_assigned=True),
        Column("created_time", "timestamptz", cloud_assigned=True),
        Column(
            "scheme",
            "varchar",
            nullable=False,
            check="scheme IN ('internal', 'internet-facing')",
            replaces=True,
        ),
        Column(
            "state",
            "varchar",
            check="state IN ('active', 'active_impaired', 'failed', 'provisioning')",
            cloud_assigned=True,
        ),
        Column(
            "load_balancer_type",
            "varchar",
            nullable=False,
            check="load_balancer_type IN ('application', 'gateway', 'network')",
            replaces=True,
        ),
        # Subnet ids, as IaSQL keeps them (not references): set_subnets changes them in place.
        # Subnet ids, as in IaSQL; replayed SQL names each subnet by its natural key.
        Column(
            "subnets",
            "varchar[]",
            normalize=normalize_list,
            cloud_ref=Ref("subnet", key="subnet_id"),
        ),
        Column("availability_zones", "varchar[]", cloud_assigned=True, normalize=normalize_list),
        Column(
            "ip_address_type",
            "varchar",
            nullable=False,
            check="ip_address_type IN ('dualstack', 'dualstack-without-public-ipv4', 'ipv4')",
        ),
        Column("customer_owned_ipv4_pool", "varchar", replaces=True),
        region_column(),
        Column("attributes", "json", normalize=normalize_attributes),
        # The VPC of the subnets; with no subnets named, the load balancer takes one subnet
        # per zone of this VPC.
        foreign_key("vpc", "vpc", "vpc_id", nullable=True),
    ),
    mapper=LoadBalancerMapper(),
    extra_ddl=_ATTRIBUTES_FORM,
    # AWS keeps load balancer names unique per region.
    natural_key=("load_balancer_name", "region"),
    cloud_id=("load_balancer_arn",),
    unique=(("load_balancer_arn",), ("load_balancer_name", "region")),
)

# --- load_balancer_security_groups ---------------------------------------------------------

# set_security_groups replaces a load balancer's whole list: each change reads the list and
# writes it back, one at a time per load balancer.
_group_lock: KeyedLocks[str] = KeyedLocks()


def _assigned(tags: list[dict[str, str]] | None) -> list[str] | None:
    value = next((t.get("Value", "") for t in tags or () if t["Key"] == _ASSIGNED_GROUPS_TAG), None)
    return None if value is None else value.split()


def visible_groups(lb: dict[str, Any], tags: list[dict[str, str]] | None) -> list[str]:
    """The load balancer's groups that rows stand for: none while it still has exactly the
    ones AWS gave it."""
    groups = list(lb.get("SecurityGroups") or [])
    assigned = _assigned(tags)
    return [] if assigned is not None and sorted(assigned) == sorted(groups) else groups


async def _vpc_default_group(cloud: Cloud, region: str, vpc_id: str) -> list[str]:
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": ["default"]},
            ]
        )
    return [g["GroupId"] for g in answer["SecurityGroups"]]


class LoadBalancerSecurityGroupsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("elbv2", region) as elb:
            balancers = await _load_balancers(elb)
            tags = await _tags(elb, [lb["LoadBalancerArn"] for lb in balancers])
        return [
            {"load_balancer_id": lb["LoadBalancerArn"], "security_group_id": group}
            for lb in balancers
            for group in visible_groups(lb, tags.get(lb["LoadBalancerArn"]))
        ]

    async def _change(self, cloud: Cloud, arn: str, group: str, *, add: bool) -> None:
        region = region_of(arn)
        async with _group_lock(arn), cloud.client("elbv2", region) as elb:
            with ignoring("LoadBalancerNotFound"):
                [lb] = await _load_balancers(elb, LoadBalancerArns=[arn])
                tags = (await _tags(elb, [arn])).get(arn)
                groups = visible_groups(lb, tags)
                wanted = [*groups, group] if add else [g for g in groups if g != group]
                if wanted == groups:
                    return
                marker = None
                if not wanted and lb.get("Type") == "application":
                    # An application load balancer keeps a group: give it back AWS's own.
                    wanted = await _vpc_default_group(cloud, region, lb["VpcId"])
                    marker = " ".join(wanted)
                await elb.set_security_groups(LoadBalancerArn=arn, SecurityGroups=wanted)
                if marker is not None:
                    await elb.add_tags(
                        ResourceArns=[arn], Tags=[{"Key": _ASSIGNED_GROUPS_TAG, "Value": marker}]
                    )
                elif _assigned(tags) is not None:
                    await elb.remove_tags(ResourceArns=[arn], TagKeys=[_ASSIGNED_GROUPS_TAG])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("load_balancer_id") is None or record.get("security_group_id") is None:
            raise CloudError("a load_balancer_security_groups row needs both of its references")
        await self._change(cloud, record["load_balancer_id"], record["security_group_id"], add=True)
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await self._change(
            cloud, current["load_balancer_id"], current["security_group_id"], add=False
        )


LOAD_BALANCER_SECURITY_GROUPS = Table(
    name="load_balancer_security_groups",
    columns=(
        foreign_key(
            "load_balancer_id",
            "load_balancer",
            "load_balancer_arn",
            on_delete="CASCADE",
            replaces=False,
        ),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", replaces=False
        ),
    ),
    mapper=LoadBalancerSecurityGroupsMapper(),
    natural_key=("load_balancer_id", "security_group_id"),
    cloud_id=("load_balancer_id", "security_group_id"),
    primary_key=("load_balancer_id", "security_group_id"),
    # No region column (as in IaSQL), but read region by region; the ARN brings the region.
    regional=True,
)

# --- listener ------------------------------------------------------------------------------


def _forwarded_group(listener: dict[str, Any]) -> str | None:
    """The one target group a listener forwards to; None for any other default action (a
    redirect, a weighted forward), which this table cannot show."""
    actions = listener.get("DefaultActions") or []
    if len(actions) != 1 or actions[0].get("Type") != "forward":
        return None
    action = actions[0]
    if action.get("TargetGroupArn"):
        return str(action["TargetGroupArn"])
    groups = action.get("ForwardConfig", {}).get("TargetGroups") or []
    return str(groups[0]["TargetGroupArn"]) if len(groups) == 1 else None


def _listener_record(listener: dict[str, Any]) -> Record | None:
    group = _forwarded_group(listener)
    if group is None:
        return None
    certificates = listener.get("Certificates") or []
    default: dict[str, Any] = next(
        (c for c in certificates if c.get("IsDefault")), certificates[0] if certificates else {}
    )
    # Only ACM certificates have rows; an IAM server certificate reads as none, and stays as
    # it is (modify_listener without Certificates leaves them alone).
    certificate = default.get("CertificateArn")
    return {
        "listener_arn": listener["ListenerArn"],
        "port": listener.get("Port"),
        "protocol": listener.get("Protocol"),
        "action_type": "forward",
        "ssl_policy": listener.get("SslPolicy"),
        "load_balancer_id": listener["LoadBalancerArn"],
        "target_group_id": group,
        "certificate_id": certificate if certificate and ":acm:" in certificate else None,
    }


def _listener_arguments(record: Record) -> dict[str, Any]:
    """What create_listener and modify_listener both take."""
    if record.get("target_group_id") is None:
        raise CloudError("a listener needs the target group it forwards to")
    certificate = record.get("certificate_id")
    return {
        "Port": record["port"],
        "Protocol": record["protocol"],
        "DefaultActions": [{"Type": "forward", "TargetGroupArn": record["target_group_id"]}],
        **_present(
            SslPolicy=record.get("ssl_policy"),
            Certificates=[{"CertificateArn": certificate}] if certificate else None,
        ),
    }


async def _listeners_of(elb: Any, arn: str) -> list[dict[str, Any]]:
    pages = elb.get_paginator("describe_listeners").paginate(LoadBalancerArn=arn)
    return [listener async for page in pages for listener in page["Listeners"]]


class ListenerMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("elbv2", region) as elb:
            balancers = await _load_balancers(elb)
            found = await gather_bounded(
                _listeners_of(elb, lb["LoadBalancerArn"]) for lb in balancers
            )
            listeners = [listener for some in found for listener in some]
            tags = await _tags(elb, [listener["ListenerArn"] for listener in listeners])
        records = []
        for listener in listeners:
            record = _listener_record(listener)
            if record is not None:
                records.append(with_token(record, tags.get(listener["ListenerArn"])))
        return records

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("load_balancer_id") is None:
            raise CloudError("a listener needs its load balancer")
        arn = record["load_balancer_id"]
        async with cloud.client("elbv2", region_of(arn)) as elb:
            answer = await elb.create_listener(
                LoadBalancerArn=arn, **_listener_arguments(record), **_token_tags(record)
            )
        return _listener_record(answer["Listeners"][0]) or {}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        arn = current["listener_arn"]
        async with cloud.client("elbv2", region_of(arn)) as elb:
            answer = await elb.modify_listener(ListenerArn=arn, **_listener_arguments(record))
        return _listener_record(answer["Listeners"][0]) or {}

    async def delete(self, cloud: Cloud, current: Record) -> None:
        arn = current["listener_arn"]
        async with cloud.client("elbv2", region_of(arn)) as elb:
            with ignoring("ListenerNotFound"):
                await elb.delete_listener(ListenerArn=arn)


LISTENER = Table(
    name="listener",
    columns=(
        Column("listener_arn", "varchar", cloud_assigned=True),
        Column("port", "integer", nullable=False),
        Column("protocol", "varchar", nullable=False, check=f"protocol IN {_PROTOCOLS}"),
        Column(
            "action_type",
            "varchar",
            nullable=False,
            default="'forward'",
            check="action_type IN ('forward')",
        ),
        Column("ssl_policy", "varchar"),
        foreign_key("load_balancer_id", "load_balancer", "load_balancer_arn", on_delete="CASCADE"),
        foreign_key("target_group_id", "target_group", "target_group_arn", replaces=False),
        foreign_key("certificate_id", "certificate", "arn", nullable=True, replaces=False),
    ),
    mapper=ListenerMapper(),
    # AWS allows one listener per port of a load balancer.
    natural_key=("load_balancer_id", "port"),
    cloud_id=("listener_arn",),
    unique=(("listener_arn",), ("load_balancer_id", "port")),
    # No region column (as in IaSQL), but read region by region; ARNs bring the region.
    regional=True,
)

MODULE = ModuleSpec(
    name="aws_elb",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc", "aws_security_group", "aws_acm"),
    description="Load balancers, their security groups and listeners, and target groups",
    tables=(TARGET_GROUP, LOAD_BALANCER, LOAD_BALANCER_SECURITY_GROUPS, LISTENER),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS target_group_default_vpc()",
        "DROP FUNCTION IF EXISTS load_balancer_attributes_form()",
    ),
)
