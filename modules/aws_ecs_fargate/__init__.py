"""aws_ecs_fargate: ECS on Fargate: clusters, task definitions with their container
definitions, services with their security groups, and the `deploy_service` RPC.

A task definition is immutable: a change to its row or to one of its container_definition rows
registers a new revision, moves the services that ran the old one to it, and deregisters the
old one; the row then holds the new revision. The containers are sent in that register call:
a trigger keeps them, in the names the cloud uses, in the task_definition row's
`container_definitions` column (an addition to IaSQL's columns), so that a container change is
a task definition change. container_definition rows make no calls of their own."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from modules import VERSION
from modules._aws.arns import region_of
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules._aws.tags import token_tag, with_token
from modules.aws_ecs_fargate.containers import (
    container_from_aws,
    container_to_aws,
    normalize_containers,
    normalize_cpu,
    normalize_env,
    private_repository_name,
    public_repository_name,
    split_image,
)
from modules.aws_iam import role_arn, role_name_of
from modules.concurrency import KeyedLocks, gather_bounded
from modules.errors import ignoring
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

__all__ = [
    "CLUSTER",
    "CONTAINER_DEFINITION",
    "CPU_MEMORY",
    "MODULE",
    "SERVICE",
    "SERVICE_SECURITY_GROUPS",
    "TASK_DEFINITION",
    "ClusterMapper",
    "ContainerDefinitionMapper",
    "ServiceMapper",
    "ServiceSecurityGroupsMapper",
    "TaskDefinitionMapper",
    "cpu_and_memory",
    "cpu_memory_of",
    "deploy_service",
    "normalize_containers",
]

# IaSQL's task_definition_cpu_memory_enum: the Fargate task sizes.
CPU_MEMORY = (
    "vCPU0.25-0.5GB",
    "vCPU0.25-1GB",
    "vCPU0.25-2GB",
    "vCPU0.5-1GB",
    "vCPU0.5-2GB",
    "vCPU0.5-3GB",
    "vCPU0.5-4GB",
    *(f"vCPU1-{m}GB" for m in range(2, 9)),
    *(f"vCPU2-{m}GB" for m in range(4, 17)),
    *(f"vCPU4-{m}GB" for m in range(8, 31)),
)

_SERVICES_PER_DESCRIBE = 10  # DescribeServices takes at most 10 services


def _number(value: float) -> str:
    return f"{value:g}"


def cpu_memory_of(cpu: Any, memory: Any) -> str:
    """A task's CPU units and MiB as IaSQL's cpu_memory: 256 and 512 are vCPU0.25-0.5GB."""
    return f"vCPU{_number(int(cpu or 256) / 1024)}-{_number(int(memory or 512) / 1024)}GB"


def cpu_and_memory(cpu_memory: str) -> tuple[str, str]:
    """'vCPU2-8GB' -> ('2048', '8192'): the task's CPU units and MiB."""
    cpu, memory = cpu_memory.removeprefix("vCPU").removesuffix("GB").split("-")
    return str(round(float(cpu) * 1024)), str(round(float(memory) * 1024))


def _cpu_memory_arguments(value: str | None) -> dict[str, str]:
    """register_task_definition's cpu and memory for a cpu_memory value."""
    if not value:
        return {}
    cpu, memory = cpu_and_memory(value)
    return {"cpu": cpu, "memory": memory}


def _ecs_tags(token: str | None) -> dict[str, Any]:
    """The tags argument of an ECS create: the engine's create token (ECS tags are lower case
    key/value pairs; AWS refuses an empty list)."""
    tags = [{"key": k, "value": v} for k, v in token_tag(token).items()]
    return {"tags": tags} if tags else {}


def _with_ecs_token(record: Record, tags: list[dict[str, str]] | None) -> Record:
    return with_token(record, [{"Key": t["key"], "Value": t.get("value", "")} for t in tags or ()])


# Changes to one service's settings (its own row, its security group rows, and a task
# definition moving it to a new revision) are read-modify-write calls: one at a time.
_service_lock: KeyedLocks[str] = KeyedLocks()

