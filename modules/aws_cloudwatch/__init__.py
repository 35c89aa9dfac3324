"""aws_cloudwatch: CloudWatch Logs log groups."""

from __future__ import annotations

import contextlib
import datetime as dt

from modules import VERSION
from modules.aws_account import region_column
from modules.spec import Cloud, Column, ModuleSpec, Record, Table


def _record(group: dict) -> Record:
    created = group.get("creationTime")
    return {
        "log_group_name": group["logGroupName"],
        "log_group_arn": group.get("arn"),
        "creation_time": dt.datetime.fromtimestamp(created / 1000, dt.UTC) if created else None,
    }


class LogGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        records = []
        async with cloud.client("logs", region) as logs:
            async for page in logs.get_paginator("describe_log_groups").paginate():
                records += [_record(g) for g in page["logGroups"]]
        return records

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["log_group_name"]
        async with cloud.client("logs", record["region"]) as logs:
            # Already there: a retried or journaled create that had happened after all.
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                await logs.create_log_group(logGroupName=name)
        # The name is the cloud id; the arn and creation time come with the sync that ends
        # every commit, which saves a describe per group (half the calls of a big commit).
        return {"log_group_name": name, "region": record["region"]}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # every column is either the name or set by AWS

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("logs", current["region"]) as logs:
            with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
                await logs.delete_log_group(logGroupName=current["log_group_name"])


LOG_GROUP = Table(
    name="log_group",
    columns=(
        Column("id", "serial", nullable=False),
        Column("log_group_name", "varchar", nullable=False),
        Column("log_group_arn", "varchar", cloud_assigned=True),
        Column("creation_time", "timestamptz", cloud_assigned=True),
        region_column(),
    ),
    mapper=LogGroupMapper(),
    natural_key=("log_group_name", "region"),
    cloud_id=("log_group_name", "region"),
    unique=(("log_group_name", "region"),),
)

MODULE = ModuleSpec(
    name="aws_cloudwatch",
    version=VERSION,
    dependencies=("aws_account",),
    description="CloudWatch Logs log groups",
    tables=(LOG_GROUP,),
)
