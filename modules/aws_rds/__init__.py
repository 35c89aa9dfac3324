"""aws_rds: RDS DB instances, DB subnet groups, DB parameter groups, Multi-AZ DB clusters, and
the VPC security groups of instances and clusters.

What changes in place and what replaces, as in IaSQL:

- rds: allocated_storage, db_instance_class, backup_retention_period, engine_version, the
  parameter group, tags, the security groups (rds_security_groups) and the password change in
  place (ModifyDBInstance, ApplyImmediately); db_instance_identifier, engine,
  availability_zone, master_username, db_cluster_id and region replace.
- db_subnet_group: description and subnets change in place (ModifyDBSubnetGroup).
- parameter_group: parameters change in place (ModifyDBParameterGroup, and
  ResetDBParameterGroup for a parameter taken out); name, family and description replace.
- db_cluster: storage, iops, class, backup retention, deletion protection, engine version,
  port, tags, groups and the password change in place (ModifyDBCluster); the rest replaces.

`parameters` holds the parameters the group sets itself (each an object of
DescribeDBParameters' shape: ParameterName, ParameterValue, ApplyMethod and, from AWS,
Description, ApplyType, DataType, ...). Engine defaults are left out: AWS reports several
hundred of them, an endpoint that does not model them reports none, and they are no setting
of the group. Two lists are compared as their names and values.

The master user password (rds and db_cluster) is write-only: a `secret` column, never read
back (the commit's read-back empties it), never in the audit log, the journal or generated
SQL. A row created without one gets a password that AWS makes and keeps in Secrets Manager
(ManageMasterUserPassword), so SQL promoted from another environment, which never carries
the password, makes a database there with its own. An UPDATE that writes a password marks
the row's tags with `iasql:password: pending` (a trigger; the value is not in it), which is
what makes the change visible to preview and commit; the commit sends the password
(ModifyDBInstance MasterUserPassword) and the read-back takes the mark off. Promoted, the mark
arrives without a password: the other environment keeps its own, and the mark goes.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import WaiterError

from modules import VERSION
from modules._aws.arns import region_of
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules._aws.tags import (
    normalize_tags,
    tag_dict,
    tag_list,
    tags_column,
    token_tag,
    with_token,
)
from modules.aws_vpc import availability_zone_column
from modules.concurrency import KeyedLocks
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

# IaSQL's parameter_group_family_enum and db_cluster_engine_enum (varchar with a CHECK here).
PARAMETER_GROUP_FAMILIES = (
    "docdb3.6",
    "docdb4.0",
    "custom-sqlserver-ee-15.0",
    "custom-sqlserver-se-15.0",
    "custom-sqlserver-web-15.0",
    "neptune1",
    "mariadb10.2",
    "mariadb10.3",
    "mariadb10.4",
    "mariadb10.5",
    "mariadb10.6",
    "mysql5.7",
    "mysql8.0",
    "oracle-ee-19",
    "oracle-ee-cdb-19",
    "oracle-ee-cdb-21",
    "oracle-se2-19",
    "oracle-se2-cdb-19",
    "oracle-se2-cdb-21",
    "postgres10",
    "postgres11",
    "postgres12",
    "postgres13",
    "postgres14",
    "sqlserver-ee-12.0",
    "sqlserver-ee-13.0",
    "sqlserver-ee-14.0",
    "sqlserver-ee-15.0",
    "sqlserver-ex-12.0",
    "sqlserver-ex-13.0",
    "sqlserver-ex-14.0",
    "sqlserver-ex-15.0",
    "sqlserver-se-12.0",
    "sqlserver-se-13.0",
    "sqlserver-se-14.0",
    "sqlserver-se-15.0",
    "sqlserver-web-12.0",
    "sqlserver-web-13.0",
    "sqlserver-web-14.0",
    "sqlserver-web-15.0",
)
CLUSTER_ENGINES = ("mysql", "postgres")

# The tag a row's tags carry while a password written by an UPDATE waits for a commit. It
# never reaches AWS.
PASSWORD_TAG = "iasql:password"
# The tag that marks the security groups AWS gave an instance or cluster made without any
# (rows of rds_security_groups come after it): they stand for no row.
ASSIGNED_GROUPS_TAG = "iasql:assigned-security-groups"

# RDS takes minutes to make or change a database: a few quick polls (an endpoint that
# answers at once is done within them), then one every 15 s for up to an hour.
_QUICK_WAIT = {"Delay": 1, "MaxAttempts": 5}
_WAIT = {"Delay": 15, "MaxAttempts": 240}


async def _wait(rds: Any, waiter: str, **params: Any) -> None:
    """Waits with an RDS waiter: quick polls first, then slow ones."""
    try:
        await rds.get_waiter(waiter).wait(**params, WaiterConfig=_QUICK_WAIT)
    except WaiterError as error:
        if "Max attempts exceeded" not in str(error):
            raise
        await rds.get_waiter(waiter).wait(**params, WaiterConfig=_WAIT)


def arn_like(arn: str, kind: str, name: str) -> str:
    """Another RDS resource's ARN in the same account and region as `arn`:
    arn:aws:rds:REGION:ACCOUNT:db:X -> arn:aws:rds:REGION:ACCOUNT:KIND:NAME."""
    return ":".join([*arn.split(":")[:5], kind, name])


def name_of(arn: str) -> str:
    """arn:aws:rds:REGION:ACCOUNT:KIND:NAME -> NAME."""
    return arn.split(":", 6)[-1]


def user_tags(value: Any) -> dict[str, str]:
    """The tags a row asks AWS for: without iasql's own marks."""
    tags = normalize_tags(value) or {}
    return {k: v for k, v in tags.items() if k not in (PASSWORD_TAG, ASSIGNED_GROUPS_TAG)}


