"""The platform tier of a service through the container, data and delivery modules, built in a
staging account, promoted into a prod account with `iasql promote`, checked there with boto3
and deleted there.

Each environment is its own moto server and its own AWS account: the credentials' access key
ids are 12 digits, which the sandbox takes as the account id, so that staging's ARNs, URIs and
role ARNs name another account than prod's, and a staging account id found in prod is a leak.

1. The foundation (one transaction): a VPC with subnets in two zones, security groups for the
   load balancer, the app and the data tier, and an ECR repository. An image is then pushed
   to the repository with boto3 (a push is no infrastructure change: prod gets its own).
2. The containers (one transaction): a Fargate cluster, a task definition whose container
   runs the pushed image, a target group, a load balancer with its group and a listener, a
   service behind them in the VPC's subnets with the app's group; and a whole app through
   aws_ecs_simplified (one row).
3. The data tier (one transaction): a parameter group and an RDS instance using it, with a
   master password; a DB subnet group over the VPC's subnets used by a Multi-AZ DB cluster
   (the rds table names no subnet group) with the data group; an ElastiCache cluster; a
   MemoryDB cluster in a subnet group of the VPC's subnets with the data group; an OpenSearch
   domain in the VPC (domain_subnets and domain_security_groups rows).
4. Delivery (one transaction): a CodeBuild project, a CodeDeploy application and deployment
   group, and a CodePipeline pipeline whose stages name them, each with its IAM role.
5. The four transactions replayed in prod by `iasql promote --transaction ID --commit`; the
   promoted SQL carries no staging cloud id and no password; prod's resources are checked with
   boto3, wired to prod's own VPC, subnets, groups, repository and roles.
6. One transaction deleting all of it in prod, checked gone with boto3.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.aws import REGION, only_one_region
from tests.support.cli import IASQL, cli_env
from tests.support.env import RunningServer, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

# The sandbox takes a 12-digit access key id as the account id: two distinct accounts.
STAGING_ACCOUNT, PROD_ACCOUNT = "111111111111", "222222222222"
MODULES = (
    "aws_ecs_simplified",  # with aws_ecs_fargate, aws_ecr, aws_elb, aws_vpc, aws_iam, ...
    "aws_rds",
    "aws_elasticache",
    "aws_memory_db",
    "aws_opensearch",
    "aws_codebuild",
    "aws_codedeploy",
    "aws_codepipeline",
)
PASSWORD = "Stag1ng-only-pw-4f2c"  # staging's master password: it must never reach prod
CIDRS = "('10.80.1.0/24', '10.80.2.0/24')"
SUBNETS = f"ARRAY(SELECT subnet_id FROM subnet WHERE cidr_block IN {CIDRS})"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {},
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": "sha256:" + "ab" * 32,
            }
        ],
    }
)


def trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": f"{service}.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


SEARCH_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": "es:ESHttpGet",
                "Resource": "*",
            }
        ],
    }
)
STAGES = json.dumps(
    [
        {
            "name": "Source",
            "actions": [
                {
                    "name": "Fetch",
                    "actionTypeId": {
                        "category": "Source",
                        "owner": "AWS",
                        "provider": "S3",
                        "version": "1",
                    },
                    "configuration": {"S3Bucket": "platform-sources", "S3ObjectKey": "web.zip"},
                    "outputArtifacts": [{"name": "Src"}],
                }
            ],
        },
        {
            "name": "Build",
            "actions": [
                {
                    "name": "Build",
                    "actionTypeId": {
                        "category": "Build",
                        "owner": "AWS",
                        "provider": "CodeBuild",
                        "version": "1",
                    },
                    "configuration": {"ProjectName": "platform-build"},
                    "inputArtifacts": [{"name": "Src"}],
                    "outputArtifacts": [{"name": "Built"}],
                }
            ],
        },
        {
            "name": "Deploy",
            "actions": [
                {
                    "name": "Deploy",
                    "actionTypeId": {
                        "category": "Deploy",
                        "owner": "AWS",
                        "provider": "CodeDeploy",
                        "version": "1",
                    },
                    "configuration": {
                        "ApplicationName": "platform-web",
                        "DeploymentGroupName": "platform-web",
                    },
                    "inputArtifacts": [{"name": "Built"}],
                }
            ],
        },
    ]
)

FOUNDATION = """
INSERT INTO vpc (cidr_block, enable_dns_support, enable_dns_hostnames, tags)
    VALUES ('10.80.0.0/16', true, true, '{"Name": "platform"}');
