"""The mapper of `ecs_simplified`: one app is a set of resources of other modules, all named
after the app. It writes them with those modules' mappers and reads them back by name."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiobotocore.waiter import create_waiter_with_client
from botocore.waiter import WaiterModel

from modules.aws_cloudwatch import LogGroupMapper
from modules.aws_ecr import RepositoryMapper
from modules.aws_ecs_fargate import (
    CPU_MEMORY,
    ClusterMapper,
    ServiceMapper,
    TaskDefinitionMapper,
    cpu_and_memory,
    cpu_memory_of,
)
from modules.aws_ecs_fargate.containers import split_image
from modules.aws_elb import (
    ListenerMapper,
    LoadBalancerMapper,
    LoadBalancerSecurityGroupsMapper,
    TargetGroupMapper,
)
from modules.aws_iam import RoleMapper, role_arn
from modules.aws_security_group import SecurityGroupMapper, SecurityGroupRuleMapper
from modules.concurrency import gather_bounded
from modules.errors import ignoring
from modules.spec import Cloud, CloudError, Record

# The task execution role's trust policy and its one managed policy, as IaSQL makes them.
_TASKS_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "",
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
_EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
_ANYWHERE = "0.0.0.0/0"
_HEALTH_PATH = "/health"
_MAX_SUBNETS = 16  # a Fargate service takes at most 16 subnets

# The network interfaces that use a group (a load balancer's, a task's) outlive them a while,
# and AWS refuses to delete the group until they are gone.
_GROUP_WAITERS = WaiterModel(
    {
        "version": 2,
        "waiters": {
            "GroupUnused": {
                "operation": "DescribeNetworkInterfaces",
                "delay": 5,
                "maxAttempts": 60,
                "acceptors": [
                    {
                        "state": "success",
                        "matcher": "path",
                        "argument": "length(NetworkInterfaces[]) == `0`",
                        "expected": True,
                    }
                ],
            }
        },
    }
)


@dataclass(frozen=True)
class Names:
    """The names of an app's resources (IaSQL's naming)."""

    app: str

    @property
    def repository(self) -> str:
        return f"{self.app}-repository"

    @property
    def log_group(self) -> str:
        return f"{self.app}-log-group"

    @property
    def role(self) -> str:
        return f"{self.app}-ecs-task-exec-role"

    @property
    def security_group(self) -> str:
        return f"{self.app}-security-group"

    @property
    def target_group(self) -> str:
        return f"{self.app}-target"

    @property
    def load_balancer(self) -> str:
        return f"{self.app}-load-balancer"

    @property
    def cluster(self) -> str:
        return f"{self.app}-cluster"

    @property
    def family(self) -> str:
        return f"{self.app}-td"

    @property
    def container(self) -> str:
        return f"{self.app}-container"

    @property
    def service(self) -> str:
        return f"{self.app}-service"


_CLUSTER_SUFFIX = "-cluster"
_APP_NAME_MAX = 18


# --- values ---------------------------------------------------------------------------------


def cpu_mem_of(cpu: Any, memory: Any) -> str | None:
    """A task's CPU units and MiB as IaSQL's name of the pair (one of the combinations Fargate
    takes, CPU_MEMORY); None for a pair it has none for."""
    try:
        name = cpu_memory_of(cpu, memory)
    except ValueError:
        return None
    return name if name in CPU_MEMORY else None


def normalize_env(value: Any) -> Any:
    """The environment as a sorted object of text values; none is NULL. Text that is no JSON
    object compares as itself."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not isinstance(value, dict):
        return value
    return {str(k): _text(v) for k, v in sorted(value.items())} or None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def environment(value: Any) -> list[dict[str, str]]:
    env = normalize_env(value)
    if env is None:
        return []
    if not isinstance(env, dict):
        raise CloudError(
            'ecs_simplified.env_variables must be a JSON object of names and values: {"KEY": "v"}'
        )
    return [{"name": k, "value": v} for k, v in env.items()]


def image_of(uri: str, tag: str | None, digest: str | None) -> str:
    if digest:
        return f"{uri}@{digest}"
    return f"{uri}:{tag}" if tag else uri


def _repository_name(uri: str | None) -> str | None:
    """The repository of an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/<name>)."""
    if not uri or ".dkr.ecr." not in uri or "/" not in uri:
        return None
    return uri.split("/", 1)[1]


