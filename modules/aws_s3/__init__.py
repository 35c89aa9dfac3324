"""aws_s3: S3 buckets, their public access blocks, website configurations and objects."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.attributes import AttributeMap
from modules._aws.policy import canonical_policy, policy_text
from modules._aws.region import region_column
from modules.aws_s3.objects import BUCKET_OBJECT, S3_UPLOAD_OBJECT, WRITES_TEARDOWN
from modules.errors import error_code, ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Ref, Table

US_EAST_1 = "us-east-1"  # the one region whose buckets have no LocationConstraint


# Canonical forms, for comparing what a user wrote with what AWS hands back.


def canonical_tags(value: Any) -> dict[str, str] | None:
    """Tags as a key-sorted {key: value} object; no tags is None, whether NULL or {}."""
    if isinstance(value, str):
        value = json.loads(value)
    if not value:
        return None
    return {str(k): str(v) for k, v in sorted(value.items())}


# Small helpers for the S3 API.


async def _get(call: Awaitable[dict[str, Any]], *absent: str) -> dict[str, Any] | None:
    """The answer of a read, None when one of the `absent` errors says there is nothing."""
    try:
        return await call
    except ClientError as error:
        if error_code(error) in absent:
            return None
        raise


def _region_of(location: str | None) -> str:
    """GetBucketLocation's answer as a region: us-east-1 is None, old Irish buckets say EU."""
    if not location:
        return US_EAST_1
    return "eu-west-1" if location == "EU" else location


def _utc(value: dt.datetime) -> dt.datetime:
    """The column is a `timestamp` (no time zone) holding UTC."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


async def _bucket_region(s3: Any, name: str) -> str:
    answer = await s3.get_bucket_location(Bucket=name)
    return _region_of(answer.get("LocationConstraint"))


async def _list_buckets(s3: Any, **filters: str) -> list[dict[str, Any]]:
    return [
        b
        async for page in s3.get_paginator("list_buckets").paginate(**filters)
        for b in page["Buckets"]
    ]


# bucket


async def _bucket_settings(s3: Any, name: str) -> Record:
    policy = await _get(s3.get_bucket_policy(Bucket=name), "NoSuchBucketPolicy")
    tagging = await _get(s3.get_bucket_tagging(Bucket=name), "NoSuchTagSet")
    tags = {t["Key"]: t["Value"] for t in tagging["TagSet"]} if tagging else {}
    return {"policy": json.loads(policy["Policy"]) if policy else None, "tags": tags or None}


async def _created_at(s3: Any, name: str) -> dt.datetime | None:
    """Only ListBuckets tells a creation date. A bucket just created may not be listed yet;
    the next read fills it in."""
    found = [b for b in await _list_buckets(s3, Prefix=name) if b["Name"] == name]
    return _utc(found[0]["CreationDate"]) if found else None


async def _bucket_record(s3: Any, name: str, region: str, created: dt.datetime | None) -> Record:
    return {
        "name": name,
        "region": region,
        "created_at": created,
        **await _bucket_settings(s3, name),
    }


async def _apply_settings(s3: Any, record: Record, current: Record) -> None:
    """Puts or removes the policy and the tags where `record` differs from `current`."""
    name, policy, tags = record["name"], record.get("policy"), canonical_tags(record.get("tags"))
    if canonical_policy(policy) != canonical_policy(current.get("policy")):
        if policy is None:
            await s3.delete_bucket_policy(Bucket=name)
        else:
            await s3.put_bucket_policy(Bucket=name, Policy=policy_text(policy))
    if tags != canonical_tags(current.get("tags")):
        if tags is None:
            await s3.delete_bucket_tagging(Bucket=name)
        else:
            tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
            await s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_set})


class BucketMapper:
    """Bucket names are global but each bucket lives in one region, where it is read."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        region = region or US_EAST_1
        async with cloud.client("s3", region) as s3:
            listed = await _list_buckets(s3, BucketRegion=region)
            found = await asyncio.gather(*(self._read_listed(s3, b, region) for b in listed))
        return [r for r in found if r is not None]

    async def _read_listed(self, s3: Any, listed: dict[str, Any], region: str) -> Record | None:
        with ignoring("NoSuchBucket"):  # deleted since it was listed
            return await _bucket_record(s3, listed["Name"], region, _utc(listed["CreationDate"]))
        return None

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["name"], record["region"]
        async with cloud.client("s3", region) as s3:
            config = {"LocationConstraint": region}
            extra = {} if region == US_EAST_1 else {"CreateBucketConfiguration": config}
            # Ours already (a retried create): us-east-1 answers 200, the others this error.
            with ignoring("BucketAlreadyOwnedByYou"):
                await s3.create_bucket(Bucket=name, **extra)
            actual = await _bucket_region(s3, name)
            if actual != region:
                raise CloudError(f"bucket {name} already exists in {actual}, not in {region}")
            await _apply_settings(s3, record, await _bucket_settings(s3, name))
            return await _bucket_record(s3, name, region, await _created_at(s3, name))

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["name"], current["region"]
        async with cloud.client("s3", region) as s3:
            await _apply_settings(s3, record, current)
            return await _bucket_record(s3, name, region, current.get("created_at"))

    async def delete(self, cloud: Cloud, current: Record) -> None:
        # A bucket with objects answers BucketNotEmpty, which is the user's to resolve.
        async with cloud.client("s3", current["region"]) as s3:
            with ignoring("NoSuchBucket"):
                await s3.delete_bucket(Bucket=current["name"])


