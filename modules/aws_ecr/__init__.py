"""aws_ecr: ECR repositories (private, per region, and public, in us-east-1), the policies of
private repositories and the images of both.

- `repository`: image tag mutability and scan-on-push change in place; a new name or region is
  a new repository; a delete takes the repository's images with it (force).
- `repository_policy`: one per private repository, compared in the canonical policy form; its
  region is its repository's.
- `repository_image`: read from the repositories; a push makes an image, never an INSERT (which
  is refused at once). Deleting a row deletes that tag of the image (the image goes with its
  last tag).
- `public_repository`: ECR Public repositories, which have no settings of their own here.
"""

from __future__ import annotations

from typing import Any

from modules import VERSION
from modules._aws.arns import region_of
from modules._aws.checks import one_of
from modules._aws.policy import canonical_policy, load_policy, policy_text
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.errors import ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Ref, Table, foreign_key

# ECR Public has one endpoint, in us-east-1.
PUBLIC_REGION = "us-east-1"
MUTABILITIES = ("MUTABLE", "IMMUTABLE")
_NOT_FOUND = "RepositoryNotFoundException"


def repository_name_of(arn: str) -> str:
    """`arn:aws:ecr:<region>:<account>:repository/<name>` -> name (names may hold slashes)."""
    return arn.split(":repository/", 1)[1]


# --- repository --------------------------------------------------------------------------------


def _repository(answer: Record) -> Record:
    return {
        "repository_name": answer["repositoryName"],
        "repository_arn": answer.get("repositoryArn"),
        "registry_id": answer.get("registryId"),
        "repository_uri": answer.get("repositoryUri"),
        "created_at": answer.get("createdAt"),
        "image_tag_mutability": answer.get("imageTagMutability") or "MUTABLE",
        "scan_on_push": bool((answer.get("imageScanningConfiguration") or {}).get("scanOnPush")),
    }


async def _repositories(ecr: Any) -> list[Record]:
    pages = ecr.get_paginator("describe_repositories").paginate()
    return [r async for page in pages for r in page.get("repositories", [])]


async def _describe_repository(ecr: Any, name: str) -> Record | None:
    with ignoring(_NOT_FOUND):
        answer = await ecr.describe_repositories(repositoryNames=[name])
        return dict(answer["repositories"][0])
    return None


async def _described(ecr: Any, wanted: list[Record]) -> list[Record]:
    """The wanted repositories (by repository_name) that exist, as DescribeRepositories
    answers them (ECR's and ECR Public's alike)."""
    found = await gather_bounded(_describe_repository(ecr, w["repository_name"]) for w in wanted)
    return [r for r in found if r is not None]


class RepositoryMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ecr", region) as ecr:
            return [_repository(r) for r in await _repositories(ecr)]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        async with cloud.client("ecr", region) as ecr:
            return [_repository(r) for r in await _described(ecr, wanted)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["repository_name"]
        async with cloud.client("ecr", record["region"]) as ecr:
            try:
                await ecr.create_repository(
                    repositoryName=name,
                    imageTagMutability=record.get("image_tag_mutability") or "MUTABLE",
                    imageScanningConfiguration={"scanOnPush": bool(record.get("scan_on_push"))},
                )
            except ecr.exceptions.RepositoryAlreadyExistsException:
                # A retried commit whose create had run: make it what the row says.
                current = await _describe_repository(ecr, name)
                if current is None:
                    raise
                return await self._change(ecr, record, _repository(current))
            answer = await _describe_repository(ecr, name)
        if answer is None:
            raise CloudError(f"repository {name} was created but cannot be read back")
        return _repository(answer)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        async with cloud.client("ecr", current["region"]) as ecr:
            return await self._change(ecr, record, current)

    async def _change(self, ecr: Any, record: Record, current: Record) -> Record:
        name = current["repository_name"]
        mutability = record.get("image_tag_mutability") or "MUTABLE"
        if mutability != current.get("image_tag_mutability"):
            await ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability=mutability)
        scan = bool(record.get("scan_on_push"))
        if scan != bool(current.get("scan_on_push")):
            await ecr.put_image_scanning_configuration(
                repositoryName=name, imageScanningConfiguration={"scanOnPush": scan}
            )
        answer = await _describe_repository(ecr, name)
        if answer is None:
            raise CloudError(f"repository {name} does not exist")
        return _repository(answer)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ecr", current["region"]) as ecr:
            with ignoring(_NOT_FOUND):
                await ecr.delete_repository(repositoryName=current["repository_name"], force=True)


