"""aws_cloudwatch: CloudWatch Logs log groups and CloudWatch metric alarms."""

from __future__ import annotations

import contextlib
import datetime as dt
import os

from modules import VERSION
from modules._aws.region import region_column
from modules.aws_cloudwatch.alarm import METRIC_ALARM
from modules.concurrency import gather_bounded
from modules.spec import Cloud, Column, ModuleSpec, Record, Table


def _record(group: dict) -> Record:
    created = group.get("creationTime")
    return {
        "log_group_name": group["logGroupName"],
        "log_group_arn": group.get("arn"),
        "creation_time": dt.datetime.fromtimestamp(created / 1000, dt.UTC) if created else None,
    }


PREFIX_GROUP = 150  # names read by one prefix: three pages of describe_log_groups


def _prefixes(names: list[str], prefix: str) -> list[str]:
    """Prefixes that cover `names` (sorted, all starting with `prefix`), each shared by about
    PREFIX_GROUP of them at most, so each is a few pages read at once with the others."""
    if len(names) <= PREFIX_GROUP or prefix in names:  # a name that is the prefix: no split
        return [prefix]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name[: len(prefix) + 1], []).append(name)
    return [p for head, group in groups.items() for p in _prefixes(group, head)]


class LogGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        records = []
        async with cloud.client("logs", region) as logs:
            async for page in logs.get_paginator("describe_log_groups").paginate():
                records += [_record(g) for g in page["logGroups"]]
        return records

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        """The groups named in `wanted` (a commit reading back what it made). The names are
        read by shared prefixes, at once, so a thousand groups take a few pages in parallel
        rather than every page of the account one after another."""
        names = sorted({w["log_group_name"] for w in wanted})
        # Characters, not path parts: a describe prefix is any string.
        shared = os.path.commonprefix([names[0], names[-1]]) if names else ""  # noqa: RUF071
        prefixes = _prefixes(names, shared)

        async def read_prefix(prefix: str) -> list[Record]:
            found = []
            async with cloud.client("logs", region) as logs:
                pages = logs.get_paginator("describe_log_groups")
                arguments = {"logGroupNamePrefix": prefix} if prefix else {}
                async for page in pages.paginate(**arguments):
                    found += [_record(g) for g in page["logGroups"]]
            return found

        reads = await gather_bounded((read_prefix(p) for p in prefixes), 16)
        keep = set(names)
        return [r for found in reads for r in found if r["log_group_name"] in keep]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["log_group_name"]
        async with cloud.client("logs", record["region"]) as logs:
            # Already there: a retried or journaled create that had happened after all.
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                await logs.create_log_group(logGroupName=name)
        # The name is the cloud id; the arn and creation time come with the read-back that
        # ends every commit (read_some), which saves a describe per group.
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
        Column("log_group_name", "varchar", nullable=False),
        Column("log_group_arn", "varchar", cloud_assigned=True),
        Column("creation_time", "timestamptz", cloud_assigned=True),
        region_column(),
    ),
    mapper=LogGroupMapper(),
    natural_key=("log_group_name", "region"),
    cloud_id=("log_group_name", "region"),
)

MODULE = ModuleSpec(
    name="aws_cloudwatch",
    version=VERSION,
    dependencies=("aws_account",),
    description="CloudWatch Logs log groups and metric alarms",
    tables=(LOG_GROUP, METRIC_ALARM),
)