def _forwards_to(listener: dict[str, Any]) -> str | None:
    actions = listener.get("DefaultActions") or []
    if len(actions) != 1 or actions[0].get("Type") != "forward":
        return None
    if actions[0].get("TargetGroupArn"):
        return str(actions[0]["TargetGroupArn"])
    groups = (actions[0].get("ForwardConfig") or {}).get("TargetGroups") or []
    return str(groups[0]["TargetGroupArn"]) if len(groups) == 1 else None


async def _quietly(step: Callable[[], Awaitable[Any]]) -> None:
    """An undo step of a failed create: its own failure must not hide the create's error."""
    with contextlib.suppress(Exception):
        await step()


# --- reading --------------------------------------------------------------------------------


class _Incomplete(Exception):
    """The resources found by an app's names are not a whole app (or not one made this way)."""


def _require(condition: bool) -> None:
    if not condition:
        raise _Incomplete


async def _read_app(cloud: Cloud, region: str, app: str) -> Record | None:
    """The app as the cloud has it, when every one of its resources is there as this module
    makes them; None otherwise."""
    try:
        return await _read_whole_app(cloud, region, app)
    except _Incomplete:
        return None


async def _read_whole_app(cloud: Cloud, region: str, app: str) -> Record:
    n = Names(app)
    async with cloud.client("ecs", region) as ecs:
        services: list[dict[str, Any]] = []
        with ignoring("ClusterNotFoundException"):
            answer = await ecs.describe_services(cluster=n.cluster, services=[n.service])
            services = [s for s in answer.get("services", []) if s.get("status") == "ACTIVE"]
        _require(len(services) == 1)
        service = services[0]
        task = (await ecs.describe_task_definition(taskDefinition=service["taskDefinition"]))[
            "taskDefinition"
        ]
    balancers = service.get("loadBalancers") or []
    network = (service.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {}
    groups = network.get("securityGroups") or []
    _require(len(balancers) == 1 and len(groups) == 1)
    port = balancers[0].get("containerPort")
    _require(balancers[0].get("containerName") == n.container)

    # The task definition: one container on the port, logging to the app's group.
    containers = task.get("containerDefinitions") or []
    _require(task.get("family") == n.family and len(containers) == 1)
    container = containers[0]
    mappings = container.get("portMappings") or []
    _require(container.get("name") == n.container and len(mappings) == 1)
    _require(mappings[0].get("containerPort") == port)
    _require(mappings[0].get("hostPort") in (None, port))
    role = task.get("executionRoleArn")
    _require(bool(role) and role == task.get("taskRoleArn") and role.split("/")[-1] == n.role)
    options = (container.get("logConfiguration") or {}).get("options") or {}
    _require(options.get("awslogs-group") == n.log_group)
    cpu_mem = cpu_mem_of(task.get("cpu"), task.get("memory"))
    _require(cpu_mem is not None)

    # The load balancer, its target group and its one listener.
    async with cloud.client("elbv2", region) as elb:
        target_group_arn = balancers[0].get("targetGroupArn")
        _require(bool(target_group_arn))
        target_groups: list[dict[str, Any]] = []
        with ignoring("TargetGroupNotFound"):
            found = await elb.describe_target_groups(TargetGroupArns=[target_group_arn])
            target_groups = found["TargetGroups"]
        _require(len(target_groups) == 1)
        target_group = target_groups[0]
        _require(target_group.get("TargetGroupName") == n.target_group)
        _require(target_group.get("TargetType") == "ip" and target_group.get("Protocol") == "HTTP")
        _require(target_group.get("Port") == port)
        _require(target_group.get("HealthCheckPath") == _HEALTH_PATH)
        lb_arns = target_group.get("LoadBalancerArns") or []
        _require(len(lb_arns) == 1)
        balancers_found: list[dict[str, Any]] = []
        with ignoring("LoadBalancerNotFound"):
            found = await elb.describe_load_balancers(LoadBalancerArns=lb_arns)
            balancers_found = found["LoadBalancers"]
        _require(len(balancers_found) == 1)
        balancer = balancers_found[0]
        _require(balancer.get("LoadBalancerName") == n.load_balancer)
        _require(balancer.get("Type") == "application")
        _require((balancer.get("Scheme") or "internet-facing") == "internet-facing")
        _require((balancer.get("IpAddressType") or "ipv4") == "ipv4")
        _require(list(balancer.get("SecurityGroups") or []) == groups)
        listeners = (await elb.describe_listeners(LoadBalancerArn=lb_arns[0]))["Listeners"]
        _require(len(listeners) == 1)
        listener = listeners[0]
        _require(listener.get("Port") == port and listener.get("Protocol") == "HTTP")
        _require(_forwards_to(listener) == target_group_arn)

    # The security group: in on the port from anywhere, out to anywhere.
    async with cloud.client("ec2", region) as ec2:
        security_groups: list[dict[str, Any]] = []
        with ignoring("InvalidGroup.NotFound"):
            found = await ec2.describe_security_groups(GroupIds=groups)
            security_groups = found["SecurityGroups"]
        _require(len(security_groups) == 1)
        _require(security_groups[0].get("GroupName") == n.security_group)
        found = await ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": groups}]
        )
        rules = found["SecurityGroupRules"]
    ingress = [r for r in rules if not r.get("IsEgress")]
    egress = [r for r in rules if r.get("IsEgress")]
    _require(len(ingress) == 1 and len(egress) == 1)
    _require(ingress[0].get("IpProtocol") == "tcp" and ingress[0].get("CidrIpv4") == _ANYWHERE)
    _require(ingress[0].get("FromPort") == port and ingress[0].get("ToPort") == port)
    _require(egress[0].get("IpProtocol") == "-1" and egress[0].get("CidrIpv4") == _ANYWHERE)

    # The log group and the role.
    async with cloud.client("logs", region) as logs:
        found = await logs.describe_log_groups(logGroupNamePrefix=n.log_group)
        _require(any(g["logGroupName"] == n.log_group for g in found.get("logGroups", [])))
    async with cloud.client("iam", None) as iam:
        role_found = False
        with ignoring("NoSuchEntity"):
            await iam.get_role(RoleName=n.role)
            role_found = True
        _require(role_found)

    uri, tag, digest = split_image(str(container.get("image") or ""))
    env = {e["name"]: e.get("value", "") for e in container.get("environment") or []}
    return {
        "app_name": app,
        "desired_count": service.get("desiredCount"),
        "app_port": port,
        "cpu_mem": cpu_mem,
        "repository_uri": uri or None,
        "image_tag": tag,
        "image_digest": digest,
        "public_ip": network.get("assignPublicIp") == "ENABLED",
        "load_balancer_dns": balancer.get("DNSName"),
        "env_variables": json.dumps(dict(sorted(env.items()))) if env else None,
        "region": region,
    }


