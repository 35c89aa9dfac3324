"""The README's promotion walkthrough, run exactly as it is written: its SQL through psql into
staging, its shell commands into prod, against `iasql serve --local-cloud` and a second moto
server as prod's account. If the README drifts from what the product does, this fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from iasql.postgres import LocalPostgres, free_port
from iasql.sandbox import MotoServer
from tests.support.cli import Server, created_url, iasql
from tests.support.env import add_credentials, one, only_regions, psql_env, reachable_tempdir, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "Promoting a change from staging to prod"


def fenced_blocks(section: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced block in one `## ` section of the README."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, re.S)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = reachable_tempdir("iasql-readme-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(argv: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert done.returncode == 0, f"{argv[:2]}: {done.stderr}"
    return done.stdout


def test_promotion_walkthrough_runs_as_written(
    postgres: LocalPostgres, moto_accounts: Any, workdir: Path
) -> None:
    blocks = fenced_blocks(SECTION)
    [setup, staging_sql, generated, prod_script] = [text for _lang, text in blocks[:4]]
    assert [lang for lang, _text in blocks[:4]] == ["sh", "sql", "text", "sh"]
    assert "iasql db create staging" in setup and "moto.server" in setup

    server = Server(workdir / "data", free_port(), "--local-cloud", "--backend-url", postgres.dsn())
    try:
        banner = server.start()
        staging = created_url(
            iasql("db", "create", "staging", "--url", banner.admin_url), "staging", banner
        )
        prod = created_url(iasql("db", "create", "prod", "--url", banner.admin_url), "prod", banner)
        prod_account = moto_accounts()  # the README's `moto.server -p 5001`
        env = {**psql_env(), "STAGING_URL": staging, "PROD_URL": prod}

        # Staging: the SQL block as a psql script, stopping at the first error.
        run(["psql", staging, "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"], env, workdir, staging_sql)
        replay = run(
            ["psql", staging, "-X", "-At", "-c", "SELECT sql FROM iasql_get_sql_for_transaction()"],
            env,
            workdir,
        )
        assert replay == generated  # the README shows exactly what comes out

        # Prod: the shell block, with the second account's real port, run where the
        # README's `.venv/bin/iasql` is this checkout's.
        (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
        script = prod_script.replace("http://127.0.0.1:5001", prod_account.endpoint)
        out = run(["bash", "-euo", "pipefail", "-c", script], env, workdir)
    finally:
        server.close()

    # The dry run showed the rules' work and wrote the review; the status found nothing left.
    assert re.search(r"\nvpc +cidr_block +10\.1\.0\.0/16 +10\.2\.0\.0/16\n", out)
    assert "dry run: rolled back" in out and "from staging: 1 applied; 0 pending" in out
    review = (workdir / "review.md").read_text()
    assert "## staging transaction" in review and "'prod-app'" in review
    # Prod's own account holds the network as prod's rules make it, with its own ids.
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=prod_account.endpoint)
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.2.0.0/16"]}])["Vpcs"]
    assert {"Key": "Name", "Value": "prod-app"} in vpc["Tags"]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    [subnet] = ec2.describe_subnets(Filters=in_vpc)["Subnets"]
    assert (subnet["CidrBlock"], subnet["AvailabilityZone"]) == ("10.2.1.0/24", "eu-west-1a")
    groups = {
        g["GroupName"]: g for g in ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
    }
    [rule] = groups["prod-app"]["IpPermissions"]
    assert (rule["FromPort"], rule["IpRanges"]) == (443, [{"CidrIp": "10.2.0.0/16"}])
    east = boto3.client("ec2", region_name="us-east-1", endpoint_url=prod_account.endpoint)
    assert (
        east.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.1.0.0/16"]}])["Vpcs"]
        == []
    )


def test_coming_from_iasql_runs_as_written(
    envdb: psycopg.Connection, env_url: str, moto_accounts: Any, workdir: Path
) -> None:
    """The first sql block of "Coming from IaSQL", through psql, in an environment whose
    aws_account is installed with credentials for moto (what the README says it assumes):
    an account of its own, as a reader's would be, not the one other test files fill."""
    moto: MotoServer = moto_accounts()
    [(lang, script), *_] = fenced_blocks("Coming from IaSQL")
    assert lang == "sql" and "certificate_import" not in script  # the runnable one
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb, "us-east-1", "us-west-2")  # moto has thirty-odd; each read costs time

    out = subprocess.run(
        ["psql", env_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        env=psql_env(),
        cwd=workdir,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # The second uninstall is skipped, with a NOTICE (psql prints notices on stderr).
    assert "NOTICE:  module aws_sqs is not installed: skipped" in out.stderr
    # The preview showed the arn's restore, as the README's comment has it, and so did the commit.
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint)
    arn = iam.get_role(RoleName="task")["Role"]["Arn"]
    restore = f'{{"arn": {{"new": "{arn}", "old": "dummy", "restored_from_cloud": true}}}}'
    preview, committed = [line for line in out.stdout.splitlines() if '"dummy"' in line]
    assert restore in preview and restore in committed

    assert one(envdb, "SELECT region FROM aws_regions WHERE is_default") == "us-west-2"
    installed = {
        name for (name,) in rows(envdb, "SELECT module_name FROM iasql_modules_installed()")
    }
    computed = {
        name
        for (name,) in rows(
            envdb, "SELECT module_name FROM iasql_modules_list() WHERE module_name LIKE 'aws_s%'"
        )
    }
    assert computed - {"aws_sqs"} <= installed and "aws_sqs" not in installed
    assert {"aws_s3", "aws_security_group", "aws_vpc", "aws_elb", "aws_iam"} <= installed

    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto.endpoint)
    [default_vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    elbv2 = boto3.client("elbv2", region_name="us-west-2", endpoint_url=moto.endpoint)
    [group] = elbv2.describe_target_groups(Names=["web"])["TargetGroups"]
    assert group["VpcId"] == default_vpc["VpcId"]
    assert group["HealthCheckPath"] == "/health"

    groups = {
        g["GroupName"]: g["GroupId"]
        for g in ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": ["web", "app"]}]
        )["SecurityGroups"]
    }
    [rule] = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [groups["app"]]}]
    )["SecurityGroupRules"]
    assert (rule["IpProtocol"], rule["IsEgress"]) == ("-1", False)
    assert rule["ReferencedGroupInfo"]["GroupId"] == groups["web"]

    [gateway] = [
        g
        for g in ec2.describe_nat_gateways()["NatGateways"]
        if {"Key": "Name", "Value": "pub-ng"} in g.get("Tags", [])
    ]
    allocation = gateway["NatGatewayAddresses"][0]["AllocationId"]
    address = "SELECT region, tags ->> 'Name' FROM elastic_ip WHERE allocation_id = %s"
    assert envdb.execute(address, (allocation,)).fetchall() == [("us-west-2", "pub-ng")]

    assert one(envdb, "SELECT arn FROM iam_role WHERE role_name = 'task'") == arn != "dummy"
    assert rows(envdb, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]