INSERT INTO subnet (vpc_id, cidr_block, availability_zone)
    SELECT v.id, s.cidr, s.zone FROM vpc v,
        (VALUES ('10.80.1.0/24', 'us-east-1a'), ('10.80.2.0/24', 'us-east-1b')) AS s(cidr, zone)
    WHERE v.cidr_block = '10.80.0.0/16';
INSERT INTO security_group (group_name, description, vpc_id)
    SELECT g.name, g.name || ' tier', v.id FROM vpc v,
        (VALUES ('platform-lb'), ('platform-app'), ('platform-data')) AS g(name)
    WHERE v.cidr_block = '10.80.0.0/16';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, cidr_ipv4)
    SELECT id, false, 'tcp', 80, 80, '10.80.0.0/16' FROM security_group
    WHERE group_name = 'platform-lb';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, source_security_group)
    SELECT a.id, false, 'tcp', 8080, 8080, b.id FROM security_group a, security_group b
    WHERE a.group_name = 'platform-app' AND b.group_name = 'platform-lb';
INSERT INTO security_group_rule
    (security_group_id, is_egress, ip_protocol, from_port, to_port, source_security_group)
    SELECT d.id, false, 'tcp', 0, 65535, a.id FROM security_group d, security_group a
    WHERE d.group_name = 'platform-data' AND a.group_name = 'platform-app';
INSERT INTO repository (repository_name, image_tag_mutability)
    VALUES ('platform/web', 'IMMUTABLE');
"""

# The service names the target group only: the commit orders its create after the target
# group's, not after the listener's. AWS refuses a service whose target group has no load
# balancer yet (moto does not), so on AWS this commit depends on the listener winning the
# race (here the task definition waits for its role, which delays the service).
CONTAINERS = f"""
INSERT INTO iam_role (role_name, assume_role_policy_document)
    VALUES ('platform-task-exec', '{trust("ecs-tasks")}');
INSERT INTO cluster (cluster_name) VALUES ('platform');
INSERT INTO task_definition (family, cpu_memory, execution_role_name)
    VALUES ('platform-web', 'vCPU0.5-1GB', 'platform-task-exec');
INSERT INTO container_definition (name, repository_id, tag, essential, container_port,
        host_port, protocol, env_variables, task_definition_id)
    SELECT 'web', r.id, 'v1', true, 8080, 8080, 'tcp', '{{"TIER": "web"}}', t.id
    FROM repository r, task_definition t
    WHERE r.repository_name = 'platform/web' AND t.family = 'platform-web';
INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)
    SELECT 'platform-web', 'ip', 'HTTP', 8080, id FROM vpc WHERE cidr_block = '10.80.0.0/16';
INSERT INTO load_balancer
    (load_balancer_name, scheme, load_balancer_type, ip_address_type, subnets, vpc)
    SELECT 'platform-web', 'internal', 'application', 'ipv4', {SUBNETS}, id
    FROM vpc WHERE cidr_block = '10.80.0.0/16';
INSERT INTO load_balancer_security_groups (load_balancer_id, security_group_id)
    SELECT b.id, g.id FROM load_balancer b, security_group g
    WHERE b.load_balancer_name = 'platform-web' AND g.group_name = 'platform-lb';
INSERT INTO listener (load_balancer_id, target_group_id, port, protocol)
    SELECT b.id, t.id, 80, 'HTTP' FROM load_balancer b, target_group t
    WHERE b.load_balancer_name = 'platform-web' AND t.target_group_name = 'platform-web';
INSERT INTO service (name, desired_count, subnets, cluster_id, task_definition_id,
        target_group_id)
    SELECT 'platform-web', 2, {SUBNETS}, c.id, t.id, g.id
    FROM cluster c, task_definition t, target_group g
    WHERE c.cluster_name = 'platform' AND t.family = 'platform-web'
        AND g.target_group_name = 'platform-web';
