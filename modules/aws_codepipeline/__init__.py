"""aws_codepipeline: CodePipeline pipeline declarations.

A pipeline's artifact store and stages are JSON in AWS's own shapes (ArtifactStore and a list
of StageDeclaration, camelCase keys), as in IaSQL. The stages, the artifact store and the
service role change in place (UpdatePipeline). A new name or region is a new pipeline (the
old one is deleted): IaSQL refuses the rename instead.
"""

from __future__ import annotations

import json
from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules.aws_iam import role_arn, role_name_of
from modules.concurrency import gather_bounded
from modules.errors import ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Ref, Table

# AWS hides secret action settings (a GitHub OAuth token) in what GetPipeline returns.
MASKED = "****"
_SECRET_SETTINGS = ("OAuthToken",)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _pruned(value: Any) -> Any:
    """A JSON value with its null members dropped and object keys sorted."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def normalize_artifact_store(value: Any) -> Any:
    """An ArtifactStore with sorted keys and no null members."""
    return None if value is None else _pruned(_json(value))


def _action(action: Any) -> Any:
    """An ActionDeclaration as AWS reads it back: runOrder 1 when none is given, empty
    settings and artifact lists left out, secret settings masked."""
    if not isinstance(action, dict):
        return action
    out = dict(action)
    out.setdefault("runOrder", 1)
    for key in ("configuration", "inputArtifacts", "outputArtifacts"):
        if not out.get(key):
            out.pop(key, None)
    settings = out.get("configuration")
    if isinstance(settings, dict):
        out["configuration"] = {
            k: MASKED if k in _SECRET_SETTINGS else v for k, v in settings.items()
        }
    return _pruned(out)


def normalize_stages(value: Any) -> Any:
    """Stages as AWS reads them back (see `_action`); none is None."""
    stages = _json(value)
    if not stages:
        return None
    if not isinstance(stages, list):
        return stages
    out = []
    for stage in stages:
        if isinstance(stage, dict) and isinstance(stage.get("actions"), list):
            stage = {**stage, "actions": [_action(a) for a in stage["actions"]]}
        out.append(_pruned(stage))
    return out


def _record(pipeline: dict[str, Any], region: str) -> Record:
    role = pipeline.get("roleArn")
    return {
        "name": pipeline["name"],
        "artifact_store": _pruned(pipeline.get("artifactStore")),
        "stages": _pruned(pipeline.get("stages")) or None,
        "region": region,
        "service_role_name": role_name_of(role) if role else None,
    }


async def _get(aws: Any, name: str) -> dict[str, Any] | None:
    """GetPipeline, or None for a pipeline that is not there."""
    try:
        answer = await aws.get_pipeline(name=name)
    except aws.exceptions.PipelineNotFoundException:
        return None
    pipeline: dict[str, Any] = answer["pipeline"]
    return pipeline


async def _role_arn(cloud: Cloud, record: Record) -> str:
    role_name = record.get("service_role_name")
    if not role_name:
        raise CloudError(f"pipeline {record['name']} needs a service role: set service_role_name")
    return await role_arn(cloud, role_name)


async def _declaration(cloud: Cloud, record: Record) -> dict[str, Any]:
    return {
        "name": record["name"],
        "roleArn": await _role_arn(cloud, record),
        "artifactStore": _json(record["artifact_store"]),
        "stages": _json(record.get("stages")) or [],
    }


class PipelineDeclarationMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("codepipeline", region) as aws:
            pages = aws.get_paginator("list_pipelines").paginate()
            names = [p["name"] async for page in pages for p in page.get("pipelines", [])]
            found = await gather_bounded(_get(aws, name) for name in names)
        return [_record(p, region) for p in found if p is not None and p.get("roleArn")]

    async def _read_one(self, aws: Any, name: str, region: str) -> Record:
        pipeline = await _get(aws, name)
        if pipeline is None:
            raise CloudError(f"pipeline {name} is gone from {region}")
        return _record(pipeline, region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["name"], record["region"]
        declaration = await _declaration(cloud, record)
        async with cloud.client("codepipeline", region) as aws:
            if await _get(aws, name) is None:  # else a retried create: it is there
                await aws.create_pipeline(pipeline=declaration)
            return await self._read_one(aws, name, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["name"], current["region"]
        declaration = await _declaration(cloud, record)
        async with cloud.client("codepipeline", region) as aws:
            await aws.update_pipeline(pipeline=declaration)
            return await self._read_one(aws, name, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("codepipeline", current["region"]) as aws:
            with ignoring("PipelineNotFoundException", "ResourceNotFoundException"):
                await aws.delete_pipeline(name=current["name"])


PIPELINE_DECLARATION = Table(
    name="pipeline_declaration",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("artifact_store", "json", nullable=False, normalize=normalize_artifact_store),
        Column("stages", "json", normalize=normalize_stages),
        region_column(),
        Column("service_role_name", "varchar", ref=Ref("iam_role", key="role_name")),
    ),
    mapper=PipelineDeclarationMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    # The stages name these by text, and AWS starts a pipeline's first run as soon as it is
    # made: those the same commit makes go first.
    create_after=("codebuild_project", "codedeploy_application", "codedeploy_deployment_group"),
)

MODULE = ModuleSpec(
    name="aws_codepipeline",
    version=VERSION,
    dependencies=("aws_account", "aws_iam"),
    description="CodePipeline pipeline declarations (artifact store and stages as AWS's JSON)",
    tables=(PIPELINE_DECLARATION,),
)
