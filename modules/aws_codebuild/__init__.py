"""aws_codebuild: CodeBuild projects, their builds and the source credentials of the account,
with IaSQL's RPCs start_build and import_source_credential.

A project's settings change in place (UpdateProject); a new name is a new project. Builds and
source credentials come from the cloud: start_build() makes a build and
import_source_credential() a credential, each adding its row; deleting a row deletes the build
(stopping it first if it runs) or the credential. An INSERT into either is refused at once,
naming the RPC. The credential's token goes to AWS only: no table holds it, and neither the
audit log nor any message of ours shows it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiobotocore.waiter import create_waiter_with_client
from botocore.waiter import WaiterModel

from modules import VERSION
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules.aws_iam import role_arn, role_name_of
from modules.errors import ignoring
from modules.spec import (
    ArgumentError,
    Cloud,
    CloudError,
    Column,
    ModuleFunction,
    ModuleSpec,
    Record,
    Ref,
    Table,
)

# IaSQL's enums (codebuild_project_*_enum, codebuild_build_list_build_status_enum,
# source_credentials_list_source_type_enum), held here as varchar with a CHECK.
COMPUTE_TYPES = (
    "BUILD_GENERAL1_SMALL",
    "BUILD_GENERAL1_MEDIUM",
    "BUILD_GENERAL1_LARGE",
    "BUILD_GENERAL1_2XLARGE",
)
ENVIRONMENT_TYPES = (
    "ARM_CONTAINER",
    "LINUX_CONTAINER",
    "LINUX_GPU_CONTAINER",
    "WINDOWS_CONTAINER",
    "WINDOWS_SERVER_2019_CONTAINER",
)
SOURCE_TYPES = ("GITHUB", "CODEPIPELINE", "NO_SOURCE")
BUILD_STATUSES = ("FAILED", "FAULT", "IN_PROGRESS", "STOPPED", "SUCCEEDED", "TIMED_OUT")
CREDENTIAL_SOURCE_TYPES = SOURCE_TYPES
# What import_source_credential accepts, as IaSQL's RPC.
SERVER_TYPES = ("BITBUCKET", "GITHUB", "GITHUB_ENTERPRISE")
AUTH_TYPES = ("BASIC_AUTH", "OAUTH", "PERSONAL_ACCESS_TOKEN")

DEFAULT_IMAGE = "aws/codebuild/standard:6.0"
_BATCH = 100  # BatchGetProjects and BatchGetBuilds take at most 100 names


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]


def _empty_is_none(value: Any) -> Any:
    """AWS answers "" or nothing alike for a location or a version left out (as IaSQL
    compares them)."""
    return None if value == "" else value


def environment_variables(value: Any) -> list[dict[str, str]]:
    """The column's JSON text (IaSQL's `[{"name", "value", "type"}]`) as AWS's list, the type
    PLAINTEXT where none is given. Raises ValueError for anything else."""
    if value is None or value == "":
        return []
    parsed = json.loads(value) if isinstance(value, str) else value
    if parsed is None:
        return []
    if not isinstance(parsed, list) or not all(
        isinstance(v, dict) and v.get("name") for v in parsed
    ):
        raise ValueError("not a JSON list of {name, value, type} objects")
    return [
        {
            "name": str(v["name"]),
            "value": v["value"] if isinstance(v.get("value"), str) else json.dumps(v.get("value")),
            "type": str(v.get("type") or "PLAINTEXT"),
        }
        for v in parsed
    ]


def normalize_environment_variables(value: Any) -> Any:
    """The variables as compact JSON text in name order, none as NULL; text that is not such
    a list compares as itself (the commit then says what is wrong with it)."""
    try:
        variables = environment_variables(value)
    except ValueError:
        return value
    if not variables:
        return None
    ordered = sorted(variables, key=lambda v: (v["name"], v["type"], v["value"]))
    return json.dumps(ordered, sort_keys=True, separators=(",", ":"))


def _utc(value: Any) -> dt.datetime | None:
    """A time of the API as TIMESTAMP (without time zone) holds it: UTC."""
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


# --- codebuild_project ------------------------------------------------------------------------


def _project_record(project: dict[str, Any], region: str) -> Record | None:
    """A BatchGetProjects entry as a row; None for a project the table's enums cannot hold
    (an S3 or CodeCommit source, a Lambda compute type), which stays out as in IaSQL's."""
    source = project.get("source") or {}
    environment = project.get("environment") or {}
    if (
        source.get("type") not in SOURCE_TYPES
        or environment.get("computeType", COMPUTE_TYPES[0]) not in COMPUTE_TYPES
        or environment.get("type", "LINUX_CONTAINER") not in ENVIRONMENT_TYPES
    ):
        return None
    role = project.get("serviceRole")
    return {
        "project_name": project["name"],
        "arn": project.get("arn"),
        "build_spec": _empty_is_none(source.get("buildspec")),
        "source_location": _empty_is_none(source.get("location")),
        "image": environment.get("image") or DEFAULT_IMAGE,
        "compute_type": environment.get("computeType") or COMPUTE_TYPES[0],
        "environment_type": environment.get("type") or "LINUX_CONTAINER",
        "source_version": _empty_is_none(project.get("sourceVersion")),
        "source_type": source["type"],
        "environment_variables": normalize_environment_variables(
            environment.get("environmentVariables") or []
        ),
        # AWS's default is false (AWS always answers it; moto only when it was given).
        "privileged_mode": bool(environment.get("privilegedMode", False)),
        "region": region,
        "service_role_name": role_name_of(role) if role else None,
    }