INSERT INTO service_security_groups (service_id, security_group_id)
    SELECT s.id, g.id FROM service s, security_group g
    WHERE s.name = 'platform-web' AND g.group_name = 'platform-app';
INSERT INTO ecs_simplified (app_name, app_port, cpu_mem, image_tag, desired_count)
    VALUES ('platform-quick', 8088, 'vCPU0.5-1GB', 'v1', 1);
"""

# The instance with a password goes alone, with the password as a parameter. The search
# domain's subnets and groups are join rows made in the same commit: the domain is created in
# the VPC with them (Table.created_with), as AWS requires.
DATA = f"""
INSERT INTO parameter_group (name, family, description, parameters)
    VALUES ('platform-pg', 'postgres14', 'platform',
        '[{{"ParameterName": "work_mem", "ParameterValue": "8192", "ApplyMethod": "immediate"}}]');
INSERT INTO db_subnet_group (name, description, subnets)
    VALUES ('platform-data', 'platform data', {SUBNETS});
INSERT INTO db_cluster (db_cluster_identifier, allocated_storage, iops,
        db_cluster_instance_class, engine, master_username, subnet_group_id)
    SELECT 'platform-cl', 100, 1000, 'db.m5d.large', 'postgres', 'platform', id
    FROM db_subnet_group WHERE name = 'platform-data';
INSERT INTO db_cluster_security_groups (db_cluster_id, security_group_id)
    SELECT c.id, g.id FROM db_cluster c, security_group g
    WHERE c.db_cluster_identifier = 'platform-cl' AND g.group_name = 'platform-data';
INSERT INTO cache_cluster (cluster_id, node_type, engine)
    VALUES ('platform-cache', 'cache.t3.small', 'redis');
INSERT INTO subnet_group (subnet_group_name, description, subnets)
    VALUES ('platform-mem', 'platform sessions', {SUBNETS});
INSERT INTO memory_db_cluster (cluster_name, description, node_type, subnet_group_id)
    SELECT 'platform-mem', 'sessions', 'db.t4g.small', id FROM subnet_group
    WHERE subnet_group_name = 'platform-mem';
INSERT INTO memory_db_cluster_security_groups (memory_db_cluster_id, security_group_id)
    SELECT c.id, g.id FROM memory_db_cluster c, security_group g
    WHERE c.cluster_name = 'platform-mem' AND g.group_name = 'platform-data';
INSERT INTO domain (domain_name, version, availability_zone_count, instance_type,
        instance_count, ebs_options, access_policy)
    VALUES ('platform-search', 'OpenSearch_2.5', 2, 'r6g.large.search', 2,
        '{{"EBSEnabled": true, "VolumeType": "gp3", "VolumeSize": 10}}', '{SEARCH_POLICY}');
INSERT INTO domain_subnets (domain_id, subnet_id)
    SELECT d.id, s.id FROM domain d, subnet s
    WHERE d.domain_name = 'platform-search' AND s.cidr_block IN {CIDRS};
INSERT INTO domain_security_groups (domain_id, security_group_id)
    SELECT d.id, g.id FROM domain d, security_group g
    WHERE d.domain_name = 'platform-search' AND g.group_name = 'platform-data';
"""
RDS_WITH_PASSWORD = """
INSERT INTO rds (db_instance_identifier, allocated_storage, db_instance_class, engine,
        master_username, master_user_password, availability_zone, parameter_group_id)
    SELECT 'platform-db', 20, 'db.t3.small', 'postgres', 'platform', %s, 'us-east-1a', id
    FROM parameter_group WHERE name = 'platform-pg'
"""

DELIVERY = f"""
INSERT INTO iam_role (role_name, assume_role_policy_document) VALUES
    ('platform-build', '{trust("codebuild")}'),
    ('platform-deploy', '{trust("codedeploy")}'),
    ('platform-pipeline', '{trust("codepipeline")}');
INSERT INTO codebuild_project (project_name, source_type, build_spec, service_role_name,
        environment_variables)
    VALUES ('platform-build', 'CODEPIPELINE', 'version: 0.2', 'platform-build',
        '[{{"name": "IMAGE_REPO", "value": "platform/web"}}]');
