"""aws_ecs_fargate (with aws_ecr, aws_elb, aws_security_group, aws_cloudwatch, aws_vpc and
aws_iam): a cluster and a task definition made with boto3 and imported at install, a cluster
imported by iasql_sync(); a cluster, a task definition with two containers (one from an ECR
repository, one from a public image) and a service in a subnet with a security group and a
target group, made through begin / preview / commit; desired_count updated in place, a
container's image changed (a new revision, the service moved to it, the old one deregistered),
the service renamed (replaced); deploy_service; rollback; a cloud error; delete. Each step is
checked with boto3. moto never runs a service's tasks, so nothing waits for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_ecs_fargate import cpu_memory_of, normalize_containers
from modules.aws_ecs_fargate.containers import (
    container_from_aws,
    normalize_env,
    private_repository_name,
    split_image,
)
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def test_container_forms() -> None:
    assert split_image("nginx") == ("nginx", None, None)
    assert split_image("nginx:1.25") == ("nginx", "1.25", None)
    assert split_image("host:5000/app") == ("host:5000/app", None, None)
    assert split_image("app@sha256:ab") == ("app", None, "sha256:ab")
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app"
    assert private_repository_name(uri) == "team/app"
    assert private_repository_name("public.ecr.aws/x/app") is None
    assert cpu_memory_of("256", "512") == "vCPU0.25-0.5GB"
    assert cpu_memory_of("1024", "2048") == "vCPU1-2GB"
    assert normalize_env('{"b": 1, "a": "x"}') == {"a": "x", "b": "1"}
    assert normalize_env("{}") is None
    read = container_from_aws(
        {
            "name": "app",
            "image": uri + ":v1",
            "cpu": 0,
            "essential": True,
            "environment": [{"name": "A", "value": "1"}],
            "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}],
        }
    )
    assert read["repository"] == "team/app" and read["image"] is None and read["tag"] == "v1"
    # The trigger's form (env as written, cpu null) and the cloud's compare the same.
    written = [
        {
            "name": "app",
            "tag": "v1",
            "essential": True,
            "repository": "team/app",
            "env_variables": '{ "A": 1 }',
            "container_port": 80,
            "host_port": 80,
            "protocol": "tcp",
        }
    ]
    assert normalize_containers(written) == normalize_containers([read])
    # Given the account's repositories, another account's (or public ECR's) image is an image.
    other = {"name": "x", "image": "public.ecr.aws/docker/library/nginx:1", "essential": False}
    assert container_from_aws(other, {}, {})["image"] == "public.ecr.aws/docker/library/nginx"
    assert container_from_aws(other, {}, {})["public_repository"] is None
    mine = {"name": "x", "image": uri + "@sha256:ab", "essential": False}
    assert container_from_aws(mine, {uri: "team/app"}, {})["repository"] == "team/app"
    assert container_from_aws(mine, {}, {})["image"] == uri


# --- against moto --------------------------------------------------------------------------


class Aws:
    """boto3 clients for one moto account, and what the test made there before install."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto

        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=moto.endpoint)

        self.ecs, self.ec2, self.elb, self.ecr = (
            client("ecs"),
            client("ec2"),
            client("elbv2"),
            client("ecr"),
        )
        subnets = self.ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        by_zone = sorted(subnets, key=lambda s: s["AvailabilityZone"])
        self.subnet = by_zone[0]["SubnetId"]
        self.subnets = [s["SubnetId"] for s in by_zone[:2]]  # a load balancer needs two zones
        self.vpc = by_zone[0]["VpcId"]
        self.group = self.ec2.create_security_group(
            GroupName="web-sg", Description="web", VpcId=self.vpc
        )["GroupId"]
        self.target_group = self.elb.create_target_group(
            Name="web-tg", Protocol="HTTP", Port=80, VpcId=self.vpc, TargetType="ip"
        )["TargetGroups"][0]["TargetGroupArn"]
        self.repository = self.ecr.create_repository(repositoryName="app")["repository"]
        self.ecs.create_cluster(clusterName="pre-cluster")
        self.ecs.register_task_definition(
            family="pre-td",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="256",
            memory="512",
            containerDefinitions=[
                {
                    "name": "web",
                    "image": "nginx:1.25",
                    "essential": True,
                    "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}],
                }
            ],
        )

    def service(self, cluster: str, name: str) -> dict[str, Any] | None:
        found = self.ecs.describe_services(cluster=cluster, services=[name])["services"]
        live = [s for s in found if s["status"] != "INACTIVE"]
        return live[0] if live else None

    def task_definition(self, arn: str) -> dict[str, Any]:
        return dict(self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"])

    def clusters(self) -> set[str]:
        arns = self.ecs.list_clusters()["clusterArns"]
        found = self.ecs.describe_clusters(clusters=arns)["clusters"] if arns else []
        return {c["clusterName"] for c in found if c["status"] == "ACTIVE"}


@pytest.fixture(scope="module")
def ecs_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


@pytest.fixture
def ecs_env(envdb: psycopg.Connection, ecs_moto: MotoServer) -> tuple[Any, Aws]:
    ecs_moto.reset()
    aws = Aws(ecs_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, ecs_moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_ecs_fargate')")
    return envdb, aws


CREATE_SQL = """
INSERT INTO cluster (cluster_name) VALUES ('app-cluster');
INSERT INTO task_definition (family, cpu_memory) VALUES ('web', 'vCPU0.5-1GB');
INSERT INTO container_definition (name, repository_id, tag, essential, container_port,
        host_port, protocol, env_variables, task_definition_id)
    SELECT 'app', r.id, 'v1', true, 80, 80, 'tcp', '{"STAGE": "test", "N": 1}', t.id
    FROM repository r, task_definition t
    WHERE r.repository_name = 'app' AND t.family = 'web';
INSERT INTO container_definition (name, image, tag, memory_reservation, task_definition_id)
    SELECT 'sidecar', 'busybox', 'latest', 64, id FROM task_definition WHERE family = 'web';
INSERT INTO load_balancer (load_balancer_name, scheme, load_balancer_type, ip_address_type,
        subnets, vpc)
    SELECT 'web-lb', 'internal', 'application', 'ipv4', %(subnets)s, id FROM vpc
    WHERE vpc_id = %(vpc)s;
INSERT INTO listener (load_balancer_id, target_group_id, port, protocol)
    SELECT b.id, t.id, 80, 'HTTP' FROM load_balancer b, target_group t
    WHERE b.load_balancer_name = 'web-lb' AND t.target_group_name = 'web-tg';
INSERT INTO service (name, desired_count, subnets, assign_public_ip, cluster_id,
        task_definition_id, target_group_id)
    SELECT 'web-svc', 1, ARRAY[(SELECT subnet_id FROM subnet WHERE subnet_id = %(subnet)s)],
        'ENABLED', c.id, t.id, g.id
    FROM cluster c, task_definition t, target_group g
    WHERE c.cluster_name = 'app-cluster' AND t.family = 'web' AND g.target_group_name = 'web-tg';
INSERT INTO service_security_groups (service_id, security_group_id)
    SELECT s.id, g.id FROM service s, security_group g
    WHERE s.name = 'web-svc' AND g.group_name = 'web-sg';
"""


def check_import(conn: psycopg.Connection, aws: Aws) -> None:
    assert ("pre-cluster",) in rows(conn, "SELECT cluster_name FROM cluster")
    [(family, revision, cpu_memory, status)] = rows(
        conn, "SELECT family, revision, cpu_memory, status FROM task_definition"
    )
    assert (family, revision, cpu_memory, status) == ("pre-td", 1, "vCPU0.25-0.5GB", "ACTIVE")
    assert rows(
        conn,
        "SELECT c.name, c.image, c.tag, c.essential, c.container_port FROM container_definition c"
        " JOIN task_definition t ON t.id = c.task_definition_id",
    ) == [("web", "nginx", "1.25", True, 80)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    no_drift(conn)
    # A second cluster, made after install, comes in with iasql_sync().
    aws.ecs.create_cluster(clusterName="synced-cluster")
    conn.execute("SELECT * FROM iasql_sync()")
    assert ("synced-cluster",) in rows(conn, "SELECT cluster_name FROM cluster")


def create(conn: psycopg.Connection, aws: Aws) -> str:
    conn.execute("SELECT * FROM iasql_begin()")
    for statement in CREATE_SQL.strip().split(";\n"):
        values = {"subnet": aws.subnet, "subnets": aws.subnets, "vpc": aws.vpc}
        conn.execute(statement, values if "%(" in statement else None)
    planned = preview(conn)
    assert [a for a, _ in planned["cluster"]] == ["create"]
    assert [a for a, _ in planned["task_definition"]] == ["create"]
    assert sorted(a for a, _ in planned["container_definition"]) == ["create", "create"]
    assert [a for a, _ in planned["service"]] == ["create"]
    assert planned["service"][0][1]["desired_count"] == {"old": None, "new": 1}
    [td_changes] = [c for _, c in planned["task_definition"]]
    assert [c["name"] for c in td_changes["container_definitions"]["new"]] == ["app", "sidecar"]
    commit(conn)
    no_drift(conn)
    [(arn, revision, status)] = rows(
        conn,
        "SELECT task_definition_arn, revision, status FROM task_definition WHERE family = 'web'",
    )
    assert (revision, status) == (1, "ACTIVE")
    td = aws.task_definition(arn)
    images = {c["name"]: c["image"] for c in td["containerDefinitions"]}
    assert images == {"app": aws.repository["repositoryUri"] + ":v1", "sidecar": "busybox:latest"}
    assert (td["cpu"], td["memory"], td["networkMode"]) == ("512", "1024", "awsvpc")
    app = next(c for c in td["containerDefinitions"] if c["name"] == "app")
    assert {e["name"]: e["value"] for e in app["environment"]} == {"N": "1", "STAGE": "test"}
    service = aws.service("app-cluster", "web-svc")
    assert service is not None and service["desiredCount"] == 1
    assert service["taskDefinition"] == arn
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert network["subnets"] == [aws.subnet] and network["securityGroups"] == [aws.group]
    assert network["assignPublicIp"] == "ENABLED"
    [balancer] = service["loadBalancers"]
    assert balancer == {
        "targetGroupArn": aws.target_group,
        "containerName": "app",
        "containerPort": 80,
    }
    assert rows(conn, "SELECT arn, status FROM service") == [(service["serviceArn"], "ACTIVE")]
    # The replayable SQL names everything by natural key: no cloud ids or ARNs.
    sql = "\n".join(r[0] for r in rows(conn, "SELECT * FROM iasql_get_sql_for_transaction()"))
    assert "INSERT INTO" in sql and "container_definition" in sql
    for cloud_id in ("arn:aws", aws.subnet, aws.group, "123456789012"):
        assert cloud_id not in sql
    return str(service["serviceArn"])


def update(conn: psycopg.Connection, aws: Aws, old_service: str) -> None:
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE container_definition SET tag = 'v2' WHERE name = 'app'")
    conn.execute("UPDATE service SET desired_count = 2 WHERE name = 'web-svc'")
    planned = preview(conn)
    assert planned["service"] == [("update", {"desired_count": {"old": 1, "new": 2}})]
    assert [a for a, _ in planned["task_definition"]] == ["update"]
    assert planned["container_definition"] == [("update", {"tag": {"old": "v1", "new": "v2"}})]
    [(old_arn,)] = rows(
        conn, "SELECT task_definition_arn FROM task_definition WHERE family = 'web'"
    )
    commit(conn)
    no_drift(conn)
    [(new_arn, revision)] = rows(
        conn, "SELECT task_definition_arn, revision FROM task_definition WHERE family = 'web'"
    )
    assert revision == 2 and new_arn != old_arn
    assert aws.task_definition(old_arn)["status"] == "INACTIVE"
    images = {c["name"]: c["image"] for c in aws.task_definition(new_arn)["containerDefinitions"]}
    assert images["app"] == aws.repository["repositoryUri"] + ":v2"
    service = aws.service("app-cluster", "web-svc")
    assert service is not None and service["serviceArn"] == old_service  # in place
    assert (service["desiredCount"], service["taskDefinition"]) == (2, new_arn)
    assert rows(
        conn,
        "SELECT count(*) FROM container_definition c JOIN task_definition t"
        " ON t.id = c.task_definition_id WHERE t.family = 'web'",
    ) == [(2,)]

    # A new name replaces the service (scaled to 0, deleted, made again with its groups),
    # here behind a new target group whose load balancer and listener the same commit makes:
    # the service waits for the listener (Table.create_after; the sandbox, as AWS, refuses a
    # service whose target group no load balancer uses).
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)"
        " SELECT 'web-tg-2', 'ip', 'HTTP', 80, id FROM vpc WHERE vpc_id = %s",
        (aws.vpc,),
    )
    conn.execute(
        "INSERT INTO load_balancer (load_balancer_name, scheme, load_balancer_type,"
        " ip_address_type, subnets, vpc) SELECT 'web-lb-2', 'internal', 'application', 'ipv4',"
        " %s, id FROM vpc WHERE vpc_id = %s",
        (aws.subnets, aws.vpc),
    )
    conn.execute(
        "INSERT INTO listener (load_balancer_id, target_group_id, port, protocol)"
        " SELECT b.id, t.id, 80, 'HTTP' FROM load_balancer b, target_group t"
        " WHERE b.load_balancer_name = 'web-lb-2' AND t.target_group_name = 'web-tg-2'"
    )
    conn.execute(
        "UPDATE service SET name = 'web-svc-2', target_group_id ="
        " (SELECT id FROM target_group WHERE target_group_name = 'web-tg-2')"
        " WHERE name = 'web-svc'"
    )
    # A new service behind it too: its create needs nothing else new, so without the wait it
    # would be the first call of the commit after the target group's.
    conn.execute(
        "INSERT INTO service (name, desired_count, subnets, cluster_id, task_definition_id,"
        " target_group_id) SELECT 'side-svc', 1, ARRAY[%s], c.id, t.id, g.id"
        " FROM cluster c, task_definition t, target_group g WHERE c.cluster_name = 'app-cluster'"
        " AND t.family = 'web' AND g.target_group_name = 'web-tg-2'",
        (aws.subnet,),
    )
    planned = preview(conn)
    [(action, changes)] = [(a, c) for a, c in planned["service"] if a != "create"]
    assert action == "replace" and changes["name"]["forces_replace"] is True
    commit(conn)
    side = aws.service("app-cluster", "side-svc")
    assert side is not None and side["loadBalancers"][0]["containerPort"] == 80
    no_drift(conn)
    assert aws.service("app-cluster", "web-svc") is None
    renamed = aws.service("app-cluster", "web-svc-2")
    assert renamed is not None and renamed["desiredCount"] == 2
    [(new_group,)] = rows(
        conn, "SELECT target_group_arn FROM target_group WHERE target_group_name = 'web-tg-2'"
    )
    assert [b["targetGroupArn"] for b in renamed["loadBalancers"]] == [new_group]
    assert renamed["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [aws.group]
    assert rows(conn, "SELECT count(*) FROM service_security_groups") == [(1,)]


def rpc_rollback_and_fault(conn: psycopg.Connection, aws: Aws) -> None:
    [(arn,)] = rows(conn, "SELECT arn FROM service WHERE name = 'web-svc-2'")
    assert rows(conn, f"SELECT * FROM deploy_service('{arn}')") == [
        (arn, "OK", "Service updated successfully")
    ]
    with pytest.raises(psycopg.Error) as empty:
        conn.execute("SELECT * FROM deploy_service('')")
    assert empty.value.sqlstate == "22023"

    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO cluster (cluster_name) VALUES ('never-made')")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT count(*) FROM cluster WHERE cluster_name = 'never-made'") == [(0,)]
    assert "never-made" not in aws.clusters()

    # A service in a cluster that does not exist: ECS's own error, in one line.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO service (name, desired_count, subnets, task_definition_id)"
        " SELECT 'lost-svc', 1, ARRAY[%s], id FROM task_definition WHERE family = 'web'",
        (aws.subnet,),
    )
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "lost-svc" in message and "ClusterNotFoundException" in message
    assert "\n" not in message
    assert rows(conn, "SELECT count(*) FROM service WHERE name = 'lost-svc'") == [(0,)]