async def _role_arn(cloud: Cloud, record: Record) -> str:
    role = record.get("service_role_name")
    if not role:
        raise CloudError(
            f"codebuild project {record['project_name']} needs a service role: set"
            " service_role_name to the name of an IAM role CodeBuild can assume"
        )
    return await role_arn(cloud, role)


def _settings(record: Record, role_arn: str) -> dict[str, Any]:
    """CreateProject's and UpdateProject's arguments for the row (IaSQL's: no artifacts but
    a pipeline's)."""
    try:
        variables = environment_variables(record.get("environment_variables"))
    except ValueError as error:
        raise CloudError(
            f"codebuild project {record['project_name']}: environment_variables is {error}:"
            """ write '[{"name": "STAGE", "value": "prod", "type": "PLAINTEXT"}]'"""
        ) from None
    source_type = record["source_type"]
    source: dict[str, Any] = {"type": source_type}
    if _empty_is_none(record.get("source_location")) is not None:
        source["location"] = record["source_location"]
    if record.get("build_spec"):
        source["buildspec"] = record["build_spec"]
    artifacts = "CODEPIPELINE" if source_type == "CODEPIPELINE" else "NO_ARTIFACTS"
    return {
        "name": record["project_name"],
        "source": source,
        "artifacts": {"type": artifacts},
        "environment": {
            "type": record.get("environment_type") or "LINUX_CONTAINER",
            "image": record.get("image") or DEFAULT_IMAGE,
            "computeType": record.get("compute_type") or COMPUTE_TYPES[0],
            "environmentVariables": variables,
            "privilegedMode": bool(record.get("privileged_mode")),
        },
        "serviceRole": role_arn,
    }


async def _projects(codebuild: Any, names: list[str], region: str) -> list[Record]:
    found: list[Record] = []
    for chunk in _chunks(names):
        answer = await codebuild.batch_get_projects(names=chunk)
        for project in answer.get("projects", []):
            record = _project_record(project, region)
            if record is not None:
                found.append(record)
    return found


class ProjectMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("codebuild", region) as codebuild:
            pages = codebuild.get_paginator("list_projects").paginate()
            names = [name async for page in pages for name in page.get("projects", [])]
            return await _projects(codebuild, names, region)

    async def _read_one(self, codebuild: Any, name: str, region: str) -> Record:
        found = await _projects(codebuild, [name], region)
        if not found:
            raise CloudError(f"codebuild project {name} is gone from {region}")
        return found[0]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["project_name"], record["region"]
        settings = _settings(record, await _role_arn(cloud, record))
        source_version = _empty_is_none(record.get("source_version"))
        if source_version is not None:
            settings["sourceVersion"] = source_version
        async with cloud.client("codebuild", region) as codebuild:
            try:
                await codebuild.create_project(**settings)
            except codebuild.exceptions.ResourceAlreadyExistsException:
                # A retried create: the project was made; make it what the row says.
                await codebuild.update_project(**settings)
            return await self._read_one(codebuild, name, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["project_name"], current["region"]
        settings = _settings(record, await _role_arn(cloud, record))
        wanted = _empty_is_none(record.get("source_version"))
        if wanted is not None:
            settings["sourceVersion"] = wanted
        elif _empty_is_none(current.get("source_version")) is not None:
            settings["sourceVersion"] = ""  # removes it
        async with cloud.client("codebuild", region) as codebuild:
            await codebuild.update_project(**settings)
            return await self._read_one(codebuild, name, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("codebuild", current["region"]) as codebuild:
            with ignoring("ResourceNotFoundException"):
                await codebuild.delete_project(name=current["project_name"])


CODEBUILD_PROJECT = Table(
    name="codebuild_project",
    columns=(
        Column("project_name", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("build_spec", "text", normalize=_empty_is_none),
        Column("source_location", "varchar", normalize=_empty_is_none),
        Column("image", "varchar", nullable=False, default=f"'{DEFAULT_IMAGE}'"),
        Column(
            "compute_type",
            "varchar",
            nullable=False,
            default=f"'{COMPUTE_TYPES[0]}'",
            check=one_of("compute_type", COMPUTE_TYPES),
        ),
        Column(
            "environment_type",
            "varchar",
            nullable=False,
            default="'LINUX_CONTAINER'",
            check=one_of("environment_type", ENVIRONMENT_TYPES),
        ),
        Column("source_version", "varchar", normalize=_empty_is_none),
        Column("source_type", "varchar", nullable=False, check=one_of("source_type", SOURCE_TYPES)),
        Column("environment_variables", "text", normalize=normalize_environment_variables),
        Column("privileged_mode", "boolean", nullable=False, default="true"),
        region_column(),
        Column("service_role_name", "varchar", ref=Ref("iam_role", key="role_name")),
    ),
    mapper=ProjectMapper(),
    natural_key=("project_name", "region"),
    cloud_id=("project_name", "region"),
)

# --- codebuild_build_list ----------------------------------------------------------------------

_START_BUILD_HINT = "SELECT * FROM start_build('project_name', 'region') starts one"


def _build_record(build: dict[str, Any], region: str) -> Record | None:
    if not build.get("id") or build.get("buildStatus") not in BUILD_STATUSES:
        return None
    return {
        "aws_id": build["id"],
        "arn": build.get("arn"),
        "build_number": build.get("buildNumber"),
        "build_status": build["buildStatus"],
        "end_time": _utc(build.get("endTime")),
        "start_time": _utc(build.get("startTime")),
        "region": region,
        "project_name": build.get("projectName"),
    }


async def _builds(codebuild: Any, ids: list[str], region: str) -> list[Record]:
    found: list[Record] = []
    for chunk in _chunks(ids):
        answer = await codebuild.batch_get_builds(ids=chunk)
        for build in answer.get("builds", []):
            record = _build_record(build, region)
            if record is not None:
                found.append(record)
    return found


# BatchGetBuilds until the builds are done (a build takes minutes; IaSQL waits up to 15).
_BUILDS_DONE = WaiterModel(
    {
        "version": 2,
        "waiters": {
            "BuildsDone": {
                "operation": "BatchGetBuilds",
                "delay": 2,
                "maxAttempts": 450,
                "acceptors": [
                    {
                        "matcher": "pathAny",
                        "argument": "builds[].buildStatus",
                        "expected": "IN_PROGRESS",
                        "state": "retry",
                    },
                    {
                        "matcher": "path",
                        "argument": "length(builds) > `0`",
                        "expected": True,
                        "state": "success",
                    },
                ],
            }
        },
    }
)


async def _wait_for_builds(codebuild: Any, ids: list[str]) -> None:
    waiter = create_waiter_with_client("BuildsDone", _BUILDS_DONE, codebuild)
    await waiter.wait(ids=ids)


class BuildListMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("codebuild", region) as codebuild:
            pages = codebuild.get_paginator("list_builds").paginate()
            ids = [i async for page in pages for i in page.get("ids", [])]
            return await _builds(codebuild, ids, region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(
            f"a codebuild build cannot be made by INSERT: {_START_BUILD_HINT} and adds its row"
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # every column is the cloud's: the commit restores them

    async def delete(self, cloud: Cloud, current: Record) -> None:
        build_id = current["aws_id"]
        async with cloud.client("codebuild", current["region"]) as codebuild:
            if current.get("build_status") == "IN_PROGRESS":
                with ignoring("ResourceNotFoundException"):
                    await codebuild.stop_build(id=build_id)
                    await _wait_for_builds(codebuild, [build_id])
            answer = await codebuild.batch_delete_builds(ids=[build_id])
        for failed in answer.get("buildsNotDeleted") or []:
            code = failed.get("statusCode") or "unknown reason"
            if failed.get("id") == build_id and "NOT_FOUND" not in code.upper():
                raise CloudError(f"codebuild build {build_id} was not deleted: {code}")


def _refuse_writes(table: str, what: str, keys: tuple[str, ...], hint: str) -> tuple[str, str]:
    """A trigger refusing a user's INSERT into `table`, and a change of its cloud identity
    (`keys`), with what to do instead. The engine's own writes (import, sync, rollback) run as
    the table's owner and pass; a change of another column is let through, and the commit
    restores the cloud's value."""
    old = ", ".join(f"OLD.{k}" for k in keys)
    new = ", ".join(f"NEW.{k}" for k in keys)
    function = f"{table}_writes"
    return (
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                WHERE oid = TG_RELID)
            THEN
                RETURN NEW;
            END IF;
            IF TG_OP = 'INSERT' THEN
                RAISE EXCEPTION 'a {what} cannot be made by INSERT' USING ERRCODE = '0A000',
                    HINT = '{hint}';
            END IF;
            IF ({old}) IS DISTINCT FROM ({new}) THEN
                RAISE EXCEPTION 'the {what} % cannot be renamed or moved', OLD.{keys[0]}
                    USING ERRCODE = '0A000', HINT = 'DELETE the row to delete it; {hint}';
            END IF;
            RETURN NEW;
        END $$""",
        f"""CREATE TRIGGER {function} BEFORE INSERT OR UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {function}()""",
    )


CODEBUILD_BUILD_LIST = Table(
    name="codebuild_build_list",
    columns=(
        Column("aws_id", "varchar", nullable=False, cloud_assigned=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("build_number", "integer", cloud_assigned=True),
        Column(
            "build_status",
            "varchar",
            nullable=False,
            check=one_of("build_status", BUILD_STATUSES),
            cloud_assigned=True,
        ),
        Column("end_time", "timestamp", cloud_assigned=True),
        Column("start_time", "timestamp", cloud_assigned=True),
        region_column(),
        # The project by name (AWS keeps a build when its project is deleted, so no foreign
        # key: the row stays, naming a project that is gone).
        Column("project_name", "varchar", cloud_assigned=True),
    ),
    mapper=BuildListMapper(),
    # Build numbers count up per project: (project, number) names a build in any account.
    natural_key=("project_name", "build_number", "region"),
    cloud_id=("aws_id", "region"),
    extra_ddl=_refuse_writes(
        "codebuild_build_list",
        "codebuild build",
        ("aws_id", "region"),
        "SELECT * FROM start_build(''project_name'', ''region'') starts one and adds its row",
    ),
)

# --- source_credentials_list -------------------------------------------------------------------


class SourceCredentialsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("codebuild", region) as codebuild:
            answer = await codebuild.list_source_credentials()
        return [
            {
                "arn": info["arn"],
                "source_type": info.get("serverType"),
                "auth_type": info.get("authType"),
                "region": region,
            }
            for info in answer.get("sourceCredentialsInfos", [])
            # IaSQL's enum holds GITHUB only of AWS's server types: others stay out.
            if info.get("arn") and info.get("serverType") in CREDENTIAL_SOURCE_TYPES
        ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(
            "source credentials cannot be made by INSERT: SELECT * FROM"
            " import_source_credential(region, token, server_type, auth_type) imports them"
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # every column is the cloud's: the commit restores them

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("codebuild", current["region"]) as codebuild:
            with ignoring("ResourceNotFoundException"):
                await codebuild.delete_source_credentials(arn=current["arn"])


SOURCE_CREDENTIALS_LIST = Table(
    name="source_credentials_list",
    columns=(
        Column("arn", "varchar", nullable=False, cloud_assigned=True),
        Column(
            "source_type",
            "varchar",
            nullable=False,
            check=one_of("source_type", CREDENTIAL_SOURCE_TYPES),
            cloud_assigned=True,
        ),
        Column("auth_type", "varchar", nullable=False, cloud_assigned=True),
        region_column(),
    ),
    mapper=SourceCredentialsMapper(),
    primary_key=("arn",),
    # An account holds one credential per server type and region.
    natural_key=("source_type", "region"),
    cloud_id=("arn",),
    unique=(),
    extra_ddl=_refuse_writes(
        "source_credentials_list",
        "source credential",
        ("arn", "region"),
        "SELECT * FROM import_source_credential(''region'', ''token'', ''GITHUB'',"
        " ''PERSONAL_ACCESS_TOKEN'') imports one and adds its row",
    ),
)

# --- RPCs --------------------------------------------------------------------------------------

_START_SIGNATURE = "start_build(project_name, region)"
_IMPORT_SIGNATURE = "import_source_credential(region, token, server_type, auth_type)"


async def start_build(cloud: Cloud, project_name: str, region: str | None = None) -> list[Record]:
    """Starts a build of the project and waits until it is done, as IaSQL's RPC; its row
    comes with the sync that follows."""
    if not project_name:
        raise ArgumentError(f"name the CodeBuild project to build: {_START_SIGNATURE}")
    if not region:
        raise ArgumentError(f"start_build needs a region (there is no default): {_START_SIGNATURE}")
    async with cloud.client("codebuild", region) as codebuild:
        answer = await codebuild.start_build(projectName=project_name)
        build_id = (answer.get("build") or {}).get("id")
        if not build_id:
            return [{"name": project_name, "status": "KO", "message": "Error launching build"}]
        await _wait_for_builds(codebuild, [build_id])
    return [{"name": project_name, "status": "OK", "message": ""}]


START_BUILD = ModuleFunction(
    name="start_build",
    # IaSQL's result columns; its parameter `name` is `project_name` here (a parameter
    # cannot share a result column's name). Called by position, SQL written for IaSQL runs.
    columns=(("name", "varchar"), ("status", "varchar"), ("message", "varchar")),
    params=(("project_name", "varchar"), ("region", "varchar")),
    run=start_build,
    description="Starts a build of a CodeBuild project and waits until it is done; the build's"
    " codebuild_build_list row comes with the sync that follows",
    optional=("region",),
    sample="SELECT * FROM start_build('my-project', 'us-east-1')",
)


async def import_source_credential(
    cloud: Cloud,
    region: str,
    token: str,
    server_type: str | None = None,
    auth_type: str | None = None,
) -> list[Record]:
    """Imports a source provider's token for CodeBuild in the region. The token goes to AWS
    only: it is never returned, stored, or part of a message of ours."""
    server = server_type or "GITHUB"
    auth = auth_type or "PERSONAL_ACCESS_TOKEN"
    if not region:
        raise ArgumentError(f"name the region the credential is for: {_IMPORT_SIGNATURE}")
    if not token:
        raise ArgumentError(f"import_source_credential needs the token: {_IMPORT_SIGNATURE}")
    if server not in SERVER_TYPES:
        raise ArgumentError(f"server_type must be one of {', '.join(SERVER_TYPES)}")
    if auth not in AUTH_TYPES:
        raise ArgumentError(f"auth_type must be one of {', '.join(AUTH_TYPES)}")
    async with cloud.client("codebuild", region) as codebuild:
        try:
            answer = await codebuild.import_source_credentials(
                token=token, serverType=server, authType=auth
            )
        except Exception as error:
            # Whatever the cloud says, the message must not carry the token back.
            text = str(error).replace(token, "(the token)")
            if text != str(error):
                raise CloudError(text) from None
            raise
    arn = answer.get("arn")
    if not arn:
        return [{"arn": "", "status": "ERROR", "message": "Error importing source credentials"}]
    return [{"arn": arn, "status": "SUCCESS", "message": ""}]


IMPORT_SOURCE_CREDENTIAL = ModuleFunction(
    name="import_source_credential",
    columns=(("arn", "varchar"), ("status", "varchar"), ("message", "varchar")),
    params=(
        ("region", "varchar"),
        ("token", "varchar"),
        ("server_type", "varchar"),
        ("auth_type", "varchar"),
    ),
    run=import_source_credential,
    description="Imports a source provider's token (GitHub by default) for CodeBuild builds;"
    " its source_credentials_list row comes with the sync that follows. The token is kept"
    " by AWS only",
    optional=("server_type", "auth_type"),
    sample="SELECT * FROM import_source_credential('us-east-1', 'ghp_...', 'GITHUB',"
    " 'PERSONAL_ACCESS_TOKEN')",
)

MODULE = ModuleSpec(
    name="aws_codebuild",
    version=VERSION,
    dependencies=("aws_account", "aws_iam"),
    description="CodeBuild projects, builds and source credentials; start_build and"
    " import_source_credential",
    tables=(CODEBUILD_PROJECT, CODEBUILD_BUILD_LIST, SOURCE_CREDENTIALS_LIST),
    functions=(START_BUILD, IMPORT_SOURCE_CREDENTIAL),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS codebuild_build_list_writes()",
        "DROP FUNCTION IF EXISTS source_credentials_list_writes()",
    ),
)
