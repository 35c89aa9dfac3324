"""Helpers the aws_ec2 tables share: tags with iasql's own hidden markers, live instances,
and a per-instance lock for read-modify-write calls."""

from __future__ import annotations

import asyncio
from typing import Any

from modules._aws.tags import Tags, normalize_tags, tag_list
from modules.concurrency import KeyedLocks
from modules.errors import ignoring
from modules.spec import Cloud, CloudError

# Tags iasql puts on instances for itself (the create token, the AMI as written, the groups AWS
# gave at launch): hidden from the `tags` column like AWS's own `aws:` tags.
MARKER_PREFIX = "iasql:"
AMI_TAG = "iasql:ami"
LAUNCH_GROUPS_TAG = "iasql:launch-groups"

# Instances in these states exist for iasql; terminated ones are gone, and shutting-down
# ones are on their way out.
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def normalize_instance_tags(value: Any) -> Tags | None:
    tags = normalize_tags(value) or {}
    return {k: v for k, v in tags.items() if not k.startswith(MARKER_PREFIX)} or None


def specification(resource_type: str, tags: Any, extra: Tags) -> list[dict[str, Any]]:
    """TagSpecifications: the user's tags plus iasql's markers (token and the like)."""
    pairs = {**(normalize_instance_tags(tags) or {}), **extra}
    return [{"ResourceType": resource_type, "Tags": tag_list(pairs)}] if pairs else []


def commit_of(token: str | None) -> str | None:
    """The commit a create token belongs to: the engine's tokens are `<transaction>:<step>`."""
    return token.rsplit(":", 1)[0] if token and ":" in token else None


# instance id -> its region, as last seen. instance_security_groups has no region column
# (IaSQL's schema), so its rows find their instance's region here.
_REGIONS: dict[str, str] = {}


async def live_instances(ec2: Any, **filters: Any) -> list[dict[str, Any]]:
    """The region's instances that are not terminated (or terminating)."""
    state = {"Name": "instance-state-name", "Values": LIVE_STATES}
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[state], **filters)
    found = [i async for page in pages for r in page["Reservations"] for i in r["Instances"]]
    for instance in found:
        _REGIONS[instance["InstanceId"]] = ec2.meta.region_name
    return found


async def region_of(cloud: Cloud, instance_id: str) -> str:
    """The region of an instance: as last seen by any read of this process, else looked for
    in every region of the account (once after a restart)."""
    if instance_id in _REGIONS:
        return _REGIONS[instance_id]
    async with cloud.client("ec2", None) as ec2:
        regions = [r["RegionName"] for r in (await ec2.describe_regions())["Regions"]]

    async def look(region: str) -> None:
        async with cloud.client("ec2", region) as ec2:
            with ignoring("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                await live_instances(ec2, InstanceIds=[instance_id])

    await asyncio.gather(*(look(r) for r in regions))
    if instance_id not in _REGIONS:
        raise CloudError(f"instance {instance_id} is in no region of this account")
    return _REGIONS[instance_id]


def instance_groups(instance: dict[str, Any]) -> list[str]:
    """The instance's security group ids. moto leaves SecurityGroups empty for an instance
    launched without groups (its network interface has AWS's default one), until they are
    modified: then the primary interface's groups stand in."""
    groups: list[dict[str, Any]] = instance.get("SecurityGroups") or next(
        (n.get("Groups", []) for n in instance.get("NetworkInterfaces", ()) if _primary(n)), []
    )
    return [g["GroupId"] for g in groups]


def root_device(instance: dict[str, Any]) -> str | None:
    """The device of the instance's root volume. moto attaches it at /dev/sda1 whatever the
    AMI's RootDeviceName says: when no mapping has that name, the volume attached at launch
    (the earliest) is the root."""
    mappings = [m for m in instance.get("BlockDeviceMappings", ()) if "Ebs" in m]
    name = instance.get("RootDeviceName")
    if any(m["DeviceName"] == name for m in mappings) or not mappings:
        return name
    first = min(mappings, key=lambda m: m["Ebs"].get("AttachTime") or instance["LaunchTime"])
    return str(first["DeviceName"])


def _primary(interface: dict[str, Any]) -> bool:
    return interface.get("Attachment", {}).get("DeviceIndex", 0) == 0


# One lock per instance: a commit runs independent steps at once, and changing an instance's
# group list is a read followed by a write that must not interleave.
INSTANCE_LOCKS: KeyedLocks[str] = KeyedLocks()
