"""aws_ecs_simplified: one row, one containerised web app on Fargate behind a load balancer.

A row of `ecs_simplified` stands for a set of resources named after its `app_name`, as IaSQL
names them: an ECR repository `<app>-repository` (unless the row names an image repository),
a log group `<app>-log-group`, a task execution role `<app>-ecs-task-exec-role`, a security
group `<app>-security-group` (ingress on the app's port), a target group `<app>-target`, an
application load balancer `<app>-load-balancer` with one listener on the app's port, a
cluster `<app>-cluster`, a task definition family `<app>-td` (one container `<app>-container`)
and a Fargate service `<app>-service`. The writes go through the mappers of the modules that
own those resources; reading finds every complete set that follows the naming.
"""

from __future__ import annotations

from modules import VERSION
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules.aws_ecs_simplified.app import (
    CPU_MEMORY,
    AppMapper,
    normalize_env,
)
from modules.spec import Column, ModuleSpec, Table

_CPU_MEM_CHECK = one_of("cpu_mem", CPU_MEMORY)

ECS_SIMPLIFIED = Table(
    name="ecs_simplified",
    columns=(
        # Every resource's name is made from it (a load balancer name takes 32 characters).
        Column("app_name", "varchar(18)", nullable=False, replaces=True),
        Column("desired_count", "integer", nullable=False, default="1"),
        # The port is the target group's, which AWS cannot change: a new set of resources.
        Column("app_port", "integer", nullable=False, replaces=True),
        Column("cpu_mem", "varchar", nullable=False, default="'vCPU2-8GB'", check=_CPU_MEM_CHECK),
        Column("repository_uri", "varchar"),
        Column("image_tag", "varchar"),
        Column("image_digest", "varchar"),
        Column("public_ip", "boolean", nullable=False, default="false", replaces=True),
        Column("load_balancer_dns", "varchar", cloud_assigned=True),
        # A request for the next update (a new deployment even with the same task definition),
        # as IaSQL's service.force_new_deployment: nothing the cloud keeps.
        Column("force_new_deployment", "boolean", nullable=False, default="false", local=True),
        # The container's environment, a JSON object of names to values.
        Column("env_variables", "text", normalize=normalize_env),
        region_column(),
    ),
    mapper=AppMapper(),
    primary_key=("app_name",),
    natural_key=("app_name",),
    cloud_id=("app_name", "region"),
    unique=(),
    # What one row makes in the cloud, through the other modules: a commit re-reads them.
    brings_along=(
        "repository",
        "log_group",
        "iam_role",
        "security_group",
        "security_group_rule",
        "target_group",
        "load_balancer",
        "load_balancer_security_groups",
        "listener",
        "cluster",
        "task_definition",
        "container_definition",
        "service",
        "service_security_groups",
    ),
    extra_ddl=(
        "ALTER TABLE ecs_simplified ADD CONSTRAINT valid_image_fields"
        " CHECK (image_tag IS NULL OR image_digest IS NULL)",
    ),
)

MODULE = ModuleSpec(
    name="aws_ecs_simplified",
    version=VERSION,
    dependencies=(
        "aws_account",
        "aws_ecr",
        "aws_ecs_fargate",
        "aws_elb",
        "aws_security_group",
        "aws_cloudwatch",
        "aws_vpc",
        "aws_iam",
    ),
    description="A container app on Fargate behind a load balancer, in one row",
    tables=(ECS_SIMPLIFIED,),
)