# --- the parts, each through its own module's mapper ---------------------------------------


async def _default_network(cloud: Cloud, region: str) -> tuple[str, list[str]]:
    """The region's default VPC and its default subnets (one per zone), where the app goes."""
    async with cloud.client("ec2", region) as ec2:
        vpcs = await ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
        found = sorted(v["VpcId"] for v in vpcs["Vpcs"])
        if not found:
            raise CloudError(f"{region} has no default VPC, where ecs_simplified puts an app")
        subnets = await ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [found[0]]},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )
    ids = sorted(s["SubnetId"] for s in subnets["Subnets"])
    if not ids:
        raise CloudError(f"the default VPC of {region} has no default subnets")
    return found[0], ids[:_MAX_SUBNETS]


class _Undo:
    """What a create made, to remove again (newest first) when a later step fails."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], Awaitable[Any]]] = []

    def add(self, step: Callable[[], Awaitable[Any]]) -> None:
        self.steps.append(step)

    async def run(self) -> None:
        for step in reversed(self.steps):
            await _quietly(step)


async def _ensure_repository(cloud: Cloud, region: str, name: str, undo: _Undo | None) -> str:
    """The app's own ECR repository (made if missing): its URI."""
    async with cloud.client("ecr", region) as ecr:
        with ignoring("RepositoryNotFoundException"):
            found = await ecr.describe_repositories(repositoryNames=[name])
            return str(found["repositories"][0]["repositoryUri"])
    made = await RepositoryMapper().create(
        cloud,
        {
            "repository_name": name,
            "image_tag_mutability": "MUTABLE",
            "scan_on_push": False,
            "region": region,
        },
    )
    if undo is not None:
        undo.add(lambda: RepositoryMapper().delete(cloud, made))
    return str(made["repository_uri"])


async def _find_group(cloud: Cloud, region: str, name: str, vpc: str | None) -> str | None:
    filters = [{"Name": "group-name", "Values": [name]}]
    if vpc:
        filters.append({"Name": "vpc-id", "Values": [vpc]})
    async with cloud.client("ec2", region) as ec2:
        found = await ec2.describe_security_groups(Filters=filters)
    groups = sorted(g["GroupId"] for g in found["SecurityGroups"])
    return groups[0] if groups else None


