"""aws_codedeploy: CodeDeploy applications, their deployment groups, the deployments made
through them, and IaSQL's `start_deploy` RPC.

As in IaSQL: an application is replaced when its name or compute platform changes (AWS's
UpdateApplication can rename one, but IaSQL deletes and creates it, and so does this); a
deployment group changes in place (UpdateDeploymentGroup) for its deployment configuration,
deployment style, EC2 tag filters and service role, and is replaced when its name or
application changes. Deployments are AWS's records: they are made by
`start_deploy(application_name, deployment_group_name, revision, region)`, which waits until
the deployment ends; a user's INSERT is refused naming it, an UPDATE is restored and a DELETE
keeps the deployment (its row comes back, as AWS keeps it).

Applications whose compute platform, and groups whose deployment configuration, are not in
IaSQL's lists (ECS, custom configurations) are left out, as the columns could not hold them."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from modules import VERSION
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules._aws.tags import tag_list, token_tag, with_token
from modules.aws_iam import role_arn, role_name_of
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import (
    TOKEN,
    ArgumentError,
    Cloud,
    CloudError,
    Column,
    ModuleFunction,
    ModuleSpec,
    Record,
    Ref,
    Table,
    foreign_key,
)

# IaSQL's codedeploy_application_compute_platform_enum,
# codedeploy_deployment_group_deployment_config_name_enum and codedeploy_deployment_status_enum
# (held here as varchar with a CHECK).
COMPUTE_PLATFORMS = ("Lambda", "Server")
DEPLOYMENT_CONFIGS = (
    "CodeDeployDefault.AllAtOnce",
    "CodeDeployDefault.HalfAtATime",
    "CodeDeployDefault.OneAtATime",
    "CodeDeployDefault.LambdaCanary10Percent5Minutes",
    "CodeDeployDefault.LambdaCanary10Percent10Minutes",
    "CodeDeployDefault.LambdaCanary10Percent15Minutes",
    "CodeDeployDefault.LambdaCanary10Percent30Minutes",
    "CodeDeployDefault.LambdaLinear10Percent1Minute",
    "CodeDeployDefault.LambdaLinear10Percent2Minutes",
    "CodeDeployDefault.LambdaLinear10Percent3Minutes",
    "CodeDeployDefault.LambdaLinear10Percent10Minutes",
    "CodeDeployDefault.LambdaAllAtOnce",
)
DEPLOYMENT_STATUSES = (
    "Baking",
    "Created",
    "Failed",
    "InProgress",
    "Queued",
    "Ready",
    "Stopped",
    "Succeeded",
)

# The deployment style AWS gives a group made without one, per compute platform.
SERVER_STYLE = {"deploymentOption": "WITHOUT_TRAFFIC_CONTROL", "deploymentType": "IN_PLACE"}
LAMBDA_STYLE = {"deploymentOption": "WITH_TRAFFIC_CONTROL", "deploymentType": "BLUE_GREEN"}

_SIGNATURE = "start_deploy(application_name, deployment_group_name, revision json, region)"
_HOW_TO_MAKE_ONE = f"a CodeDeploy deployment cannot be made by INSERT: start one with {_SIGNATURE}"
# How long start_deploy waits for a deployment to end: IaSQL's 20 minutes.
_DEPLOY_WAIT = {"Delay": 5, "MaxAttempts": 240}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def normalize_style(value: Any) -> Any:
    """A deployment style as compared: none (or {}) is the style AWS gives an EC2/on-premises
    group made without one, and a missing key is that style's."""
    value = _json(value)
    if not value:
        return dict(SERVER_STYLE)
    if not isinstance(value, dict):
        return value
    return {**SERVER_STYLE, **{k: v for k, v in value.items() if v is not None}}


def normalize_tag_filters(value: Any) -> Any:
    """EC2 tag filters as compared: a set (sorted), without empty fields; none is None."""
    value = _json(value)
    if not value:
        return None
    if not isinstance(value, list):
        return value
    filters = [
        {k: f[k] for k in ("Key", "Type", "Value") if f.get(k) not in (None, "")}
        if isinstance(f, dict)
        else f
        for f in value
    ]
    return sorted(filters, key=lambda f: json.dumps(f, sort_keys=True))


