"""aws_appsync: AppSync GraphQL APIs (as IaSQL's module).

An API's name, authentication type, authorizer configurations and tags change in place
(UpdateGraphqlApi, TagResource / UntagResource); the settings this table does not hold (log
configuration, additional authentication providers, X-Ray, ...) are kept as they are by an
update. AWS assigns the API's id: a create is tagged with the engine's token. The three
configuration columns hold AppSync's own JSON objects (camelCase keys, as IaSQL's do)."""

from __future__ import annotations

import json
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

# IaSQL's graphql_api_authentication_type_enum.
AUTHENTICATION_TYPES = (
    "AMAZON_COGNITO_USER_POOLS",
    "API_KEY",
    "AWS_IAM",
    "AWS_LAMBDA",
    "OPENID_CONNECT",
)

# Each configuration column and the API's field (of CreateGraphqlApi, UpdateGraphqlApi and
# the GraphqlApi it answers with).
_CONFIGS = {
    "lambda_authorizer_config": "lambdaAuthorizerConfig",
    "open_id_connect_config": "openIDConnectConfig",
    "user_pool_config": "userPoolConfig",
}
# What UpdateGraphqlApi sets from the row; its other fields are sent as the API has them.
_SET_BY_ROW = {"apiId", "name", "authenticationType", *_CONFIGS.values()}


def normalize_config(value: Any) -> Any:
    """A configuration as compared: JSON text or an object, without the keys that hold null;
    an empty one is none (AWS keeps no empty configuration)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value if value.strip() else None  # no JSON: left for AWS to refuse
    if not isinstance(value, dict):
        return value
    kept = {k: v for k, v in sorted(value.items()) if v is not None}
    return kept or None


def _record(api: dict[str, Any], region: str) -> Record:
    tags = api.get("tags") or {}
    record = {
        "name": api["name"],
        "api_id": api["apiId"],
        "arn": api.get("arn"),
        "authentication_type": api.get("authenticationType"),
        **{column: normalize_config(api.get(field)) for column, field in _CONFIGS.items()},
        "region": region,
        "tags": normalize_tags(tags),
    }
    return with_token(record, tag_list(tags))


def _configs(record: Record) -> dict[str, Any]:
    """The configuration arguments the row sets (the other ones are none)."""
    configs = {field: normalize_config(record.get(column)) for column, field in _CONFIGS.items()}
    return {field: config for field, config in configs.items() if config is not None}


class GraphqlApiMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("appsync", region) as appsync:
            pages = appsync.get_paginator("list_graphql_apis").paginate()
            return [_record(api, region) async for page in pages for api in page["graphqlApis"]]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        tags = (normalize_tags(record.get("tags")) or {}) | token_tag(record.get(TOKEN))
        extra: dict[str, Any] = {"tags": tags} if tags else {}
        async with cloud.client("appsync", region) as appsync:
            answer = await appsync.create_graphql_api(
                name=record["name"],
                authenticationType=record["authentication_type"],
                **_configs(record),
                **extra,
            )
        return _record(answer["graphqlApi"], region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        api_id, region = current["api_id"], current["region"]
        settings_changed = any(
            record.get(c) != current.get(c) for c in ("name", "authentication_type")
        ) or any(
            normalize_config(record.get(c)) != normalize_config(current.get(c)) for c in _CONFIGS
        )
        async with cloud.client("appsync", region) as appsync:
            if settings_changed:
                # UpdateGraphqlApi sets the whole API: what the row does not hold is sent as
                # the API has it, so that it stays.
                api = (await appsync.get_graphql_api(apiId=api_id))["graphqlApi"]
                accepted = appsync.meta.service_model.operation_model(
                    "UpdateGraphqlApi"
                ).input_shape.members
                kept = {
                    k: v
                    for k, v in api.items()
                    if k in accepted and k not in _SET_BY_ROW and v is not None
                }
                await appsync.update_graphql_api(
                    apiId=api_id,
                    name=record["name"],
                    authenticationType=record["authentication_type"],
                    **_configs(record),
                    **kept,
                )
            new = normalize_tags(record.get("tags")) or {}
            old = normalize_tags(current.get("tags")) or {}
            removed = [k for k in old if k not in new]
            changed = {k: v for k, v in new.items() if old.get(k) != v}
            arn = current["arn"]
            if removed:
                await appsync.untag_resource(resourceArn=arn, tagKeys=removed)
            if changed:
                await appsync.tag_resource(resourceArn=arn, tags=changed)
            answer = await appsync.get_graphql_api(apiId=api_id)
        return _record(answer["graphqlApi"], region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("appsync", current["region"]) as appsync:
            with ignoring("NotFoundException"):
                # Looked up first: moto answers a delete of a missing API with an HTTP 500.
                await appsync.get_graphql_api(apiId=current["api_id"])
                await appsync.delete_graphql_api(apiId=current["api_id"])


GRAPHQL_API = Table(
    name="graphql_api",
    columns=(
        Column("name", "varchar", nullable=False),
        Column("api_id", "varchar", cloud_assigned=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column(
            "authentication_type",
            "varchar",
            nullable=False,
            check=f"authentication_type IN {AUTHENTICATION_TYPES}",
        ),
        Column("lambda_authorizer_config", "json", normalize=normalize_config),
        Column("open_id_connect_config", "json", normalize=normalize_config),
        Column("user_pool_config", "json", normalize=normalize_config),
        region_column(),
        tags_column(),
    ),
    mapper=GraphqlApiMapper(),
    # AWS lets APIs share a name; in another account the API of the same name and region
    # stands for this one (IaSQL names it by name and region alone).
    natural_key=("name", "region"),
    cloud_id=("api_id",),
    extra_ddl=tags_as_text("graphql_api"),
)

MODULE = ModuleSpec(
    name="aws_appsync",
    version=VERSION,
    dependencies=("aws_account",),
    description="AppSync GraphQL APIs",
    tables=(GRAPHQL_API,),
    teardown_sql=(tags_as_text_teardown("graphql_api"),),
)
