"""aws_sqs: SQS queues."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from modules import VERSION
from modules._aws.attributes import AttributeMap
from modules._aws.policy import canonical_policy
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.spec import Cloud, Column, ModuleSpec, Record, Table

# The attributes a user sets (SQS holds them as text).
_ATTRIBUTES = AttributeMap(
    "visibility_timeout",
    "delay_seconds",
    "receive_message_wait_time_seconds",
    "message_retention_period",
    "maximum_message_size",
    to_column=int,
    to_api=str,
)


def _record(url: str, attributes: dict[str, str]) -> Record:
    return {
        "url": url,
        "name": url.rsplit("/", 1)[-1],
        "arn": attributes.get("QueueArn"),
        "fifo_queue": attributes.get("FifoQueue") == "true",
        "policy": json.loads(attributes["Policy"]) if attributes.get("Policy") else None,
        **_ATTRIBUTES.record(attributes),
    }


def _attributes(record: Record) -> dict[str, str]:
    attributes = _ATTRIBUTES.attributes(record)
    policy = record.get("policy")
    if isinstance(policy, str):
        policy = json.loads(policy)
    # The document as written, in compact JSON (what is compared is `canonical_policy`).
    text = "" if policy is None else json.dumps(policy, sort_keys=True, separators=(",", ":"))
    attributes["Policy"] = text
    return attributes


class QueueMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("sqs", region) as sqs:
            # Without a page size, list_queues returns at most 1000 queues and no token.
            pages = sqs.get_paginator("list_queues").paginate(PaginationConfig={"PageSize": 1000})
            urls = [url async for page in pages for url in page.get("QueueUrls", [])]
            return await gather_bounded(self._read_one(sqs, url) for url in urls)

    async def _read_one(self, sqs: Any, url: str) -> Record:
        answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        return _record(url, answer["Attributes"])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        attributes = _attributes(record)
        if not attributes["Policy"]:
            del attributes["Policy"]
        if record.get("fifo_queue"):
            attributes["FifoQueue"] = "true"
        async with cloud.client("sqs", record["region"]) as sqs:
            answer = await sqs.create_queue(QueueName=record["name"], Attributes=attributes)
            return await self._read_one(sqs, answer["QueueUrl"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        async with cloud.client("sqs", record["region"]) as sqs:
            await sqs.set_queue_attributes(QueueUrl=current["url"], Attributes=_attributes(record))
            return await self._read_one(sqs, current["url"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("sqs", current["region"]) as sqs:
            with contextlib.suppress(sqs.exceptions.QueueDoesNotExist):
                await sqs.delete_queue(QueueUrl=current["url"])


QUEUE = Table(
    name="queue",
    columns=(
        Column("url", "varchar", cloud_assigned=True),
        Column("name", "varchar", nullable=False),
        Column("fifo_queue", "boolean", nullable=False, default="false", replaces=True),
        Column("visibility_timeout", "integer", nullable=False, default="30"),
        Column("delay_seconds", "integer", nullable=False, default="0"),
        Column("receive_message_wait_time_seconds", "integer", nullable=False, default="0"),
        Column("message_retention_period", "integer", nullable=False, default="345600"),
        Column("maximum_message_size", "integer", nullable=False, default="262144"),
        Column("policy", "json", normalize=canonical_policy),
        Column("arn", "varchar", cloud_assigned=True),
        region_column(),
    ),
    mapper=QueueMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
)

MODULE = ModuleSpec(
    name="aws_sqs",
    version=VERSION,
    dependencies=("aws_account",),
    description="SQS queues",
    tables=(QUEUE,),
)
