"""aws_lambda: Lambda functions (zip packages), the security groups of their VPC
configuration, and the `invoke_lambda` RPC."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from modules import VERSION
from modules._aws.arns import region_of
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules._aws.tags import normalize_tags, tags_column
from modules.aws_iam import role_arn, role_name_of
from modules.concurrency import KeyedLocks, gather_bounded
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
    foreign_key,
)

# IaSQL's lambda_function_runtime_enum, lambda_function_package_type_enum and
# lambda_function_architecture_enum (held here as varchar with a CHECK).
RUNTIMES = (
    "dotnet6",
    "dotnetcore1.0",
    "dotnetcore2.0",
    "dotnetcore2.1",
    "dotnetcore3.1",
    "go1.x",
    "java11",
    "java8",
    "java8.al2",
    "nodejs",
    "nodejs10.x",
    "nodejs12.x",
    "nodejs14.x",
    "nodejs16.x",
    "nodejs18.x",
    "nodejs4.3",
    "nodejs4.3-edge",
    "nodejs6.10",
    "nodejs8.10",
    "provided",
    "provided.al2",
    "python2.7",
    "python3.6",
    "python3.7",
    "python3.8",
    "python3.9",
    "ruby2.5",
    "ruby2.7",
)
PACKAGE_TYPES = ("Zip",)
ARCHITECTURES = ("arm64", "x86_64")

# A function's code cannot be read back: the cloud reports the SHA-256 of the package. The
# row of an imported function holds that digest in this form, and a row's base64 zip is
# compared with the cloud in it.
DIGEST_PREFIX = "sha256:"


def _zip_bytes(value: str) -> bytes | None:
    """The package a zip_b64 value holds; None for a digest or a value that is no base64."""
    if value.startswith(DIGEST_PREFIX):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def code_digest(value: Any) -> Any:
    """zip_b64 as the cloud can compare it: `sha256:<base64 SHA-256 of the package>` (AWS's
    CodeSha256). A digest, or a value that is not base64, compares as itself."""
    if not isinstance(value, str):
        return value
    package = _zip_bytes(value)
    if package is None:
        return value
    return DIGEST_PREFIX + base64.b64encode(hashlib.sha256(package).digest()).decode()


def normalize_environment(value: Any) -> Any:
    """Environment variables as a sorted dict of text; none is None (AWS reports no
    Environment for a function without variables)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        return value
    pairs = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return dict(sorted(pairs.items())) or None


def normalize_subnets(value: Any) -> list[str] | None:
    """A set of subnet ids kept as an array: order means nothing to AWS, none is None."""
    if value is None:
        return None
    return sorted(str(v) for v in value) or None


def _empty_is_none(value: Any) -> Any:
    """AWS reports a function without a description as ""."""
    return None if value == "" else value


def _function_record(answer: dict[str, Any], region: str) -> Record | None:
    """A get_function answer as a row; None for an image function, which IaSQL leaves out."""
    config = answer["Configuration"]
    if config.get("PackageType", "Zip") != "Zip":
        return None
    vpc = config.get("VpcConfig") or {}
    architectures = config.get("Architectures") or ["x86_64"]
    variables = (config.get("Environment") or {}).get("Variables")
    code = config.get("CodeSha256")
    tags = answer.get("Tags") or {}
    return {
        "name": config["FunctionName"],
        "arn": config.get("FunctionArn"),
        "version": config.get("Version") or "$LATEST",
        "description": _empty_is_none(config.get("Description")),
        "zip_b64": DIGEST_PREFIX + code if code else None,
        "handler": config.get("Handler"),
        "runtime": config.get("Runtime"),
        "package_type": config.get("PackageType", "Zip"),
        "architecture": architectures[-1],
        "memory_size": config.get("MemorySize"),
        "environment": normalize_environment(variables),
        "tags": normalize_tags({k: v for k, v in tags.items() if k != ASSIGNED_GROUPS_TAG}),
        "subnets": normalize_subnets(vpc.get("SubnetIds")),
        "region": region,
        "role_name": role_name_of(config["Role"]) if config.get("Role") else None,
        # Not a column: the groups that lambda_function_security_groups shows.
        "security_groups": visible_groups(vpc.get("SecurityGroupIds"), tags),
    }


# AWS wants a function in a VPC to have a security group, but the groups are rows of
# lambda_function_security_groups, made after the function (and a function may lose its last
# one): until a row names one, the function has its VPC's default group, which this tag
# (kept out of the tags column) marks as iasql's choice and no row.
ASSIGNED_GROUPS_TAG = "iasql:assigned-security-groups"


def visible_groups(groups: list[str] | None, tags: dict[str, str] | None) -> list[str]:
    """The function's groups that rows stand for: none while it has just the assigned one."""
    groups = list(groups or [])
    assigned = (tags or {}).get(ASSIGNED_GROUPS_TAG)
    return [] if assigned is not None and sorted(assigned.split()) == sorted(groups) else groups


