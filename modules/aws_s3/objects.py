"""aws_s3.bucket_object: the objects of the account's buckets, as IaSQL has them.

Rows come from the cloud: an object is uploaded with `s3_upload_object(bucket, key, content,
content_type)`, IaSQL's RPC, whose sync adds its row; a user's INSERT is refused at once,
naming it. Deleting a row deletes the object. An object is named by its bucket and key, which
never change (a refused UPDATE says to upload under the new key and delete the old row);
`e_tag` is the cloud's, and a user's change of it is restored by the commit."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import (
    ArgumentError,
    Cloud,
    CloudError,
    Column,
    ModuleFunction,
    Record,
    Ref,
    Table,
)

_US_EAST_1 = "us-east-1"  # the one region whose buckets have no LocationConstraint
_SIGNATURE = "s3_upload_object(name, object_key, content, content_type)"
_HOW_TO_MAKE_ONE = f"an S3 object cannot be made from a row: upload it with {_SIGNATURE}"
# What a HEAD of a missing object or bucket answers (HEAD has no body, so no error code).
_ABSENT = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
_WAIT = {"Delay": 1, "MaxAttempts": 60}


def _object_record(bucket: str, region: str, key: str, e_tag: str | None) -> Record:
    return {"key": key, "bucket_name": bucket, "region": region, "e_tag": e_tag}


async def _bucket_objects(s3: Any, bucket: str, region: str) -> list[Record]:
    """Every object of the bucket (none when it went since it was listed)."""
    with ignoring("NoSuchBucket"):
        return [
            _object_record(bucket, region, o["Key"], o.get("ETag"))
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
    return []


async def _head(s3: Any, bucket: str, key: str, region: str) -> Record | None:
    try:
        answer = await s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in _ABSENT:
            return None
        raise
    return _object_record(bucket, region, key, answer.get("ETag"))


class BucketObjectMapper:
    """Objects are read bucket by bucket in the buckets' own regions, and only deleted: S3
    makes them from uploaded content, which a row does not hold (IaSQL's mapper likewise
    drops an inserted row and restores an updated one)."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        region = region or _US_EAST_1
        async with cloud.client("s3", region) as s3:
            buckets = [
                b["Name"]
                async for page in s3.get_paginator("list_buckets").paginate(BucketRegion=region)
                for b in page["Buckets"]
            ]
            found = await gather_bounded(_bucket_objects(s3, b, region) for b in buckets)
        return [record for records in found for record in records]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        region = region or _US_EAST_1
        async with cloud.client("s3", region) as s3:
            found = await gather_bounded(
                _head(s3, w["bucket_name"], w["key"], region) for w in wanted
            )
        return [record for record in found if record is not None]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(
            f"object {record.get('key')} of bucket {record.get('bucket_name')} does not exist;"
            f" {_HOW_TO_MAKE_ONE}"
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # The compared columns are the object's name and region: a change of them is a new
        # object (which create() refuses), never an update.
        raise CloudError(
            f"object {current['key']} of bucket {current['bucket_name']} cannot change;"
            f" {_HOW_TO_MAKE_ONE}"
        )

    async def delete(self, cloud: Cloud, current: Record) -> None:
        bucket, key = current["bucket_name"], current["key"]
        async with cloud.client("s3", current["region"]) as s3:
            with ignoring("NoSuchBucket"):  # gone with its bucket
                await s3.delete_object(Bucket=bucket, Key=key)
                waiter = s3.get_waiter("object_not_exists")
                await waiter.wait(Bucket=bucket, Key=key, WaiterConfig=_WAIT)


# A user's INSERT, or a change of an object's key, bucket or region, is refused at once with
# what to write instead. The engine's own writes (import, sync, rollback) run as the table's
# owner and pass. A change of e_tag is let through: the commit restores it, as IaSQL's does.
_WRITES_TRIGGER = (
    """CREATE OR REPLACE FUNCTION bucket_object_writes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN NEW;
        END IF;
        IF TG_OP = 'INSERT' THEN
            RAISE EXCEPTION 'an S3 object cannot be made by INSERT: S3 makes it from uploaded'
                ' content' USING ERRCODE = '0A000',
                HINT = format('SELECT * FROM s3_upload_object(%L, %L, content, content_type)'
                    ' uploads it and adds its row', NEW.bucket_name, NEW.key);
        END IF;
        IF (OLD.key, OLD.bucket_name, OLD.region)
            IS DISTINCT FROM (NEW.key, NEW.bucket_name, NEW.region)
        THEN
            RAISE EXCEPTION 'object % of bucket % cannot be renamed or moved', OLD.key,
                OLD.bucket_name USING ERRCODE = '0A000',
                HINT = 'upload it under the new name with s3_upload_object(name, object_key,'
                    ' content, content_type), then DELETE this row';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER bucket_object_writes BEFORE INSERT OR UPDATE ON bucket_object
        FOR EACH ROW EXECUTE FUNCTION bucket_object_writes()""",
)

WRITES_TEARDOWN = "DROP FUNCTION IF EXISTS bucket_object_writes()"

BUCKET_OBJECT = Table(
    name="bucket_object",
    columns=(
        Column("key", "varchar", nullable=False),
        # IaSQL's reference to the bucket, by its name (a natural value, also the bucket's
        # cloud id). NO ACTION, as IaSQL's: a bucket row goes only after its object rows, and
        # deleting both in one transaction deletes the objects before the bucket.
        Column("bucket_name", "varchar", nullable=False, ref=Ref("bucket", key="name")),
        region_column(),
        Column("e_tag", "varchar", cloud_assigned=True),
    ),
    mapper=BucketObjectMapper(),
    # Bucket names are global, and a key names one object in its bucket.
    natural_key=("bucket_name", "key"),
    cloud_id=("bucket_name", "key"),
    extra_ddl=_WRITES_TRIGGER,
)


# --- s3_upload_object -------------------------------------------------------------------------


async def _bucket_region(cloud: Cloud, bucket: str) -> str:
    async with cloud.client("s3", None) as s3:
        try:
            answer = await s3.get_bucket_location(Bucket=bucket)
        except ClientError as error:
            if error_code(error) == "NoSuchBucket":
                raise CloudError(f"bucket {bucket} does not exist") from None
            raise
    location = answer.get("LocationConstraint")
    if not location:
        return _US_EAST_1
    return "eu-west-1" if location == "EU" else str(location)


async def s3_upload_object(
    cloud: Cloud,
    name: str,
    object_key: str,
    content: str | None,
    content_type: str | None = None,
) -> list[Record]:
    """Puts `content` (text) into the bucket under the key, in the bucket's own region, and
    waits until S3 has it. The object's row comes with the sync that follows."""
    if not name or not object_key or content is None:
        raise ArgumentError(f"name the bucket and the key, and give the content: {_SIGNATURE}")
    region = await _bucket_region(cloud, name)
    extra = {"ContentType": content_type} if content_type else {}
    async with cloud.client("s3", region) as s3:
        await s3.put_object(Bucket=name, Key=object_key, Body=content.encode(), **extra)
        waiter = s3.get_waiter("object_exists")
        await waiter.wait(Bucket=name, Key=object_key, WaiterConfig=_WAIT)
    return [
        {
            "bucket": name,
            "key": object_key,
            "status": "OK",
            "response_message": "Bucket content has been updated",
        }
    ]


# IaSQL's name, argument order and result columns, so that SQL written for it runs unchanged.
# (A parameter can't share a name with a result column: IaSQL's `key` is `object_key` here.)
S3_UPLOAD_OBJECT = ModuleFunction(
    name="s3_upload_object",
    columns=(
        ("bucket", "varchar"),
        ("key", "varchar"),
        ("status", "varchar"),
        ("response_message", "varchar"),
    ),
    params=(
        ("name", "text"),
        ("object_key", "text"),
        ("content", "text"),
        ("content_type", "text"),
    ),
    run=s3_upload_object,
    description="Uploads text content as an object of a bucket (in the bucket's region); its"
    " bucket_object row comes with the sync that follows",
    optional=("content_type",),
    sample="SELECT * FROM s3_upload_object('my-bucket', 'config.json',"
    " '{\"name\": \"iasql\"}', 'application/json')",
)
