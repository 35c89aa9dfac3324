"""CodeBuild: what moto lacks for aws_codebuild.

- CreateProject with source type NO_SOURCE or CODEPIPELINE (or CODEPIPELINE artifacts) needs
  no location on AWS; moto demands one.
- UpdateProject, BatchDeleteBuilds, ImportSourceCredentials, ListSourceCredentials and
  DeleteSourceCredentials are missing (HTTP 500).
- Build numbers count up per project from 1, as AWS's do (moto draws them at random), a
  build's completion happens once (moto re-completes it, with a new end time, on every
  BatchGetBuilds), and re-creating a project keeps the builds of the one before (AWS keeps
  builds when their project is deleted).

Source credentials are kept per account and region, one per server type, as AWS keeps them.
The store keeps only a credential's type, never its token (a sandbox run with a journal
does keep every write request it answered, this one included, in its journal file)."""

from __future__ import annotations

from typing import Any

SERVER_TYPES = ("GITHUB", "BITBUCKET", "GITHUB_ENTERPRISE", "GITLAB", "GITLAB_SELF_MANAGED")
AUTH_TYPES = ("OAUTH", "BASIC_AUTH", "PERSONAL_ACCESS_TOKEN", "CODECONNECTIONS", "SECRETS_MANAGER")
_NO_LOCATION = ("NO_SOURCE", "CODEPIPELINE")


def _credentials(backend: Any) -> dict[str, dict[str, str]]:
    """The backend's source credentials by ARN (info only: serverType, authType)."""
    found: dict[str, dict[str, str]] = backend.__dict__.setdefault("iasql_source_credentials", {})
    return found


def _build_numbers(backend: Any) -> dict[str, int]:
    numbers: dict[str, int] = backend.__dict__.setdefault("iasql_build_numbers", {})
    return numbers