async def _security_group(
    cloud: Cloud, region: str, n: Names, vpc: str, port: int, undo: _Undo
) -> str:
    group_id = await _find_group(cloud, region, n.security_group, vpc)
    if group_id is None:
        made = await SecurityGroupMapper().create(
            cloud,
            {
                "group_name": n.security_group,
                "description": f"{n.app} security group",
                "region": region,
                "vpc_id": vpc,
            },
        )
        group_id = str(made["group_id"])
        undo.add(lambda: SecurityGroupMapper().delete(cloud, made))
    rules = SecurityGroupRuleMapper()
    for is_egress, protocol, ports in ((False, "tcp", port), (True, "-1", None)):
        # A group found again (a retried create) may have its rules already.
        with ignoring("InvalidPermission.Duplicate"):
            await rules.create(
                cloud,
                {
                    "is_egress": is_egress,
                    "ip_protocol": protocol,
                    "from_port": ports,
                    "to_port": ports,
                    "cidr_ipv4": _ANYWHERE,
                    "description": n.security_group,
                    "security_group_id": group_id,
                    "region": region,
                },
            )
    return group_id


async def _find_target_group(cloud: Cloud, region: str, name: str) -> str | None:
    async with cloud.client("elbv2", region) as elb:
        with ignoring("TargetGroupNotFound"):
            found = await elb.describe_target_groups(Names=[name])
            return str(found["TargetGroups"][0]["TargetGroupArn"])
    return None


async def _find_load_balancer(cloud: Cloud, region: str, name: str) -> dict[str, Any] | None:
    async with cloud.client("elbv2", region) as elb:
        with ignoring("LoadBalancerNotFound"):
            found = await elb.describe_load_balancers(Names=[name])
            return dict(found["LoadBalancers"][0])
    return None


async def _load_balancing(
    cloud: Cloud, region: str, n: Names, vpc: str, port: int, group: str, undo: _Undo
) -> tuple[str, str]:
    """The target group, the load balancer (in the app's group) and its listener: the target
    group's ARN and the load balancer's DNS name."""
    target_group = await _find_target_group(cloud, region, n.target_group)
    if target_group is None:
        made = await TargetGroupMapper().create(
            cloud,
            {
                "target_group_name": n.target_group,
                "target_type": "ip",
                "protocol": "HTTP",
                "port": port,
                "health_check_path": _HEALTH_PATH,
                "region": region,
                "vpc": vpc,
            },
        )
        target_group = str(made["target_group_arn"])
        undo.add(lambda: TargetGroupMapper().delete(cloud, made))
    balancer = await _find_load_balancer(cloud, region, n.load_balancer)
    if balancer is None:
        made_lb = await LoadBalancerMapper().create(
            cloud,
            {
                "load_balancer_name": n.load_balancer,
                "load_balancer_type": "application",
                "scheme": "internet-facing",
                "ip_address_type": "ipv4",
                "region": region,
                "vpc": vpc,
                "subnets": None,
                "attributes": None,
            },
        )
        undo.add(lambda: LoadBalancerMapper().delete(cloud, made_lb))
        arn, dns = str(made_lb["load_balancer_arn"]), str(made_lb.get("dns_name") or "")
    else:
        arn, dns = str(balancer["LoadBalancerArn"]), str(balancer.get("DNSName") or "")
    await LoadBalancerSecurityGroupsMapper().create(
        cloud, {"load_balancer_id": arn, "security_group_id": group}
    )
    async with cloud.client("elbv2", region) as elb:
        listeners = (await elb.describe_listeners(LoadBalancerArn=arn))["Listeners"]
    if not any(listener.get("Port") == port for listener in listeners):
        await ListenerMapper().create(
            cloud,
            {
                "load_balancer_id": arn,
                "port": port,
                "protocol": "HTTP",
                "action_type": "forward",
                "target_group_id": target_group,
            },
        )
    return target_group, dns


async def _role(cloud: Cloud, n: Names, undo: _Undo) -> str:
    """The task execution role (made if missing): its ARN."""
    with ignoring("NoSuchEntity"):
        return await role_arn(cloud, n.role)
    made = await RoleMapper().create(
        cloud,
        {
            "role_name": n.role,
            "assume_role_policy_document": _TASKS_TRUST,
            "attached_policies_arns": [_EXECUTION_POLICY],
            "description": None,
        },
    )
    undo.add(lambda: RoleMapper().delete(cloud, made))
    return str(made["arn"])