INSERT INTO codedeploy_application (name, compute_platform) VALUES ('platform-web', 'Server');
INSERT INTO codedeploy_deployment_group (application_id, name, role_name, ec2_tag_filters)
    SELECT id, 'platform-web', 'platform-deploy',
        '[{{"Key": "app", "Type": "KEY_AND_VALUE", "Value": "platform-web"}}]'
    FROM codedeploy_application WHERE name = 'platform-web';
INSERT INTO pipeline_declaration (name, artifact_store, stages, service_role_name)
    VALUES ('platform', '{{"type": "S3", "location": "platform-artifacts"}}', '{STAGES}',
        'platform-pipeline');
"""

# Reverse dependency order is the commit's business: the order here means nothing.
TEARDOWN = f"""
DELETE FROM pipeline_declaration WHERE name = 'platform';
DELETE FROM codedeploy_deployment_group WHERE name = 'platform-web';
DELETE FROM codedeploy_application WHERE name = 'platform-web';
DELETE FROM codebuild_project WHERE project_name = 'platform-build';
DELETE FROM domain WHERE domain_name = 'platform-search';
DELETE FROM memory_db_cluster WHERE cluster_name = 'platform-mem';
DELETE FROM subnet_group WHERE subnet_group_name = 'platform-mem';
DELETE FROM cache_cluster WHERE cluster_id = 'platform-cache';
DELETE FROM rds WHERE db_instance_identifier = 'platform-db';
DELETE FROM db_cluster WHERE db_cluster_identifier = 'platform-cl';
DELETE FROM db_subnet_group WHERE name = 'platform-data';
DELETE FROM parameter_group WHERE name = 'platform-pg';
DELETE FROM ecs_simplified WHERE app_name = 'platform-quick';
DELETE FROM service WHERE name = 'platform-web';
DELETE FROM task_definition WHERE family = 'platform-web';
DELETE FROM cluster WHERE cluster_name = 'platform';
DELETE FROM load_balancer WHERE load_balancer_name = 'platform-web';
DELETE FROM target_group WHERE target_group_name = 'platform-web';
DELETE FROM repository WHERE repository_name = 'platform/web';
DELETE FROM iam_role WHERE role_name IN
    ('platform-task-exec', 'platform-build', 'platform-deploy', 'platform-pipeline');
DELETE FROM security_group  -- the VPC's default group too: AWS deletes it with the VPC
    WHERE vpc_id = (SELECT id FROM vpc WHERE cidr_block = '10.80.0.0/16');
