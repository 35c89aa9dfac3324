"""aws_dynamo: DynamoDB tables.

IaSQL's JSON forms are kept: `throughput` is the JSON string "PAY_PER_REQUEST" (on-demand
billing) or {"ReadCapacityUnits": n, "WriteCapacityUnits": n} (provisioned); `primary_key` is
{"<attribute>": "<S|N|B>", ...}, its first attribute the partition (HASH) key and its second,
when there is one, the sort (RANGE) key. Throughput and table class change in place; a new
name or primary key is a new table (a replace deletes the table and its items). The key's
attribute order is not compared (see `canonical_primary_key`).

The table class: DescribeTable leaves TableClassSummary out for a STANDARD table that never
changed class, so no summary means STANDARD. An endpoint that models no table classes at all
(moto: no TableClassSummary and no TableId, ever) accepts a class and forgets it; there the
class asked for is kept in the tag `iasql:table_class`, and read back from it, so that a
class change does not show as drift for ever. On AWS (TableId present) the tag is neither
written nor read.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Table

PAY_PER_REQUEST = "PAY_PER_REQUEST"
STANDARD = "STANDARD"
TABLE_CLASSES = (STANDARD, "STANDARD_INFREQUENT_ACCESS")
# Where the table class is kept on an endpoint that does not report it (see the docstring).
CLASS_TAG = "iasql:table_class"
# Creating, updating and deleting a table usually takes seconds; a class or capacity change
# of a large table can take minutes.
_WAIT = {"Delay": 2, "MaxAttempts": 300}


# Canonical forms, for comparing what a user wrote with what AWS hands back.


def _loaded(value: Any) -> Any:
    """A JSON column's value as Python (a driver may hand over the text)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def canonical_throughput(value: Any) -> Any:
    """ "PAY_PER_REQUEST", or {"ReadCapacityUnits": int, "WriteCapacityUnits": int}; any
    other value as it is (the CHECK and the mapper refuse it)."""
    value = _loaded(value)
    if isinstance(value, dict):
        try:
            return {
                "ReadCapacityUnits": int(value["ReadCapacityUnits"]),
                "WriteCapacityUnits": int(value["WriteCapacityUnits"]),
            }
        except (KeyError, TypeError, ValueError):
            return value
    return value


def canonical_primary_key(value: Any) -> Any:
    """The key attributes as sorted [[name, type], ...].

    The object's order says which attribute is the partition key, and a create follows it;
    the comparison leaves it out. The engine restores a row from its audit log through jsonb
    (iasql_rollback), which re-sorts an object's keys: an order-sensitive comparison would
    then plan a replace, which deletes the table with its items. So swapping the partition
    and sort keys of an existing table is not seen as a change (it takes a new table)."""
    value = _loaded(value)
    if isinstance(value, dict):
        return sorted([str(name), str(kind)] for name, kind in value.items())
    return value


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """The column is a `timestamp` (no time zone) holding UTC."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


# Rows to API arguments.


def _throughput_arguments(record: Record) -> dict[str, Any]:
    """BillingMode and, when provisioned, ProvisionedThroughput."""
    throughput = canonical_throughput(record["throughput"])
    if throughput == PAY_PER_REQUEST:
        return {"BillingMode": PAY_PER_REQUEST}
    if isinstance(throughput, dict) and set(throughput) == {
        "ReadCapacityUnits",
        "WriteCapacityUnits",
    }:
        return {"BillingMode": "PROVISIONED", "ProvisionedThroughput": throughput}
    raise CloudError(
        f"throughput must be '\"PAY_PER_REQUEST\"' or"
        f' {{"ReadCapacityUnits": n, "WriteCapacityUnits": n}}, not {json.dumps(throughput)}'
    )


def _key_order(record: Record) -> dict[str, str]:
    """The row's primary key as written: its first attribute is the partition key."""
    key = _loaded(record["primary_key"])
    if not isinstance(key, dict) or not 1 <= len(key) <= 2:
        raise CloudError(
            'primary_key must be an object of one or two attributes, {"<partition key>":'
            f' "S|N|B", "<sort key>": "S|N|B"}}, not {json.dumps(key)}'
        )
    return {str(name): str(kind) for name, kind in key.items()}


