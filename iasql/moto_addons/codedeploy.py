"""CodeDeploy: moto has no UpdateDeploymentGroup, DeleteDeploymentGroup, DeleteApplication,
RegisterApplicationRevision or StopDeployment (HTTP 500), and its deployments stay `Created`
forever, so the `deployment_successful` waiter never passes.

This adds the five operations with AWS's request and answer shapes and error codes, and moves
a deployment that is still `Created`, `Queued` or `InProgress` to `Succeeded` the next time it
is read (GetDeployment, BatchGetDeployments, ListDeployments). The sandbox runs no CodeDeploy
agents, so this is what AWS would report for a group whose instances are healthy and whose
revision has no failing lifecycle hooks; a deployment AWS would fail (no instances, a failing
hook) is not modelled. As on AWS, deleting an application or group that is not there is no
error, and deleting an application deletes its deployment groups (deployments stay readable)."""

from __future__ import annotations

from typing import Any

_RUNNING = ("Created", "Queued", "InProgress")
_DONE = ("Succeeded", "Failed", "Stopped")


def install() -> None:
    from moto.codedeploy import models, responses
    from moto.codedeploy.exceptions import (
        ApplicationNameRequiredException,
        CodeDeployException,
        DeploymentDoesNotExistException,
        DeploymentGroupAlreadyExistsException,
        DeploymentGroupNameRequiredException,
    )
    from moto.core.responses import ActionResult, EmptyResult
    from moto.core.utils import utcnow

    backend_class = models.CodeDeployBackend
    response_class = responses.CodeDeployResponse

    class DeploymentAlreadyCompletedException(CodeDeployException):
        code = 400

        def __init__(self, message: str) -> None:
            super().__init__("DeploymentAlreadyCompletedException", message)

    class RevisionRequiredException(CodeDeployException):
        code = 400

        def __init__(self, message: str) -> None:
            super().__init__("RevisionRequiredException", message)

    def settle(deployment: Any) -> Any:
        """A deployment the sandbox has no agent to run finishes as healthy instances would."""
        if deployment.status in _RUNNING:
            now = utcnow()
            deployment.status = "Succeeded"
            deployment.start_time = deployment.start_time or now
            deployment.complete_time = now
        return deployment

    # --- deployments finish when read ------------------------------------------------------

    original_get = backend_class.get_deployment
    original_batch = backend_class.batch_get_deployments
    original_list = backend_class.list_deployments

    def get_deployment(self: Any, deployment_id: str) -> Any:
        return settle(original_get(self, deployment_id))

    def batch_get_deployments(self: Any, deployment_ids: list[str]) -> list[Any]:
        return [settle(d) for d in original_batch(self, deployment_ids)]

    def list_deployments(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        for deployment in self.deployments.values():
            settle(deployment)
        found: list[str] = original_list(self, *args, **kwargs)
        return found

    backend_class.get_deployment = get_deployment  # type: ignore[method-assign]
    backend_class.batch_get_deployments = batch_get_deployments  # type: ignore[method-assign]
    backend_class.list_deployments = list_deployments  # type: ignore[method-assign]

    # --- the backend's missing operations --------------------------------------------------

    def update_deployment_group(
        self: Any, application_name: str, current_name: str, changes: dict[str, Any]
    ) -> None:
        if not application_name:
            raise ApplicationNameRequiredException("The application name must be specified.")
        if not current_name:
            raise DeploymentGroupNameRequiredException(
                "The deployment group name must be specified."
            )
        group = self.get_deployment_group(application_name, current_name)
        groups = self.deployment_groups[application_name]
        new_name = changes.pop("deployment_group_name", None)
        if new_name and new_name != current_name:
            if new_name in groups:
                raise DeploymentGroupAlreadyExistsException(
                    f"Deployment group {new_name} already exists."
                )
            del groups[current_name]
            group.deployment_group_name = new_name
            groups[new_name] = group
        # As on AWS, a setting left out is unchanged; an empty list clears a list.
        for attribute, value in changes.items():
            if value is not None:
                setattr(group, attribute, value)

    def delete_deployment_group(self: Any, application_name: str, group_name: str) -> None:
        if not application_name:
            raise ApplicationNameRequiredException("The application name must be specified.")
        if not group_name:
            raise DeploymentGroupNameRequiredException(
                "The deployment group name must be specified."
            )
        self.deployment_groups.get(application_name, {}).pop(group_name, None)
        self.tagger.delete_all_tags_for_resource(
            self._deployment_group_arn(application_name, group_name)
        )

    def delete_application(self: Any, application_name: str) -> None:
        if not application_name:
            raise ApplicationNameRequiredException("The application name must be specified.")
        for group_name in list(self.deployment_groups.get(application_name, {})):
            delete_deployment_group(self, application_name, group_name)
        self.deployment_groups.pop(application_name, None)
        self.applications.pop(application_name, None)
        self.tagger.delete_all_tags_for_resource(self._application_arn(application_name))

    def register_application_revision(
        self: Any, application_name: str, revision: dict[str, Any] | None, description: str
    ) -> None:
        if not application_name:
            raise ApplicationNameRequiredException("The application name must be specified.")
        self.get_application(application_name)  # ApplicationDoesNotExistException
        if not revision:
            raise RevisionRequiredException("The revision must be specified.")
        revisions = self.__dict__.setdefault("iasql_revisions", {})
        revisions.setdefault(application_name, []).append(
            {"revisionLocation": revision, "description": description, "registerTime": utcnow()}
        )

    def stop_deployment(self: Any, deployment_id: str) -> None:
        if deployment_id not in self.deployments:
            raise DeploymentDoesNotExistException(
                f"The deployment {deployment_id} does not exist with the user or AWS account."
            )
        deployment = self.deployments[deployment_id]
        if deployment.status in _DONE:
            raise DeploymentAlreadyCompletedException(
                f"The deployment {deployment_id} has already completed."
            )
        deployment.status = "Stopped"
        deployment.complete_time = utcnow()

    backend_class.update_deployment_group = update_deployment_group  # type: ignore[attr-defined]
    backend_class.delete_deployment_group = delete_deployment_group  # type: ignore[attr-defined]
    backend_class.delete_application = delete_application  # type: ignore[attr-defined]
    backend_class.register_application_revision = register_application_revision  # type: ignore[attr-defined]
    backend_class.stop_deployment = stop_deployment  # type: ignore[attr-defined]

    # --- their requests and answers --------------------------------------------------------

    # UpdateDeploymentGroup's request keys and the moto attributes they set.
    settings = {
        "newDeploymentGroupName": "deployment_group_name",
        "deploymentConfigName": "deployment_config_name",
        "ec2TagFilters": "ec2_tag_filters",
        "onPremisesInstanceTagFilters": "on_premises_instance_tag_filters",
        "autoScalingGroups": "auto_scaling_groups",
        "serviceRoleArn": "service_role_arn",
        "triggerConfigurations": "trigger_configurations",
        "autoRollbackConfiguration": "auto_rollback_configuration",
        "outdatedInstancesStrategy": "outdated_instances_strategy",
        "deploymentStyle": "deployment_style",
        "blueGreenDeploymentConfiguration": "blue_green_deployment_configuration",
        "loadBalancerInfo": "load_balancer_info",
        "ec2TagSet": "ec2_tag_set",
        "ecsServices": "ecs_services",
        "onPremisesTagSet": "on_premises_tag_set",
        "terminationHookEnabled": "termination_hook_enabled",
    }

    def update_deployment_group_response(self: Any) -> ActionResult:
        changes = {attribute: self._get_param(key) for key, attribute in settings.items()}
        self.codedeploy_backend.update_deployment_group(
            self._get_param("applicationName"),
            self._get_param("currentDeploymentGroupName"),
            changes,
        )
        return ActionResult({"hooksNotCleanedUp": []})

    def delete_deployment_group_response(self: Any) -> ActionResult:
        self.codedeploy_backend.delete_deployment_group(
            self._get_param("applicationName"), self._get_param("deploymentGroupName")
        )
        return ActionResult({"hooksNotCleanedUp": []})

    def delete_application_response(self: Any) -> EmptyResult:
        self.codedeploy_backend.delete_application(self._get_param("applicationName"))
        return EmptyResult()

    def register_application_revision_response(self: Any) -> EmptyResult:
        self.codedeploy_backend.register_application_revision(
            self._get_param("applicationName"),
            self._get_param("revision"),
            self._get_param("description"),
        )
        return EmptyResult()

    def stop_deployment_response(self: Any) -> ActionResult:
        self.codedeploy_backend.stop_deployment(self._get_param("deploymentId"))
        return ActionResult({"status": "Succeeded", "statusMessage": "The deployment was stopped"})

    response_class.update_deployment_group = update_deployment_group_response  # type: ignore[attr-defined]
    response_class.delete_deployment_group = delete_deployment_group_response  # type: ignore[attr-defined]
    response_class.delete_application = delete_application_response  # type: ignore[attr-defined]
    response_class.register_application_revision = register_application_revision_response  # type: ignore[attr-defined]
    response_class.stop_deployment = stop_deployment_response  # type: ignore[attr-defined]
