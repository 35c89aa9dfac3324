"""Tags as a `tags` column holds them, and the create token (see modules.spec.TOKEN) that a
mapper tags a resource with, so that a create cut short can be found again."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from modules.spec import TOKEN, TOKEN_TAG, Cloud, Column, Record

Tags = dict[str, str]


def _hidden(key: str) -> bool:
    """Tags no user manages: our create token, and AWS's reserved `aws:` tags, which cannot be
    set or removed."""
    return key == TOKEN_TAG or key.lower().startswith("aws:")


def normalize_tags(value: Any) -> Tags | None:
    """Tags as a sorted dict of strings without the hidden ones; no tags is None, as AWS can't
    tell {} from no tags at all."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    tags = {str(k): "" if v is None else str(v) for k, v in value.items() if not _hidden(str(k))}
    return dict(sorted(tags.items())) or None


def tags_column() -> Column:
    """The `tags` column of a resource: a JSON object, compared as `normalize_tags` does."""
    return Column("tags", "json", normalize=normalize_tags)


def tag_dict(aws_tags: list[dict[str, str]] | None) -> Tags:
    """AWS's tag list ([{"Key": .., "Value": ..}]) as a dict, hidden tags included."""
    return {t["Key"]: t.get("Value", "") for t in aws_tags or ()}


def tag_list(tags: Tags) -> list[dict[str, str]]:
    """A dict of tags as AWS's tag list."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def user_tags(aws_tags: list[dict[str, str]] | None) -> Tags | None:
    """The `tags` column from AWS's tag list."""
    return normalize_tags(tag_dict(aws_tags))


def token_tag(token: str | None) -> Tags:
    """The tag that marks a resource with its create token (none without a token)."""
    return {TOKEN_TAG: token} if token else {}


def with_token(record: Record, aws_tags: list[dict[str, str]] | None) -> Record:
    """Reports the create token a resource was tagged with, so the engine can find it again."""
    token = tag_dict(aws_tags).get(TOKEN_TAG)
    if token is not None:
        record[TOKEN] = token
    return record


def tag_specifications(resource_type: str, tags: Any, token: str | None) -> list[dict[str, Any]]:
    """TagSpecifications for an EC2 create call: the user's tags plus the create token."""
    pairs = tag_list(normalize_tags(tags) or {})
    if token is not None:
        pairs.append({"Key": TOKEN_TAG, "Value": token})
    return [{"ResourceType": resource_type, "Tags": pairs}] if pairs else []


async def sync_tags(ec2: Any, resource_id: str, wanted: Any, current: Any) -> None:
    """Changes an EC2 resource's visible tags from `current` to `wanted` (hidden ones stay)."""
    new = normalize_tags(wanted) or {}
    old = normalize_tags(current) or {}
    removed = [{"Key": k} for k in old if k not in new]
    changed = [{"Key": k, "Value": v} for k, v in new.items() if old.get(k) != v]
    if removed:
        await ec2.delete_tags(Resources=[resource_id], Tags=removed)
    if changed:
        await ec2.create_tags(Resources=[resource_id], Tags=changed)


async def update_tags(
    cloud: Cloud,
    record: Record,
    current: Record,
    id_column: str,
    read_one: Callable[[Any, str, str], Awaitable[Record]],
) -> Record:
    """A mapper's update for an EC2 resource whose tags are all that changes in place: syncs
    the tags of the resource `current[id_column]`, then returns it as
    `read_one(ec2, id, region)` reads it."""
    resource_id = current[id_column]
    async with cloud.client("ec2", current["region"]) as ec2:
        await sync_tags(ec2, resource_id, record.get("tags"), current.get("tags"))
        return await read_one(ec2, resource_id, current["region"])