def _key_arguments(record: Record) -> dict[str, Any]:
    """AttributeDefinitions and KeySchema: the first attribute is HASH, the second RANGE."""
    key = list(_key_order(record).items())
    return {
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t in key],
        "KeySchema": [
            {"AttributeName": n, "KeyType": "HASH" if i == 0 else "RANGE"}
            for i, (n, _) in enumerate(key)
        ],
    }


# API answers to records.


def _primary_key(table: dict[str, Any]) -> dict[str, str]:
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    schema = sorted(table.get("KeySchema", []), key=lambda k: k["KeyType"] != "HASH")
    return {k["AttributeName"]: types.get(k["AttributeName"], "S") for k in schema}


def _throughput(table: dict[str, Any]) -> Any:
    if table.get("BillingModeSummary", {}).get("BillingMode") == PAY_PER_REQUEST:
        return PAY_PER_REQUEST
    provisioned = table.get("ProvisionedThroughput", {})
    return {
        "ReadCapacityUnits": provisioned.get("ReadCapacityUnits", 0),
        "WriteCapacityUnits": provisioned.get("WriteCapacityUnits", 0),
    }


def _models_classes(table: dict[str, Any]) -> bool:
    """Whether the endpoint reports table classes: AWS always gives a TableId, and gives a
    TableClassSummary once a table's class was set to anything but STANDARD."""
    return "TableId" in table or "TableClassSummary" in table


def _record(table: dict[str, Any], region: str, tagged_class: str | None = None) -> Record:
    summary = table.get("TableClassSummary", {}).get("TableClass")
    if summary is None and not _models_classes(table) and tagged_class in TABLE_CLASSES:
        summary = tagged_class
    return {
        "table_name": table["TableName"],
        "table_class": summary or STANDARD,
        "throughput": _throughput(table),
        "table_id": table.get("TableId"),
        "primary_key": _primary_key(table),
        "created_at": _utc(table.get("CreationDateTime")),
        "region": region,
    }


async def _tagged_class(dynamo: Any, table: dict[str, Any]) -> str | None:
    """The class kept in CLASS_TAG, read only where the endpoint reports no classes."""
    if _models_classes(table) or not table.get("TableArn"):
        return None
    arguments: dict[str, Any] = {"ResourceArn": table["TableArn"]}
    while True:
        try:
            answer = await dynamo.list_tags_of_resource(**arguments)
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise
        for tag in answer.get("Tags", []):
            if tag["Key"] == CLASS_TAG:
                return str(tag["Value"])
        if not answer.get("NextToken"):
            return None
        arguments["NextToken"] = answer["NextToken"]


async def _keep_class(dynamo: Any, table: dict[str, Any], table_class: str) -> None:
    """Tags the table with its class where the endpoint would otherwise forget it."""
    if _models_classes(table) or not table.get("TableArn"):
        return
    # moto's TagResource appends a second tag of the same key rather than replacing it.
    await dynamo.untag_resource(ResourceArn=table["TableArn"], TagKeys=[CLASS_TAG])
    await dynamo.tag_resource(
        ResourceArn=table["TableArn"], Tags=[{"Key": CLASS_TAG, "Value": table_class}]
    )


async def _describe(dynamo: Any, name: str) -> dict[str, Any] | None:
    """The table's description; None when it does not exist (or is being deleted)."""
    try:
        answer = await dynamo.describe_table(TableName=name)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    table: dict[str, Any] = answer["Table"]
    return None if table.get("TableStatus") == "DELETING" else table


async def _read_one(dynamo: Any, name: str, region: str) -> Record | None:
    table = await _describe(dynamo, name)
    if table is None:
        return None
    return _record(table, region, await _tagged_class(dynamo, table))


async def _wait_active(dynamo: Any, name: str) -> None:
    await dynamo.get_waiter("table_exists").wait(TableName=name, WaiterConfig=_WAIT)


class DynamoTableMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("dynamodb", region) as dynamo:
            pages = dynamo.get_paginator("list_tables").paginate()
            names = [name async for page in pages for name in page.get("TableNames", [])]
            found = await gather_bounded(_read_one(dynamo, name, region) for name in names)
        return [record for record in found if record is not None]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        assert region is not None
        names = sorted({w["table_name"] for w in wanted if w.get("region", region) == region})
        async with cloud.client("dynamodb", region) as dynamo:
            found = await gather_bounded(_read_one(dynamo, name, region) for name in names)
        return [record for record in found if record is not None]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["table_name"], record["region"]
        table_class = record.get("table_class") or STANDARD
        arguments = {
            "TableName": name,
            "TableClass": table_class,
            **_key_arguments(record),
            **_throughput_arguments(record),
        }
        async with cloud.client("dynamodb", region) as dynamo:
            try:
                answer = await dynamo.create_table(**arguments)
                table = answer["TableDescription"]
            except ClientError as error:
                # A retried commit finds the table it made; any other table of that name is
                # the user's conflict, and AWS's error says so.
                if error_code(error) != "ResourceInUseException":
                    raise
                existing = await _describe(dynamo, name)
                if existing is None or list(_primary_key(existing).items()) != list(
                    _key_order(record).items()
                ):
                    raise
                table = existing
            await _wait_active(dynamo, name)
            await _keep_class(dynamo, table, table_class)
            found = await _read_one(dynamo, name, region)
        if found is None:
            raise CloudError(f"table {name} was created but cannot be found")
        return found

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["table_name"], current["region"]
        async with cloud.client("dynamodb", region) as dynamo:
            # AWS takes one kind of change per UpdateTable, and the next once the table is
            # ACTIVE again: the billing mode and capacity first, then the class.
            new_throughput = canonical_throughput(record["throughput"])
            if new_throughput != canonical_throughput(current.get("throughput")):
                await dynamo.update_table(TableName=name, **_throughput_arguments(record))
                await _wait_active(dynamo, name)
            table_class = record.get("table_class") or STANDARD
            if table_class != current.get("table_class"):
                answer = await dynamo.update_table(TableName=name, TableClass=table_class)
                await _wait_active(dynamo, name)
                await _keep_class(dynamo, answer["TableDescription"], table_class)
            found = await _read_one(dynamo, name, region)
        if found is None:
            raise CloudError(f"table {name} disappeared while it was updated")
        return found

    async def delete(self, cloud: Cloud, current: Record) -> None:
        name = current["table_name"]
        async with cloud.client("dynamodb", current["region"]) as dynamo:
            with ignoring("ResourceNotFoundException"):
                await dynamo.delete_table(TableName=name)
            # A replace creates the same name next: the old table must be gone first.
            await dynamo.get_waiter("table_not_exists").wait(TableName=name, WaiterConfig=_WAIT)


# A CHECK passes on NULL: a missing capacity must make it false, not unknown.
_THROUGHPUT_CHECK = (
    "coalesce((json_typeof(throughput) = 'string'"
    " AND (throughput #>> '{}') = 'PAY_PER_REQUEST')"
    " OR (json_typeof(throughput) = 'object'"
    " AND (throughput ->> 'ReadCapacityUnits') ~ '^[0-9]+$'"
    " AND (throughput ->> 'WriteCapacityUnits') ~ '^[0-9]+$'), false)"
)

DYNAMO_TABLE = Table(
    name="dynamo_table",
    columns=(
        Column("table_name", "varchar", nullable=False, replaces=True),
        Column(
            "table_class",
            "varchar",
            nullable=False,
            check=f"table_class IN {TABLE_CLASSES!r}",
        ),
        Column(
            "throughput",
            "json",
            nullable=False,
            check=_THROUGHPUT_CHECK,
            normalize=canonical_throughput,
        ),
        Column("table_id", "varchar", cloud_assigned=True),
        Column(
            "primary_key",
            "json",
            nullable=False,
            check="json_typeof(primary_key) = 'object'",
            replaces=True,
            normalize=canonical_primary_key,
        ),
        Column("created_at", "timestamp", cloud_assigned=True),
        region_column(),
    ),
    mapper=DynamoTableMapper(),
    natural_key=("table_name", "region"),
    cloud_id=("table_name", "region"),
)

MODULE = ModuleSpec(
    name="aws_dynamo",
    version=VERSION,
    dependencies=("aws_account",),
    description="DynamoDB tables",
    tables=(DYNAMO_TABLE,),
)
