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


def tag_value(value: Any) -> str:
    """A tag's value as AWS keeps it: text. A JSON true, 1 or 1.5 is the text it is written as
    in JSON ("true", "1", "1.5", not Python's "True"); null is ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def normalize_tags(value: Any) -> Tags | None:
    """Tags as a sorted dict of strings without the hidden ones; no tags is None, as AWS can't
    tell {} from no tags at all."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    tags = {str(k): tag_value(v) for k, v in value.items() if not _hidden(str(k))}
    return dict(sorted(tags.items())) or None


def tags_column() -> Column:
    """The `tags` column of a resource: a JSON object, compared as `normalize_tags` does."""
    return Column("tags", "json", normalize=normalize_tags)


def tags_as_text(table: str) -> tuple[str, str]:
    """DDL for a table's `extra_ddl`: a trigger that writes the tag values of a row as the text
    AWS keeps (`{"public": true}` is stored as `{"public": "true"}`), so the row reads as the
    cloud does after a commit. Tags whose values are all strings are left as written. Its
    function, `<table>_tags_as_text()`, goes in the module's `teardown_sql` (see
    `tags_as_text_teardown`)."""
    function = f"{table}_tags_as_text"
    return (
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF json_typeof(NEW.tags) = 'object' AND EXISTS (
                    SELECT 1 FROM json_each(NEW.tags) t WHERE json_typeof(t.value) <> 'string')
            THEN
                NEW.tags := (SELECT json_object_agg(t.key, CASE json_typeof(t.value)
                        WHEN 'string' THEN t.value
                        WHEN 'null' THEN to_json(''::text)
                        ELSE to_json(t.value::text) END)
                    FROM json_each(NEW.tags) t);
            END IF;
            RETURN NEW;
        END $$""",
        f"""CREATE TRIGGER {function} BEFORE INSERT OR UPDATE OF tags ON {table}
            FOR EACH ROW EXECUTE FUNCTION {function}()""",
    )


def tags_as_text_teardown(table: str) -> str:
    """The teardown_sql statement for `tags_as_text(table)`."""
    return f"DROP FUNCTION IF EXISTS {table}_tags_as_text()"


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