def visible_tags(aws_tags: list[dict[str, str]] | None) -> dict[str, str] | None:
    """The tags column from AWS's tag list."""
    return normalize_tags({k: v for k, v in tag_dict(aws_tags).items() if k != ASSIGNED_GROUPS_TAG})


def visible_groups(groups: list[str], aws_tags: list[dict[str, str]] | None) -> list[str]:
    """The groups that rows stand for: none while the resource has just AWS's choice."""
    assigned = tag_dict(aws_tags).get(ASSIGNED_GROUPS_TAG)
    return [] if assigned is not None and sorted(assigned.split()) == sorted(groups) else groups


def _group_ids(resource: dict[str, Any]) -> list[str]:
    return [
        g["VpcSecurityGroupId"]
        for g in resource.get("VpcSecurityGroups") or []
        if g.get("VpcSecurityGroupId")
    ]


async def _sync_tags(rds: Any, arn: str, wanted: Any, current: Any) -> None:
    new, old = user_tags(wanted), user_tags(current)
    removed = [k for k in old if k not in new]
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    if removed:
        await rds.remove_tags_from_resource(ResourceName=arn, TagKeys=removed)
    if changed:
        await rds.add_tags_to_resource(ResourceName=arn, Tags=tag_list(changed))


async def _mark_assigned(rds: Any, arn: str, groups: list[str]) -> None:
    """Marks the groups AWS gave a resource made without any as no row's."""
    if groups:
        tag = {ASSIGNED_GROUPS_TAG: " ".join(sorted(groups))}
        await rds.add_tags_to_resource(ResourceName=arn, Tags=tag_list(tag))


async def _default_group(cloud: Cloud, region: str, vpc_id: str | None) -> list[str]:
    """The default security group of `vpc_id` (of the default VPC when None)."""
    async with cloud.client("ec2", region) as ec2:
        if vpc_id is None:
            vpcs = await ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
            if not vpcs["Vpcs"]:
                return []
            vpc_id = vpcs["Vpcs"][0]["VpcId"]
        found = await ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": ["default"]},
            ]
        )
    return [g["GroupId"] for g in found["SecurityGroups"]]


async def _paginate(rds: Any, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
    pages = rds.get_paginator(operation).paginate(**params)
    return [item async for page in pages for item in page.get(key, [])]


async def _parameter_group_names(rds: Any) -> set[str]:
    """The parameter groups that parameter_group rows can stand for."""
    groups = await _paginate(rds, "describe_db_parameter_groups", "DBParameterGroups")
    return {
        g["DBParameterGroupName"]
        for g in groups
        if g.get("DBParameterGroupFamily") in PARAMETER_GROUP_FAMILIES
    }


async def _subnet_group_names(rds: Any) -> set[str]:
    groups = await _paginate(rds, "describe_db_subnet_groups", "DBSubnetGroups")
    return {g["DBSubnetGroupName"] for g in groups if g.get("DBSubnetGroupArn")}


def _password_settings(record: Record, current: Record | None) -> dict[str, Any]:
    """The password part of a create (current None) or a modify."""
    password = record.get("master_user_password")
    if current is None:
        if password:
            return {"MasterUserPassword": password}
        # No password given (as in SQL promoted from another environment): AWS makes one
        # and keeps it in Secrets Manager.
        return {"ManageMasterUserPassword": True}
    if not password:
        return {}
    settings: dict[str, Any] = {"MasterUserPassword": password}
    if current.get("managed_password"):
        settings["ManageMasterUserPassword"] = False
    return settings


# A row whose UPDATE writes a password is pending: its tags carry PASSWORD_TAG (never the
# password), which the cloud's tags never do, so preview and commit see the change.
_PASSWORD_PENDING_FUNCTION = f"""CREATE OR REPLACE FUNCTION rds_password_pending()
    RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.tags := (coalesce(NEW.tags::jsonb, '{{}}'::jsonb)
            || jsonb_build_object('{PASSWORD_TAG}', 'pending'))::json;
        RETURN NEW;
    END $$"""


def _password_pending(table: str) -> str:
    return f"""CREATE TRIGGER {table}_password_pending BEFORE UPDATE ON {table}
        FOR EACH ROW WHEN (NEW.master_user_password IS NOT NULL
            AND NEW.master_user_password IS DISTINCT FROM OLD.master_user_password)
        EXECUTE FUNCTION rds_password_pending()"""


# --- db_subnet_group -----------------------------------------------------------------------


def normalize_ids(value: Any) -> list[str] | None:
    """A set of ids kept as an array: order means nothing to AWS, none is None."""
    if value is None:
        return None
    return sorted(str(v) for v in value) or None


def _subnet_group_record(group: dict[str, Any]) -> Record:
    return {
        "name": group["DBSubnetGroupName"],
        "arn": group.get("DBSubnetGroupArn"),
        "description": group.get("DBSubnetGroupDescription") or "",
        "subnets": normalize_ids(
            [s["SubnetIdentifier"] for s in group.get("Subnets") or [] if s.get("SubnetIdentifier")]
        ),
    }


async def _default_subnets(cloud: Cloud, region: str) -> list[str]:
    """The default VPC's subnets, for a subnet group whose row names none (as IaSQL)."""
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )
    subnets = sorted(s["SubnetId"] for s in answer["Subnets"])
    if not subnets:
        raise CloudError("a DB subnet group without subnets needs a default VPC: set subnets")
    return subnets


class DBSubnetGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("rds", region) as rds:
            groups = await _paginate(rds, "describe_db_subnet_groups", "DBSubnetGroups")
        return [_subnet_group_record(g) for g in groups if g.get("DBSubnetGroupArn")]

    async def _read_one(self, rds: Any, name: str) -> Record:
        answer = await rds.describe_db_subnet_groups(DBSubnetGroupName=name)
        return _subnet_group_record(answer["DBSubnetGroups"][0])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        subnets = normalize_ids(record.get("subnets")) or await _default_subnets(cloud, region)
        async with cloud.client("rds", region) as rds:
            with ignoring("DBSubnetGroupAlreadyExists"):  # a retried step
                await rds.create_db_subnet_group(
                    DBSubnetGroupName=record["name"],
                    DBSubnetGroupDescription=record["description"],
                    SubnetIds=subnets,
                )
            return await self._read_one(rds, record["name"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region = record["region"]
        subnets = normalize_ids(record.get("subnets")) or await _default_subnets(cloud, region)
        async with cloud.client("rds", region) as rds:
            await rds.modify_db_subnet_group(
                DBSubnetGroupName=current["name"],
                DBSubnetGroupDescription=record["description"],
                SubnetIds=subnets,
            )
            return await self._read_one(rds, current["name"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("rds", current["region"]) as rds:
            with ignoring("DBSubnetGroupNotFoundFault"):
                await rds.delete_db_subnet_group(DBSubnetGroupName=current["name"])


DB_SUBNET_GROUP = Table(
    name="db_subnet_group",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("description", "varchar", nullable=False),
        # Subnet ids, as in IaSQL; replayed SQL names each subnet by its natural key.
        Column(
            "subnets",
            "varchar[]",
            normalize=normalize_ids,
            cloud_ref=Ref("subnet", key="subnet_id"),
        ),
        region_column(),
    ),
    mapper=DBSubnetGroupMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    # The default VPC's group that AWS makes.
    protected=lambda record: record.get("name") == "default",
)

# --- parameter_group -----------------------------------------------------------------------


def _parameter_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):  # one parameter, or {name: value}
        if "ParameterName" in value:
            value = [value]
        else:
            value = [{"ParameterName": k, "ParameterValue": v} for k, v in value.items()]
    return [p for p in value if isinstance(p, dict) and p.get("ParameterName")]


def _value(parameter: dict[str, Any]) -> str | None:
    value = parameter.get("ParameterValue")
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def normalize_parameters(value: Any) -> dict[str, str] | None:
    """Parameters as what counts: each set parameter's name and value (as text, as AWS
    keeps them). Their other attributes (description, apply type, ...) are AWS's."""
    pairs = {str(p["ParameterName"]): _value(p) for p in _parameter_list(value)}
    kept = {k: v for k, v in pairs.items() if v is not None}
    return dict(sorted(kept.items())) or None


def _is_set(parameter: dict[str, Any]) -> bool:
    """A parameter the group sets itself (an endpoint that does not say the source reports
    only those)."""
    return parameter.get("Source") in (None, "user") and parameter.get("ParameterValue") is not None


def _apply_method(parameter: dict[str, Any]) -> str:
    if parameter.get("ApplyMethod") in ("immediate", "pending-reboot"):
        return str(parameter["ApplyMethod"])
    return "pending-reboot" if parameter.get("ApplyType") == "static" else "immediate"


class ParameterGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("rds", region) as rds:
            groups = await _paginate(rds, "describe_db_parameter_groups", "DBParameterGroups")
            return [
                await self._record(rds, g)
                for g in groups
                if g.get("DBParameterGroupFamily") in PARAMETER_GROUP_FAMILIES
            ]

    async def _record(self, rds: Any, group: dict[str, Any]) -> Record:
        name = group["DBParameterGroupName"]
        parameters = await _paginate(
            rds, "describe_db_parameters", "Parameters", DBParameterGroupName=name
        )
        kept = sorted((p for p in parameters if _is_set(p)), key=lambda p: p["ParameterName"])
        return {
            "name": name,
            "arn": group.get("DBParameterGroupArn"),
            "family": group.get("DBParameterGroupFamily"),
            "description": group.get("Description") or "",
            "parameters": kept or None,
        }

    async def _read_one(self, rds: Any, name: str) -> Record:
        answer = await rds.describe_db_parameter_groups(DBParameterGroupName=name)
        if not answer["DBParameterGroups"]:
            raise CloudError(f"DB parameter group {name} is gone")
        return await self._record(rds, answer["DBParameterGroups"][0])

    async def _set(self, rds: Any, name: str, wanted: Any, current: Any) -> None:
        new = {str(p["ParameterName"]): p for p in _parameter_list(wanted) if _value(p)}
        old = {str(p["ParameterName"]): p for p in _parameter_list(current) if _value(p)}
        changed = [
            {
                "ParameterName": n,
                "ParameterValue": _value(p),
                "ApplyMethod": _apply_method({**old.get(n, {}), **p}),
            }
            for n, p in sorted(new.items())
            if n not in old or _value(old[n]) != _value(p)
        ]
        removed = [
            {"ParameterName": n, "ApplyMethod": _apply_method({**p, "ApplyMethod": None})}
            for n, p in sorted(old.items())
            if n not in new
        ]
        for start in range(0, len(changed), 20):  # at most 20 parameters a call
            await rds.modify_db_parameter_group(
                DBParameterGroupName=name, Parameters=changed[start : start + 20]
            )
        for start in range(0, len(removed), 20):
            await rds.reset_db_parameter_group(
                DBParameterGroupName=name, Parameters=removed[start : start + 20]
            )

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["name"]
        async with cloud.client("rds", record["region"]) as rds:
            with ignoring("DBParameterGroupAlreadyExists"):  # a retried step
                await rds.create_db_parameter_group(
                    DBParameterGroupName=name,
                    DBParameterGroupFamily=record["family"],
                    Description=record["description"],
                )
            await self._set(rds, name, record.get("parameters"), None)
            return await self._read_one(rds, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name = current["name"]
        async with cloud.client("rds", record["region"]) as rds:
            await self._set(rds, name, record.get("parameters"), current.get("parameters"))
            return await self._read_one(rds, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("rds", current["region"]) as rds:
            with ignoring("DBParameterGroupNotFound"):
                await rds.delete_db_parameter_group(DBParameterGroupName=current["name"])


PARAMETER_GROUP = Table(
    name="parameter_group",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column(
            "family",
            "varchar",
            nullable=False,
            check=one_of("family", PARAMETER_GROUP_FAMILIES),
            replaces=True,
        ),
        # AWS cannot change a parameter group's description.
        Column("description", "varchar", nullable=False, replaces=True),
        Column("parameters", "jsonb", normalize=normalize_parameters),
        region_column(),
    ),
    mapper=ParameterGroupMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    # The engine's default groups belong to AWS.
    protected=lambda record: str(record.get("name") or "").startswith("default."),
)

# --- db_cluster ----------------------------------------------------------------------------

# A resource's security group list is one list: a change to it (from a join row, or from the
# resource's own update) is one at a time.
_group_lock: KeyedLocks[str] = KeyedLocks()


def _cluster_record(cluster: dict[str, Any], subnet_groups: set[str]) -> Record | None:
    if cluster.get("Engine") not in CLUSTER_ENGINES or cluster.get("Status") == "deleting":
        return None
    if not cluster.get("AllocatedStorage") or not cluster.get("DBClusterInstanceClass"):
        return None  # not a Multi-AZ DB cluster (IaSQL manages only those)
    arn = cluster["DBClusterArn"]
    subnet_group = cluster.get("DBSubnetGroup")
    record: Record = {
        "db_cluster_identifier": cluster["DBClusterIdentifier"],
        "arn": arn,
        "allocated_storage": cluster.get("AllocatedStorage"),
        "iops": cluster.get("Iops"),
        "backup_retention_period": cluster.get("BackupRetentionPeriod", 1),
        "db_cluster_instance_class": cluster.get("DBClusterInstanceClass"),
        "deletion_protection": bool(cluster.get("DeletionProtection")),
        "engine": cluster.get("Engine"),
        "engine_version": cluster.get("EngineVersion"),
        "master_user_password": None,
        "master_username": cluster.get("MasterUsername"),
        "port": cluster.get("Port"),
        "publicly_accessible": bool(cluster.get("PubliclyAccessible")),
        "storage_encrypted": bool(cluster.get("StorageEncrypted")),
        "tags": visible_tags(cluster.get("TagList")),
        "subnet_group_id": (
            arn_like(arn, "subgrp", subnet_group) if subnet_group in subnet_groups else None
        ),
        # Not columns.
        "security_groups": visible_groups(_group_ids(cluster), cluster.get("TagList")),
        "managed_password": bool(cluster.get("MasterUserSecret")),
    }
    return with_token(record, cluster.get("TagList"))


async def _clusters(rds: Any) -> list[Record]:
    clusters = await _paginate(rds, "describe_db_clusters", "DBClusters")
    subnet_groups = await _subnet_group_names(rds) if clusters else set()
    records = [_cluster_record(c, subnet_groups) for c in clusters]
    return [r for r in records if r is not None]


async def _describe_cluster(rds: Any, identifier: str) -> dict[str, Any] | None:
    try:
        answer = await rds.describe_db_clusters(DBClusterIdentifier=identifier)
    except rds.exceptions.DBClusterNotFoundFault:
        return None
    found = answer.get("DBClusters") or []
    return dict(found[0]) if found else None


class DBClusterMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("rds", region) as rds:
            return await _clusters(rds)

    async def _read_one(self, rds: Any, identifier: str) -> Record:
        cluster = await _describe_cluster(rds, identifier)
        subnet_groups = await _subnet_group_names(rds)
        record = _cluster_record(cluster, subnet_groups) if cluster else None
        if record is None:
            raise CloudError(f"DB cluster {identifier} is gone")
        return record

    async def create(self, cloud: Cloud, record: Record) -> Record:
        identifier = record["db_cluster_identifier"]
        request: dict[str, Any] = {
            "DBClusterIdentifier": identifier,
            "Engine": record["engine"],
            "MasterUsername": record["master_username"],
            "DBClusterInstanceClass": record["db_cluster_instance_class"],
            "AllocatedStorage": record["allocated_storage"],
            "StorageType": "io1",
            "Iops": record["iops"],
            "BackupRetentionPeriod": record.get("backup_retention_period") or 1,
            "DeletionProtection": bool(record.get("deletion_protection")),
            "PubliclyAccessible": bool(record.get("publicly_accessible")),
            "StorageEncrypted": bool(record.get("storage_encrypted")),
            **_password_settings(record, None),
        }
        if record.get("engine_version"):
            request["EngineVersion"] = record["engine_version"]
        if record.get("port"):
            request["Port"] = record["port"]
        if record.get("subnet_group_id"):
            request["DBSubnetGroupName"] = name_of(record["subnet_group_id"])
        # The create token finds a create cut short by a crash again.
        tags = {**user_tags(record.get("tags")), **token_tag(record.get(TOKEN))}
        if tags:
            request["Tags"] = tag_list(tags)
        async with cloud.client("rds", record["region"]) as rds:
            if await _describe_cluster(rds, identifier) is None:  # else a retried step
                answer = await rds.create_db_cluster(**request)
                cluster = answer["DBCluster"]
                await _wait(rds, "db_cluster_available", DBClusterIdentifier=identifier)
                # The groups come with db_cluster_security_groups rows, after the cluster.
                await _mark_assigned(rds, cluster["DBClusterArn"], _group_ids(cluster))
            return await self._read_one(rds, identifier)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        identifier = current["db_cluster_identifier"]
        request: dict[str, Any] = {}
        for column, key in (
            ("allocated_storage", "AllocatedStorage"),
            ("iops", "Iops"),
            ("backup_retention_period", "BackupRetentionPeriod"),
            ("db_cluster_instance_class", "DBClusterInstanceClass"),
            ("engine_version", "EngineVersion"),
            ("port", "Port"),
        ):
            if record.get(column) is not None and record[column] != current.get(column):
                request[key] = record[column]
        protection = bool(record.get("deletion_protection"))
        if protection != bool(current.get("deletion_protection")):
            request["DeletionProtection"] = protection
        if "EngineVersion" in request:
            request["AllowMajorVersionUpgrade"] = True
        request.update(_password_settings(record, current))
        async with cloud.client("rds", record["region"]) as rds:
            if request:
                await rds.modify_db_cluster(
                    DBClusterIdentifier=identifier, ApplyImmediately=True, **request
                )
                await _wait(rds, "db_cluster_available", DBClusterIdentifier=identifier)
            await _sync_tags(rds, current["arn"], record.get("tags"), current.get("tags"))
            return await self._read_one(rds, identifier)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        identifier = current["db_cluster_identifier"]
        async with cloud.client("rds", current["region"]) as rds:
            with ignoring("DBClusterNotFoundFault"):
                await rds.delete_db_cluster(DBClusterIdentifier=identifier, SkipFinalSnapshot=True)
            await _wait(rds, "db_cluster_deleted", DBClusterIdentifier=identifier)


DB_CLUSTER = Table(
    name="db_cluster",
    columns=(
        Column("db_cluster_identifier", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column(
            "allocated_storage",
            "integer",
            nullable=False,
            check="allocated_storage >= 100 AND allocated_storage <= 65000",
        ),
        Column("iops", "integer", nullable=False, check="iops >= 1000 AND iops <= 256000"),
        Column("backup_retention_period", "integer", nullable=False, default="'1'"),
        Column("db_cluster_instance_class", "varchar", nullable=False),
        Column("deletion_protection", "boolean", default="false"),
        Column(
            "engine",
            "varchar",
            nullable=False,
            check=one_of("engine", CLUSTER_ENGINES),
            replaces=True,
        ),
        Column("engine_version", "varchar"),
        Column("master_user_password", "varchar", secret=True),
        Column("master_username", "varchar", nullable=False, replaces=True),
        Column("port", "integer"),
        Column("publicly_accessible", "boolean", default="false", replaces=True),
        Column("storage_encrypted", "boolean", default="false", replaces=True),
        tags_column(),
        region_column(),
        Column(
            "subnet_group_id",
            "integer",
            ref=Ref("db_subnet_group", key="id", cloud="arn", optional=True),
            replaces=True,
        ),
    ),
    mapper=DBClusterMapper(),
    natural_key=("db_cluster_identifier", "region"),
    # By ARN, so that the rows naming a cluster that is replaced are replaced with it.
    cloud_id=("arn",),
    unique=(("db_cluster_identifier", "region"), ("arn",)),
    extra_ddl=(_password_pending("db_cluster"),),
)

# --- rds -----------------------------------------------------------------------------------


def _instance_record(
    db: dict[str, Any], parameter_groups: set[str], clusters: set[str]
) -> Record | None:
    engine = db.get("Engine") or ""
    if "aurora" in engine or not db.get("AvailabilityZone"):
        return None  # IaSQL leaves Aurora out; an instance without a zone yet is not ready
    if db.get("DBInstanceStatus") == "deleting":
        return None
    arn = db["DBInstanceArn"]
    endpoint = db.get("Endpoint") or {}
    groups = db.get("DBParameterGroups") or []
    group = groups[0].get("DBParameterGroupName") if groups else None
    cluster = db.get("DBClusterIdentifier")
    record: Record = {
        "db_instance_identifier": db["DBInstanceIdentifier"],
        "arn": arn,
        "allocated_storage": db.get("AllocatedStorage"),
        "db_instance_class": db.get("DBInstanceClass"),
        "engine": engine,
        "engine_version": db.get("EngineVersion"),
        "master_user_password": None,
        "master_username": db.get("MasterUsername"),
        "endpoint_addr": endpoint.get("Address"),
        "endpoint_port": endpoint.get("Port"),
        "endpoint_hosted_zone_id": endpoint.get("HostedZoneId"),
        "backup_retention_period": db.get("BackupRetentionPeriod", 1),
        "tags": visible_tags(db.get("TagList")),
        "availability_zone": db["AvailabilityZone"],
        "parameter_group_id": (arn_like(arn, "pg", group) if group in parameter_groups else None),
        "db_cluster_id": arn_like(arn, "cluster", cluster) if cluster in clusters else None,
        # Not columns.
        "security_groups": visible_groups(_group_ids(db), db.get("TagList")),
        "managed_password": bool(db.get("MasterUserSecret")),
    }
    return with_token(record, db.get("TagList"))


async def _instances(rds: Any, identifier: str | None = None) -> list[Record]:
    if identifier is None:
        found = await _paginate(rds, "describe_db_instances", "DBInstances")
    else:
        try:
            answer = await rds.describe_db_instances(DBInstanceIdentifier=identifier)
        except rds.exceptions.DBInstanceNotFoundFault:
            return []
        found = answer.get("DBInstances") or []
    if not found:
        return []
    parameter_groups = await _parameter_group_names(rds)
    clusters = {str(r["db_cluster_identifier"]) for r in await _clusters(rds)}
    records = [_instance_record(db, parameter_groups, clusters) for db in found]
    return [r for r in records if r is not None]


async def _wait_instance(rds: Any, identifier: str) -> None:
    await _wait(rds, "db_instance_available", DBInstanceIdentifier=identifier)


class RdsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("rds", region) as rds:
            return await _instances(rds)

    async def _read_one(self, rds: Any, identifier: str) -> Record:
        found = await _instances(rds, identifier)
        if not found:
            raise CloudError(f"DB instance {identifier} is gone")
        return found[0]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        identifier = record["db_instance_identifier"]
        request: dict[str, Any] = {
            "DBInstanceIdentifier": identifier,
            "AllocatedStorage": record["allocated_storage"],
            "DBInstanceClass": record["db_instance_class"],
            "Engine": record["engine"],
            "AvailabilityZone": record["availability_zone"],
            "BackupRetentionPeriod": record["backup_retention_period"],
        }
        if record.get("engine_version"):
            request["EngineVersion"] = record["engine_version"]
        if record.get("master_username"):
            request["MasterUsername"] = record["master_username"]
        if record.get("master_username") or record.get("master_user_password"):
            request.update(_password_settings(record, None))
        if record.get("parameter_group_id"):
            request["DBParameterGroupName"] = name_of(record["parameter_group_id"])
        if record.get("db_cluster_id"):
            request["DBClusterIdentifier"] = name_of(record["db_cluster_id"])
        # The create token finds a create cut short by a crash again.
        tags = {**user_tags(record.get("tags")), **token_tag(record.get(TOKEN))}
        if tags:
            request["Tags"] = tag_list(tags)
        async with cloud.client("rds", record["region"]) as rds:
            if not await _instances(rds, identifier):  # else a retried step
                answer = await rds.create_db_instance(**request)
                await _wait_instance(rds, identifier)
                # The groups come with rds_security_groups rows, after the instance.
                db = answer["DBInstance"]
                await _mark_assigned(rds, db["DBInstanceArn"], _group_ids(db))
            return await self._read_one(rds, identifier)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        identifier = current["db_instance_identifier"]
        request: dict[str, Any] = {}
        for column, key in (
            ("allocated_storage", "AllocatedStorage"),
            ("db_instance_class", "DBInstanceClass"),
            ("backup_retention_period", "BackupRetentionPeriod"),
            ("engine_version", "EngineVersion"),
        ):
            if record.get(column) is not None and record[column] != current.get(column):
                request[key] = record[column]
        if "EngineVersion" in request:
            request["AllowMajorVersionUpgrade"] = True
        group = record.get("parameter_group_id")
        if group and group != current.get("parameter_group_id"):
            request["DBParameterGroupName"] = name_of(group)
        request.update(_password_settings(record, current))
        async with _group_lock(current["arn"]), cloud.client("rds", record["region"]) as rds:
            if request:
                await rds.modify_db_instance(
                    DBInstanceIdentifier=identifier, ApplyImmediately=True, **request
                )
                await _wait_instance(rds, identifier)
            await _sync_tags(rds, current["arn"], record.get("tags"), current.get("tags"))
            return await self._read_one(rds, identifier)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        identifier = current["db_instance_identifier"]
        async with cloud.client("rds", current["region"]) as rds:
            with ignoring("DBInstanceNotFound", "DBInstanceNotFoundFault"):
                await rds.delete_db_instance(
                    DBInstanceIdentifier=identifier, SkipFinalSnapshot=True
                )
            await _wait(rds, "db_instance_deleted", DBInstanceIdentifier=identifier)


# As IaSQL: an instance of a Multi-AZ cluster is the cluster's, and keeps its name.
_BLOCK_CLUSTER_RENAME = (
    """CREATE OR REPLACE FUNCTION block_rds_in_cluster_pk_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'RDS primary key on an instance belonging to a multi-az cluster cannot be modified'
        USING detail = 'An RDS instance belonging to a multi-az cluster cannot be moved to another region or renamed',
        hint = 'If you want to change an RDS belonging to a multi-az cluster, please modify cluster settings directly.';
        RETURN OLD;
    END $$""",
    """CREATE TRIGGER block_rds_in_cluster_pk_update BEFORE UPDATE ON rds
        FOR EACH ROW WHEN ((OLD.region IS DISTINCT FROM NEW.region
            OR OLD.db_instance_identifier IS DISTINCT FROM NEW.db_instance_identifier)
            AND OLD.db_cluster_id IS NOT NULL)
        EXECUTE FUNCTION block_rds_in_cluster_pk_update()""",
)

RDS = Table(
    name="rds",
    columns=(
        Column("db_instance_identifier", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("allocated_storage", "integer", nullable=False),
        Column("db_instance_class", "varchar", nullable=False),
        Column("engine", "varchar", nullable=False, replaces=True),
        Column("engine_version", "varchar"),
        Column("master_user_password", "varchar", secret=True),
        Column("master_username", "varchar", replaces=True),
        Column("endpoint_addr", "varchar", cloud_assigned=True),
        Column("endpoint_port", "integer", cloud_assigned=True),
        Column("endpoint_hosted_zone_id", "varchar", cloud_assigned=True),
        Column("backup_retention_period", "integer", nullable=False, default="'1'"),
        tags_column(),
        region_column(),
        availability_zone_column(),
        Column(
            "parameter_group_id",
            "integer",
            ref=Ref("parameter_group", key="id", cloud="arn", optional=True),
        ),
        Column(
            "db_cluster_id",
            "integer",
            ref=Ref("db_cluster", key="id", cloud="arn", on_delete="CASCADE", optional=True),
            replaces=True,
        ),
    ),
    mapper=RdsMapper(),
    natural_key=("db_instance_identifier", "region"),
    # By ARN, so that the rows naming an instance that is replaced are replaced with it.
    cloud_id=("arn",),
    unique=(("db_instance_identifier", "region"), ("arn",)),
    extra_ddl=(_password_pending("rds"), *_BLOCK_CLUSTER_RENAME),
)

# --- rds_security_groups and db_cluster_security_groups ------------------------------------


class _SecurityGroupsMapper:
    """A join table of a resource (by ARN) and the VPC security groups it has. AWS keeps one
    list; each row adds or takes out one group. A resource left without a row's group gets
    its VPC's default group back, marked as no row's."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # the join table's column of the resource
        self.cluster = owner == "db_cluster_id"

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("rds", region) as rds:
            owners = await _clusters(rds) if self.cluster else await _instances(rds)
        return [
            {self.owner: o["arn"], "security_group_id": group}
            for o in owners
            for group in o["security_groups"]
        ]

    async def _describe(self, rds: Any, identifier: str) -> dict[str, Any] | None:
        if self.cluster:
            return await _describe_cluster(rds, identifier)
        try:
            answer = await rds.describe_db_instances(DBInstanceIdentifier=identifier)
        except rds.exceptions.DBInstanceNotFoundFault:
            return None
        found = answer.get("DBInstances") or []
        return dict(found[0]) if found else None

    async def _change(self, cloud: Cloud, arn: str, group: str, *, add: bool) -> None:
        identifier, region = name_of(arn), region_of(arn)
        async with _group_lock(arn), cloud.client("rds", region) as rds:
            resource = await self._describe(rds, identifier)
            if resource is None:
                return
            tags = resource.get("TagList")
            if "TagList" not in resource:
                answer = await rds.list_tags_for_resource(ResourceName=arn)
                tags = answer.get("TagList")
            groups = visible_groups(_group_ids(resource), tags)
            wanted = [*groups, group] if add else [g for g in groups if g != group]
            if (add and group in groups) or wanted == groups:
                return
            assigned = not wanted
            if assigned:
                subnet_group = resource.get("DBSubnetGroup")
                vpc = subnet_group.get("VpcId") if isinstance(subnet_group, dict) else None
                if isinstance(subnet_group, str):  # a cluster names its group
                    found = await rds.describe_db_subnet_groups(
                        DBSubnetGroupName=resource["DBSubnetGroup"]
                    )
                    vpc = found["DBSubnetGroups"][0].get("VpcId")
                wanted = await _default_group(cloud, region, vpc)
            if self.cluster:
                await rds.modify_db_cluster(
                    DBClusterIdentifier=identifier,
                    VpcSecurityGroupIds=wanted,
                    ApplyImmediately=True,
                )
                await _wait(rds, "db_cluster_available", DBClusterIdentifier=identifier)
            else:
                await rds.modify_db_instance(
                    DBInstanceIdentifier=identifier,
                    VpcSecurityGroupIds=wanted,
                    ApplyImmediately=True,
                )
                await _wait_instance(rds, identifier)
            if assigned:
                await _mark_assigned(rds, arn, wanted)
            elif ASSIGNED_GROUPS_TAG in tag_dict(tags):
                await rds.remove_tags_from_resource(ResourceName=arn, TagKeys=[ASSIGNED_GROUPS_TAG])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get(self.owner) is None or record.get("security_group_id") is None:
            raise CloudError(f"a row of {self.owner[:-3]}'s security groups needs both references")
        await self._change(cloud, record[self.owner], record["security_group_id"], add=True)
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await self._change(cloud, current[self.owner], current["security_group_id"], add=False)


def _security_groups_table(name: str, owner: str, table: str) -> Table:
    return Table(
        name=name,
        columns=(
            foreign_key(owner, table, "arn", on_delete="CASCADE", replaces=False),
            foreign_key(
                "security_group_id",
                "security_group",
                "group_id",
                on_delete="CASCADE",
                replaces=False,
            ),
        ),
        mapper=_SecurityGroupsMapper(owner),
        natural_key=(owner, "security_group_id"),
        cloud_id=(owner, "security_group_id"),
        primary_key=(owner, "security_group_id"),
        # No region column (as in IaSQL), but read region by region; the ARN brings it.
        regional=True,
    )


RDS_SECURITY_GROUPS = _security_groups_table("rds_security_groups", "rds_id", "rds")
DB_CLUSTER_SECURITY_GROUPS = _security_groups_table(
    "db_cluster_security_groups", "db_cluster_id", "db_cluster"
)

MODULE = ModuleSpec(
    name="aws_rds",
    version=VERSION,
    dependencies=("aws_account", "aws_security_group", "aws_vpc"),
    description="RDS instances, DB subnet and parameter groups, Multi-AZ DB clusters",
    tables=(
        DB_SUBNET_GROUP,
        PARAMETER_GROUP,
        DB_CLUSTER,
        RDS,
        RDS_SECURITY_GROUPS,
        DB_CLUSTER_SECURITY_GROUPS,
    ),
    setup_sql=(_PASSWORD_PENDING_FUNCTION,),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS rds_password_pending()",
        "DROP FUNCTION IF EXISTS block_rds_in_cluster_pk_update()",
    ),
)