# public_access_block, bucket_website: at most one per bucket, named by the bucket


@contextlib.asynccontextmanager
async def _bucket_client(cloud: Cloud, bucket: str) -> AsyncIterator[Any]:
    """A client in the bucket's own region: AWS redirects calls made elsewhere."""
    async with cloud.client("s3", None) as s3:
        region = await _bucket_region(s3, bucket)
    async with cloud.client("s3", region) as s3:
        yield s3


async def _all_buckets(cloud: Cloud) -> list[tuple[str, str]]:
    """(name, region) of every bucket of the account."""
    async with cloud.client("s3", None) as s3:
        names = [b["Name"] for b in await _list_buckets(s3)]
        answers = await asyncio.gather(
            *(_get(s3.get_bucket_location(Bucket=n), "NoSuchBucket") for n in names)
        )
    return [
        (n, _region_of(a.get("LocationConstraint")))
        for n, a in zip(names, answers, strict=True)
        if a
    ]


class BucketConfigMapper:
    """A setting a bucket has at most one of. Its table has no region column, so a read covers
    the buckets of every region, each asked in its own region."""

    async def fetch(self, s3: Any, bucket: str) -> Record | None:
        raise NotImplementedError

    async def put(self, s3: Any, record: Record) -> None:
        raise NotImplementedError

    async def remove(self, s3: Any, bucket: str) -> None:
        raise NotImplementedError

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        found = await asyncio.gather(
            *(self._read_bucket(cloud, *b) for b in await _all_buckets(cloud))
        )
        return [r for r in found if r is not None]

    async def _read_bucket(self, cloud: Cloud, bucket: str, region: str) -> Record | None:
        async with cloud.client("s3", region) as s3:
            with ignoring("NoSuchBucket"):  # deleted since it was listed
                return await self.fetch(s3, bucket)
        return None

    async def create(self, cloud: Cloud, record: Record) -> Record:
        # A put replaces the whole setting, so a create is idempotent and doubles as update.
        async with _bucket_client(cloud, record["bucket_name"]) as s3:
            await self.put(s3, record)
            found = await self.fetch(s3, record["bucket_name"])
        if found is None:
            raise CloudError(f"the setting of bucket {record['bucket_name']} did not persist")
        return found

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await self.create(cloud, record)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        with ignoring("NoSuchBucket"):  # gone with its bucket
            async with _bucket_client(cloud, current["bucket_name"]) as s3:
                await self.remove(s3, current["bucket_name"])


# The PublicAccessBlockConfiguration keys (absent: false).
_BLOCKS = AttributeMap(
    "block_public_acls",
    "ignore_public_acls",
    "block_public_policy",
    "restrict_public_buckets",
    to_column=bool,
)