async def _default_group(cloud: Cloud, region: str, subnets: list[str]) -> str:
    """The default security group of the subnets' VPC."""
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.describe_subnets(SubnetIds=subnets[:1])
        vpc = answer["Subnets"][0]["VpcId"]
        found = await ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "group-name", "Values": ["default"]},
            ]
        )
    groups = [g["GroupId"] for g in found["SecurityGroups"]]
    if not groups:
        raise CloudError(f"VPC {vpc} has no default security group to give a lambda function")
    return str(groups[0])


async def _vpc_config(
    cloud: Cloud, aws: Any, arn: str, region: str, subnets: list[str], groups: list[str]
) -> dict[str, Any]:
    """update_function_configuration's VpcConfig for `subnets` and the groups rows name
    (`groups`): without groups, the VPC's default one, which the function is tagged with."""
    if not subnets:
        groups = []
    elif not groups:
        groups = [await _default_group(cloud, region, subnets)]
        if arn:
            await aws.tag_resource(Resource=arn, Tags={ASSIGNED_GROUPS_TAG: groups[0]})
        return {"SubnetIds": subnets, "SecurityGroupIds": groups}
    if arn:
        await aws.untag_resource(Resource=arn, TagKeys=[ASSIGNED_GROUPS_TAG])
    return {"SubnetIds": subnets, "SecurityGroupIds": groups}


def name_of(arn: str) -> str:
    """arn:aws:lambda:REGION:account:function:NAME -> NAME."""
    return arn.split(":")[6]


async def _functions(cloud: Cloud, region: str) -> list[Record]:
    async with cloud.client("lambda", region) as aws:
        pages = aws.get_paginator("list_functions").paginate()
        names = [f["FunctionName"] async for page in pages for f in page.get("Functions", [])]
        answers = await gather_bounded(_get(aws, name) for name in names)
    records = [_function_record(a, region) for a in answers if a is not None]
    return [r for r in records if r is not None]


async def _get(aws: Any, name: str) -> dict[str, Any] | None:
    """get_function, or None for a function deleted since it was listed."""
    try:
        answer: dict[str, Any] = await aws.get_function(FunctionName=name)
        if "Tags" not in answer:  # AWS leaves them out when there are none
            arn = answer["Configuration"]["FunctionArn"]
            answer["Tags"] = (await aws.list_tags(Resource=arn)).get("Tags") or {}
    except aws.exceptions.ResourceNotFoundException:
        return None
    return answer


async def _role_arn(cloud: Cloud, role_name: str | None, function: str) -> str:
    if not role_name:
        raise CloudError(f"lambda function {function} needs a role: set role_name")
    return await role_arn(cloud, role_name)


def _package(record: Record) -> bytes:
    value = record.get("zip_b64")
    package = _zip_bytes(value) if isinstance(value, str) else None
    if package is None:
        what = "holds only the digest of the deployed code" if value else "is empty"
        raise CloudError(
            f"lambda function {record['name']}: zip_b64 {what}; set it to the base64 of a"
            " zip package to deploy"
        )
    return package


def _configuration(record: Record) -> dict[str, Any]:
    """The settings create_function and update_function_configuration both take."""
    return {
        "Handler": record.get("handler"),
        "Runtime": record.get("runtime"),
        "Description": record.get("description") or "",
        "MemorySize": record.get("memory_size") or 128,
        "Environment": {"Variables": normalize_environment(record.get("environment")) or {}},
    }


async def _wait(aws: Any, waiter: str, name: str) -> None:
    await aws.get_waiter(waiter).wait(
        FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
    )


# A function's VPC configuration is one list of subnets and one of groups: a change to either
# (from the function's row or a lambda_function_security_groups row) is one at a time.
_vpc_lock: KeyedLocks[str] = KeyedLocks()


class LambdaFunctionMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return await _functions(cloud, region)

    async def _read_one(self, aws: Any, name: str, region: str) -> Record:
        answer = await _get(aws, name)
        record = _function_record(answer, region) if answer else None
        if record is None:
            raise CloudError(f"lambda function {name} is gone from {region}")
        return record

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["name"], record["region"]
        role = await _role_arn(cloud, record.get("role_name"), name)
        package = _package(record)
        extra: dict[str, Any] = {}
        tags = normalize_tags(record.get("tags")) or {}
        subnets = normalize_subnets(record.get("subnets"))
        if subnets:
            # The groups come with lambda_function_security_groups rows, after the function.
            group = await _default_group(cloud, region, subnets)
            extra["VpcConfig"] = {"SubnetIds": subnets, "SecurityGroupIds": [group]}
            tags = {**tags, ASSIGNED_GROUPS_TAG: group}
        if tags:
            extra["Tags"] = tags
        async with cloud.client("lambda", region) as aws:
            answer = await _get(aws, name)
            if answer is None:  # else a retried create: the function is there already
                await aws.create_function(
                    FunctionName=name,
                    Role=role,
                    Code={"ZipFile": package},
                    PackageType=record.get("package_type") or "Zip",
                    Architectures=[record.get("architecture") or "x86_64"],
                    **{k: v for k, v in _configuration(record).items() if v is not None},
                    **extra,
                )
            await _wait(aws, "function_active_v2", name)
            return await self._read_one(aws, name, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["name"], current["region"]
        async with _vpc_lock(name + "@" + region), cloud.client("lambda", region) as aws:
            settings: dict[str, Any] = {}
            for column, value in _configuration(record).items():
                if value != _configuration(current)[column]:
                    settings[column] = value
            if record.get("role_name") != current.get("role_name"):
                settings["Role"] = await _role_arn(cloud, record.get("role_name"), name)
            subnets = normalize_subnets(record.get("subnets"))
            if subnets != normalize_subnets(current.get("subnets")):
                answer = await _get(aws, name) or {}
                vpc = answer.get("Configuration", {}).get("VpcConfig") or {}
                groups = visible_groups(vpc.get("SecurityGroupIds"), answer.get("Tags"))
                settings["VpcConfig"] = await _vpc_config(
                    cloud, aws, current["arn"], region, subnets or [], groups
                )
            if settings:
                await aws.update_function_configuration(FunctionName=name, **settings)
                await _wait(aws, "function_updated_v2", name)
            if code_digest(record.get("zip_b64")) != code_digest(current.get("zip_b64")):
                await aws.update_function_code(FunctionName=name, ZipFile=_package(record))
                await _wait(aws, "function_updated_v2", name)
            wanted = normalize_tags(record.get("tags")) or {}
            old = normalize_tags(current.get("tags")) or {}
            arn = current["arn"]
            removed = [k for k in old if k not in wanted]
            changed = {k: v for k, v in wanted.items() if old.get(k) != v}
            if removed:
                await aws.untag_resource(Resource=arn, TagKeys=removed)
            if changed:
                await aws.tag_resource(Resource=arn, Tags=changed)
            return await self._read_one(aws, name, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("lambda", current["region"]) as aws:
            with ignoring("ResourceNotFoundException"):
                await aws.delete_function(FunctionName=current["name"])


LAMBDA_FUNCTION = Table(
    name="lambda_function",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("version", "varchar", nullable=False, default="'$LATEST'", cloud_assigned=True),
        Column("description", "varchar", normalize=_empty_is_none),
        # The base64 zip package; an imported function's row holds the digest of its code.
        Column("zip_b64", "varchar", normalize=code_digest),
        Column("handler", "varchar"),
        Column("runtime", "varchar", check=one_of("runtime", RUNTIMES)),
        Column(
            "package_type",
            "varchar",
            nullable=False,
            default="'Zip'",
            check=one_of("package_type", PACKAGE_TYPES),
            replaces=True,
        ),
        Column(
            "architecture",
            "varchar",
            nullable=False,
            default="'x86_64'",
            check=one_of("architecture", ARCHITECTURES),
            replaces=True,
        ),
        Column("memory_size", "integer", nullable=False, default="'128'"),
        Column("environment", "json", normalize=normalize_environment),
        tags_column(),
        # Subnet ids, as in IaSQL; replayed SQL names each subnet by its natural key.
        Column(
            "subnets",
            "varchar[]",
            normalize=normalize_subnets,
            cloud_ref=Ref("subnet", key="subnet_id"),
        ),
        region_column(),
        Column("role_name", "varchar", ref=Ref("iam_role", key="role_name")),
    ),
    mapper=LambdaFunctionMapper(),
    extra_ddl=(
        """ALTER TABLE lambda_function ADD CONSTRAINT "CHK_lambda_handler__package_type"
            CHECK ((package_type = 'Zip' AND handler IS NOT NULL) OR package_type != 'Zip')""",
        """ALTER TABLE lambda_function ADD CONSTRAINT "CHK_lambda_runtime__package_type"
            CHECK ((package_type = 'Zip' AND runtime IS NOT NULL) OR package_type != 'Zip')""",
    ),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    unique=(("name", "region"), ("arn",)),
)

# --- lambda_function_security_groups -------------------------------------------------------


class LambdaFunctionSecurityGroupsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return [
            {"lambda_function_id": f["arn"], "security_group_id": group}
            for f in await _functions(cloud, region)
            for group in f["security_groups"]
        ]

    async def _change(self, cloud: Cloud, arn: str, group: str, *, add: bool) -> None:
        name, region = name_of(arn), region_of(arn)
        async with _vpc_lock(name + "@" + region), cloud.client("lambda", region) as aws:
            with ignoring("ResourceNotFoundException"):
                answer = await _get(aws, name)
                if answer is None:
                    return
                vpc = answer["Configuration"].get("VpcConfig") or {}
                groups = visible_groups(vpc.get("SecurityGroupIds"), answer.get("Tags"))
                wanted = [*groups, group] if add else [g for g in groups if g != group]
                if (add and group in groups) or wanted == groups:
                    return
                subnets = list(vpc.get("SubnetIds") or [])
                if wanted and not subnets:
                    raise CloudError(
                        f"lambda function {name} is in no VPC: set its subnets to give it"
                        " security groups"
                    )
                config = await _vpc_config(cloud, aws, arn, region, subnets, wanted)
                await aws.update_function_configuration(FunctionName=name, VpcConfig=config)
                await _wait(aws, "function_updated_v2", name)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("lambda_function_id") is None or record.get("security_group_id") is None:
            raise CloudError("a lambda_function_security_groups row needs both of its references")
        await self._change(
            cloud, record["lambda_function_id"], record["security_group_id"], add=True
        )
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await self._change(
            cloud, current["lambda_function_id"], current["security_group_id"], add=False
        )


LAMBDA_FUNCTION_SECURITY_GROUPS = Table(
    name="lambda_function_security_groups",
    columns=(
        foreign_key(
            "lambda_function_id", "lambda_function", "arn", on_delete="CASCADE", replaces=False
        ),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", replaces=False
        ),
    ),
    mapper=LambdaFunctionSecurityGroupsMapper(),
    natural_key=("lambda_function_id", "security_group_id"),
    cloud_id=("lambda_function_id", "security_group_id"),
    primary_key=("lambda_function_id", "security_group_id"),
    # No region column (as in IaSQL), but read region by region; the ARN brings the region.
    regional=True,
)

