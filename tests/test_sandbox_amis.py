"""The local sandbox (iasql.sandbox_server, what `iasql serve --local-cloud` runs) answers the
public SSM parameters of the AMIs IaSQL scripts launch from (`resolve:ssm:/aws/service/...`),
which moto alone knows only for Amazon Linux."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from iasql.sandbox_server import public_ami_parameters
from tests.support.env import RunningServer, add_credentials, commit, one, reachable_tempdir

pytestmark = pytest.mark.slow

UBUNTU = "/aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
AMAZON_LINUX = "/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[MotoServer]:
    folder = reachable_tempdir("iasql-sandbox-amis-")
    with MotoServer(journal=folder / "journal.jsonl") as server:
        yield server


def client(sandbox: MotoServer, service: str, region: str) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=sandbox.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_public_ami_parameters_name_amis_the_sandbox_has(sandbox: MotoServer, region: str) -> None:
    ssm, ec2 = client(sandbox, "ssm", region), client(sandbox, "ec2", region)
    names = [
        UBUNTU,
        "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
        "/aws/service/canonical/ubuntu/server/jammy/stable/current/amd64/hvm/ebs-gp3/ami-id",
        "/aws/service/ami-windows-latest/Windows_Server-2016-English-Full-Base",
        AMAZON_LINUX,  # moto's own
    ]
    assert set(names[:-1]) <= set(public_ami_parameters())
    for name in names:
        image = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        [found] = ec2.describe_images(ImageIds=[image])["Images"]
        assert found["ImageId"] == image
    [ubuntu] = ec2.describe_images(ImageIds=[ssm.get_parameter(Name=UBUNTU)["Parameter"]["Value"]])[
        "Images"
    ]
    assert ubuntu["Name"].startswith("ubuntu/") and ubuntu["RootDeviceName"] == "/dev/sda1"
    # A parameter still unknown is AWS's error, not an empty answer.
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/aws/service/canonical/ubuntu/server/99.04/no/such")


def test_instance_from_a_resolve_ssm_ubuntu_ami_commits_against_the_sandbox(
    iasql: RunningServer, sandbox: MotoServer
) -> None:
    """An IaSQL script's instance row, as written there, launched in the sandbox."""
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('sandbox_amis')").fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(conn, sandbox)
        conn.execute("SELECT * FROM iasql_install('aws_ec2')")
        conn.execute("UPDATE aws_regions SET is_enabled = (region = 'us-east-1')")
        conn.execute("SELECT * FROM iasql_begin()")
        for name, path in (("ubuntu", UBUNTU), ("amazon-linux", AMAZON_LINUX)):
            conn.execute(
                "INSERT INTO instance (ami, instance_type, tags)"
                f""" VALUES ('resolve:ssm:{path}', 't2.micro', '{{"name": "{name}"}}')"""
            )
        commit(conn)
        ec2 = client(sandbox, "ec2", "us-east-1")
        ssm = client(sandbox, "ssm", "us-east-1")
        for name, path in (("ubuntu", UBUNTU), ("amazon-linux", AMAZON_LINUX)):
            instance_id = one(
                conn, f"SELECT instance_id FROM instance WHERE tags->>'name' = '{name}'"
            )
            found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
            image = found["Instances"][0]["ImageId"]
            assert image == ssm.get_parameter(Name=path)["Parameter"]["Value"]
            ami = one(conn, f"SELECT ami FROM instance WHERE instance_id = '{instance_id}'")
            assert ami == f"resolve:ssm:{path}"  # kept as written
        [(attributes,)] = conn.execute(
            f"SELECT attributes::json ->> 'Name' FROM describe_ami('resolve:ssm:{UBUNTU}')"
        ).fetchall()
        assert attributes.startswith("ubuntu/")
        conn.execute("SELECT * FROM iasql_begin()")
        conn.execute("DELETE FROM instance")
        commit(conn)
