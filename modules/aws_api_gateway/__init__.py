"""aws_api_gateway: API Gateway HTTP and WebSocket APIs (API Gateway v2, as IaSQL's module).

An API's name, description, version, execute-api endpoint switch and tags change in place
(UpdateApi, TagResource / UntagResource); its protocol type cannot change, so a new one
replaces it. AWS assigns the API's id: a create is tagged with the engine's token."""

from __future__ import annotations

from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules._aws.tags import (
    normalize_tags,
    tag_list,
    tags_as_text,
    tags_as_text_teardown,
    tags_column,
    token_tag,
    with_token,
)
from modules.errors import ignoring
from modules.spec import TOKEN, Cloud, Column, ModuleSpec, Record, Table

PROTOCOL_TYPES = ("HTTP", "WEBSOCKET")  # IaSQL's api_protocol_type_enum

# AWS refuses a WebSocket API without a route selection expression; this is the one its
# console proposes (HTTP APIs get AWS's default, "$request.method $request.path").
_WEBSOCKET_ROUTE_SELECTION = "$request.body.action"


def _text(value: Any) -> str | None:
    """A description or version: AWS's "" (what clearing one leaves) is none."""
    return None if value is None or value == "" else str(value)


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def api_arn(api_id: str, region: str) -> str:
    """The ARN that TagResource / UntagResource name an API by."""
    return f"arn:{_partition(region)}:apigateway:{region}::/apis/{api_id}"


def _record(api: dict[str, Any], region: str) -> Record:
    tags = api.get("Tags") or {}
    record = {
        "api_id": api["ApiId"],
        "name": api.get("Name"),
        "description": _text(api.get("Description")),
        "disable_execute_api_endpoint": api.get("DisableExecuteApiEndpoint"),
        "protocol_type": api.get("ProtocolType"),
        "version": _text(api.get("Version")),
        "region": region,
        "tags": normalize_tags(tags),
    }
    return with_token(record, tag_list(tags))


async def _sync_tags(apigw: Any, arn: str, wanted: Any, current: Any) -> None:
    """Changes an API's visible tags from `current` to `wanted` (the token tag stays)."""
    new = normalize_tags(wanted) or {}
    old = normalize_tags(current) or {}
    removed = [k for k in old if k not in new]
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    if removed:
        await apigw.untag_resource(ResourceArn=arn, TagKeys=removed)
    if changed:
        await apigw.tag_resource(ResourceArn=arn, Tags=changed)


class ApiMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("apigatewayv2", region) as apigw:
            pages = apigw.get_paginator("get_apis").paginate()
            return [_record(api, region) async for page in pages for api in page["Items"]]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        protocol = record.get("protocol_type") or "HTTP"  # IaSQL's default
        arguments: dict[str, Any] = {"ProtocolType": protocol}
        if record.get("name") is not None:  # AWS requires one: botocore says so without
            arguments["Name"] = record["name"]
        if record.get("description") is not None:
            arguments["Description"] = record["description"]
        if record.get("disable_execute_api_endpoint") is not None:
            arguments["DisableExecuteApiEndpoint"] = record["disable_execute_api_endpoint"]
        if record.get("version") is not None:
            arguments["Version"] = record["version"]
        if protocol == "WEBSOCKET":
            arguments["RouteSelectionExpression"] = _WEBSOCKET_ROUTE_SELECTION
        tags = (normalize_tags(record.get("tags")) or {}) | token_tag(record.get(TOKEN))
        if tags:
            arguments["Tags"] = tags
        async with cloud.client("apigatewayv2", region) as apigw:
            answer = await apigw.create_api(**arguments)
        return _record(answer, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        api_id, region = current["api_id"], current["region"]
        changes: dict[str, Any] = {}
        if record.get("name") is not None and record["name"] != current.get("name"):
            changes["Name"] = record["name"]
        for column, keyword in (("description", "Description"), ("version", "Version")):
            if _text(record.get(column)) != _text(current.get(column)):
                changes[keyword] = record.get(column) or ""  # "" clears it
        disable = bool(record.get("disable_execute_api_endpoint"))
        if disable != bool(current.get("disable_execute_api_endpoint")):
            changes["DisableExecuteApiEndpoint"] = disable
        async with cloud.client("apigatewayv2", region) as apigw:
            if changes:
                await apigw.update_api(ApiId=api_id, **changes)
            await _sync_tags(
                apigw, api_arn(api_id, region), record.get("tags"), current.get("tags")
            )
            return _record(await apigw.get_api(ApiId=api_id), region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("apigatewayv2", current["region"]) as apigw:
            with ignoring("NotFoundException"):
                await apigw.delete_api(ApiId=current["api_id"])


API = Table(
    name="api",
    columns=(
        Column("api_id", "varchar", cloud_assigned=True),
        Column("name", "varchar"),
        Column("description", "varchar", normalize=_text),
        Column("disable_execute_api_endpoint", "boolean"),
        Column(
            "protocol_type",
            "varchar",
            check=f"protocol_type IN {PROTOCOL_TYPES}",
            replaces=True,
        ),
        Column("version", "varchar", normalize=_text),
        region_column(),
        tags_column(),
    ),
    mapper=ApiMapper(),
    # AWS lets APIs share a name; in another account the API of the same name and region
    # stands for this one.
    natural_key=("name", "region"),
    cloud_id=("api_id",),
    extra_ddl=tags_as_text("api"),
)

MODULE = ModuleSpec(
    name="aws_api_gateway",
    version=VERSION,
    dependencies=("aws_account",),
    description="API Gateway HTTP and WebSocket APIs (API Gateway v2)",
    tables=(API,),
    teardown_sql=(tags_as_text_teardown("api"),),
)
