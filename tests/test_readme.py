"""The README's promotion walkthrough, run exactly as it is written: its SQL through psql into
staging, its shell commands into prod, against `iasql serve --local-cloud` and a second moto
server as prod's account. If the README drifts from what the product does, this fails."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from iasql.postgres import LocalPostgres, free_port
from tests.support.cli import Server, created_url, iasql
from tests.support.env import psql_env, reachable_tempdir

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

        # Prod: the shell block, with the second account's real port.
        script = prod_script.replace("http://127.0.0.1:5001", prod_account.endpoint)
        run(["bash", "-euo", "pipefail", "-c", script], env, workdir)
        assert (workdir / "change.sql").read_text() == generated
    finally:
        server.close()

    # Prod's own account now holds the same network, with its own ids.
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=prod_account.endpoint)
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": ["10.1.0.0/16"]}])["Vpcs"]
    assert {"Key": "Name", "Value": "app"} in vpc["Tags"]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    [subnet] = ec2.describe_subnets(Filters=in_vpc)["Subnets"]
    assert (subnet["CidrBlock"], subnet["AvailabilityZone"]) == ("10.1.1.0/24", "us-east-1a")
    groups = {
        g["GroupName"]: g for g in ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
    }
    [rule] = groups["app"]["IpPermissions"]
    assert (rule["FromPort"], rule["IpRanges"]) == (443, [{"CidrIp": "0.0.0.0/0"}])