DELETE FROM subnet WHERE cidr_block IN {CIDRS};
DELETE FROM vpc WHERE cidr_block = '10.80.0.0/16';
"""


class Account:
    """One environment database and its AWS account (a moto server of its own)."""

    def __init__(self, iasql: RunningServer, alias: str, moto: MotoServer, account: str) -> None:
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            row = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()
        assert row is not None
        self.url, self.moto, self.account = str(row[0]), moto, account
        self.conn = psycopg.connect(self.url, autocommit=True)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        self.conn.execute("SELECT * FROM iasql_install('aws_account')")
        self.conn.execute(
            "INSERT INTO aws_credentials (access_key_id, secret_access_key, endpoint_url)"
            " VALUES (%s, 'a-very-secret-key', %s)",
            (account, moto.endpoint),
        )
        only_one_region(self.conn)  # else every install reads thirty-odd regions
        self.conn.execute(f"SELECT * FROM iasql_install({', '.join(map(repr, MODULES))})")

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.moto.endpoint,
            aws_access_key_id=self.account,
            aws_secret_access_key="a-very-secret-key",
        )

    def transaction(self, sql: str, *extra: tuple[str, tuple[Any, ...]]) -> str:
        """One infrastructure transaction: begin, the statements, commit; its id."""
        self.conn.execute("SELECT * FROM iasql_begin()")
        self.conn.execute(sql)
        for statement, params in extra:
            self.conn.execute(statement, params)
        self.commit()
        [(transaction,)] = rows(
            self.conn,
            "SELECT transaction_id FROM iasql_transaction WHERE outcome = 'committed'"
            " ORDER BY closed_at DESC LIMIT 1",
        )
        return str(transaction)

    def commit(self) -> None:
        self.notices.clear()
        self.conn.execute("SELECT * FROM iasql_commit()")
        assert not any("fail" in n for n in self.notices), self.notices
        assert rows(self.conn, "SELECT table_name, action FROM iasql_preview()") == []

    def network(self) -> dict[str, Any]:
        """The platform VPC's cloud ids in this account."""
        ec2 = self.client("ec2")
        [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.80.0.0/16"]}])[
            "Vpcs"
        ]
        in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
        subnets = {
            s["CidrBlock"]: s["SubnetId"] for s in ec2.describe_subnets(Filters=in_vpc)["Subnets"]
        }
        groups = {
            g["GroupName"]: g["GroupId"]
            for g in ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
        }
        return {"vpc": vpc["VpcId"], "subnets": subnets, "groups": groups}

    def push_image(self) -> str:
        """What a `docker push` of platform/web:v1 leaves in the registry: its digest."""
        answer = self.client("ecr").put_image(
            repositoryName="platform/web", imageManifest=MANIFEST, imageTag="v1"
        )
        return str(answer["image"]["imageId"]["imageDigest"])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def accounts(iasql: RunningServer, moto_accounts: Any) -> Iterator[tuple[Account, Account]]:
    """Staging and prod, each on a moto server (an account) of its own; both environment
    databases are dropped afterwards, which frees the server's pools and AWS clients."""
    tag = secrets.token_hex(3)
    made: list[Account] = []
    try:
        made.append(Account(iasql, f"platform_staging_{tag}", moto_accounts(), STAGING_ACCOUNT))
        made.append(Account(iasql, f"platform_prod_{tag}", moto_accounts(), PROD_ACCOUNT))
        yield made[0], made[1]
    finally:
        for account in made:
            account.close()
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            for alias in (f"platform_staging_{tag}", f"platform_prod_{tag}"):
                found = admin.execute("SELECT 1 FROM iasql_db_list() WHERE alias = %s", (alias,))
                if found.fetchone() is not None:
                    admin.execute("SELECT * FROM iasql_disconnect(%s)", (alias,))