# A task definition's new revision and the services that run it: a service's create or update
# naming a revision waits while that revision is being replaced, then uses the new one
# (`_replaced`: old ARN -> new ARN), and the replacement moves the services made before it.
# Locks are taken in this order: the revision's, then a service's.
_revision_lock: KeyedLocks[str] = KeyedLocks()
_replaced: dict[str, str] = {}


def _latest(arn: str) -> str:
    while arn in _replaced:
        arn = _replaced[arn]
    return arn


# --- cluster -------------------------------------------------------------------------------


def _cluster_record(cluster: dict[str, Any], region: str) -> Record:
    return _with_ecs_token(
        {
            "cluster_name": cluster.get("clusterName") or "default",
            "cluster_arn": cluster["clusterArn"],
            "cluster_status": cluster.get("status"),
            "region": region,
        },
        cluster.get("tags"),
    )


async def _cluster_arns(ecs: Any) -> list[str]:
    pages = ecs.get_paginator("list_clusters").paginate()
    return [arn async for page in pages for arn in page.get("clusterArns", [])]


async def _clusters(ecs: Any, arns: list[str]) -> list[dict[str, Any]]:
    """The clusters that are not deleted (AWS describes a deleted one as INACTIVE)."""
    found: list[dict[str, Any]] = []
    for i in range(0, len(arns), 100):
        answer = await ecs.describe_clusters(clusters=arns[i : i + 100], include=["TAGS"])
        found += [c for c in answer.get("clusters", []) if c.get("status") != "INACTIVE"]
    return found


class ClusterMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("ecs", region) as ecs:
            clusters = await _clusters(ecs, await _cluster_arns(ecs))
        return [_cluster_record(c, region) for c in clusters]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        async with cloud.client("ecs", region) as ecs:
            # Creating a cluster that exists returns it (a retried create).
            answer = await ecs.create_cluster(
                clusterName=record["cluster_name"], **_ecs_tags(record.get(TOKEN))
            )
            found = await _clusters(ecs, [answer["cluster"]["clusterArn"]])
        if not found:
            raise CloudError(f"cluster {record['cluster_name']} is gone right after its create")
        return _cluster_record(found[0], region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # the name and region replace; nothing else is the user's

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ecs", current["region"]) as ecs:
            with ignoring("ClusterNotFoundException"):
                await ecs.delete_cluster(cluster=current["cluster_arn"])


CLUSTER = Table(
    name="cluster",
    columns=(
        Column("cluster_name", "varchar", nullable=False, replaces=True),
        Column("cluster_arn", "varchar", cloud_assigned=True),
        Column("cluster_status", "varchar", cloud_assigned=True),
        region_column(),
    ),
    mapper=ClusterMapper(),
    natural_key=("cluster_name", "region"),
    cloud_id=("cluster_arn",),
    unique=(("cluster_arn",), ("cluster_name", "region")),
)

# --- services (read by task definitions too) -----------------------------------------------


async def _services(ecs: Any, cluster_arns: list[str]) -> list[dict[str, Any]]:
    """Every Fargate service of the clusters that is not deleted."""
    found: list[dict[str, Any]] = []
    for cluster in cluster_arns:
        pages = ecs.get_paginator("list_services").paginate(cluster=cluster)
        arns = [arn async for page in pages for arn in page.get("serviceArns", [])]
        batches = [
            arns[i : i + _SERVICES_PER_DESCRIBE]
            for i in range(0, len(arns), _SERVICES_PER_DESCRIBE)
        ]
        answers = await gather_bounded(
            ecs.describe_services(cluster=cluster, services=b, include=["TAGS"]) for b in batches
        )
        found += [
            s
            for a in answers
            for s in a.get("services", [])
            if s.get("status") != "INACTIVE" and s.get("launchType") == "FARGATE"
        ]
    return found


async def _all_services(ecs: Any) -> list[dict[str, Any]]:
    return await _services(
        ecs, [c["clusterArn"] for c in await _clusters(ecs, await _cluster_arns(ecs))]
    )


def _network(service: dict[str, Any]) -> dict[str, Any]:
    return dict((service.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {})


# --- task_definition -----------------------------------------------------------------------


def _task_definition_record(
    td: dict[str, Any],
    region: str,
    tags: Any,
    private: dict[str, str] | None = None,
    public: dict[str, str] | None = None,
) -> Record:
    containers = [
        container_from_aws(c, private or {}, public or {})
        for c in td.get("containerDefinitions") or ()
    ]
    return _with_ecs_token(
        {
            "task_definition_arn": td["taskDefinitionArn"],
            "family": td["family"],
            "revision": td.get("revision"),
            "status": td.get("status"),
            "cpu_memory": cpu_memory_of(td.get("cpu"), td.get("memory")),
            "region": region,
            "task_role_name": role_name_of(td["taskRoleArn"]) if td.get("taskRoleArn") else None,
            "execution_role_name": (
                role_name_of(td["executionRoleArn"]) if td.get("executionRoleArn") else None
            ),
            "container_definitions": normalize_containers(containers),
            # Not a column: the containers, as container_definition rows read them.
            "containers": containers,
        },
        tags,
    )


async def _describe_task_definition(ecs: Any, arn: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = await ecs.describe_task_definition(
            taskDefinition=arn, include=["TAGS"]
        )
    except ecs.exceptions.ClientException:
        return None  # deleted since it was listed
    return answer


async def _task_definitions(cloud: Cloud, region: str) -> list[Record]:
    """The active Fargate task definitions, and the inactive ones a service still runs."""
    async with cloud.client("ecs", region) as ecs:
        pages = ecs.get_paginator("list_task_definitions").paginate(status="ACTIVE")
        arns = [arn async for page in pages for arn in page.get("taskDefinitionArns", [])]
        used = {s.get("taskDefinition") for s in await _all_services(ecs)}
        arns += sorted(a for a in used if a and a not in arns)
        answers = await gather_bounded(_describe_task_definition(ecs, a) for a in arns)
    found = [
        a
        for a in answers
        if a is not None and "FARGATE" in (a["taskDefinition"].get("compatibilities") or ())
    ]
    images = [
        str(c.get("image") or "")
        for a in found
        for c in a["taskDefinition"].get("containerDefinitions") or ()
    ]
    private = await _repositories(cloud, region, images)
    public = await _public_repositories(cloud, images)
    return [
        _task_definition_record(a["taskDefinition"], region, a.get("tags"), private, public)
        for a in found
    ]


async def _repositories(cloud: Cloud, region: str, images: list[str]) -> dict[str, str]:
    """The URIs of the region's ECR repositories (URI -> name), when an image is from ECR:
    only those are repository_id references; another account's image is an image."""
    if not any(private_repository_name(split_image(i)[0]) for i in images):
        return {}
    async with cloud.client("ecr", region) as ecr:
        pages = ecr.get_paginator("describe_repositories").paginate()
        return {
            r["repositoryUri"]: r["repositoryName"]
            async for page in pages
            for r in page.get("repositories", [])
        }


async def _public_repositories(cloud: Cloud, images: list[str]) -> dict[str, str]:
    """The account's public ECR repositories (URI -> name), when an image is from public ECR
    (most are other people's: those are images). An endpoint without ECR Public (moto) has
    none."""
    if not any(public_repository_name(split_image(i)[0]) for i in images):
        return {}
    try:
        async with cloud.client("ecr-public", "us-east-1") as ecr:
            answer = await ecr.describe_repositories()
    except (ClientError, BotoCoreError):
        return {}
    return {r["repositoryUri"]: r["repositoryName"] for r in answer.get("repositories", [])}


async def _role_arn(cloud: Cloud, name: str | None) -> str | None:
    if not name:
        return None
    return await role_arn(cloud, name)


async def _repository_uri(cloud: Cloud, name: str, region: str) -> str:
    async with cloud.client("ecr", region) as ecr:
        answer = await ecr.describe_repositories(repositoryNames=[name])
    return str(answer["repositories"][0]["repositoryUri"])


async def _public_repository_uri(cloud: Cloud, name: str) -> str:
    async with cloud.client("ecr-public", "us-east-1") as ecr:
        answer = await ecr.describe_repositories(repositoryNames=[name])
    return str(answer["repositories"][0]["repositoryUri"])


async def _container_definitions(cloud: Cloud, record: Record) -> list[dict[str, Any]]:
    containers = normalize_containers(record.get("container_definitions"))
    family, region = record["family"], record["region"]
    if not containers:
        raise CloudError(
            f"task definition {family} has no container: insert its container_definition rows"
            " (task_definition_id naming it)"
        )
    out = []
    for c in containers:
        if c.get("image"):
            image = str(c["image"])
        elif c.get("repository"):
            image = await _repository_uri(cloud, c["repository"], region)
        elif c.get("public_repository"):
            image = await _public_repository_uri(cloud, c["public_repository"])
        else:
            raise CloudError(
                f"container {c['name']} of task definition {family} names no image: set image,"
                " repository_id or public_repository_name"
            )
        try:
            out.append(container_to_aws(c, image, region, family))
        except ValueError as error:
            raise CloudError(str(error)) from None
    return out


async def _register(cloud: Cloud, record: Record) -> Record:
    region = record["region"]
    containers = await _container_definitions(cloud, record)
    roles = {
        "taskRoleArn": await _role_arn(cloud, record.get("task_role_name")),
        "executionRoleArn": await _role_arn(cloud, record.get("execution_role_name")),
    }
    async with cloud.client("ecs", region) as ecs:
        answer = await ecs.register_task_definition(
            family=record["family"],
            containerDefinitions=containers,
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            **{k: v for k, v in roles.items() if v},
            **_cpu_memory_arguments(record.get("cpu_memory")),
            **_ecs_tags(record.get(TOKEN)),
        )
        arn = answer["taskDefinition"]["taskDefinitionArn"]
        found = await _describe_task_definition(ecs, arn)
    if found is None:
        raise CloudError(f"task definition {arn} is gone right after its registration")
    return _task_definition_record(found["taskDefinition"], region, found.get("tags"))


async def _deregister(ecs: Any, arn: str) -> None:
    with ignoring("ClientException"):  # already inactive, or gone
        await ecs.deregister_task_definition(taskDefinition=arn)


class TaskDefinitionMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return await _task_definitions(cloud, region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        return await _register(cloud, record)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        """A task definition cannot change: registers the new revision, moves the services
        that ran the old one to it, then deregisters the old one."""
        old_arn = current["task_definition_arn"]
        async with _revision_lock(old_arn):
            new = await _register(cloud, record)
            _replaced[old_arn] = new["task_definition_arn"]
            async with cloud.client("ecs", current["region"]) as ecs:
                for service in await _all_services(ecs):
                    if service.get("taskDefinition") != old_arn:
                        continue
                    async with _service_lock(service["serviceArn"]):
                        # A service being deleted by the same commit is left alone.
                        with ignoring("ServiceNotActiveException", "ServiceNotFoundException"):
                            await ecs.update_service(
                                cluster=service["clusterArn"],
                                service=service["serviceArn"],
                                taskDefinition=new["task_definition_arn"],
                            )
                if current.get("status") != "INACTIVE":
                    await _deregister(ecs, old_arn)
        return new

    async def delete(self, cloud: Cloud, current: Record) -> None:
        if current.get("status") == "INACTIVE":
            return  # deregistered already (a service still runs it)
        async with cloud.client("ecs", current["region"]) as ecs:
            await _deregister(ecs, current["task_definition_arn"])


TASK_DEFINITION = Table(
    name="task_definition",
    columns=(
        Column("task_definition_arn", "varchar", cloud_assigned=True),
        Column("family", "varchar", nullable=False),
        Column("revision", "integer", cloud_assigned=True),
        Column(
            "status", "varchar", check=one_of("status", ("ACTIVE", "INACTIVE")), cloud_assigned=True
        ),
        Column("cpu_memory", "varchar", check=one_of("cpu_memory", CPU_MEMORY)),
        region_column(),
        Column("task_role_name", "varchar", ref=Ref("iam_role", key="role_name")),
        Column("execution_role_name", "varchar", ref=Ref("iam_role", key="role_name")),
        # Ours, not IaSQL's: the containers, kept by the trigger on container_definition.
        Column(
            "container_definitions",
            "jsonb",
            nullable=False,
            default="'[]'",
            normalize=normalize_containers,
        ),
    ),
    mapper=TaskDefinitionMapper(),
    # Several revisions of a family can be rows (imported); one row per family is the rule.
    natural_key=("family", "region"),
    cloud_id=("task_definition_arn",),
)

# --- container_definition ------------------------------------------------------------------


_REFERENCES = ("repository", "public_repository", "log_group")


class ContainerDefinitionMapper:
    """The containers of the task definitions read. They are registered with their task
    definition (see the module's doc): a row's create, update and delete call nothing."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return [
            {
                **{k: v for k, v in c.items() if k not in _REFERENCES},
                "repository_id": c["repository"],
                "public_repository_name": c["public_repository"],
                "log_group_id": c["log_group"],
                "task_definition_id": td["task_definition_arn"],
                "region": region,
            }
            for td in await _task_definitions(cloud, region)
            for c in td["containers"]
        ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        return {k: v for k, v in record.items() if k != TOKEN}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return {k: v for k, v in record.items() if k != TOKEN}

    async def delete(self, cloud: Cloud, current: Record) -> None:
        return None


# The task_definition row's containers, as the cloud names what they reference: recomputed
# whenever a container_definition row changes.
_CONTAINERS_TRIGGER = (
    """CREATE OR REPLACE FUNCTION task_definition_containers() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        parents integer[] := ARRAY[]::integer[];
    BEGIN
        IF TG_OP <> 'INSERT' THEN parents := parents || OLD.task_definition_id; END IF;
        IF TG_OP <> 'DELETE' THEN parents := parents || NEW.task_definition_id; END IF;
        UPDATE task_definition t SET container_definitions = c.containers
        FROM (
            SELECT p.id, COALESCE((
                SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                    'name', d.name, 'image', d.image, 'tag', d.tag, 'digest', d.digest,
                    'essential', d.essential, 'cpu', d.cpu, 'memory', d.memory,
                    'memory_reservation', d.memory_reservation, 'host_port', d.host_port,
                    'container_port', d.container_port, 'protocol', d.protocol,
                    'env_variables', d.env_variables, 'repository', r.repository_name,
                    'public_repository', d.public_repository_name,
                    'log_group', l.log_group_name)) ORDER BY d.name)
                FROM container_definition d
                LEFT JOIN repository r ON r.id = d.repository_id
                LEFT JOIN log_group l ON l.id = d.log_group_id
                WHERE d.task_definition_id = p.id), '[]'::jsonb) AS containers
            FROM unnest(parents) AS p(id) WHERE p.id IS NOT NULL
        ) c
        WHERE t.id = c.id AND t.container_definitions IS DISTINCT FROM c.containers;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER task_definition_containers
        AFTER INSERT OR UPDATE OR DELETE ON container_definition
        FOR EACH ROW EXECUTE FUNCTION task_definition_containers()""",
)

CONTAINER_DEFINITION = Table(
    name="container_definition",
    columns=(
        Column("name", "varchar", nullable=False),
        Column("image", "varchar"),
        Column("tag", "varchar"),
        Column("digest", "varchar"),
        Column("essential", "boolean", nullable=False, default="false"),
        Column("cpu", "integer", normalize=normalize_cpu),
        Column("memory", "integer"),
        Column("memory_reservation", "integer"),
        Column("host_port", "integer"),
        Column("container_port", "integer"),
        Column("protocol", "varchar", check=one_of("protocol", ("tcp", "udp"))),
        Column("env_variables", "text", normalize=normalize_env),
        region_column(),
        foreign_key(
            "task_definition_id",
            "task_definition",
            "task_definition_arn",
            on_delete="CASCADE",
            nullable=True,
            replaces=False,
        ),
        foreign_key(
            "repository_id", "repository", "repository_name", nullable=True, replaces=False
        ),
        Column(
            "public_repository_name",
            "varchar",
            ref=Ref("public_repository", key="repository_name"),
        ),
        foreign_key("log_group_id", "log_group", "log_group_name", nullable=True, replaces=False),
    ),
    mapper=ContainerDefinitionMapper(),
    extra_ddl=(
        """ALTER TABLE container_definition ADD CONSTRAINT container_definition_image_check
            CHECK (image IS NOT NULL OR repository_id IS NOT NULL
                OR public_repository_name IS NOT NULL)""",
        """ALTER TABLE container_definition ADD CONSTRAINT container_definition_tag_digest_check
            CHECK (tag IS NULL OR digest IS NULL)""",
        *_CONTAINERS_TRIGGER,
    ),
    natural_key=("task_definition_id", "name"),
    cloud_id=("task_definition_id", "name"),
)

# --- service -------------------------------------------------------------------------------


def normalize_subnets(value: Any) -> list[str]:
    """A set of subnet ids kept as an array: order means nothing to AWS."""
    return sorted(str(v) for v in value or ())


def _service_record(service: dict[str, Any], region: str) -> Record:
    network = _network(service)
    balancers = service.get("loadBalancers") or []
    return _with_ecs_token(
        {
            "name": service["serviceName"],
            "arn": service["serviceArn"],
            "status": service.get("status"),
            "desired_count": service.get("desiredCount"),
            "subnets": normalize_subnets(network.get("subnets")),
            "assign_public_ip": network.get("assignPublicIp") or "DISABLED",
            "region": region,
            "cluster_id": service.get("clusterArn"),
            "task_definition_id": service.get("taskDefinition"),
            "target_group_id": balancers[-1].get("targetGroupArn") if balancers else None,
            # Not a column: the groups service_security_groups shows.
            "security_groups": sorted(network.get("securityGroups") or ()),
        },
        service.get("tags"),
    )


async def _describe_service(ecs: Any, cluster: str, service: str) -> dict[str, Any] | None:
    answer = await ecs.describe_services(cluster=cluster, services=[service], include=["TAGS"])
    found = [s for s in answer.get("services", []) if s.get("status") != "INACTIVE"]
    return found[0] if found else None


async def _load_balancers(ecs: Any, record: Record) -> list[dict[str, Any]]:
    """The service's target group, for the first essential container that has a port."""
    if not record.get("target_group_id"):
        return []
    answer = await ecs.describe_task_definition(taskDefinition=record["task_definition_id"])
    containers = answer["taskDefinition"].get("containerDefinitions") or []
    for c in containers:
        ports = c.get("portMappings") or []
        if c.get("essential") and ports:
            return [
                {
                    "targetGroupArn": record["target_group_id"],
                    "containerName": c["name"],
                    "containerPort": ports[-1]["containerPort"],
                }
            ]
    raise CloudError(
        f"service {record['name']} has a target group, but its task definition has no"
        " essential container with a container_port to send the traffic to"
    )


def _network_configuration(record: Record, groups: list[str]) -> dict[str, Any]:
    # moto answers HTTP 500 without the securityGroups key; AWS takes an empty list too.
    return {
        "awsvpcConfiguration": {
            "subnets": normalize_subnets(record.get("subnets")),
            "securityGroups": groups,
            "assignPublicIp": record.get("assign_public_ip") or "DISABLED",
        }
    }


class ServiceMapper:
    """Services are not waited for to become stable: that needs their tasks to run (AWS does
    not require it, and moto never runs them)."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("ecs", region) as ecs:
            return [_service_record(s, region) for s in await _all_services(ecs)]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region, name = record["region"], record["name"]
        cluster = record.get("cluster_id") or "default"
        if not record.get("task_definition_id"):
            raise CloudError(f"service {name} needs a task definition: set task_definition_id")
        named = record["task_definition_id"]
        async with _revision_lock(named), cloud.client("ecs", region) as ecs:
            record = {**record, "task_definition_id": _latest(named)}
            found = await _describe_service(ecs, cluster, name)
            if found is None:  # else a retried create: the service is there already
                answer = await ecs.create_service(
                    cluster=cluster,
                    serviceName=name,
                    taskDefinition=record["task_definition_id"],
                    launchType="FARGATE",
                    schedulingStrategy="REPLICA",
                    desiredCount=record["desired_count"],
                    networkConfiguration=_network_configuration(record, []),
                    loadBalancers=await _load_balancers(ecs, record),
                    **_ecs_tags(record.get(TOKEN)),
                )
                found = await _describe_service(ecs, cluster, answer["service"]["serviceArn"])
            if found is None:
                raise CloudError(f"service {name} is gone right after its create")
            return _service_record(found, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region, arn, cluster = current["region"], current["arn"], current["cluster_id"]
        named = record.get("task_definition_id") or ""
        async with (
            _revision_lock(named),
            _service_lock(arn),
            cloud.client("ecs", region) as ecs,
        ):
            record = {**record, "task_definition_id": _latest(named) or None}
            changes: dict[str, Any] = {}
            if record.get("desired_count") != current.get("desired_count"):
                changes["desiredCount"] = record["desired_count"]
            if record.get("task_definition_id") != current.get("task_definition_id"):
                changes["taskDefinition"] = record["task_definition_id"]
            network = (
                normalize_subnets(record.get("subnets")),
                record.get("assign_public_ip"),
            )
            if network != (
                normalize_subnets(current.get("subnets")),
                current.get("assign_public_ip"),
            ):
                live = await _describe_service(ecs, cluster, arn) or {}
                groups = list(_network(live).get("securityGroups") or [])
                changes["networkConfiguration"] = _network_configuration(record, groups)
            if changes:
                await ecs.update_service(cluster=cluster, service=arn, **changes)
            found = await _describe_service(ecs, cluster, arn)
        if found is None:
            raise CloudError(f"service {current['name']} is gone")
        return _service_record(found, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        """Scales the service to 0, deletes it and waits until it is no longer draining."""
        region, arn, cluster = current["region"], current["arn"], current["cluster_id"]
        async with _service_lock(arn), cloud.client("ecs", region) as ecs:
            with ignoring(
                "ServiceNotFoundException", "ServiceNotActiveException", "ClusterNotFoundException"
            ):
                await ecs.update_service(cluster=cluster, service=arn, desiredCount=0)
                await ecs.delete_service(cluster=cluster, service=arn)
                await ecs.get_waiter("services_inactive").wait(
                    cluster=cluster,
                    services=[arn],
                    WaiterConfig={"Delay": 2, "MaxAttempts": 150},
                )


SERVICE = Table(
    name="service",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("status", "varchar", cloud_assigned=True),
        Column("desired_count", "integer", nullable=False),
        Column(
            "subnets",
            "text[]",
            nullable=False,
            normalize=normalize_subnets,
            cloud_ref=Ref("subnet", key="subnet_id"),
        ),
        Column(
            "assign_public_ip",
            "varchar",
            nullable=False,
            default="'DISABLED'",
            check=one_of("assign_public_ip", ("DISABLED", "ENABLED")),
        ),
        region_column(),
        foreign_key("cluster_id", "cluster", "cluster_arn", nullable=True),
        foreign_key(
            "task_definition_id",
            "task_definition",
            "task_definition_arn",
            nullable=True,
            replaces=False,
        ),
        foreign_key("target_group_id", "target_group", "target_group_arn", nullable=True),
    ),
    mapper=ServiceMapper(),
    natural_key=("name", "region"),
    cloud_id=("arn",),
    unique=(("arn",), ("name", "region")),
    # AWS refuses a service whose target group no load balancer uses yet: a listener made in
    # the same commit goes first.
    create_after=("listener",),
)

# --- service_security_groups ---------------------------------------------------------------


def _cluster_of(service_arn: str) -> str | None:
    """arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME -> CLUSTER (None for the old form,
    service/NAME, which does not name it)."""
    parts = service_arn.split(":", 5)[-1].split("/")
    return parts[1] if len(parts) == 3 else None


async def _find_service(ecs: Any, arn: str) -> dict[str, Any] | None:
    cluster = _cluster_of(arn)
    if cluster is not None:
        with ignoring("ClusterNotFoundException"):
            return await _describe_service(ecs, cluster, arn)
        return None
    for service in await _all_services(ecs):
        if service["serviceArn"] == arn:
            return service
    return None


class ServiceSecurityGroupsMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("ecs", region) as ecs:
            services = await _all_services(ecs)
        return [
            {"service_id": s["serviceArn"], "security_group_id": group}
            for s in services
            for group in sorted(_network(s).get("securityGroups") or ())
        ]

    async def _change(self, cloud: Cloud, arn: str, group: str, *, add: bool) -> None:
        async with _service_lock(arn), cloud.client("ecs", region_of(arn)) as ecs:
            service = await _find_service(ecs, arn)
            if service is None:
                if add:
                    raise CloudError(f"service {arn} is gone: it can't get security group {group}")
                return
            network = _network(service)
            groups = list(network.get("securityGroups") or [])
            wanted = [*groups, group] if add else [g for g in groups if g != group]
            if (add and group in groups) or wanted == groups:
                return
            await ecs.update_service(
                cluster=service["clusterArn"],
                service=arn,
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": list(network.get("subnets") or []),
                        "securityGroups": wanted,
                        "assignPublicIp": network.get("assignPublicIp") or "DISABLED",
                    }
                },
            )

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("service_id") is None or record.get("security_group_id") is None:
            raise CloudError("a service_security_groups row needs both of its references")
        await self._change(cloud, record["service_id"], record["security_group_id"], add=True)
        return {k: v for k, v in record.items() if k != TOKEN}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await self._change(cloud, current["service_id"], current["security_group_id"], add=False)


SERVICE_SECURITY_GROUPS = Table(
    name="service_security_groups",
    columns=(
        foreign_key("service_id", "service", "arn", on_delete="CASCADE", replaces=False),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", replaces=False
        ),
    ),
    mapper=ServiceSecurityGroupsMapper(),
    natural_key=("service_id", "security_group_id"),
    cloud_id=("service_id", "security_group_id"),
    primary_key=("service_id", "security_group_id"),
    regional=True,  # no region column (as in IaSQL); the service's ARN brings it
)

# --- deploy_service ------------------------------------------------------------------------


async def deploy_service(cloud: Cloud, service_arn: str | None = None) -> list[Record]:
    """Starts a new deployment of a service (update_service with forceNewDeployment): its
    tasks are replaced, e.g. to pull an image pushed again under the same tag."""
    if not service_arn:
        raise ArgumentError(
            "deploy_service needs the service's ARN: SELECT * FROM deploy_service("
            "(SELECT arn FROM service WHERE name = 'my-service'))"
        )
    if not service_arn.startswith("arn:") or service_arn.count(":") < 5:
        raise ArgumentError(f"deploy_service: {service_arn!r} is no service ARN")
    async with cloud.client("ecs", region_of(service_arn)) as ecs:
        service = await _find_service(ecs, service_arn)
        if service is None:
            return [{"arn": "", "status": "OK", "message": "Service not found"}]
        async with _service_lock(service_arn):
            answer = await ecs.update_service(
                cluster=service["clusterArn"], service=service_arn, forceNewDeployment=True
            )
    if not answer.get("service"):
        return [{"arn": "", "status": "ERROR", "message": "Error updating service"}]
    return [{"arn": service_arn, "status": "OK", "message": "Service updated successfully"}]


DEPLOY_SERVICE = ModuleFunction(
    name="deploy_service",
    columns=(("arn", "varchar"), ("status", "varchar"), ("message", "varchar")),
    params=(("service_arn", "varchar"),),
    run=deploy_service,
    description="Starts a new deployment of an ECS service (forceNewDeployment)",
    sample="SELECT * FROM deploy_service((SELECT arn FROM service WHERE name = 'my-service'))",
)

MODULE = ModuleSpec(
    name="aws_ecs_fargate",
    version=VERSION,
    dependencies=(
        "aws_account",
        "aws_ecr",
        "aws_elb",
        "aws_security_group",
        "aws_cloudwatch",
        "aws_vpc",
        "aws_iam",
    ),
    description="ECS on Fargate: clusters, task definitions and containers, services",
    tables=(CLUSTER, TASK_DEFINITION, CONTAINER_DEFINITION, SERVICE, SERVICE_SECURITY_GROUPS),
    teardown_sql=("DROP FUNCTION IF EXISTS task_definition_containers()",),
    functions=(DEPLOY_SERVICE,),
)
