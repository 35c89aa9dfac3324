"""aws_route53: Route 53 hosted zones, their record sets, and alias targets (load balancers).

Route 53 is global: no table has a region column. A record set has no id of its own in AWS:
it is (hosted zone, name, type), so a change of its name or type is a delete and a create,
and any other change (ttl, values, alias) is an UPSERT in place. The NS and SOA record sets
AWS gives a new zone are its own: their rows are protected, and a zone's delete first deletes
every other record set left in it (AWS refuses to delete a zone that holds any).

An alias_target row stands for the alias of the record sets that name it: a load balancer
and whether to evaluate its health. It has no resource of its own in AWS, so its mapper
reads the alias targets the record sets use, and its create and delete change nothing.
`alias_key` (not in IaSQL's table: see the column) is how a record set names it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.arns import region_of
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import TOKEN, Cloud, CloudError, Column, ModuleSpec, Record, Table, foreign_key

# IaSQL's resource_record_set_record_type_enum.
RECORD_TYPES = (
    "A",
    "AAAA",
    "CAA",
    "CNAME",
    "DS",
    "MX",
    "NAPTR",
    "NS",
    "PTR",
    "SOA",
    "SPF",
    "SRV",
    "TXT",
)
_CHANGES_PER_BATCH = 100  # a change batch takes up to 1000 changes; stay well under

# A region in an ELB DNS name: name-1.us-east-1.elb.amazonaws.com (application) or
# name-1.elb.us-east-1.amazonaws.com (network).
_REGION_IN_DNS = re.compile(r"\.([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)\.")
_ESCAPE = re.compile(r"\\(\d{3})")


def dns_name(value: Any) -> str | None:
    """A domain name as Route 53 keeps it: lower case, with the trailing dot, and the octal
    escapes it answers with (\\052 for *) read as the characters they stand for."""
    if value is None:
        return None
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), str(value)).lower()
    return text if text.endswith(".") else text + "."


def record_values(value: Any) -> tuple[str, ...] | None:
    """A `record` (values one a line, as IaSQL joins them) as the set AWS holds: order and
    blank lines mean nothing."""
    if value is None:
        return None
    return tuple(sorted(line.strip() for line in str(value).split("\n") if line.strip()))


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# --- alias targets as record sets name them ------------------------------------------------


def alias_key(load_balancer_arn: str, evaluate_target_health: bool) -> str:
    """What names an alias target: its load balancer's ARN and whether health is evaluated."""
    return f"{load_balancer_arn}|{'true' if evaluate_target_health else 'false'}"


def parse_alias_key(key: str) -> tuple[str, bool]:
    arn, _, health = key.rpartition("|")
    if not arn.startswith("arn:") or health not in ("true", "false"):
        raise CloudError(f"{key!r} names no load balancer alias target")
    return arn, health == "true"


def _alias_dns(value: str) -> str:
    """An alias's DNS name as its load balancer reports it: no dualstack. prefix, no dot."""
    text = value.lower().rstrip(".")
    return text.removeprefix("dualstack.")


async def _balancers_by_dns(cloud: Cloud, names: Iterable[str]) -> dict[str, str]:
    """The ARNs of the load balancers that alias DNS names point at, by `_alias_dns` name."""
    regions = sorted({m.group(1) for n in names if (m := _REGION_IN_DNS.search("." + n + "."))})

    async def read(region: str) -> list[dict[str, Any]]:
        async with cloud.client("elbv2", region) as elb:
            # A region the account has not opted in to holds none of its load balancers.
            with ignoring("UnrecognizedClientException", "InvalidClientTokenId", "AuthFailure"):
                pages = elb.get_paginator("describe_load_balancers").paginate()
                return [lb async for page in pages for lb in page["LoadBalancers"]]
        return []

    found = await gather_bounded(read(r) for r in regions)
    return {
        str(lb["DNSName"]).lower().rstrip("."): str(lb["LoadBalancerArn"])
        for some in found
        for lb in some
        if lb.get("DNSName")
    }


async def _alias_target(cloud: Cloud, key: str) -> dict[str, Any]:
    """The AliasTarget of a record set that names the alias target `key`."""
    arn, health = parse_alias_key(key)
    async with cloud.client("elbv2", region_of(arn)) as elb:
        try:
            answer = await elb.describe_load_balancers(LoadBalancerArns=[arn])
        except ClientError as error:
            if error_code(error) == "LoadBalancerNotFound":
                raise CloudError(f"the alias target's load balancer {arn} does not exist") from None
            raise
    [lb] = answer["LoadBalancers"]
    # As IaSQL (and AWS's console) do: an application load balancer is aliased dual-stack.
    prefix = "dualstack." if lb.get("Type") == "application" else ""
    return {
        "HostedZoneId": lb["CanonicalHostedZoneId"],
        "DNSName": prefix + lb["DNSName"],
        "EvaluateTargetHealth": health,
    }