REPOSITORY = Table(
    name="repository",
    columns=(
        Column("repository_name", "varchar", nullable=False, replaces=True),
        Column("repository_arn", "varchar", cloud_assigned=True),
        Column("registry_id", "varchar", cloud_assigned=True),
        Column("repository_uri", "varchar", cloud_assigned=True),
        Column("created_at", "timestamptz", cloud_assigned=True),
        Column(
            "image_tag_mutability",
            "varchar",
            nullable=False,
            default="'MUTABLE'",
            check=one_of("image_tag_mutability", MUTABILITIES),
        ),
        Column("scan_on_push", "boolean", nullable=False, default="false"),
        region_column(),
    ),
    mapper=RepositoryMapper(),
    natural_key=("repository_name", "region"),
    cloud_id=("repository_name", "region"),
    # Other tables (a policy, an image, an ECS container definition) name a repository by
    # its ARN in records.
    unique=(("repository_name", "region"), ("repository_arn",)),
)

# --- public_repository ---------------------------------------------------------------------------


def _public_repository(answer: Record) -> Record:
    return {
        "repository_name": answer["repositoryName"],
        "repository_arn": answer.get("repositoryArn"),
        "registry_id": answer.get("registryId"),
        "repository_uri": answer.get("repositoryUri"),
        "created_at": answer.get("createdAt"),
    }


