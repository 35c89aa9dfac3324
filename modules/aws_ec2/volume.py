"""general_purpose_volume (gp2 / gp3 EBS volumes) and instance_block_device_mapping (which
volume is attached to which instance, at which device)."""

from __future__ import annotations

import asyncio
from typing import Any

from modules._aws.region import region_column
from modules._aws.tags import sync_tags, tag_dict, tag_list, tags_as_text, token_tag, with_token
from modules._aws.waiters import wait_for
from modules.aws_ec2.common import (
    live_instances,
    normalize_instance_tags,
    root_device,
    specification,
)
from modules.aws_vpc import availability_zone_column
from modules.errors import ignoring
from modules.spec import TOKEN, Cloud, CloudError, Column, Record, Table, foreign_key

GENERAL_PURPOSE = ("gp2", "gp3")


async def _root_volumes(ec2: Any) -> set[str]:
    """The volumes that are some live instance's root device."""
    return {
        m["Ebs"]["VolumeId"]
        for i in await live_instances(ec2)
        for m in i.get("BlockDeviceMappings", ())
        if "Ebs" in m and m["DeviceName"] == root_device(i)
    }


def _volume_record(volume: dict[str, Any], roots: set[str], region: str | None) -> Record:
    gp3 = volume["VolumeType"] == "gp3"
    record = {
        "volume_id": volume["VolumeId"],
        "volume_type": volume["VolumeType"],
        "size": volume["Size"],
        "state": volume.get("State"),
        "is_root_device": volume["VolumeId"] in roots,
        # gp2's IOPS follow from its size (AWS reports them but takes none): not a setting.
        "iops": volume.get("Iops") if gp3 else None,
        "throughput": volume.get("Throughput") if gp3 else None,
        "snapshot_id": volume.get("SnapshotId") or None,
        "tags": normalize_instance_tags({t["Key"]: t["Value"] for t in volume.get("Tags", ())}),
        "region": region,
        "availability_zone": volume["AvailabilityZone"],
    }
    return with_token(record, volume.get("Tags"))


async def _volumes(ec2: Any, **params: Any) -> list[dict[str, Any]]:
    """The general purpose volumes that are not on their way out."""
    kinds = {"Name": "volume-type", "Values": list(GENERAL_PURPOSE)}
    pages = ec2.get_paginator("describe_volumes").paginate(Filters=[kinds], **params)
    found = []
    with ignoring("InvalidVolume.NotFound"):
        found = [v async for page in pages for v in page["Volumes"]]
    return [v for v in found if v.get("State") not in ("deleting", "deleted")]


def _settings(record: Record, current: Record | None) -> dict[str, Any]:
    """The create_volume / modify_volume parameters that differ from `current`."""
    wanted = {
        "VolumeType": record.get("volume_type"),
        "Size": record.get("size"),
        "Iops": record.get("iops") if record.get("volume_type") == "gp3" else None,
        "Throughput": record.get("throughput") if record.get("volume_type") == "gp3" else None,
    }
    columns = {
        "VolumeType": "volume_type",
        "Size": "size",
        "Iops": "iops",
        "Throughput": "throughput",
    }
    return {
        key: value
        for key, value in wanted.items()
        if value is not None and (current is None or current.get(columns[key]) != value)
    }


class VolumeMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            volumes, roots = await asyncio.gather(_volumes(ec2), _root_volumes(ec2))
        return [_volume_record(v, roots, region) for v in volumes]

    async def _read_one(self, ec2: Any, volume_id: str, region: str) -> Record:
        found = await _volumes(ec2, VolumeIds=[volume_id])
        if not found:
            raise CloudError(f"volume {volume_id} is gone")
        return _volume_record(found[0], await _root_volumes(ec2), region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        snapshot = {"SnapshotId": record["snapshot_id"]} if record.get("snapshot_id") else {}
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.create_volume(
                AvailabilityZone=record["availability_zone"],
                TagSpecifications=specification(
                    "volume", record.get("tags"), token_tag(record.get(TOKEN))
                ),
                **_settings(record, None),
                **snapshot,
            )
            volume_id = answer["VolumeId"]
            await wait_for(ec2, "volume_available", VolumeIds=[volume_id])
            return await self._read_one(ec2, volume_id, region)

    async def _modify(self, ec2: Any, volume_id: str, changes: dict[str, Any]) -> None:
        """modify_volume, then waits until AWS applies it (the volume reports the new values
        from the `optimizing` stage on)."""
        await ec2.modify_volume(VolumeId=volume_id, **changes)
        for _ in range(150):
            answer = await ec2.describe_volumes_modifications(VolumeIds=[volume_id])
            states = [m["ModificationState"] for m in answer["VolumesModifications"]]
            if "failed" in states:
                raise CloudError(f"AWS could not modify volume {volume_id}")
            if not states or states[-1] in ("optimizing", "completed"):
                return
            await asyncio.sleep(2)
        raise CloudError(f"volume {volume_id} is still being modified")

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region, volume_id = current["region"], current["volume_id"]
        async with cloud.client("ec2", region) as ec2:
            changes = _settings(record, current)
            if changes:
                await self._modify(ec2, volume_id, changes)
            await sync_tags(ec2, volume_id, record.get("tags"), current.get("tags"))
            return await self._read_one(ec2, volume_id, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        volume_id = current["volume_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            if volume_id in await _root_volumes(ec2):
                return  # AWS deletes a root volume with its instance
            if not await _volumes(ec2, VolumeIds=[volume_id]):
                return  # gone already, e.g. with the instance it was the root of
            with ignoring("InvalidVolume.NotFound"):
                # Its mapping row's delete (which runs first) has detached it.
                await wait_for(ec2, "volume_available", VolumeIds=[volume_id])
                await ec2.delete_volume(VolumeId=volume_id)


GENERAL_PURPOSE_VOLUME = Table(
    name="general_purpose_volume",
    extra_ddl=tags_as_text("general_purpose_volume"),
    synced_with=("instance",),  # a launch makes the root volume
    columns=(
        Column("volume_id", "varchar", cloud_assigned=True),
        Column("volume_type", "varchar", nullable=False, check="volume_type IN ('gp2', 'gp3')"),
        Column("size", "integer", nullable=False, default="8"),
        Column(
            "state",
            "varchar",
            check="state IN ('creating', 'available', 'in-use', 'deleting', 'deleted', 'error')",
            cloud_assigned=True,
        ),
        Column("is_root_device", "boolean", default="false", cloud_assigned=True),
        Column("iops", "integer"),
        Column("throughput", "integer"),
        Column("snapshot_id", "varchar", replaces=True),
        Column("tags", "json", normalize=normalize_instance_tags),
        region_column(),
        availability_zone_column(),
    ),
    mapper=VolumeMapper(),
    # A volume has no name either: as for instances, its tags (compared as jsonb) with where
    # it is and what it is.
    natural_key=("tags", "availability_zone", "volume_type", "size"),
    cloud_id=("volume_id",),
)

# --- instance_block_device_mapping ---------------------------------------------------------


def _ebs(instance: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in instance.get("BlockDeviceMappings", ()) if "Ebs" in m]


async def _root_from(ec2: Any, root_id: str, volume_id: str, instance_id: str) -> None:
    """Gives the instance's root volume the size, type, IOPS, throughput and tags of the
    volume a mapping row puts at the root device, then deletes that volume: it was made only
    to carry them (an empty volume can't be a root; the root holds the AMI). The commit's sync
    then finds the root volume in its place, with the row's settings."""
    roots, found = (
        await _volumes(ec2, VolumeIds=[root_id]),
        await _volumes(ec2, VolumeIds=[volume_id]),
    )
    if not roots or not found:
        gone = volume_id if not found else root_id
        raise CloudError(f"volume {gone} is gone: the root of {instance_id} can't be set up")
    root, wanted = roots[0], found[0]
    if wanted.get("State") != "available":
        raise CloudError(
            f"volume {volume_id} is in use: the root of {instance_id} comes from its AMI; map"
            " a new general_purpose_volume row at the root device to set its size and type"
        )
    if wanted["Size"] < root["Size"]:
        raise CloudError(
            f"volume {volume_id} has {wanted['Size']} GiB, but the root of {instance_id} needs"
            f" at least the {root['Size']} GiB of its AMI: set size >= {root['Size']}"
        )
    current = _volume_record(root, set(), None)
    changes = _settings(_volume_record(wanted, set(), None), current)
    if changes:
        await VolumeMapper()._modify(ec2, root_id, changes)
    tags = normalize_instance_tags(tag_dict(wanted.get("Tags")))
    if tags:
        await ec2.create_tags(Resources=[root_id], Tags=tag_list(tags))
    await ec2.delete_volume(VolumeId=volume_id)
    await wait_for(ec2, "volume_deleted", VolumeIds=[volume_id])


def _mapping_records(instances: list[dict[str, Any]], region: str | None) -> list[Record]:
    return [
        {
            "device_name": m["DeviceName"],
            "instance_id": i["InstanceId"],
            "volume_id": m["Ebs"]["VolumeId"],
            "delete_on_termination": bool(m["Ebs"].get("DeleteOnTermination")),
            "region": region,
            "root": m["DeviceName"] == root_device(i),
        }
        for i in instances
        for m in i.get("BlockDeviceMappings", ())
        if "Ebs" in m
    ]


class BlockDeviceMappingMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            return _mapping_records(await live_instances(ec2), region)

    async def _read_one(self, ec2: Any, instance_id: str, device: str, region: str) -> Record:
        found = await live_instances(ec2, InstanceIds=[instance_id])
        for record in _mapping_records(found, region):
            if record["device_name"] == device:
                return record
        raise CloudError(f"nothing is attached to {instance_id} at {device}")

    async def _set_delete_on_termination(self, ec2: Any, record: Record) -> None:
        await ec2.modify_instance_attribute(
            InstanceId=record["instance_id"],
            BlockDeviceMappings=[
                {
                    "DeviceName": record["device_name"],
                    "Ebs": {"DeleteOnTermination": bool(record["delete_on_termination"])},
                }
            ],
        )

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region, instance_id = record["region"], record["instance_id"]
        device, volume_id = record["device_name"], record.get("volume_id")
        async with cloud.client("ec2", region) as ec2:
            found = await live_instances(ec2, InstanceIds=[instance_id])
            if not found:
                raise CloudError(f"instance {instance_id} is gone: nothing to attach {device} to")
            attached = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in _ebs(found[0])}
            if device == root_device(found[0]):
                # The root volume comes from the AMI at launch (a replaced instance's too: its
                # row is imported by the commit's sync). A volume row mapped there gives the
                # root its size, type and tags, as IaSQL's launch mapping does.
                if volume_id is not None and volume_id != attached.get(device):
                    if device not in attached:
                        raise CloudError(
                            f"instance {instance_id} has no EBS volume at its root device"
                            f" {device}: its AMI's root is not EBS; map the volume elsewhere"
                        )
                    await _root_from(ec2, attached[device], volume_id, instance_id)
                return await self._read_one(ec2, instance_id, device, region)
            if volume_id is None:
                # IaSQL's NULL mapping: no device at this name (its launch sends NoDevice).
                # Nothing is attached, and the row goes at the commit's sync, as there.
                if device in attached:
                    raise CloudError(
                        f"the mapping of {device} on {instance_id} names no volume, but"
                        f" {attached[device]} is attached there: delete the mapping row to"
                        " detach it"
                    )
                return dict(record)
            if attached.get(device) == volume_id:
                return await self._read_one(ec2, instance_id, device, region)  # a retry
            await ec2.attach_volume(Device=device, InstanceId=instance_id, VolumeId=volume_id)
            await wait_for(ec2, "volume_in_use", VolumeIds=[record["volume_id"]])
            if record.get("delete_on_termination"):
                await self._set_delete_on_termination(ec2, record)
            return await self._read_one(ec2, instance_id, device, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region = current["region"]
        async with cloud.client("ec2", region) as ec2:
            await self._set_delete_on_termination(ec2, record)
            return await self._read_one(ec2, current["instance_id"], current["device_name"], region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        if current.get("root"):
            return  # AWS won't detach a running instance's root; it goes with the instance
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring(
                "InvalidVolume.NotFound", "InvalidInstanceID.NotFound", "InvalidAttachment.NotFound"
            ):
                await ec2.detach_volume(
                    Device=current["device_name"],
                    InstanceId=current["instance_id"],
                    VolumeId=current["volume_id"],
                )
                await wait_for(ec2, "volume_available", VolumeIds=[current["volume_id"]])


INSTANCE_BLOCK_DEVICE_MAPPING = Table(
    name="instance_block_device_mapping",
    columns=(
        Column("device_name", "varchar", nullable=False),
        foreign_key("instance_id", "instance", "instance_id", on_delete="CASCADE", replaces=False),
        foreign_key(
            "volume_id", "general_purpose_volume", "volume_id", on_delete="CASCADE", nullable=True
        ),
        Column("delete_on_termination", "boolean", nullable=False, default="true"),
        region_column(),
    ),
    mapper=BlockDeviceMappingMapper(),
    # A device name is unique on its instance.
    natural_key=("instance_id", "device_name"),
    cloud_id=("instance_id", "device_name"),
)