class PublicAccessBlockMapper(BucketConfigMapper):
    async def fetch(self, s3: Any, bucket: str) -> Record | None:
        answer = await _get(
            s3.get_public_access_block(Bucket=bucket), "NoSuchPublicAccessBlockConfiguration"
        )
        if answer is None:
            return None
        config = answer["PublicAccessBlockConfiguration"]
        return {"bucket_name": bucket, **_BLOCKS.record(config)}

    async def put(self, s3: Any, record: Record) -> None:
        # An unset flag takes the column default, true: the safe side.
        config = _BLOCKS.attributes({c: record.get(c) is not False for c in _BLOCKS.columns})
        await s3.put_public_access_block(
            Bucket=record["bucket_name"], PublicAccessBlockConfiguration=config
        )

    async def remove(self, s3: Any, bucket: str) -> None:
        with ignoring("NoSuchPublicAccessBlockConfiguration"):
            await s3.delete_public_access_block(Bucket=bucket)


class WebsiteMapper(BucketConfigMapper):
    async def fetch(self, s3: Any, bucket: str) -> Record | None:
        answer = await _get(s3.get_bucket_website(Bucket=bucket), "NoSuchWebsiteConfiguration")
        # A redirect-everything website has no index document: not one this table describes.
        if answer is None or "IndexDocument" not in answer:
            return None
        return {
            "bucket_name": bucket,
            "index_document": answer["IndexDocument"]["Suffix"],
            "error_document": answer.get("ErrorDocument", {}).get("Key"),
        }

    async def put(self, s3: Any, record: Record) -> None:
        config: dict[str, Any] = {"IndexDocument": {"Suffix": record["index_document"]}}
        if record.get("error_document") is not None:
            config["ErrorDocument"] = {"Key": record["error_document"]}
        await s3.put_bucket_website(Bucket=record["bucket_name"], WebsiteConfiguration=config)

    async def remove(self, s3: Any, bucket: str) -> None:
        await s3.delete_bucket_website(Bucket=bucket)


def _bucket_name_column() -> Column:
    # A bucket's name is its cloud id, so records hold the key itself (Ref.cloud is None).
    return Column(
        "bucket_name", "varchar", nullable=False, ref=Ref("bucket", key="name", on_delete="CASCADE")
    )


BUCKET = Table(
    name="bucket",
    columns=(
        Column("name", "varchar", nullable=False),
        Column("policy", "json", normalize=canonical_policy),
        Column("created_at", "timestamp", cloud_assigned=True),
        Column(
            "tags",
            "json",
            normalize=canonical_tags,
            check="tags IS NULL OR json_typeof(tags) = 'object'",
        ),
        region_column(),
    ),
    mapper=BucketMapper(),
    natural_key=("name",),
    cloud_id=("name",),
    primary_key=("name",),
)

PUBLIC_ACCESS_BLOCK = Table(
    name="public_access_block",
    columns=(
        *(Column(c, "boolean", nullable=False, default="true") for c in _BLOCKS.columns),
        _bucket_name_column(),
    ),
    mapper=PublicAccessBlockMapper(),
    natural_key=("bucket_name",),
    cloud_id=("bucket_name",),
    primary_key=("bucket_name",),
    regional=False,
)

BUCKET_WEBSITE = Table(
    name="bucket_website",
    columns=(
        Column("index_document", "varchar", nullable=False),
        Column("error_document", "varchar"),
        _bucket_name_column(),
    ),
    mapper=WebsiteMapper(),
    natural_key=("bucket_name",),
    cloud_id=("bucket_name",),
    primary_key=("bucket_name",),
    regional=False,
)

MODULE = ModuleSpec(
    name="aws_s3",
    version=VERSION,
    dependencies=("aws_account",),
    description="S3 buckets, their public access blocks, website configurations and objects",
    tables=(BUCKET, PUBLIC_ACCESS_BLOCK, BUCKET_WEBSITE, BUCKET_OBJECT),
    functions=(S3_UPLOAD_OBJECT,),
    teardown_sql=(WRITES_TEARDOWN,),
)