class PublicRepositoryMapper:
    """ECR Public repositories: made and deleted; no setting of theirs is a column (IaSQL's
    table holds only what the cloud assigns)."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ecr-public", PUBLIC_REGION) as ecr:
            return [_public_repository(r) for r in await _repositories(ecr)]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        async with cloud.client("ecr-public", PUBLIC_REGION) as ecr:
            return [_public_repository(r) for r in await _described(ecr, wanted)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["repository_name"]
        async with cloud.client("ecr-public", PUBLIC_REGION) as ecr:
            with ignoring("RepositoryAlreadyExistsException"):  # a retried commit's create
                await ecr.create_repository(repositoryName=name)
            answer = await _describe_repository(ecr, name)
        if answer is None:
            raise CloudError(f"public repository {name} was created but cannot be read back")
        return _public_repository(answer)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # the name is the only column that is not the cloud's, and it replaces

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ecr-public", PUBLIC_REGION) as ecr:
            with ignoring(_NOT_FOUND):
                await ecr.delete_repository(repositoryName=current["repository_name"], force=True)


PUBLIC_REPOSITORY = Table(
    name="public_repository",
    columns=(
        Column("repository_name", "varchar", nullable=False, replaces=True),
        Column("repository_arn", "varchar", cloud_assigned=True),
        Column("registry_id", "varchar", cloud_assigned=True),
        Column("repository_uri", "varchar", cloud_assigned=True),
        Column("created_at", "timestamptz", cloud_assigned=True),
    ),
    mapper=PublicRepositoryMapper(),
    natural_key=("repository_name",),
    cloud_id=("repository_name",),
    primary_key=("repository_name",),
    regional=False,
)

# --- repository_policy ---------------------------------------------------------------------------


class RepositoryPolicyMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ecr", region) as ecr:
            repositories = await _repositories(ecr)
            found = await gather_bounded(
                self._read_one(ecr, r["repositoryArn"]) for r in repositories
            )
        return [record for record in found if record is not None]

    async def _read_one(self, ecr: Any, arn: str) -> Record | None:
        with ignoring("RepositoryPolicyNotFoundException", _NOT_FOUND):
            answer = await ecr.get_repository_policy(repositoryName=repository_name_of(arn))
            return {
                "repository_id": arn,
                "registry_id": answer.get("registryId"),
                "policy": load_policy(answer.get("policyText")),
                "region": region_of(arn),
            }
        return None

    async def create(self, cloud: Cloud, record: Record) -> Record:
        arn = record["repository_id"]
        if record.get("policy") is None:
            raise CloudError(
                f"the policy of repository {repository_name_of(arn)} is NULL: a repository"
                " policy needs a document (DELETE the row to have none)"
            )
        policy = record["policy"]
        if isinstance(policy, str):
            policy = load_policy(policy)
        async with cloud.client("ecr", region_of(arn)) as ecr:
            await ecr.set_repository_policy(
                repositoryName=repository_name_of(arn), policyText=policy_text(policy)
            )
            found = await self._read_one(ecr, arn)
        if found is None:
            raise CloudError(f"the policy of repository {repository_name_of(arn)} did not stay")
        return found

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await self.create(cloud, record)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        arn = current["repository_id"]
        async with cloud.client("ecr", region_of(arn)) as ecr:
            # Gone already, or with its repository.
            with ignoring("RepositoryPolicyNotFoundException", _NOT_FOUND):
                await ecr.delete_repository_policy(repositoryName=repository_name_of(arn))


# A policy is in its repository's region, whatever the row says (IaSQL's foreign key on
# (repository_id, region) refuses any other).
_POLICY_REGION = (
    """CREATE OR REPLACE FUNCTION repository_policy_region() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.region := COALESCE(
            (SELECT region FROM repository WHERE id = NEW.repository_id), NEW.region);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER repository_policy_region BEFORE INSERT OR UPDATE ON repository_policy
        FOR EACH ROW EXECUTE FUNCTION repository_policy_region()""",
)

REPOSITORY_POLICY = Table(
    name="repository_policy",
    columns=(
        Column("registry_id", "varchar", cloud_assigned=True),
        Column("policy", "json", normalize=canonical_policy),
        region_column(),
        foreign_key("repository_id", "repository", "repository_arn", on_delete="CASCADE"),
    ),
    mapper=RepositoryPolicyMapper(),
    # One policy per repository: the repository names it.
    natural_key=("repository_id",),
    cloud_id=("repository_id",),
    extra_ddl=_POLICY_REGION,
)

# --- repository_image ----------------------------------------------------------------------------

_BYTES_PER_MB = 1_000_000


def _image_records(detail: Record, repository: str, region: str | None) -> list[Record]:
    """One record per tag of an image (an untagged image has no row, as in IaSQL). `region` is
    None for an image of a public repository; `repository` is the private repository's ARN or
    the public repository's name. The image id is IaSQL's: digest|tag|private|name|region, or
    digest|tag|public|name."""
    digest, name = detail["imageDigest"], detail["repositoryName"]
    size = detail.get("imageSizeInBytes")
    records = []
    for tag in detail.get("imageTags") or []:
        where = f"private|{name}|{region}" if region else f"public|{name}"
        records.append(
            {
                "image_id": f"{digest}|{tag}|{where}",
                "image_digest": digest,
                "image_tag": tag,
                "registry_id": detail.get("registryId"),
                "pushed_at": detail.get("imagePushedAt"),
                "size_in_mb": None if size is None else round(size / _BYTES_PER_MB),
                "private_repository_id": repository if region else None,
                "private_repository_region": region,
                "public_repository": None if region else repository,
            }
        )
    return records


async def _images(ecr: Any, name: str) -> list[Record]:
    with ignoring(_NOT_FOUND):  # gone since it was listed
        pages = ecr.get_paginator("describe_images").paginate(repositoryName=name)
        return [dict(d) async for page in pages for d in page.get("imageDetails", [])]
    return []


class RepositoryImageMapper:
    """Images are read repository by repository (the public ones with us-east-1, where ECR
    Public is), and only deleted: a push makes them."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        records: list[Record] = []
        async with cloud.client("ecr", region) as ecr:
            repositories = await _repositories(ecr)
            found = await gather_bounded(_images(ecr, r["repositoryName"]) for r in repositories)
        for repository, details in zip(repositories, found, strict=True):
            for detail in details:
                records += _image_records(detail, repository["repositoryArn"], region)
        if region == PUBLIC_REGION:
            async with cloud.client("ecr-public", PUBLIC_REGION) as public:
                names = [r["repositoryName"] for r in await _repositories(public)]
                found = await gather_bounded(_images(public, n) for n in names)
            for name, details in zip(names, found, strict=True):
                for detail in details:
                    records += _image_records(detail, name, None)
        return records

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(
            f"image {record.get('image_tag')} ({record.get('image_digest')}) is not in its"
            " repository: an image is made by pushing it (docker push), not by a row"
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        raise CloudError(
            f"image {current['image_tag']} ({current['image_digest']}) cannot change: push the"
            " image under the new tag, then DELETE this row"
        )

    async def delete(self, cloud: Cloud, current: Record) -> None:
        # By its tag alone: that untags the image, and deletes it with its last tag.
        image_ids = [{"imageTag": current["image_tag"]}]
        if current.get("private_repository_id"):
            arn = current["private_repository_id"]
            service, region, name = "ecr", region_of(arn), repository_name_of(arn)
        elif current.get("public_repository"):
            service, region, name = "ecr-public", PUBLIC_REGION, current["public_repository"]
        else:
            return  # its repository is gone, and the image with it
        async with cloud.client(service, region) as ecr:
            with ignoring(_NOT_FOUND):
                answer = await ecr.batch_delete_image(repositoryName=name, imageIds=image_ids)
                failures = [
                    f for f in answer.get("failures", []) if f.get("failureCode") != "ImageNotFound"
                ]
                if failures:
                    reasons = "; ".join(
                        f"{f.get('failureCode')}: {f.get('failureReason')}" for f in failures
                    )
                    raise CloudError(f"image {current['image_tag']} of {name}: {reasons}")


# A user's INSERT or UPDATE is refused at once, saying what to do instead. The engine's own
# writes (import, sync, rollback) run as the table's owner and pass; a DELETE deletes the image.
_IMAGE_WRITES = (
    """CREATE OR REPLACE FUNCTION repository_image_writes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN NEW;
        END IF;
        IF TG_OP = 'INSERT' THEN
            RAISE EXCEPTION 'a repository image cannot be made by INSERT: push it to its'
                ' repository (docker push); its row comes with the next sync'
                USING ERRCODE = '0A000',
                HINT = 'docker push <repository_uri>:<tag>, then SELECT * FROM iasql_sync()';
        END IF;
        RAISE EXCEPTION 'repository image % cannot change', OLD.image_id
            USING ERRCODE = '0A000',
            HINT = 'push the image under the new tag or to the other repository, then DELETE'
                ' this row';
    END $$""",
    """CREATE TRIGGER repository_image_writes BEFORE INSERT OR UPDATE ON repository_image
        FOR EACH ROW EXECUTE FUNCTION repository_image_writes()""",
)

REPOSITORY_IMAGE = Table(
    name="repository_image",
    columns=(
        Column("image_id", "varchar", nullable=False),
        Column("image_digest", "varchar", nullable=False),
        Column("image_tag", "varchar", nullable=False),
        Column("registry_id", "varchar", cloud_assigned=True),
        Column("pushed_at", "timestamptz", cloud_assigned=True),
        Column("size_in_mb", "integer", cloud_assigned=True),
        Column(
            "private_repository_region",
            "varchar",
            ref=Ref("aws_regions", key="region"),
            replaces=True,
        ),
        foreign_key(
            "private_repository_id",
            "repository",
            "repository_arn",
            on_delete="CASCADE",
            nullable=True,
        ),
        Column(
            "public_repository",
            "varchar",
            ref=Ref("public_repository", key="repository_name", on_delete="CASCADE"),
            replaces=True,
        ),
    ),
    mapper=RepositoryImageMapper(),
    # The image id names the digest, the tag and the repository (and its region).
    natural_key=("image_id",),
    cloud_id=("image_id",),
    # No region column (as in IaSQL): read region by region; private_repository_region says it.
    regional=True,
    extra_ddl=(
        *_IMAGE_WRITES,
        """ALTER TABLE repository_image ADD CONSTRAINT "CHK_repository_image_one_repository"
            CHECK ((private_repository_id IS NULL) <> (public_repository IS NULL))""",
    ),
)

MODULE = ModuleSpec(
    name="aws_ecr",
    version=VERSION,
    dependencies=("aws_account",),
    description="ECR repositories (private and public), their policies and images",
    tables=(REPOSITORY, PUBLIC_REPOSITORY, REPOSITORY_POLICY, REPOSITORY_IMAGE),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS repository_image_writes()",
        "DROP FUNCTION IF EXISTS repository_policy_region()",
    ),
)