# --- reading zones and record sets ---------------------------------------------------------


async def _zones(route53: Any) -> list[dict[str, Any]]:
    pages = route53.get_paginator("list_hosted_zones").paginate()
    return [zone async for page in pages for zone in page["HostedZones"]]


async def _record_sets(route53: Any, zone_id: str) -> list[dict[str, Any]]:
    pages = route53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id)
    return [rrs async for page in pages for rrs in page["ResourceRecordSets"]]


async def _all_record_sets(cloud: Cloud) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every record set of every zone, with its zone."""
    async with cloud.client("route53", None) as route53:
        zones = await _zones(route53)

        async def of(zone: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            # A zone deleted since it was listed has no record sets.
            with ignoring("NoSuchHostedZone"):
                return [(zone, rrs) for rrs in await _record_sets(route53, zone["Id"])]
            return []

        found = await gather_bounded(of(zone) for zone in zones)
    return [pair for some in found for pair in some]


def _is_default(rrs: dict[str, Any], zone_name: str) -> bool:
    """AWS's own record sets of a zone: its SOA and the NS at its apex."""
    kind = rrs.get("Type")
    return kind == "SOA" or (kind == "NS" and dns_name(rrs.get("Name")) == dns_name(zone_name))


def _simple(rrs: dict[str, Any]) -> bool:
    """A record set a row can stand for: no routing policy, a type IaSQL knows."""
    return (
        rrs.get("Type") in RECORD_TYPES
        and not rrs.get("SetIdentifier")
        and not rrs.get("TrafficPolicyInstanceId")
    )


def _record_set_record(
    zone: dict[str, Any], rrs: dict[str, Any], balancers: dict[str, str]
) -> Record | None:
    """A record set as a row holds it; None for one no row can stand for (an alias of
    anything but a load balancer, a routing policy)."""
    if not _simple(rrs):
        return None
    alias = rrs.get("AliasTarget")
    key = None
    if alias is not None:
        arn = balancers.get(_alias_dns(alias.get("DNSName", "")))
        if arn is None:
            return None  # a CloudFront distribution, a bucket, another record: not modelled
        key = alias_key(arn, bool(alias.get("EvaluateTargetHealth")))
    values = [r["Value"] for r in rrs.get("ResourceRecords") or []]
    return {
        "name": dns_name(rrs["Name"]),
        "record_type": rrs["Type"],
        "record": "\n".join(values) if alias is None else None,
        "ttl": rrs.get("TTL") if alias is None else None,
        "parent_hosted_zone_id": zone["Id"],
        "alias_target_id": key,
        "apex": dns_name(rrs["Name"]) == dns_name(zone["Name"]),  # not a column: `protected`
    }


async def _read_record_sets(cloud: Cloud) -> tuple[list[Record], list[Record]]:
    """Every record set a row can stand for, and the alias targets they use."""
    pairs = await _all_record_sets(cloud)
    aliases = [rrs["AliasTarget"]["DNSName"] for _, rrs in pairs if rrs.get("AliasTarget")]
    balancers = await _balancers_by_dns(cloud, [_alias_dns(a) for a in aliases])
    records = [r for zone, rrs in pairs if (r := _record_set_record(zone, rrs, balancers))]
    targets: dict[str, Record] = {}
    for record in records:
        key = record["alias_target_id"]
        if key is not None:
            arn, health = parse_alias_key(key)
            targets[key] = {
                "alias_key": key,
                "load_balancer_id": arn,
                "evaluate_target_health": health,
            }
    return records, list(targets.values())


# --- hosted_zone ---------------------------------------------------------------------------


def _zone_record(zone: dict[str, Any]) -> Record:
    return {
        "hosted_zone_id": zone["Id"],
        "domain_name": zone["Name"],
        # The create token is the zone's CallerReference: a create cut short is found by it.
        TOKEN: zone.get("CallerReference"),
    }


async def _delete_changes(route53: Any, zone_id: str, changes: list[dict[str, Any]]) -> None:
    for start in range(0, len(changes), _CHANGES_PER_BATCH):
        batch = changes[start : start + _CHANGES_PER_BATCH]
        await route53.change_resource_record_sets(
            HostedZoneId=zone_id, ChangeBatch={"Changes": batch}
        )


class HostedZoneMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("route53", None) as route53:
            return [_zone_record(zone) for zone in await _zones(route53)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        reference = record.get(TOKEN) or str(uuid.uuid4())
        async with cloud.client("route53", None) as route53:
            try:
                answer = await route53.create_hosted_zone(
                    Name=record["domain_name"], CallerReference=reference
                )
            except ClientError as error:
                # A retried create: the zone made with this reference is the one asked for.
                if error_code(error) != "HostedZoneAlreadyExists":
                    raise
                zones = await _zones(route53)
                made = [z for z in zones if z.get("CallerReference") == reference]
                if not made:
                    raise
                return _zone_record(made[0])
        return _zone_record(answer["HostedZone"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # the domain name replaces the zone; nothing else changes

    async def delete(self, cloud: Cloud, current: Record) -> None:
        zone_id = current["hosted_zone_id"]
        async with cloud.client("route53", None) as route53:
            with ignoring("NoSuchHostedZone"):
                # AWS deletes only a zone that holds nothing but its own NS and SOA.
                left = [
                    {"Action": "DELETE", "ResourceRecordSet": rrs}
                    for rrs in await _record_sets(route53, zone_id)
                    if not _is_default(rrs, current["domain_name"])
                ]
                await _delete_changes(route53, zone_id, left)
                await route53.delete_hosted_zone(Id=zone_id)


HOSTED_ZONE = Table(
    name="hosted_zone",
    columns=(
        Column("hosted_zone_id", "varchar", cloud_assigned=True),
        # AWS answers with the name in lower case and a trailing dot.
        Column("domain_name", "varchar", nullable=False, replaces=True, normalize=dns_name),
    ),
    mapper=HostedZoneMapper(),
    natural_key=("domain_name",),
    cloud_id=("hosted_zone_id",),
    regional=False,
)

# --- alias_target --------------------------------------------------------------------------


class AliasTargetMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        return (await _read_record_sets(cloud))[1]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        arn = record.get("load_balancer_id")
        if arn is None:
            raise CloudError("an alias target needs its load balancer (load_balancer_id)")
        return {"alias_key": alias_key(arn, bool(record.get("evaluate_target_health")))}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns replace it

    async def delete(self, cloud: Cloud, current: Record) -> None:
        return None  # the record sets that name it go first; nothing else is in AWS


ALIAS_TARGET = Table(
    name="alias_target",
    columns=(
        Column("evaluate_target_health", "boolean", nullable=False, default="true", replaces=True),
        foreign_key("load_balancer_id", "load_balancer", "load_balancer_arn", nullable=True),
        # Not in IaSQL's table. A record set's foreign key reaches the mappers as one column of
        # the row it names, and an alias target's two columns are what a record set needs:
        # this is both ("<load balancer arn>|<true or false>"), set by the commit that makes
        # the alias target. Never compared, never in generated SQL.
        Column("alias_key", "varchar", cloud_assigned=True),
    ),
    mapper=AliasTargetMapper(),
    natural_key=("load_balancer_id", "evaluate_target_health"),
    cloud_id=("alias_key",),
    unique=(("alias_key",), ("load_balancer_id", "evaluate_target_health")),
    regional=False,
)

# --- resource_record_set -------------------------------------------------------------------


async def _resource_record_set(cloud: Cloud, record: Record) -> dict[str, Any]:
    """The ResourceRecordSet of a change batch, from a row."""
    rrs: dict[str, Any] = {"Name": record["name"], "Type": record["record_type"]}
    if record.get("alias_target_id") is not None:
        rrs["AliasTarget"] = await _alias_target(cloud, record["alias_target_id"])
        return rrs
    if record.get("record") is None:
        raise CloudError(f"record set {record['name']} has neither a record nor an alias target")
    rrs["ResourceRecords"] = [
        {"Value": line.strip()} for line in str(record["record"]).split("\n") if line.strip()
    ]
    rrs.update(_present(TTL=record.get("ttl")))
    return rrs


def _zone_of(record: Record) -> str:
    zone = record.get("parent_hosted_zone_id")
    if zone is None:
        raise CloudError(f"record set {record['name']} names no hosted zone")
    return str(zone)


async def _find(route53: Any, zone_id: str, name: str, kind: str) -> dict[str, Any] | None:
    """The record set (name, type) of a zone as AWS has it; None when there is none."""
    answer = await route53.list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=name, StartRecordType=kind, MaxItems="1"
    )
    for rrs in answer["ResourceRecordSets"]:
        if dns_name(rrs["Name"]) == dns_name(name) and rrs["Type"] == kind:
            return dict(rrs)
    return None


class ResourceRecordSetMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        return (await _read_record_sets(cloud))[0]

    async def _change(self, cloud: Cloud, action: str, record: Record) -> Record:
        zone_id = _zone_of(record)
        rrs = await _resource_record_set(cloud, record)
        change = {"Action": action, "ResourceRecordSet": rrs}
        async with cloud.client("route53", None) as route53:
            try:
                await route53.change_resource_record_sets(
                    HostedZoneId=zone_id, ChangeBatch={"Changes": [change]}
                )
            except ClientError as error:
                # A retried create finds the record set it made: UPSERT it to what is asked.
                if action != "CREATE" or error_code(error) != "InvalidChangeBatch":
                    raise
                if await _find(route53, zone_id, record["name"], record["record_type"]) is None:
                    raise
                change["Action"] = "UPSERT"
                await route53.change_resource_record_sets(
                    HostedZoneId=zone_id, ChangeBatch={"Changes": [change]}
                )
        return {"name": dns_name(record["name"])}

    async def create(self, cloud: Cloud, record: Record) -> Record:
        return await self._change(cloud, "CREATE", record)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # ttl, values and alias change in place; name, type and zone are its identity.
        return await self._change(cloud, "UPSERT", record)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        zone_id = _zone_of(current)
        async with cloud.client("route53", None) as route53:
            with ignoring("NoSuchHostedZone"):
                # A DELETE must repeat the record set exactly: take it as AWS has it.
                rrs = await _find(route53, zone_id, current["name"], current["record_type"])
                if rrs is None:
                    return
                await route53.change_resource_record_sets(
                    HostedZoneId=zone_id,
                    ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": rrs}]},
                )


_TYPES = ", ".join(f"'{t}'" for t in RECORD_TYPES)

_RECORD_SET_DDL = (
    # IaSQL's checks: values and a ttl, or an alias target and neither.
    """ALTER TABLE resource_record_set ADD CONSTRAINT "Check_record__alias_target" CHECK (
        (record IS NULL AND alias_target_id IS NOT NULL)
        OR (record IS NOT NULL AND alias_target_id IS NULL))""",
    """ALTER TABLE resource_record_set ADD CONSTRAINT "Check_record__ttl" CHECK (
        (record IS NULL AND ttl IS NULL AND alias_target_id IS NOT NULL)
        OR (record IS NOT NULL AND ttl IS NOT NULL AND alias_target_id IS NULL))""",
    # A record set's name is part of what identifies it in AWS, which keeps it in lower case
    # with a trailing dot: the row holds it so from the start, so that it meets the cloud's.
    """CREATE OR REPLACE FUNCTION resource_record_set_name_form() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.name := lower(NEW.name);
        IF right(NEW.name, 1) IS DISTINCT FROM '.' THEN
            NEW.name := NEW.name || '.';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER resource_record_set_name_form BEFORE INSERT OR UPDATE OF name
        ON resource_record_set FOR EACH ROW EXECUTE FUNCTION resource_record_set_name_form()""",
)

RESOURCE_RECORD_SET = Table(
    name="resource_record_set",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column(
            "record_type",
            "varchar",
            nullable=False,
            check=f"record_type IN ({_TYPES})",
            replaces=True,
        ),
        # The values, one a line (as IaSQL joins them).
        Column("record", "varchar", normalize=record_values),
        Column("ttl", "integer"),
        foreign_key(
            "parent_hosted_zone_id",
            "hosted_zone",
            "hosted_zone_id",
            nullable=True,
            on_delete="CASCADE",
        ),
        foreign_key("alias_target_id", "alias_target", "alias_key", nullable=True, replaces=False),
    ),
    mapper=ResourceRecordSetMapper(),
    extra_ddl=_RECORD_SET_DDL,
    natural_key=("parent_hosted_zone_id", "name", "record_type"),
    cloud_id=("parent_hosted_zone_id", "name", "record_type"),
    regional=False,
    # The zone's SOA and apex NS, which AWS made with it and deletes with it.
    protected=lambda record: (
        record.get("record_type") == "SOA"
        or (record.get("record_type") == "NS" and bool(record.get("apex")))
    ),
    synced_with=("hosted_zone",),  # a new zone comes with its NS and SOA
)

MODULE = ModuleSpec(
    name="aws_route53",
    version=VERSION,
    dependencies=("aws_account", "aws_elb"),
    description="Route 53 hosted zones, their record sets, and alias targets",
    tables=(HOSTED_ZONE, ALIAS_TARGET, RESOURCE_RECORD_SET),
    teardown_sql=("DROP FUNCTION IF EXISTS resource_record_set_name_form()",),
)
