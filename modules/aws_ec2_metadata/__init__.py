"""aws_ec2_metadata: what AWS reports about each instance (addresses, CPU, memory, launch
time), one read-only row per instance."""

from __future__ import annotations

from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules.aws_ec2.common import live_instances
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Table, foreign_key


async def _type_info(ec2: Any, types: set[str]) -> dict[str, dict[str, Any]]:
    """Cores and memory per instance type. describe_instances' CpuOptions would give the cores
    of each instance, but moto leaves it out; the type's default core count is the same
    unless someone launched with custom CpuOptions, which then wins (see _record)."""
    if not types:
        return {}
    pages = ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=sorted(types))
    return {t["InstanceType"]: t async for page in pages for t in page["InstanceTypes"]}


def _record(instance: dict[str, Any], info: dict[str, Any], region: str | None) -> Record:
    cores = instance.get("CpuOptions", {}).get("CoreCount")
    if cores is None:
        cores = info.get("VCpuInfo", {}).get("DefaultCores")
    return {
        "id": instance["InstanceId"],  # the instance row's id, as a foreign key
        "instance_id": instance["InstanceId"],
        "architecture": instance["Architecture"],
        "private_ip_address": instance.get("PrivateIpAddress"),
        "public_ip_address": instance.get("PublicIpAddress"),
        "public_dns_name": instance.get("PublicDnsName") or None,
        "launch_time": instance["LaunchTime"],
        "cpu_cores": cores,
        "mem_size_mb": info.get("MemoryInfo", {}).get("SizeInMiB"),
        "ebs_optimized": bool(instance.get("EbsOptimized")),
        "root_device_type": instance["RootDeviceType"],
        "root_device_name": instance.get("RootDeviceName"),
        "region": region,
    }


async def _records(ec2: Any, instances: list[dict[str, Any]], region: str | None) -> list[Record]:
    info = await _type_info(ec2, {i["InstanceType"] for i in instances})
    return [_record(i, info.get(i["InstanceType"], {}), region) for i in instances]


class InstanceMetadataMapper:
    """Rows mirror the instances. Users can't write the table (a trigger says so); the engine's
    own plans can still reach it, when an instance row is replaced or deleted: a mirror row
    then follows its instance, and what it holds comes from the cloud, never from the row."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            return await _records(ec2, await live_instances(ec2), region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        """The metadata of a replacing instance: taken from the cloud as it is."""
        async with cloud.client("ec2", record["region"]) as ec2:
            found = await live_instances(ec2, InstanceIds=[record["id"]])
            if not found:
                raise CloudError(
                    f"instance_metadata is read-only: instance {record['id']} does not exist"
                )
            return (await _records(ec2, found, record["region"]))[0]

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # the commit's sync writes the cloud's values over the row

    async def delete(self, cloud: Cloud, current: Record) -> None:
        return  # the row goes with its instance, whose delete does the work


def _aws(name: str, kind: str, *, nullable: bool = True, check: str | None = None) -> Column:
    """A column whose value is AWS's: never compared with the cloud, never replayed."""
    return Column(name, kind, nullable=nullable, check=check, cloud_assigned=True)


# Read-only for users: a write is refused at once (42501, with what to write instead), where
# IaSQL accepts it and its next commit or sync silently puts the row back. The engine owns the
# table and keeps writing it (sync, undo), and so does a cascade from an instance row, which
# Postgres runs as the table's owner: current_user tells them from a user's statement.
_READ_ONLY = (
    """CREATE OR REPLACE FUNCTION instance_metadata_read_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_user <> (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RAISE EXCEPTION 'cannot % instance_metadata: it is read-only, AWS reports its values',
                TG_OP USING ERRCODE = '42501',
                HINT = 'change the instance row instead (instance_type, state, ...); every'
                    ' commit and SELECT * FROM iasql_sync() refresh instance_metadata';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER instance_metadata_read_only
        BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON instance_metadata
        FOR EACH STATEMENT EXECUTE FUNCTION instance_metadata_read_only()""",
)

INSTANCE_METADATA = Table(
    name="instance_metadata",
    columns=(
        foreign_key("id", "instance", "instance_id", on_delete="CASCADE", replaces=False),
        _aws("instance_id", "varchar", nullable=False),
        _aws(
            "architecture",
            "varchar",
            nullable=False,
            check="architecture IN ('arm64', 'arm64_mac', 'i386', 'x86_64', 'x86_64_mac')",
        ),
        _aws("private_ip_address", "cidr", nullable=False),
        _aws("public_ip_address", "cidr"),
        _aws("public_dns_name", "varchar"),
        _aws("launch_time", "timestamptz", nullable=False),
        _aws("cpu_cores", "integer", nullable=False),
        _aws("mem_size_mb", "integer", nullable=False),
        _aws("ebs_optimized", "boolean", nullable=False),
        _aws(
            "root_device_type",
            "varchar",
            nullable=False,
            check="root_device_type IN ('ebs', 'instance-store')",
        ),
        _aws("root_device_name", "varchar"),
        region_column(),
    ),
    mapper=InstanceMetadataMapper(),
    natural_key=("id",),  # its instance's natural key, through the foreign key
    cloud_id=("instance_id",),
    primary_key=("id",),
    extra_ddl=(
        *_READ_ONLY,
        "COMMENT ON TABLE instance_metadata IS"
        " 'read-only: one row per instance, refreshed from AWS by every commit and sync'",
    ),
)

MODULE = ModuleSpec(
    name="aws_ec2_metadata",
    version=VERSION,
    dependencies=("aws_ec2",),
    description="Read-only facts AWS reports about each instance",
    tables=(INSTANCE_METADATA,),
    teardown_sql=("DROP FUNCTION IF EXISTS instance_metadata_read_only()",),
)