def delete(conn: psycopg.Connection, aws: Aws) -> None:
    [(arn,)] = rows(conn, "SELECT task_definition_arn FROM task_definition WHERE family = 'web'")
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM service WHERE name IN ('web-svc-2', 'side-svc')")
    conn.execute("DELETE FROM task_definition WHERE family = 'web'")
    conn.execute("DELETE FROM cluster WHERE cluster_name = 'app-cluster'")
    planned = preview(conn)
    assert [a for a, _ in planned["service"]] == ["delete", "delete"]
    assert [a for a, _ in planned["task_definition"]] == ["delete"]
    commit(conn)
    no_drift(conn)
    assert aws.service("app-cluster", "web-svc-2") is None
    assert aws.task_definition(arn)["status"] == "INACTIVE"
    assert "app-cluster" not in aws.clusters()
    assert rows(conn, "SELECT count(*) FROM container_definition") == [(1,)]  # pre-td's


def test_ecs_fargate_life_cycle(ecs_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = ecs_env
    check_import(conn, aws)
    if not rows(conn, "SELECT 1 FROM repository WHERE repository_name = 'app'"):
        # aws_ecr reads no repositories yet: its row, as an import would make it.
        conn.execute("INSERT INTO repository (repository_name) VALUES ('app')")
    service = create(conn, aws)
    update(conn, aws, service)
    rpc_rollback_and_fault(conn, aws)
    delete(conn, aws)