# --- reading -----------------------------------------------------------------------------


def _application_record(info: dict[str, Any], region: str) -> Record:
    return {
        "name": info["applicationName"],
        "application_id": info.get("applicationId"),
        "compute_platform": info.get("computePlatform") or "Server",
        "region": region,
    }


async def arn_prefix(cloud: Cloud, region: str) -> str:
    """The start of the ARNs of CodeDeploy's resources in the region (tags are read by ARN,
    which no CodeDeploy answer gives)."""
    async with cloud.client("sts", region) as sts:
        identity = await sts.get_caller_identity()
    partition = str(identity.get("Arn") or "arn:aws").split(":")[1]
    return f"arn:{partition}:codedeploy:{region}:{identity['Account']}:"


async def _with_token(cd: Any, record: Record, arn: str | None) -> Record:
    """The record, with the create token its resource was tagged with (see TOKEN)."""
    if arn is None:
        return record
    with ignoring(
        "ResourceArnRequiredException",
        "InvalidArnException",
        "ApplicationDoesNotExistException",
        "DeploymentGroupDoesNotExistException",
    ):
        answer = await cd.list_tags_for_resource(ResourceArn=arn)
        with_token(record, answer.get("Tags"))
    return record


async def _applications(cd: Any, region: str, prefix: str | None = None) -> list[Record]:
    """The region's applications of IaSQL's compute platforms (with their create tokens,
    given the ARN prefix)."""
    pages = cd.get_paginator("list_applications").paginate()
    names = [name async for page in pages for name in page.get("applications", [])]
    records = []
    for start in range(0, len(names), 100):  # BatchGetApplications takes at most 100
        answer = await cd.batch_get_applications(applicationNames=names[start : start + 100])
        records += [_application_record(a, region) for a in answer.get("applicationsInfo", [])]
    records = [r for r in records if r["compute_platform"] in COMPUTE_PLATFORMS]
    if prefix is None:
        return records
    return await gather_bounded(
        _with_token(cd, r, f"{prefix}application:{r['name']}") for r in records
    )


def _group_record(info: dict[str, Any], application: Record) -> Record:
    style = info.get("deploymentStyle") or None
    if application["compute_platform"] == "Lambda" and style == LAMBDA_STYLE:
        style = None  # the only style a Lambda group has: what a row without one means
    role = info.get("serviceRoleArn")
    return {
        "name": info["deploymentGroupName"],
        "deployment_group_id": info.get("deploymentGroupId"),
        "deployment_config_name": info.get("deploymentConfigName")
        or "CodeDeployDefault.OneAtATime",
        "deployment_style": style,
        "ec2_tag_filters": info.get("ec2TagFilters") or None,
        "region": application["region"],
        "application_id": application["application_id"],
        "role_name": role_name_of(role) if role else None,
        # Not columns: what update and delete need.
        "application_name": application["name"],
        "compute_platform": application["compute_platform"],
    }


async def _get_group(
    cd: Any, application: Record, name: str, prefix: str | None = None
) -> Record | None:
    try:
        answer = await cd.get_deployment_group(
            applicationName=application["name"], deploymentGroupName=name
        )
    except ClientError as error:
        if error_code(error) in (
            "DeploymentGroupDoesNotExistException",
            "ApplicationDoesNotExistException",
        ):
            return None
        raise
    record = _group_record(answer["deploymentGroupInfo"], application)
    arn = f"{prefix}deploymentgroup:{application['name']}/{name}" if prefix else None
    return await _with_token(cd, record, arn)


async def _application_groups(
    cd: Any, application: Record, prefix: str | None = None
) -> list[Record]:
    names: list[str] = []
    with ignoring("ApplicationDoesNotExistException"):  # deleted since it was listed
        pages = cd.get_paginator("list_deployment_groups").paginate(
            applicationName=application["name"]
        )
        names = [name async for page in pages for name in page.get("deploymentGroups", [])]
    groups = await gather_bounded(_get_group(cd, application, name, prefix) for name in names)
    return [g for g in groups if g is not None]


