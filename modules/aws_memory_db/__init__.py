"""aws_memory_db: MemoryDB for Redis subnet groups, clusters and the clusters' security groups,
as IaSQL's tables.

A subnet group's description and subnets change in place; a cluster's description, node type,
tags and security groups too. Its name, port and subnet group replace it. MemoryDB is offered
in some regions only: the others read as empty."""

from __future__ import annotations

from typing import Any

from aiobotocore.waiter import create_waiter_with_client
from botocore.exceptions import ClientError
from botocore.waiter import WaiterModel

from modules import VERSION
from modules._aws.region import region_column
from modules._aws.tags import (
    normalize_tags,
    tag_dict,
    tag_list,
    tags_as_text,
    tags_as_text_teardown,
    tags_column,
)
from modules.concurrency import KeyedLocks, gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Ref, Table, foreign_key

NODE_TYPES = (
    "db.t4g.small",
    "db.t4g.medium",
    "db.r6g.large",
    "db.r6g.xlarge",
    "db.r6g.2xlarge",
    "db.r6g.4xlarge",
    "db.r6g.8xlarge",
    "db.r6g.12xlarge",
    "db.r6g.16xlarge",
)

# The regions MemoryDB is offered in (AWS has no API that lists them), as IaSQL has them.
SUPPORTED_REGIONS = frozenset(
    (
        "ap-east-1",
        "ap-northeast-1",
        "ap-northeast-2",
        "ap-south-1",
        "ap-southeast-1",
        "ap-southeast-2",
        "ca-central-1",
        "cn-north-1",
        "cn-northwest-1",
        "eu-central-1",
        "eu-north-1",
        "eu-south-1",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "sa-east-1",
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
    )
)

# A tag on a cluster that AWS gave its VPC's default group (made without groups, or left
# without any): that group is AWS's choice, not a memory_db_cluster_security_groups row.
ASSIGNED_GROUPS_TAG = "iasql:assigned-security-groups"

_WAITERS = WaiterModel(
    {
        "version": 2,
        "waiters": {
            "ClusterAvailable": {
                "operation": "DescribeClusters",
                "delay": 15,
                "maxAttempts": 120,
                "acceptors": [
                    {
                        "state": "success",
                        "matcher": "pathAll",
                        "argument": "Clusters[].Status",
                        "expected": "available",
                    },
                    {"state": "failure", "matcher": "error", "expected": "ClusterNotFoundFault"},
                ],
            },
            "ClusterDeleted": {
                "operation": "DescribeClusters",
                "delay": 15,
                "maxAttempts": 120,
                "acceptors": [
                    {"state": "success", "matcher": "error", "expected": "ClusterNotFoundFault"},
                ],
            },
        },
    }
)


async def _wait(aws: Any, waiter: str, cluster_name: str) -> None:
    await create_waiter_with_client(waiter, _WAITERS, aws).wait(ClusterName=cluster_name)


def normalize_list(value: Any) -> list[str] | None:
    """A set of ids kept as an array (subnets): order means nothing to AWS."""
    if value is None:
        return None
    return sorted(str(v) for v in value) or None


def normalize_text(value: Any) -> str | None:
    """A description: AWS keeps none and an empty one alike."""
    return str(value) if value else None


def name_of(arn: str) -> str:
    """arn:aws:memorydb:REGION:ACCOUNT:cluster/NAME (or subnetgroup/NAME) -> NAME."""
    return arn.rsplit("/", 1)[-1]


def subnet_group_arn(cluster_arn: str, subnet_group_name: str) -> str:
    """The ARN of a cluster's subnet group, in the cluster's partition, region and account."""
    prefix = cluster_arn.rsplit(":", 1)[0]
    return f"{prefix}:subnetgroup/{subnet_group_name}"


async def _pages(aws: Any, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
    pages = aws.get_paginator(operation).paginate(**params)
    return [item async for page in pages for item in page.get(key, [])]


# --- subnet_group --------------------------------------------------------------------------


def _subnet_group_record(group: dict[str, Any]) -> Record:
    return {
        "subnet_group_name": group["Name"],
        "description": group.get("Description"),
        "arn": group.get("ARN"),
        "subnets": normalize_list([s["Identifier"] for s in group.get("Subnets") or []]),
    }


async def _default_subnets(cloud: Cloud, region: str) -> list[str]:
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )
    return sorted(s["SubnetId"] for s in answer["Subnets"])


class SubnetGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        if region not in SUPPORTED_REGIONS:
            return []
        async with cloud.client("memorydb", region) as aws:
            groups = await _pages(aws, "describe_subnet_groups", "SubnetGroups")
        return [_subnet_group_record(g) for g in groups]

    async def _read_one(self, aws: Any, name: str) -> Record:
        answer = await aws.describe_subnet_groups(SubnetGroupName=name)
        return _subnet_group_record(answer["SubnetGroups"][0])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["subnet_group_name"], record["region"]
        # As in IaSQL: without subnets, the default VPC's.
        subnets = list(record.get("subnets") or []) or await _default_subnets(cloud, region)
        async with cloud.client("memorydb", region) as aws:
            try:
                await aws.create_subnet_group(
                    SubnetGroupName=name,
                    SubnetIds=subnets,
                    **({"Description": record["description"]} if record.get("description") else {}),
                )
            except ClientError as error:
                # A retried commit finds the group it made.
                if error_code(error) != "SubnetGroupAlreadyExistsFault":
                    raise
            return await self._read_one(aws, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["subnet_group_name"], current["region"]
        subnets = list(record.get("subnets") or []) or await _default_subnets(cloud, region)
        async with cloud.client("memorydb", region) as aws:
            await aws.update_subnet_group(
                SubnetGroupName=name,
                Description=record.get("description") or "",
                SubnetIds=subnets,
            )
            return await self._read_one(aws, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("memorydb", current["region"]) as aws:
            with ignoring("SubnetGroupNotFoundFault"):
                await aws.delete_subnet_group(SubnetGroupName=current["subnet_group_name"])


# A row without subnets takes the default VPC's subnets of its region, as IaSQL's create
# does, so that it reads as the group AWS will have.
_DEFAULT_SUBNETS = (
    """CREATE OR REPLACE FUNCTION subnet_group_default_subnets() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.subnets IS NULL OR cardinality(NEW.subnets) = 0 THEN
            NEW.subnets := (
                SELECT array_agg(s.subnet_id ORDER BY s.subnet_id)
                FROM subnet s JOIN vpc v ON v.id = s.vpc_id
                WHERE v.is_default AND v.region = NEW.region AND s.subnet_id IS NOT NULL
            );
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER subnet_group_default_subnets BEFORE INSERT OR UPDATE OF subnets
        ON subnet_group FOR EACH ROW EXECUTE FUNCTION subnet_group_default_subnets()""",
)

SUBNET_GROUP = Table(
    name="subnet_group",
    columns=(
        Column("subnet_group_name", "varchar", nullable=False, replaces=True),
        Column("description", "varchar", normalize=normalize_text),
        Column("arn", "varchar", cloud_assigned=True),
        # Subnet ids, as in IaSQL; replayed SQL names each subnet by its natural key.
        Column(
            "subnets",
            "varchar[]",
            normalize=normalize_list,
            cloud_ref=Ref("subnet", key="subnet_id"),
        ),
        region_column(),
    ),
    mapper=SubnetGroupMapper(),
    extra_ddl=_DEFAULT_SUBNETS,
    natural_key=("subnet_group_name", "region"),
    # The ARN (which names the region) is what clusters reference a group by.
    cloud_id=("arn",),
    unique=(("subnet_group_name", "region"), ("arn",)),
    # AWS's own group, which cannot be changed or deleted.
    protected=lambda record: record.get("subnet_group_name") == "default",
)

# --- memory_db_cluster ---------------------------------------------------------------------


def _visible_tags(aws_tags: list[dict[str, str]] | None) -> dict[str, str] | None:
    tags = tag_dict(aws_tags)
    tags.pop(ASSIGNED_GROUPS_TAG, None)
    return normalize_tags(tags)


def visible_groups(cluster: dict[str, Any], tags: dict[str, str]) -> list[str]:
    """The cluster's groups that rows stand for: none while it has just the ones AWS gave."""
    groups = [g["SecurityGroupId"] for g in cluster.get("SecurityGroups") or []]
    assigned = tags.get(ASSIGNED_GROUPS_TAG)
    return [] if assigned is not None and sorted(assigned.split()) == sorted(groups) else groups


def _cluster_record(cluster: dict[str, Any], aws_tags: list[dict[str, str]]) -> Record:
    endpoint = cluster.get("ClusterEndpoint") or {}
    return {
        "cluster_name": cluster["Name"],
        "description": cluster.get("Description"),
        "address": endpoint.get("Address"),
        "port": endpoint.get("Port") or 6379,
        "node_type": cluster.get("NodeType"),
        "arn": cluster["ARN"],
        "status": cluster.get("Status"),
        "tags": _visible_tags(aws_tags),
        "subnet_group_id": subnet_group_arn(cluster["ARN"], cluster["SubnetGroupName"]),
    }


async def _clusters(aws: Any) -> list[dict[str, Any]]:
    return await _pages(aws, "describe_clusters", "Clusters")


async def _tags(aws: Any, arn: str) -> list[dict[str, str]]:
    with ignoring("ClusterNotFoundFault"):
        answer = await aws.list_tags(ResourceArn=arn)
        return list(answer.get("TagList") or [])
    return []


async def _tagged_clusters(
    cloud: Cloud, region: str | None
) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    """The region's clusters, each with its tags; none where MemoryDB is not offered."""
    if region not in SUPPORTED_REGIONS:
        return []
    async with cloud.client("memorydb", region) as aws:
        clusters = await _clusters(aws)
        tags = await gather_bounded(_tags(aws, c["ARN"]) for c in clusters)
    return list(zip(clusters, tags, strict=True))


class MemoryDBClusterMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        return [_cluster_record(c, t) for c, t in await _tagged_clusters(cloud, region)]

    async def _read_one(self, aws: Any, name: str) -> Record:
        [cluster] = (await aws.describe_clusters(ClusterName=name))["Clusters"]
        return _cluster_record(cluster, await _tags(aws, cluster["ARN"]))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["cluster_name"], record["region"]
        if record.get("subnet_group_id") is None:
            raise CloudError("a memory_db_cluster needs its subnet group")
        arguments: dict[str, Any] = {
            "ClusterName": name,
            "NodeType": record["node_type"],
            "ACLName": "open-access",
            "Port": record.get("port") or 6379,
            "SubnetGroupName": name_of(record["subnet_group_id"]),
        }
        if record.get("description"):
            arguments["Description"] = record["description"]
        tags = tag_list(normalize_tags(record.get("tags")) or {})
        if tags:
            arguments["Tags"] = tags
        async with cloud.client("memorydb", region) as aws:
            try:
                answer = await aws.create_cluster(**arguments)
                cluster = answer["Cluster"]
            except ClientError as error:
                # A retried commit finds the cluster it made.
                if error_code(error) != "ClusterAlreadyExistsFault":
                    raise
                [cluster] = (await aws.describe_clusters(ClusterName=name))["Clusters"]
            # Groups come with memory_db_cluster_security_groups rows, after the cluster: the
            # ones AWS gives a cluster made without any are marked as no row's.
            given = [g["SecurityGroupId"] for g in cluster.get("SecurityGroups") or []]
            if given:
                await aws.tag_resource(
                    ResourceArn=cluster["ARN"],
                    Tags=[{"Key": ASSIGNED_GROUPS_TAG, "Value": " ".join(given)}],
                )
            await _wait(aws, "ClusterAvailable", name)
            return await self._read_one(aws, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, arn = current["cluster_name"], current["arn"]
        async with cloud.client("memorydb", current["region"]) as aws:
            if record.get("node_type") != current.get("node_type"):
                # AWS refuses a node type the cluster cannot scale to, with its own error.
                await aws.update_cluster(ClusterName=name, NodeType=record["node_type"])
                await _wait(aws, "ClusterAvailable", name)
            if normalize_text(record.get("description")) != normalize_text(
                current.get("description")
            ):
                await aws.update_cluster(
                    ClusterName=name, Description=record.get("description") or ""
                )
            new = normalize_tags(record.get("tags")) or {}
            old = normalize_tags(current.get("tags")) or {}
            removed = [k for k in old if k not in new]
            changed = [{"Key": k, "Value": v} for k, v in new.items() if old.get(k) != v]
            if removed:
                await aws.untag_resource(ResourceArn=arn, TagKeys=removed)
            if changed:
                await aws.tag_resource(ResourceArn=arn, Tags=changed)
            return await self._read_one(aws, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        name = current["cluster_name"]
        async with cloud.client("memorydb", current["region"]) as aws:
            with ignoring("ClusterNotFoundFault"):
                await aws.delete_cluster(ClusterName=name)
            # A replace makes one of the same name next, which AWS refuses until this is gone.
            await _wait(aws, "ClusterDeleted", name)


MEMORY_DB_CLUSTER = Table(
    name="memory_db_cluster",
    columns=(
        Column("cluster_name", "varchar", nullable=False, replaces=True),
        Column("description", "varchar", normalize=normalize_text),
        Column("address", "varchar", cloud_assigned=True),
        Column("port", "integer", nullable=False, default="'6379'", replaces=True),
        Column(
            "node_type",
            "varchar",
            nullable=False,
            default="'db.r6g.large'",
            check=f"node_type IN {NODE_TYPES!r}",
        ),
        Column("arn", "varchar", cloud_assigned=True),
        Column("status", "varchar", cloud_assigned=True),
        tags_column(),
        region_column(),
        # Held in records as the subnet group's ARN, which names its region too.
        foreign_key("subnet_group_id", "subnet_group", "arn"),
    ),
    mapper=MemoryDBClusterMapper(),
    extra_ddl=tags_as_text("memory_db_cluster"),
    natural_key=("cluster_name", "region"),
    # The ARN (which names the region) is what security group rows reference a cluster by.
    cloud_id=("arn",),
    unique=(("cluster_name", "region"), ("arn",)),
)

# --- memory_db_cluster_security_groups -----------------------------------------------------

# UpdateCluster replaces a cluster's whole list of groups: each change reads the list and
# writes it back, one at a time per cluster.
_group_lock: KeyedLocks[str] = KeyedLocks()


async def _vpc_default_group(cloud: Cloud, aws: Any, region: str, cluster: dict[str, Any]) -> str:
    [group] = (await aws.describe_subnet_groups(SubnetGroupName=cluster["SubnetGroupName"]))[
        "SubnetGroups"
    ]
    async with cloud.client("ec2", region) as ec2:
        found = await ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [group["VpcId"]]},
                {"Name": "group-name", "Values": ["default"]},
            ]
        )
    if not found["SecurityGroups"]:
        raise CloudError(f"VPC {group['VpcId']} has no default security group")
    return str(found["SecurityGroups"][0]["GroupId"])


class MemoryDBClusterSecurityGroupsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        return [
            {"memory_db_cluster_id": c["ARN"], "security_group_id": group}
            for c, t in await _tagged_clusters(cloud, region)
            for group in visible_groups(c, tag_dict(t))
        ]

    async def _change(self, cloud: Cloud, record: Record, *, add: bool) -> None:
        arn, group, region = (
            record.get("memory_db_cluster_id"),
            record.get("security_group_id"),
            record["region"],
        )
        if arn is None or group is None:
            raise CloudError("a memory_db_cluster_security_groups row needs both its references")
        async with _group_lock(arn), cloud.client("memorydb", region) as aws:
            with ignoring("ClusterNotFoundFault"):
                [cluster] = (await aws.describe_clusters(ClusterName=name_of(arn)))["Clusters"]
                tags = tag_dict(await _tags(aws, arn))
                groups = visible_groups(cluster, tags)
                wanted = [*groups, group] if add else [g for g in groups if g != group]
                if wanted == groups:
                    return
                if wanted:
                    await aws.update_cluster(ClusterName=cluster["Name"], SecurityGroupIds=wanted)
                    if ASSIGNED_GROUPS_TAG in tags:
                        await aws.untag_resource(ResourceArn=arn, TagKeys=[ASSIGNED_GROUPS_TAG])
                else:
                    # A cluster keeps a group: give it back its VPC's default one, AWS's choice.
                    default = await _vpc_default_group(cloud, aws, region, cluster)
                    await aws.update_cluster(
                        ClusterName=cluster["Name"], SecurityGroupIds=[default]
                    )
                    await aws.tag_resource(
                        ResourceArn=arn, Tags=[{"Key": ASSIGNED_GROUPS_TAG, "Value": default}]
                    )

    async def create(self, cloud: Cloud, record: Record) -> Record:
        await self._change(cloud, record, add=True)
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # every column is the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await self._change(cloud, current, add=False)


# The region of a row is its cluster's (IaSQL's key joins the two on it).
_CLUSTER_REGION = (
    """CREATE OR REPLACE FUNCTION memory_db_cluster_security_groups_region() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.region := coalesce(
            (SELECT region FROM memory_db_cluster WHERE id = NEW.memory_db_cluster_id),
            NEW.region);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER memory_db_cluster_security_groups_region BEFORE INSERT OR UPDATE
        ON memory_db_cluster_security_groups FOR EACH ROW
        EXECUTE FUNCTION memory_db_cluster_security_groups_region()""",
)

MEMORY_DB_CLUSTER_SECURITY_GROUPS = Table(
    name="memory_db_cluster_security_groups",
    columns=(
        foreign_key(
            "memory_db_cluster_id", "memory_db_cluster", "arn", on_delete="CASCADE", replaces=False
        ),
        region_column(),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", replaces=False
        ),
    ),
    mapper=MemoryDBClusterSecurityGroupsMapper(),
    extra_ddl=_CLUSTER_REGION,
    natural_key=("memory_db_cluster_id", "region", "security_group_id"),
    cloud_id=("memory_db_cluster_id", "region", "security_group_id"),
    primary_key=("memory_db_cluster_id", "region", "security_group_id"),
)

MODULE = ModuleSpec(
    name="aws_memory_db",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc", "aws_security_group"),
    description="MemoryDB for Redis subnet groups, clusters and their security groups",
    tables=(SUBNET_GROUP, MEMORY_DB_CLUSTER, MEMORY_DB_CLUSTER_SECURITY_GROUPS),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS subnet_group_default_subnets()",
        tags_as_text_teardown("memory_db_cluster"),
        "DROP FUNCTION IF EXISTS memory_db_cluster_security_groups_region()",
    ),
)