def promote(source: Account, target: Account, transaction: str) -> None:
    """`iasql promote --commit` of one transaction, as a person would run it."""
    done = subprocess.run(
        [
            *IASQL,
            "promote",
            *("--from", source.url, "--to", target.url),
            *("--transaction", transaction),
            "--commit",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def check_containers(account: Account) -> list[Any]:
    """The Fargate service runs the account's own image, in its own subnets and group, behind
    its own load balancer; the simplified app is whole."""
    net = account.network()
    subnets = sorted(net["subnets"].values())
    ecr, ecs, elb = account.client("ecr"), account.client("ecs"), account.client("elbv2")
    [repo] = ecr.describe_repositories(repositoryNames=["platform/web"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["repositoryUri"].startswith(f"{account.account}.dkr.ecr.")
    [service] = ecs.describe_services(cluster="platform", services=["platform-web"])["services"]
    assert (service["status"], service["desiredCount"], service["launchType"]) == (
        "ACTIVE",
        2,
        "FARGATE",
    )
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert sorted(network["subnets"]) == subnets
    assert network["securityGroups"] == [net["groups"]["platform-app"]]
    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert (task["family"], task["cpu"], task["memory"]) == ("platform-web", "512", "1024")
    assert task["executionRoleArn"] == f"arn:aws:iam::{account.account}:role/platform-task-exec"
    [container] = task["containerDefinitions"]
    assert container["image"] == repo["repositoryUri"] + ":v1"
    assert container["environment"] == [{"name": "TIER", "value": "web"}]
    [group] = elb.describe_target_groups(Names=["platform-web"])["TargetGroups"]
    assert (group["TargetType"], group["Port"], group["VpcId"]) == ("ip", 8080, net["vpc"])
    assert service["loadBalancers"] == [
        {"targetGroupArn": group["TargetGroupArn"], "containerName": "web", "containerPort": 8080}
    ]
    [balancer] = elb.describe_load_balancers(Names=["platform-web"])["LoadBalancers"]
    assert sorted(z["SubnetId"] for z in balancer["AvailabilityZones"]) == subnets
    assert balancer["SecurityGroups"] == [net["groups"]["platform-lb"]]
    [listener] = elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    assert (listener["Port"], listener["DefaultActions"][0]["TargetGroupArn"]) == (
        80,
        group["TargetGroupArn"],
    )
    # The simplified app: its own repository, in this account, and a service on it.
    [quick] = ecs.describe_services(
        cluster="platform-quick-cluster", services=["platform-quick-service"]
    )["services"]
    assert (quick["status"], quick["desiredCount"]) == ("ACTIVE", 1)
    quick_task = ecs.describe_task_definition(taskDefinition=quick["taskDefinition"])
    [quick_repo] = ecr.describe_repositories(repositoryNames=["platform-quick-repository"])[
        "repositories"
    ]
    [quick_container] = quick_task["taskDefinition"]["containerDefinitions"]
    assert quick_container["image"] == quick_repo["repositoryUri"] + ":v1"
    assert quick_repo["repositoryUri"].startswith(f"{account.account}.dkr.ecr.")
    return [repo, service, task, group, balancer, listener, quick, quick_task, quick_repo]


def check_data(account: Account) -> list[Any]:
    """The databases, the caches and the search domain, in the account's own VPC."""
    net = account.network()
    subnets = sorted(net["subnets"].values())
    data_group = net["groups"]["platform-data"]
    rds = account.client("rds")
    [db] = rds.describe_db_instances(DBInstanceIdentifier="platform-db")["DBInstances"]
    assert (db["DBInstanceClass"], db["Engine"], db["AllocatedStorage"]) == (
        "db.t3.small",
        "postgres",
        20,
    )
    assert db["DBParameterGroups"][0]["DBParameterGroupName"] == "platform-pg"
    parameters = rds.describe_db_parameters(DBParameterGroupName="platform-pg")["Parameters"]
    assert {p["ParameterName"]: p["ParameterValue"] for p in parameters} == {"work_mem": "8192"}
    [cluster] = rds.describe_db_clusters(DBClusterIdentifier="platform-cl")["DBClusters"]
    assert cluster["DBClusterInstanceClass"] == "db.m5d.large"
    assert cluster["DBSubnetGroup"] == "platform-data"
    assert [g["VpcSecurityGroupId"] for g in cluster["VpcSecurityGroups"]] == [data_group]
    [subnet_group] = rds.describe_db_subnet_groups(DBSubnetGroupName="platform-data")[
        "DBSubnetGroups"
    ]
    assert sorted(s["SubnetIdentifier"] for s in subnet_group["Subnets"]) == subnets
    [cache] = account.client("elasticache").describe_cache_clusters(
        CacheClusterId="platform-cache"
    )["CacheClusters"]
    assert (cache["CacheNodeType"], cache["Engine"]) == ("cache.t3.small", "redis")
    memorydb = account.client("memorydb")
    [memory] = memorydb.describe_clusters(ClusterName="platform-mem")["Clusters"]
    assert (memory["NodeType"], memory["SubnetGroupName"]) == ("db.t4g.small", "platform-mem")
    assert [g["SecurityGroupId"] for g in memory["SecurityGroups"]] == [data_group]
    [memory_subnets] = memorydb.describe_subnet_groups(SubnetGroupName="platform-mem")[
        "SubnetGroups"
    ]
    assert sorted(s["Identifier"] for s in memory_subnets["Subnets"]) == subnets
    domain = account.client("opensearch").describe_domain(DomainName="platform-search")[
        "DomainStatus"
    ]
    config = domain["ClusterConfig"]
    assert (config["InstanceType"], config["InstanceCount"]) == ("r6g.large.search", 2)
    assert sorted(domain["VPCOptions"]["SubnetIds"]) == subnets
    assert domain["VPCOptions"]["SecurityGroupIds"] == [data_group]
    return [db, cluster, subnet_group, cache, memory, memory_subnets, domain]


def check_delivery(account: Account) -> list[Any]:
    """The project, the application and group, and the pipeline naming them, with the
    account's own roles."""
    roles = f"arn:aws:iam::{account.account}:role/"
    [project] = account.client("codebuild").batch_get_projects(names=["platform-build"])["projects"]
    assert project["source"]["type"] == "CODEPIPELINE"
    assert project["serviceRole"] == roles + "platform-build"
    assert [(v["name"], v["value"]) for v in project["environment"]["environmentVariables"]] == [
        ("IMAGE_REPO", "platform/web")
    ]
    codedeploy = account.client("codedeploy")
    application = codedeploy.get_application(applicationName="platform-web")["application"]
    assert application["computePlatform"] == "Server"
    group = codedeploy.get_deployment_group(
        applicationName="platform-web", deploymentGroupName="platform-web"
    )["deploymentGroupInfo"]
    assert group["serviceRoleArn"] == roles + "platform-deploy"
    pipeline = account.client("codepipeline").get_pipeline(name="platform")["pipeline"]
    assert pipeline["roleArn"] == roles + "platform-pipeline"
    assert [s["name"] for s in pipeline["stages"]] == ["Source", "Build", "Deploy"]
    build, deploy = (s["actions"][0]["configuration"] for s in pipeline["stages"][1:])
    assert build == {"ProjectName": "platform-build"}
    assert deploy == {"ApplicationName": "platform-web", "DeploymentGroupName": "platform-web"}
    return [project, application, group, pipeline]


def cloud_ids(account: Account) -> set[str]:
    """The ids only this account's cloud has: what must never show in another's."""
    net = account.network()
    ids = {account.account, net["vpc"], *net["subnets"].values(), *net["groups"].values()}
    ecs, elb = account.client("ecs"), account.client("elbv2")
    ids |= set(ecs.list_clusters()["clusterArns"])
    ids |= {g["TargetGroupArn"] for g in elb.describe_target_groups()["TargetGroups"]}
    ids |= {b["LoadBalancerArn"] for b in elb.describe_load_balancers()["LoadBalancers"]}
    return ids


def test_platform_in_staging_promoted_to_prod_then_deleted(
    accounts: tuple[Account, Account],
) -> None:
    staging, prod = accounts
    # Unrelated rows in prod first, so that no serial id lines up with staging's.
    prod.transaction("INSERT INTO vpc (cidr_block) VALUES ('10.90.0.0/16'), ('10.91.0.0/16')")

    # 1. The foundation, then the image pushed as CI would (no row: the registry's own). The
    # network and the repository come first because everything else names them, and the
    # image can only be pushed once its repository exists.
    transactions = [staging.transaction(FOUNDATION)]
    digest = staging.push_image()

    # 2-4. One transaction per tier, each one commit (the commit orders the creates by
    # their references). The password is a parameter: it reaches AWS only. Each tier is
    # then checked in staging, so that a failure in prod is promotion's, not the module's.
    transactions.append(staging.transaction(CONTAINERS))
    transactions.append(staging.transaction(DATA, (RDS_WITH_PASSWORD, (PASSWORD,))))
    transactions.append(staging.transaction(DELIVERY))
    check_containers(staging)
    check_data(staging)
    check_delivery(staging)
    [db] = staging.client("rds").describe_db_instances(DBInstanceIdentifier="platform-db")[
        "DBInstances"
    ]
    assert "MasterUserSecret" not in db  # staging's own password, not one AWS keeps
    assert rows(staging.conn, "SELECT table_name FROM iasql_drift()") == []

    # 5. The SQL that travels: no staging cloud id, account id or password in it (rows
    # name each other by natural key, subnets by VPC and CIDR).
    staging_ids = cloud_ids(staging)
    for transaction in transactions:
        replay = "\n".join(
            sql
            for (sql,) in rows(
                staging.conn,
                f"SELECT sql FROM iasql_get_sql_for_transaction('{transaction}')",
            )
        )
        assert replay, transaction
        leaked = {i for i in (*staging_ids, PASSWORD, "arn:aws:") if i in replay}
        assert not leaked, (leaked, replay)

    # Promoted one transaction at a time, oldest first, with no edit. Between the foundation
    # and the containers, prod's registry gets the image (a push is replayed by CI, not SQL).
    promote(staging, prod, transactions[0])
    assert prod.push_image() == digest  # the same content: the same digest
    for transaction in transactions[1:]:
        promote(staging, prod, transaction)
    # Prod's rows and prod's cloud agree (nothing half-applied, nothing to redo), and its
    # ledger has the four transactions, so a later `iasql promote` would not replay them.
    assert rows(prod.conn, "SELECT table_name, action FROM iasql_preview()") == []
    assert rows(prod.conn, "SELECT table_name FROM iasql_drift()") == []
    ledger = "SELECT source_transaction_id, status FROM iasql_promotions()"
    assert sorted(rows(prod.conn, ledger)) == sorted((t, "applied") for t in transactions)
    described = [*check_containers(prod), *check_data(prod), *check_delivery(prod)]
    # The password stayed in staging: prod's instance has one AWS made and keeps.
    [db] = prod.client("rds").describe_db_instances(DBInstanceIdentifier="platform-db")[
        "DBInstances"
    ]
    assert db["MasterUserSecret"]["SecretArn"].startswith(
        f"arn:aws:secretsmanager:{REGION}:{PROD_ACCOUNT}:"
    )
    assert db["MasterUsername"] == "platform"
    # Nothing of staging's cloud in what prod's cloud describes, nor in prod's rows.
    prod_ids = cloud_ids(prod)
    assert not staging_ids & prod_ids
    text = json.dumps(described, default=str)
    assert not {i for i in (*staging_ids, PASSWORD) if i in text}
    for (table,) in rows(
        prod.conn,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        " AND table_name NOT LIKE 'iasql%' AND table_name NOT LIKE 'aws_%'",
    ):
        text = "\n".join(r[0] for r in rows(prod.conn, f'SELECT t::text FROM "{table}" t'))
        leaked = {i for i in (*staging_ids, PASSWORD) if i in text}
        assert not leaked, (table, leaked)

    # 6. Everything deleted in prod, in one transaction: the commit orders the deletes.
    prod.transaction(TEARDOWN)
    ec2 = prod.client("ec2")
    assert (
        ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.80.0.0/16"]}])["Vpcs"]
        == []
    )
    assert prod.client("ecr").describe_repositories()["repositories"] == []
    ecs = prod.client("ecs")
    clusters = ecs.describe_clusters(clusters=["platform", "platform-quick-cluster"])["clusters"]
    assert [c for c in clusters if c["status"] == "ACTIVE"] == []
    for family in ("platform-web", "platform-quick-td"):
        active = ecs.list_task_definitions(familyPrefix=family, status="ACTIVE")
        assert active["taskDefinitionArns"] == []
    assert prod.client("logs").describe_log_groups(logGroupNamePrefix="platform")["logGroups"] == []
    assert prod.client("elbv2").describe_load_balancers()["LoadBalancers"] == []
    assert prod.client("elbv2").describe_target_groups()["TargetGroups"] == []
    rds = prod.client("rds")
    assert rds.describe_db_instances()["DBInstances"] == []
    assert rds.describe_db_clusters()["DBClusters"] == []
    assert "platform-pg" not in {
        g["DBParameterGroupName"] for g in rds.describe_db_parameter_groups()["DBParameterGroups"]
    }
    assert "platform-data" not in {
        g["DBSubnetGroupName"] for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
    }
    assert prod.client("elasticache").describe_cache_clusters()["CacheClusters"] == []
    memorydb = prod.client("memorydb")
    assert memorydb.describe_clusters()["Clusters"] == []
    assert "platform-mem" not in {
        g["Name"] for g in memorydb.describe_subnet_groups()["SubnetGroups"]
    }
    assert prod.client("opensearch").list_domain_names()["DomainNames"] == []
    assert prod.client("codebuild").list_projects()["projects"] == []
    assert prod.client("codedeploy").list_applications()["applications"] == []
    assert prod.client("codepipeline").list_pipelines()["pipelines"] == []
    roles = [r["RoleName"] for r in prod.client("iam").list_roles()["Roles"]]
    assert [r for r in roles if r.startswith("platform-")] == []
    assert rows(prod.conn, "SELECT * FROM iasql_drift()") == []
    # Prod's delete reached prod's account only: staging's platform is still there.
    check_containers(staging)