async def _groups(cd: Any, region: str, prefix: str | None = None) -> list[Record]:
    """The region's deployment groups (of IaSQL's deployment configurations; with their
    create tokens, given the ARN prefix)."""
    applications = await _applications(cd, region)
    found = await gather_bounded(_application_groups(cd, a, prefix) for a in applications)
    groups = [group for groups in found for group in groups]
    return [g for g in groups if g["deployment_config_name"] in DEPLOYMENT_CONFIGS]


async def _application_named(cd: Any, application_id: str, region: str) -> Record:
    """The application whose AWS id a row's reference holds (CodeDeploy names it by name)."""
    for application in await _applications(cd, region):
        if application["application_id"] == application_id:
            return application
    raise CloudError(f"CodeDeploy application {application_id} is gone from {region}")


# --- codedeploy_application ------------------------------------------------------------------


class ApplicationMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        prefix = await arn_prefix(cloud, region)
        async with cloud.client("codedeploy", region) as cd:
            return await _applications(cd, region, prefix)

    async def _read_one(self, cd: Any, name: str, region: str) -> Record:
        answer = await cd.get_application(applicationName=name)
        return _application_record(answer["application"], region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["name"], record["region"]
        async with cloud.client("codedeploy", region) as cd:
            # A retried create finds the application there already (its name is its key).
            with ignoring("ApplicationAlreadyExistsException"):
                await cd.create_application(
                    applicationName=name,
                    computePlatform=record.get("compute_platform") or "Server",
                    tags=tag_list(token_tag(record.get(TOKEN))),
                )
            return await self._read_one(cd, name, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # Every compared column replaces the application: nothing changes in place.
        async with cloud.client("codedeploy", current["region"]) as cd:
            return await self._read_one(cd, current["name"], current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        # AWS deletes the application's deployment groups with it.
        async with cloud.client("codedeploy", current["region"]) as cd:
            with ignoring("ApplicationDoesNotExistException"):
                await cd.delete_application(applicationName=current["name"])


CODEDEPLOY_APPLICATION = Table(
    name="codedeploy_application",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("application_id", "varchar", cloud_assigned=True),
        Column(
            "compute_platform",
            "varchar",
            nullable=False,
            default="'Server'",
            check=one_of("compute_platform", COMPUTE_PLATFORMS),
            replaces=True,
        ),
        region_column(),
    ),
    mapper=ApplicationMapper(),
    natural_key=("name", "region"),
    # AWS's id for it: what its groups and deployments name it by (names repeat in regions).
    cloud_id=("application_id",),
    unique=(("name", "region"), ("application_id",)),
)


# --- codedeploy_deployment_group -------------------------------------------------------------


async def _role_arn(cloud: Cloud, role_name: str | None, group: str) -> str:
    if not role_name:
        raise CloudError(
            f"deployment group {group} needs a service role: set role_name to an iam_role"
        )
    return await role_arn(cloud, role_name)


def _style(record: Record, platform: str) -> dict[str, Any]:
    """The style UpdateDeploymentGroup is given: a row without one asks for AWS's default."""
    style = _json(record.get("deployment_style"))
    if not style:
        return dict(LAMBDA_STYLE if platform == "Lambda" else SERVER_STYLE)
    return {k: v for k, v in style.items() if v is not None}


class DeploymentGroupMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        prefix = await arn_prefix(cloud, region)
        async with cloud.client("codedeploy", region) as cd:
            return await _groups(cd, region, prefix)

    async def _read_one(self, cd: Any, application: Record, name: str) -> Record:
        group = await _get_group(cd, application, name)
        if group is None:
            raise CloudError(f"deployment group {name} is gone from {application['name']}")
        return group

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["name"], record["region"]
        role = await _role_arn(cloud, record.get("role_name"), name)
        settings: dict[str, Any] = {
            "deploymentConfigName": record.get("deployment_config_name")
            or "CodeDeployDefault.OneAtATime",
            "serviceRoleArn": role,
        }
        filters = normalize_tag_filters(record.get("ec2_tag_filters"))
        if filters:
            settings["ec2TagFilters"] = filters
        style = _json(record.get("deployment_style"))
        if style:
            settings["deploymentStyle"] = {k: v for k, v in style.items() if v is not None}
        async with cloud.client("codedeploy", region) as cd:
            application = await _application_named(cd, record["application_id"], region)
            # A retried create finds the group there already (named within its application).
            with ignoring("DeploymentGroupAlreadyExistsException"):
                await cd.create_deployment_group(
                    applicationName=application["name"],
                    deploymentGroupName=name,
                    tags=tag_list(token_tag(record.get(TOKEN))),
                    **settings,
                )
            return await self._read_one(cd, application, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["name"], current["region"]
        platform = current.get("compute_platform") or "Server"
        settings: dict[str, Any] = {
            "deploymentConfigName": record.get("deployment_config_name")
            or "CodeDeployDefault.OneAtATime",
            # AWS keeps what is left out: no filters is an empty list.
            "ec2TagFilters": normalize_tag_filters(record.get("ec2_tag_filters")) or [],
            "deploymentStyle": _style(record, platform),
        }
        if record.get("role_name") != current.get("role_name"):
            settings["serviceRoleArn"] = await _role_arn(cloud, record.get("role_name"), name)
        async with cloud.client("codedeploy", region) as cd:
            application = {
                "name": current["application_name"],
                "application_id": current["application_id"],
                "compute_platform": platform,
                "region": region,
            }
            await cd.update_deployment_group(
                applicationName=application["name"], currentDeploymentGroupName=name, **settings
            )
            return await self._read_one(cd, application, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("codedeploy", current["region"]) as cd:
            application = current.get("application_name")
            if application is None:
                found = await _applications(cd, current["region"])
                names = [
                    a["name"] for a in found if a["application_id"] == current["application_id"]
                ]
                if not names:
                    return  # gone with its application
                application = names[0]
            with ignoring(
                "ApplicationDoesNotExistException", "DeploymentGroupDoesNotExistException"
            ):
                await cd.delete_deployment_group(
                    applicationName=application, deploymentGroupName=current["name"]
                )


CODEDEPLOY_DEPLOYMENT_GROUP = Table(
    name="codedeploy_deployment_group",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("deployment_group_id", "varchar", cloud_assigned=True),
        Column(
            "deployment_config_name",
            "varchar",
            nullable=False,
            default="'CodeDeployDefault.OneAtATime'",
            check=one_of("deployment_config_name", DEPLOYMENT_CONFIGS),
        ),
        Column("deployment_style", "json", normalize=normalize_style),
        Column("ec2_tag_filters", "json", normalize=normalize_tag_filters),
        region_column(),
        foreign_key("application_id", "codedeploy_application", "application_id"),
        Column("role_name", "varchar", ref=Ref("iam_role", key="role_name")),
    ),
    mapper=DeploymentGroupMapper(),
    # A group is named within its application (IaSQL asks for names unique in a region).
    natural_key=("application_id", "name", "region"),
    cloud_id=("deployment_group_id",),
    unique=(("application_id", "name", "region"), ("deployment_group_id",)),
)


# --- codedeploy_deployment -------------------------------------------------------------------


def _location(revision: dict[str, Any] | None) -> dict[str, Any] | None:
    """A deployment's revision as IaSQL's location column has it."""
    if not revision:
        return None
    kind = revision.get("revisionType")
    if kind == "GitHub":
        return {"revisionType": kind, "githubLocation": revision.get("gitHubLocation")}
    if kind == "S3":
        return {"revisionType": kind, "s3Location": revision.get("s3Location")}
    return {"revisionType": kind}


def _deployment_record(info: dict[str, Any], group: Record) -> Record:
    return {
        "deployment_id": info["deploymentId"],
        "description": info.get("description") or None,
        "external_id": info.get("externalId") or None,
        "status": info.get("status"),
        "location": _location(info.get("revision")),
        "region": group["region"],
        "application_id": group["application_id"],
        "deployment_group_id": group["deployment_group_id"],
    }


async def _group_deployments(cd: Any, group: Record) -> list[Record]:
    ids: list[str] = []
    with ignoring("ApplicationDoesNotExistException", "DeploymentGroupDoesNotExistException"):
        pages = cd.get_paginator("list_deployments").paginate(
            applicationName=group["application_name"], deploymentGroupName=group["name"]
        )
        ids = [i async for page in pages for i in page.get("deployments", [])]
    records = []
    for start in range(0, len(ids), 25):  # BatchGetDeployments takes at most 25
        answer = await cd.batch_get_deployments(deploymentIds=ids[start : start + 25])
        records += [_deployment_record(d, group) for d in answer.get("deploymentsInfo", [])]
    return [r for r in records if r["status"] in DEPLOYMENT_STATUSES]


class DeploymentMapper:
    """Deployments are read group by group; they are AWS's records, made by start_deploy."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("codedeploy", region) as cd:
            groups = await _groups(cd, region)
            found = await gather_bounded(_group_deployments(cd, g) for g in groups)
        return [record for records in found for record in records]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(_HOW_TO_MAKE_ONE)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        raise CloudError(f"deployment {current['deployment_id']} cannot change; {_HOW_TO_MAKE_ONE}")

    async def delete(self, cloud: Cloud, current: Record) -> None:
        return None  # AWS keeps every deployment (the table's rows are protected)


# A user's INSERT, or a change of what a deployment belongs to, is refused at once with what to
# write instead. The engine's own writes (import, sync, rollback) run as the table's owner and
# pass. A change of another column is let through: the commit restores it from the cloud.
_WRITES_TRIGGER = (
    """CREATE OR REPLACE FUNCTION codedeploy_deployment_writes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN NEW;
        END IF;
        IF TG_OP = 'INSERT' THEN
            RAISE EXCEPTION 'a CodeDeploy deployment cannot be made by INSERT: CodeDeploy'
                ' makes it when a revision is deployed' USING ERRCODE = '0A000',
                HINT = 'SELECT * FROM start_deploy(application_name, deployment_group_name,'
                    ' revision, region) deploys a revision and adds its row';
        END IF;
        IF (OLD.application_id, OLD.deployment_group_id, OLD.region)
            IS DISTINCT FROM (NEW.application_id, NEW.deployment_group_id, NEW.region)
        THEN
            RAISE EXCEPTION 'deployment % cannot move to another application, deployment group'
                ' or region', OLD.deployment_id USING ERRCODE = '0A000',
                HINT = 'start a deployment there with start_deploy(application_name,'
                    ' deployment_group_name, revision, region)';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER codedeploy_deployment_writes BEFORE INSERT OR UPDATE
        ON codedeploy_deployment FOR EACH ROW EXECUTE FUNCTION codedeploy_deployment_writes()""",
)

CODEDEPLOY_DEPLOYMENT = Table(
    name="codedeploy_deployment",
    columns=(
        Column("deployment_id", "varchar", cloud_assigned=True),
        Column("description", "varchar", cloud_assigned=True),
        Column("external_id", "varchar", cloud_assigned=True),
        Column(
            "status",
            "varchar",
            cloud_assigned=True,
            check=one_of("status", DEPLOYMENT_STATUSES),
        ),
        Column("location", "json", cloud_assigned=True),
        region_column(),
        foreign_key("application_id", "codedeploy_application", "application_id"),
        foreign_key(
            "deployment_group_id",
            "codedeploy_deployment_group",
            "deployment_group_id",
            on_delete="CASCADE",
        ),
    ),
    mapper=DeploymentMapper(),
    natural_key=("deployment_id", "region"),
    cloud_id=("deployment_id",),
    # AWS keeps every deployment: a deleted row is restored (with its group's, if it stays).
    protected=lambda _record: True,
    # Read through the groups: a commit that replaces or deletes a group re-reads them.
    synced_with=("codedeploy_deployment_group", "codedeploy_application"),
    extra_ddl=_WRITES_TRIGGER,
)


# --- start_deploy ------------------------------------------------------------------------------


def _revision(revision: Any) -> dict[str, Any]:
    """The RevisionLocation the caller gave (JSON, as IaSQL takes it)."""
    if isinstance(revision, bytes):
        revision = revision.decode()
    if isinstance(revision, str):
        try:
            revision = json.loads(revision)
        except ValueError:
            raise ArgumentError(f"the revision must be valid JSON: {_SIGNATURE}") from None
    if not isinstance(revision, dict) or not revision.get("revisionType"):
        raise ArgumentError(
            "the revision must be a RevisionLocation object with its revisionType, e.g."
            ' {"revisionType": "GitHub", "gitHubLocation": {"repository": "owner/repo",'
            f' "commitId": "..."}}}}: {_SIGNATURE}'
        )
    return revision


async def start_deploy(
    cloud: Cloud,
    application_name: str,
    deployment_group_name: str,
    revision: Any,
    region: str | None = None,
) -> list[Record]:
    """Deploys a revision through a deployment group and waits (at most 20 minutes, as IaSQL
    does) until the deployment succeeds; a deployment that fails, is stopped or does not end
    in time is an error naming it. Its codedeploy_deployment row comes with the sync after."""
    if not application_name or not deployment_group_name:
        raise ArgumentError(f"name the application and its deployment group: {_SIGNATURE}")
    if not region:
        raise ArgumentError(f"start_deploy needs a region (there is no default): {_SIGNATURE}")
    location = _revision(revision)
    async with cloud.client("codedeploy", region) as cd:
        answer = await cd.create_deployment(
            applicationName=application_name,
            deploymentGroupName=deployment_group_name,
            revision=location,
        )
        deployment = str(answer["deploymentId"])
        waiter = cd.get_waiter("deployment_successful")
        try:
            await waiter.wait(deploymentId=deployment, WaiterConfig=_DEPLOY_WAIT)
        except WaiterError as error:  # failed, stopped, or still running
            info = (await cd.get_deployment(deploymentId=deployment))["deploymentInfo"]
            status = info.get("status")
            reason = (info.get("errorInformation") or {}).get("message")
            if status in ("Failed", "Stopped"):
                raise CloudError(
                    f"deployment {deployment} of {application_name}/{deployment_group_name}"
                    f" {status.lower()}" + (f": {reason}" if reason else "")
                ) from error
            seconds = _DEPLOY_WAIT["Delay"] * _DEPLOY_WAIT["MaxAttempts"]
            raise CloudError(
                f"deployment {deployment} of {application_name}/{deployment_group_name} did"
                f" not end within {seconds // 60} minutes (status {status}); it goes on in AWS:"
                " its codedeploy_deployment row shows how it ends after iasql_sync()"
            ) from error
    return [{"id": deployment, "status": "OK", "message": ""}]


START_DEPLOY = ModuleFunction(
    name="start_deploy",
    columns=(("id", "varchar"), ("status", "varchar"), ("message", "varchar")),
    params=(
        ("application_name", "varchar"),
        ("deployment_group_name", "varchar"),
        ("revision", "json"),
        ("region", "varchar"),
    ),
    run=start_deploy,
    description="Deploys a revision (a RevisionLocation, as JSON) through a CodeDeploy"
    " deployment group and waits until it succeeds; its codedeploy_deployment row comes with"
    " the sync that follows",
    optional=("region",),
    sample="""SELECT * FROM start_deploy('my-app', 'my-group', '{"revisionType": "GitHub",'"""
    """ "gitHubLocation": {"repository": "owner/repo", "commitId": "cf6aa63c"}}', 'us-east-1')""",
)

MODULE = ModuleSpec(
    name="aws_codedeploy",
    version=VERSION,
    dependencies=("aws_account", "aws_iam"),
    description="CodeDeploy applications, deployment groups and deployments, and start_deploy",
    tables=(CODEDEPLOY_APPLICATION, CODEDEPLOY_DEPLOYMENT_GROUP, CODEDEPLOY_DEPLOYMENT),
    functions=(START_DEPLOY,),
    teardown_sql=("DROP FUNCTION IF EXISTS codedeploy_deployment_writes()",),
)