async def _log_group(cloud: Cloud, region: str, n: Names, undo: _Undo) -> None:
    async with cloud.client("logs", region) as logs:
        found = await logs.describe_log_groups(logGroupNamePrefix=n.log_group)
    if any(g["logGroupName"] == n.log_group for g in found.get("logGroups", [])):
        return
    made = await LogGroupMapper().create(cloud, {"log_group_name": n.log_group, "region": region})
    undo.add(lambda: LogGroupMapper().delete(cloud, made))


async def _register_task(cloud: Cloud, record: Record, n: Names, image: str) -> str:
    """A new revision of the app's task definition, through aws_ecs_fargate: its ARN."""
    memory = cpu_and_memory(record["cpu_mem"])[1]
    port = record["app_port"]
    uri, tag, digest = split_image(image)
    environment(record.get("env_variables"))  # refused here, in the app's words
    made = await TaskDefinitionMapper().create(
        cloud,
        {
            "family": n.family,
            "region": record["region"],
            "cpu_memory": record["cpu_mem"],
            "task_role_name": n.role,
            "execution_role_name": n.role,
            "container_definitions": [
                {
                    "name": n.container,
                    "image": uri,
                    "tag": tag,
                    "digest": digest,
                    "essential": True,
                    "memory_reservation": int(memory),
                    "host_port": port,
                    "container_port": port,
                    "protocol": "tcp",
                    "env_variables": normalize_env(record.get("env_variables")),
                    "log_group": n.log_group,
                }
            ],
        },
    )
    return str(made["task_definition_arn"])


async def _active_revisions(ecs: Any, family: str) -> list[str]:
    pages = ecs.get_paginator("list_task_definitions").paginate(
        familyPrefix=family, status="ACTIVE"
    )
    arns = [a async for page in pages for a in page["taskDefinitionArns"]]
    # A prefix also finds longer families: keep this one's (…:task-definition/<family>:<n>).
    return [a for a in arns if a.rsplit("/", 1)[-1].rsplit(":", 1)[0] == family]


async def _image(cloud: Cloud, record: Record, n: Names, undo: _Undo | None) -> str:
    uri = record.get("repository_uri")
    if not uri or _repository_name(uri) == n.repository:
        # No repository named, or the app's own (which a replace has just deleted): the app's
        # own, made if missing.
        uri = await _ensure_repository(cloud, record["region"], n.repository, undo)
    return image_of(uri, record.get("image_tag"), record.get("image_digest"))


# --- the mapper -----------------------------------------------------------------------------


class AppMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("ecs", region) as ecs:
            pages = ecs.get_paginator("list_clusters").paginate()
            arns = [a async for page in pages for a in page["clusterArns"]]
        apps = []
        for arn in arns:
            name = arn.rsplit("/", 1)[-1]
            app = name.removesuffix(_CLUSTER_SUFFIX)
            if name.endswith(_CLUSTER_SUFFIX) and 0 < len(app) <= _APP_NAME_MAX:
                apps.append(app)
        found = await gather_bounded(_read_app(cloud, region, app) for app in sorted(apps))
        return [r for r in found if r is not None]

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        assert region is not None
        apps = sorted({w["app_name"] for w in wanted})
        found = await gather_bounded(_read_app(cloud, region, app) for app in apps)
        return [r for r in found if r is not None]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        undo = _Undo()
        try:
            dns = await self._create(cloud, record, undo)
        except BaseException:
            await undo.run()
            raise
        app, region = record["app_name"], record["region"]
        return (await _read_app(cloud, region, app)) or {
            "app_name": app,
            "region": region,
            "load_balancer_dns": dns,
        }

    async def _create(self, cloud: Cloud, record: Record, undo: _Undo) -> str:
        app, region, port = record["app_name"], record["region"], record["app_port"]
        n = Names(app)
        vpc, subnets = await _default_network(cloud, region)
        image = await _image(cloud, record, n, undo)
        group = await _security_group(cloud, region, n, vpc, port, undo)
        target_group, dns = await _load_balancing(cloud, region, n, vpc, port, group, undo)
        await _log_group(cloud, region, n, undo)
        await _role(cloud, n, undo)
        await ClusterMapper().create(cloud, {"cluster_name": n.cluster, "region": region})
        undo.add(lambda: self._delete_ecs(cloud, region, n))
        task = await _register_task(cloud, record, n, image)
        async with cloud.client("ecs", region) as ecs:
            await ecs.create_service(
                cluster=n.cluster,
                serviceName=n.service,
                taskDefinition=task,
                desiredCount=record["desired_count"],
                launchType="FARGATE",
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": subnets,
                        "securityGroups": [group],
                        "assignPublicIp": "ENABLED" if record.get("public_ip") else "DISABLED",
                    }
                },
                loadBalancers=[
                    {
                        "targetGroupArn": target_group,
                        "containerName": n.container,
                        "containerPort": port,
                    }
                ],
            )
        return dns

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        app, region = current["app_name"], current["region"]
        n = Names(app)
        changes: dict[str, Any] = {}
        if record.get("desired_count") != current.get("desired_count"):
            changes["desiredCount"] = record["desired_count"]
        image = await _image(cloud, record, n, None)
        was = image_of(
            current.get("repository_uri") or "",
            current.get("image_tag"),
            current.get("image_digest"),
        )
        if (
            image != was
            or record.get("cpu_mem") != current.get("cpu_mem")
            or normalize_env(record.get("env_variables"))
            != normalize_env(current.get("env_variables"))
        ):
            changes["taskDefinition"] = await _register_task(cloud, record, n, image)
        if record.get("force_new_deployment"):
            changes["forceNewDeployment"] = True
        if changes:
            async with cloud.client("ecs", region) as ecs:
                await ecs.update_service(cluster=n.cluster, service=n.service, **changes)
            # The revision the service ran before is no longer the app's (as aws_ecs_fargate
            # does on a task definition's update).
            for arn in await self._revisions(cloud, region, n):
                if "taskDefinition" in changes and arn != changes["taskDefinition"]:
                    await TaskDefinitionMapper().delete(
                        cloud, {"task_definition_arn": arn, "region": region, "status": "ACTIVE"}
                    )
        return (await _read_app(cloud, region, app)) or current

    async def delete(self, cloud: Cloud, current: Record) -> None:
        app, region = current["app_name"], current["region"]
        n = Names(app)
        await self._delete_ecs(cloud, region, n)
        await RoleMapper().delete(cloud, {"role_name": n.role})
        await LogGroupMapper().delete(cloud, {"log_group_name": n.log_group, "region": region})
        balancer = await _find_load_balancer(cloud, region, n.load_balancer)
        if balancer is not None:  # its listener goes with it
            await LoadBalancerMapper().delete(
                cloud, {"load_balancer_arn": balancer["LoadBalancerArn"], "region": region}
            )
        target_group = await _find_target_group(cloud, region, n.target_group)
        if target_group is not None:
            await TargetGroupMapper().delete(
                cloud, {"target_group_arn": target_group, "region": region}
            )
        group = await _find_group(cloud, region, n.security_group, None)
        if group is not None:
            async with cloud.client("ec2", region) as ec2:
                waiter = create_waiter_with_client("GroupUnused", _GROUP_WAITERS, ec2)
                await waiter.wait(Filters=[{"Name": "group-id", "Values": [group]}])
            await SecurityGroupMapper().delete(cloud, {"group_id": group, "region": region})
        uri = current.get("repository_uri")
        if not uri or _repository_name(uri) == n.repository:
            # As in IaSQL, its images go with it.
            await RepositoryMapper().delete(
                cloud, {"repository_name": n.repository, "region": region}
            )

    async def _revisions(self, cloud: Cloud, region: str, n: Names) -> list[str]:
        async with cloud.client("ecs", region) as ecs:
            return await _active_revisions(ecs, n.family)

    async def _delete_ecs(self, cloud: Cloud, region: str, n: Names) -> None:
        """The service, the task definition's revisions and the cluster, through
        aws_ecs_fargate's mappers."""
        live: list[dict[str, Any]] = []
        async with cloud.client("ecs", region) as ecs:
            with ignoring("ClusterNotFoundException"):
                answer = await ecs.describe_services(cluster=n.cluster, services=[n.service])
                live = [s for s in answer.get("services", []) if s.get("status") != "INACTIVE"]
        for service in live:
            await ServiceMapper().delete(
                cloud,
                {"arn": service["serviceArn"], "cluster_id": n.cluster, "region": region},
            )
        for arn in await self._revisions(cloud, region, n):
            await TaskDefinitionMapper().delete(
                cloud, {"task_definition_arn": arn, "region": region, "status": "ACTIVE"}
            )
        await ClusterMapper().delete(cloud, {"cluster_arn": n.cluster, "region": region})
