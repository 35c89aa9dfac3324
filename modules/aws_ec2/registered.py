"""registered_instance: instances registered as targets of an ELB target group."""

from __future__ import annotations

import asyncio
from typing import Any

from modules._aws.region import region_column
from modules.concurrency import KeyedLocks
from modules.errors import ignoring
from modules.spec import Cloud, Column, Record, Table, foreign_key


async def _instance_groups(elb: Any) -> list[str]:
    pages = elb.get_paginator("describe_target_groups").paginate()
    return [
        group["TargetGroupArn"]
        async for page in pages
        for group in page["TargetGroups"]
        if group.get("TargetType", "instance") == "instance"
    ]


class RegisteredInstanceMapper:
    def __init__(self) -> None:
        # One change at a time per (target group, instance): a port change is a delete and a
        # create that a commit runs concurrently, and the delete's put-back below must not
        # interleave with the create.
        self._locks: KeyedLocks[tuple[str, str]] = KeyedLocks()

    def _lock(self, record: Record) -> asyncio.Lock:
        return self._locks((record["target_group_id"], record["instance"]))

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        records = []
        async with cloud.client("elbv2", region) as elb:
            for arn in await _instance_groups(elb):
                with ignoring("TargetGroupNotFound"):  # deleted meanwhile
                    answer = await elb.describe_target_health(TargetGroupArn=arn)
                    records += [
                        {
                            "instance": health["Target"]["Id"],
                            "target_group_id": arn,
                            "port": health["Target"].get("Port"),
                            "region": region,
                        }
                        for health in answer["TargetHealthDescriptions"]
                        if health.get("TargetHealth", {}).get("State") != "draining"
                    ]
        return records

    def _target(self, record: Record) -> dict[str, Any]:
        port = {"Port": record["port"]} if record.get("port") is not None else {}
        return {"Id": record["instance"], **port}

    async def create(self, cloud: Cloud, record: Record) -> Record:
        async with self._lock(record), cloud.client("elbv2", record["region"]) as elb:
            await elb.register_targets(
                TargetGroupArn=record["target_group_id"], Targets=[self._target(record)]
            )
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # every column is the registration's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        arn = current["target_group_id"]
        async with self._lock(current), cloud.client("elbv2", current["region"]) as elb:
            with ignoring("TargetGroupNotFound", "InvalidTarget"):
                others = await self._other_ports(elb, current)
                await elb.deregister_targets(TargetGroupArn=arn, Targets=[self._target(current)])
                # moto deregisters the instance on every port, not just the one named: the
                # instance's other registrations (a port change registers the new one
                # alongside) are put back. On AWS nothing is missing and this does nothing.
                missing = others - await self._other_ports(elb, current)
                if missing:
                    targets = [{"Id": current["instance"], "Port": port} for port in missing]
                    await elb.register_targets(TargetGroupArn=arn, Targets=targets)

    async def _other_ports(self, elb: Any, current: Record) -> set[int]:
        answer = await elb.describe_target_health(TargetGroupArn=current["target_group_id"])
        return {
            health["Target"]["Port"]
            for health in answer["TargetHealthDescriptions"]
            if health["Target"]["Id"] == current["instance"]
            and health["Target"].get("Port") != current.get("port")
        }


# AWS registers a target without a port on its group's port and reports that port: the row
# says so from the start, so that it matches the cloud.
_DEFAULT_PORT_TRIGGER = (
    """CREATE OR REPLACE FUNCTION registered_instance_default_port() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.port IS NULL THEN
            NEW.port := (SELECT port FROM target_group WHERE id = NEW.target_group_id);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER registered_instance_default_port BEFORE INSERT ON registered_instance
        FOR EACH ROW EXECUTE FUNCTION registered_instance_default_port()""",
)

REGISTERED_INSTANCE = Table(
    name="registered_instance",
    columns=(
        Column("port", "integer"),
        region_column(),
        foreign_key(
            "instance",
            "instance",
            "instance_id",
            on_delete="CASCADE",
            nullable=True,
            replaces=False,
        ),
        foreign_key(
            "target_group_id",
            "target_group",
            "target_group_arn",
            on_delete="CASCADE",
            nullable=True,
            replaces=False,
        ),
    ),
    mapper=RegisteredInstanceMapper(),
    natural_key=("instance", "target_group_id", "port"),
    cloud_id=("instance", "target_group_id", "port"),
    extra_ddl=_DEFAULT_PORT_TRIGGER,
)
