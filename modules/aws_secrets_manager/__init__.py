"""aws_secrets_manager: Secrets Manager secrets.

The secret's value is write-only, as in IaSQL: a row's `value` is what the next commit puts
into the secret, and the commit's read-back empties it again, since the cloud's record never
holds one (GetSecretValue is never called). The column is `secret`: the audit log, the commit
journal and generated SQL leave it out.

A secret column is never compared with the cloud, so a pending value shows in `version_id`:
a trigger sets it to 'pending' when an UPDATE writes a value (NULL in a new row), which no
version id of the cloud is. The commit puts the value as a new version (PutSecretValue) and
the read-back writes the new version's id into the row. A `version_id` set by hand to an
earlier version moves the AWSCURRENT label back to it.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.spec import TOKEN, Cloud, Column, ModuleSpec, Record, Table

CURRENT = "AWSCURRENT"
# The row's version_id while a value written by an UPDATE waits for a commit (version ids are
# 32 to 64 characters long: none is this).
PENDING = "pending"


def _current_version(versions: dict[str, list[str]] | None) -> str | None:
    """The version that holds the AWSCURRENT label (None: a secret with no value yet)."""
    for version, stages in (versions or {}).items():
        if CURRENT in stages:
            return version
    return None


def _record(secret: dict[str, Any]) -> Record:
    """A ListSecrets entry or a DescribeSecret answer as a record. The value is never read:
    `None` tells the read-back to empty the row's value once it is applied."""
    versions = secret.get("SecretVersionsToStages") or secret.get("VersionIdsToStages")
    return {
        "name": secret["Name"],
        "description": secret.get("Description") or None,
        "value": None,
        "version_id": _current_version(versions),
    }


def _blank_as_null(value: Any) -> Any:
    """An empty description is none at all (UpdateSecret cannot remove one otherwise)."""
    return value or None


def _request_token(record: Record, purpose: str) -> str | None:
    """An idempotency token for a version (32 to 64 characters): the same for a retried step
    of the same commit, so a retry does not put the value twice."""
    token = record.get(TOKEN)
    if not token:
        return None
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iasql:{purpose}:{token}"))


class SecretMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("secretsmanager", region) as sm:
            pages = sm.get_paginator("list_secrets").paginate()
            return [_record(s) async for page in pages for s in page.get("SecretList", [])]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        names = sorted({str(w["name"]) for w in wanted if w.get("name")})
        async with cloud.client("secretsmanager", region) as sm:
            found = await gather_bounded(self._describe(sm, name) for name in names)
        return [r for r in found if r is not None]

    async def _describe(self, sm: Any, name: str) -> Record | None:
        try:
            answer = await sm.describe_secret(SecretId=name)
        except sm.exceptions.ResourceNotFoundException:
            return None
        if answer.get("DeletedDate"):  # scheduled for deletion: gone, as ListSecrets says
            return None
        return _record(answer)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        request: dict[str, Any] = {"Name": record["name"]}
        if record.get("description"):
            request["Description"] = record["description"]
        if record.get("value") is not None:
            request["SecretString"] = record["value"]
            token = _request_token(record, "create")
            if token:
                request["ClientRequestToken"] = token
        async with cloud.client("secretsmanager", record["region"]) as sm:
            try:
                await sm.create_secret(**request)
            except sm.exceptions.ResourceExistsException:
                # A retried step: the secret was made. The value goes in as the version the
                # first try made (the same token), which AWS ignores when it is there already.
                if record.get("value") is not None:
                    await self._put_value(sm, record, "create")
            found = await self._describe(sm, record["name"])
        return {**(found or {}), "value": None}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name = current["name"]
        async with cloud.client("secretsmanager", record["region"]) as sm:
            if _blank_as_null(record.get("description")) != _blank_as_null(
                current.get("description")
            ):
                await sm.update_secret(SecretId=name, Description=record.get("description") or "")
            if record.get("value") is not None:
                await self._put_value(sm, record, "put")
            elif record.get("version_id") not in (None, PENDING, current.get("version_id")):
                # The row names another version: it becomes the current one again.
                moved: dict[str, Any] = {"MoveToVersionId": record["version_id"]}
                if current.get("version_id"):
                    moved["RemoveFromVersionId"] = current["version_id"]
                await sm.update_secret_version_stage(SecretId=name, VersionStage=CURRENT, **moved)
            # A version_id emptied (or 'pending') without a value changes nothing: the
            # read-back restores it.
            found = await self._describe(sm, name)
        return {**(found or {}), "value": None}

    async def _put_value(self, sm: Any, record: Record, purpose: str) -> None:
        request: dict[str, Any] = {"SecretId": record["name"], "SecretString": record["value"]}
        token = _request_token(record, purpose)
        if token:
            request["ClientRequestToken"] = token
        await sm.put_secret_value(**request)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("secretsmanager", current["region"]) as sm:
            with contextlib.suppress(sm.exceptions.ResourceNotFoundException):
                await sm.delete_secret(SecretId=current["name"], ForceDeleteWithoutRecovery=True)


# A value written into a row is pending until a commit puts it: the row's version_id no longer
# names a version of the cloud, so the row differs from the cloud even where the secret has
# no version yet. The commit's read-back sets value to NULL, which this trigger leaves alone.
_PENDING_VALUE_DDL = (
    f"""CREATE OR REPLACE FUNCTION secret_pending_value() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            NEW.version_id := NULL;
        ELSE
            NEW.version_id := '{PENDING}';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER secret_pending_value BEFORE INSERT OR UPDATE ON secret
        FOR EACH ROW WHEN (NEW.value IS NOT NULL) EXECUTE FUNCTION secret_pending_value()""",
)

SECRET = Table(
    name="secret",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("description", "varchar", normalize=_blank_as_null),
        Column("value", "varchar", secret=True),
        Column("version_id", "varchar"),
        region_column(),
    ),
    mapper=SecretMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    extra_ddl=_PENDING_VALUE_DDL,
)

MODULE = ModuleSpec(
    name="aws_secrets_manager",
    version=VERSION,
    dependencies=("aws_account",),
    description="Secrets Manager secrets (the value is write-only)",
    tables=(SECRET,),
    teardown_sql=("DROP FUNCTION IF EXISTS secret_pending_value()",),
)