# --- invoke_lambda -------------------------------------------------------------------------

_SIGNATURE = "invoke_lambda(lambda_function_name, function_payload json, region)"


async def invoke_lambda(
    cloud: Cloud,
    lambda_function_name: str,
    function_payload: Any = None,
    region: str | None = None,
) -> list[Record]:
    """Invokes a function (synchronously) with a JSON payload; returns its answer, and the
    function's error in `error` when its code failed."""
    if not lambda_function_name:
        raise ArgumentError(f"invoke_lambda needs the function's name: {_SIGNATURE}")
    if not region:
        raise ArgumentError(f"invoke_lambda needs a region (there is no default): {_SIGNATURE}")
    if function_payload is None:
        payload = "{}"
    elif isinstance(function_payload, str | bytes):
        payload = (
            function_payload.decode() if isinstance(function_payload, bytes) else function_payload
        )
        try:
            json.loads(payload or "{}")
        except ValueError:
            raise ArgumentError(f"the payload must be valid JSON: {_SIGNATURE}") from None
        payload = payload or "{}"
    else:
        payload = json.dumps(function_payload)
    async with cloud.client("lambda", region) as aws:
        answer = await aws.invoke(FunctionName=lambda_function_name, Payload=payload.encode())
        body = answer.get("Payload")
        text = (await body.read()).decode(errors="replace") if body is not None else ""
    error = answer.get("FunctionError")
    if error and "docker" in text.lower():
        # moto runs function code only in a Docker container: it reports the missing daemon
        # as the function's own error.
        raise CloudError(
            f"lambda function {lambda_function_name} could not run: the endpoint needs Docker"
            f" to run function code ({text.strip()[:300]})"
        )
    return [
        {
            "function_name": lambda_function_name,
            "version": answer.get("ExecutedVersion"),
            "status": str(answer.get("StatusCode")),
            "payload": text,
            "error": error,
        }
    ]


INVOKE_LAMBDA = ModuleFunction(
    name="invoke_lambda",
    columns=(
        ("function_name", "varchar"),
        ("version", "varchar"),
        ("status", "varchar"),
        ("payload", "varchar"),
        ("error", "varchar"),
    ),
    params=(
        ("lambda_function_name", "varchar"),
        ("function_payload", "json"),
        ("region", "varchar"),
    ),
    run=invoke_lambda,
    description="Invokes a Lambda function with a JSON payload and returns its answer",
    changes_cloud=False,
    optional=("function_payload", "region"),
    sample="""SELECT * FROM invoke_lambda('my-function', '{"name": "test"}')""",
)

MODULE = ModuleSpec(
    name="aws_lambda",
    version=VERSION,
    dependencies=("aws_account", "aws_iam", "aws_vpc", "aws_security_group"),
    description="Lambda functions (zip packages), their VPC security groups, and invoke_lambda",
    tables=(LAMBDA_FUNCTION, LAMBDA_FUNCTION_SECURITY_GROUPS),
    functions=(INVOKE_LAMBDA,),
)