def install() -> None:
    from moto.codebuild import responses
    from moto.codebuild.exceptions import (
        InvalidInputException,
        ResourceAlreadyExistsException,
        ResourceNotFoundException,
    )
    from moto.codebuild.models import CodeBuildBackend
    from moto.codebuild.responses import CodeBuildResponse
    from moto.core.responses import ActionResult
    from moto.core.utils import unix_time
    from moto.utilities.utils import get_partition

    check_source = responses._validate_required_params_source
    check_artifacts = responses._validate_required_params_artifacts

    def validate_source(source: dict[str, Any]) -> None:
        if source.get("type") in _NO_LOCATION and not source.get("location"):
            return  # AWS takes these without a location
        check_source(source)

    def validate_artifacts(artifacts: dict[str, Any]) -> None:
        if artifacts.get("type") == "CODEPIPELINE":
            return  # the pipeline says where artifacts go
        check_artifacts(artifacts)

    responses._validate_required_params_source = validate_source
    responses._validate_required_params_artifacts = validate_artifacts

    # --- projects and builds -------------------------------------------------------------

    original_create = CodeBuildBackend.create_project
    original_start = CodeBuildBackend.start_build

    def create_project(
        self: CodeBuildBackend, project_name: str, **settings: Any
    ) -> dict[str, Any]:
        history = self.build_history.get(project_name, [])
        result: dict[str, Any] = original_create(self, project_name=project_name, **settings)
        self.build_history[project_name] = history
        return result

    def start_build(
        self: CodeBuildBackend,
        project_name: str,
        source_version: str | None = None,
        artifact_override: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        build: dict[str, Any] = original_start(
            self, project_name, source_version, artifact_override
        )
        numbers = _build_numbers(self)
        numbers[project_name] = numbers.get(project_name, 0) + 1
        build["buildNumber"] = numbers[project_name]
        return build

    def batch_get_builds(self: CodeBuildBackend, ids: list[str]) -> list[dict[str, Any]]:
        import datetime

        from moto.core.parse import default_timestamp_parser
        from moto.core.utils import iso_8601_datetime_with_milliseconds

        found: list[dict[str, Any]] = []
        for builds in self.build_metadata_history.values():
            for build in builds:
                if build["id"] not in ids:
                    continue
                if build["buildStatus"] == "IN_PROGRESS":  # moto's builds finish when read
                    build["phases"] = self._set_phases(build["phases"])
                    start = default_timestamp_parser(build["startTime"])
                    build["endTime"] = iso_8601_datetime_with_milliseconds(
                        start + datetime.timedelta(minutes=1)
                    )
                    build["currentPhase"] = "COMPLETED"
                    build["buildStatus"] = "SUCCEEDED"
                    build["buildComplete"] = True
                found.append(build)
        return found

    def update_project(
        self: CodeBuildBackend, name: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        project = self.codebuild_projects[name]
        metadata = project.project_metadata
        for key, value in changes.items():
            if value is None:
                continue
            if key == "serviceRole":
                project.service_role = value
            if key == "sourceVersion" and value == "":
                metadata.pop("sourceVersion", None)
                continue
            metadata[key] = value
        metadata["lastModifiedDate"] = unix_time()
        return metadata

    def batch_delete_builds(
        self: CodeBuildBackend, ids: list[str]
    ) -> tuple[list[str], list[dict[str, str]]]:
        deleted: list[str] = []
        for build_id in ids:
            for project, builds in self.build_metadata_history.items():
                kept = [b for b in builds if b["id"] != build_id]
                if len(kept) != len(builds):
                    self.build_metadata_history[project] = kept
                    deleted.append(build_id)
            for history in self.build_history.values():
                if build_id in history:
                    history.remove(build_id)
            for project, latest in list(self.build_metadata.items()):
                if latest.build_metadata["id"] == build_id:
                    del self.build_metadata[project]
        missing = [{"id": i, "statusCode": "BUILD_NOT_FOUND"} for i in ids if i not in set(deleted)]
        return sorted(set(deleted), key=ids.index), missing

    CodeBuildBackend.create_project = create_project  # type: ignore[method-assign,assignment]
    CodeBuildBackend.start_build = start_build  # type: ignore[method-assign]
    CodeBuildBackend.batch_get_builds = batch_get_builds  # type: ignore[method-assign]
    CodeBuildBackend.update_project = update_project  # type: ignore[attr-defined]
    CodeBuildBackend.batch_delete_builds = batch_delete_builds  # type: ignore[attr-defined]

    def _project_arn(self: CodeBuildResponse, name: str) -> str:
        return (
            f"arn:{get_partition(self.region)}:codebuild:{self.region}:"
            f"{self.current_account}:project/{name}"
        )

    def update_project_response(self: CodeBuildResponse) -> ActionResult:
        name = self._get_param("name")
        if name not in self.codebuild_backend.codebuild_projects:
            raise ResourceNotFoundException(f"Project cannot be found: {_project_arn(self, name)}")
        source = self._get_param("source")
        if source is not None:
            validate_source(source)
        artifacts = self._get_param("artifacts")
        if artifacts is not None:
            validate_artifacts(artifacts)
        environment = self._get_param("environment")
        if environment is not None:
            responses._validate_required_params_environment(environment)
        role = self._get_param("serviceRole")
        if role is not None:
            responses._validate_required_params_service_role(
                self.current_account, self.region, role
            )
        keys = (
            "description",
            "source",
            "sourceVersion",
            "artifacts",
            "environment",
            "serviceRole",
            "timeoutInMinutes",
            "queuedTimeoutInMinutes",
            "tags",
            "cache",
            "logsConfig",
            "vpcConfig",
        )
        changes = {key: self._get_param(key) for key in keys}
        metadata = self.codebuild_backend.update_project(name, changes)  # type: ignore[attr-defined]
        return ActionResult({"project": metadata})

    def batch_delete_builds_response(self: CodeBuildResponse) -> ActionResult:
        ids = self._get_param("ids") or []
        deleted, missing = self.codebuild_backend.batch_delete_builds(ids)  # type: ignore[attr-defined]
        return ActionResult({"buildsDeleted": deleted, "buildsNotDeleted": missing})

    # --- source credentials --------------------------------------------------------------

    def import_source_credentials(self: CodeBuildResponse) -> ActionResult:
        token = self._get_param("token")
        server_type = self._get_param("serverType")
        auth_type = self._get_param("authType")
        if not token:
            raise InvalidInputException("Token is required")
        if server_type not in SERVER_TYPES:
            raise InvalidInputException(f"Invalid server type provided: {server_type}")
        if auth_type not in AUTH_TYPES:
            raise InvalidInputException(f"Invalid auth type provided: {auth_type}")
        if auth_type == "BASIC_AUTH" and not self._get_param("username"):
            raise InvalidInputException("Username is required for BASIC_AUTH")
        arn = (
            f"arn:{get_partition(self.region)}:codebuild:{self.region}:"
            f"{self.current_account}:token/{server_type.lower()}"
        )
        stored = _credentials(self.codebuild_backend)
        if arn in stored and self._get_param("shouldOverwrite") is False:
            raise ResourceAlreadyExistsException(f"Source credentials already exist: {arn}")
        stored[arn] = {"arn": arn, "serverType": server_type, "authType": auth_type}
        return ActionResult({"arn": arn})

    def list_source_credentials(self: CodeBuildResponse) -> ActionResult:
        infos = [dict(info) for info in _credentials(self.codebuild_backend).values()]
        return ActionResult({"sourceCredentialsInfos": infos})

    def delete_source_credentials(self: CodeBuildResponse) -> ActionResult:
        arn = self._get_param("arn")
        stored = _credentials(self.codebuild_backend)
        if arn not in stored:
            raise ResourceNotFoundException(f"Source credentials not found: {arn}")
        del stored[arn]
        return ActionResult({"arn": arn})

    CodeBuildResponse.update_project = update_project_response  # type: ignore[attr-defined]
    CodeBuildResponse.batch_delete_builds = batch_delete_builds_response  # type: ignore[attr-defined]
    CodeBuildResponse.import_source_credentials = import_source_credentials  # type: ignore[attr-defined]
    CodeBuildResponse.list_source_credentials = list_source_credentials  # type: ignore[attr-defined]
    CodeBuildResponse.delete_source_credentials = delete_source_credentials  # type: ignore[attr-defined]
