"""aws_vpc: its mappers against a moto server, and its normalisation helpers."""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

import pytest

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules._aws.cidr import normalize_cidr
from modules._aws.tags import normalize_tags, tag_specifications, user_tags, with_token
from modules.aws_vpc import AVAILABILITY_ZONE, SUBNET, VPC, attribute_order
from modules.spec import TOKEN, TOKEN_TAG, CloudError
from tests.support.aws import REGION, ec2_client, mapper, new_vpc, read_by
from tests.support.env import in_cloud

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("10.0.0.1/8", "10.0.0.0/8"),  # host bits cleared, as Postgres's cidr keeps it
        ("10.0.0.0/8", "10.0.0.0/8"),
        (" 192.168.1.7/24 ", "192.168.1.0/24"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("2001:DB8:0:0::1/32", "2001:db8::/32"),
        (ipaddress.ip_network("172.31.0.0/16"), "172.31.0.0/16"),  # asyncpg's cidr values
        ("not a cidr", "not a cidr"),  # AWS rejects it, with its own message
        (None, None),
    ],
)
def test_normalize_cidr(given: Any, canonical: str | None) -> None:
    assert normalize_cidr(given) == canonical


def test_normalize_tags() -> None:
    assert normalize_tags(None) is None
    assert normalize_tags({}) is None  # AWS can't keep an empty tag set apart from none
    assert normalize_tags('{"b": "2", "a": 1}') == {"a": "1", "b": "2"}
    assert list(normalize_tags({"b": "2", "a": None}) or {}) == ["a", "b"]
    assert normalize_tags({"a": None}) == {"a": ""}
    # Our token and AWS's reserved tags are nobody's to manage.
    assert normalize_tags({TOKEN_TAG: "t", "aws:cloudformation:stack-name": "s"}) is None


def test_tags_from_aws_hide_the_token_and_report_it() -> None:
    aws = [{"Key": "Name", "Value": "web"}, {"Key": TOKEN_TAG, "Value": "tok"}]
    assert user_tags(aws) == {"Name": "web"}
    assert user_tags([]) is None
    assert with_token({"a": 1}, aws) == {"a": 1, TOKEN: "tok"}
    assert with_token({"a": 1}, None) == {"a": 1}


def test_tag_specifications() -> None:
    assert tag_specifications("vpc", {"Name": "x"}, "tok") == [
        {
            "ResourceType": "vpc",
            "Tags": [{"Key": "Name", "Value": "x"}, {"Key": TOKEN_TAG, "Value": "tok"}],
        }
    ]
    assert tag_specifications("subnet", None, None) == []


def test_dns_support_is_on_while_hostnames_change() -> None:
    on = {"enable_dns_support": True}
    off = {"enable_dns_support": False}
    assert attribute_order(on).index("enable_dns_support") == 0
    assert attribute_order(off).index("enable_dns_hostnames") == 0
    assert len(attribute_order(off)) == 3


def test_protected_records() -> None:
    assert VPC.protected is not None and SUBNET.protected is not None
    assert VPC.protected({"is_default": True}) and not VPC.protected({"is_default": False})
    assert SUBNET.protected({"default_for_az": True})
    assert not SUBNET.protected({"default_for_az": False})


# --- mappers against moto ------------------------------------------------------------------


def test_availability_zones_are_read_only(moto: MotoServer) -> None:
    zones = in_cloud(moto, lambda cloud: mapper(AVAILABILITY_ZONE).read(cloud, REGION))
    assert {"name": "us-east-1a", "region": REGION} in zones
    with pytest.raises(CloudError, match="cannot be created"):
        in_cloud(
            moto,
            lambda cloud: mapper(AVAILABILITY_ZONE).create(
                cloud, {"name": "us-east-1z", "region": REGION}
            ),
        )
    with pytest.raises(CloudError, match="cannot be deleted"):
        in_cloud(moto, lambda cloud: mapper(AVAILABILITY_ZONE).delete(cloud, zones[0]))


def test_vpc_lifecycle(moto: MotoServer) -> None:
    vpcs = mapper(VPC)

    async def scenario(cloud: AwsCloud) -> str:
        created = await vpcs.create(
            cloud, new_vpc("10.20.0.1/16", "tok-vpc", tags={"Name": "life"})
        )
        assert created["vpc_id"].startswith("vpc-")
        assert created[TOKEN] == "tok-vpc"
        assert created["cidr_block"] == "10.20.0.0/16"
        assert created["tags"] == {"Name": "life"}
        assert (created["state"], created["is_default"]) == ("available", False)
        # AWS turns DNS support on in a new VPC; the row said off.
        assert created["enable_dns_support"] is False
        assert (await read_by(VPC, cloud, "vpc_id"))[created["vpc_id"]] == created

        wanted = {
            **created,
            "enable_dns_support": True,
            "enable_dns_hostnames": True,
            "enable_network_address_usage_metrics": True,
            "tags": {"Name": "renamed", "env": "test"},
        }
        updated = await vpcs.update(cloud, wanted, created)
        assert updated == wanted
        assert (await read_by(VPC, cloud, "vpc_id"))[created["vpc_id"]] == updated

        # Hostnames off before support off; a tag removed; the token stays.
        wanted = {**updated, "enable_dns_support": False, "enable_dns_hostnames": False}
        wanted["tags"] = {"env": "test"}
        assert await vpcs.update(cloud, wanted, updated) == wanted

        await vpcs.delete(cloud, wanted)
        await vpcs.delete(cloud, wanted)  # already gone: fine
        assert created["vpc_id"] not in await read_by(VPC, cloud, "vpc_id")
        return created["vpc_id"]

    vpc_id = in_cloud(moto, scenario)
    assert (
        ec2_client(moto).describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"]
        == []
    )


def test_default_vpc_is_read_as_protected(moto: MotoServer) -> None:
    vpcs = in_cloud(moto, lambda cloud: mapper(VPC).read(cloud, REGION))
    [default] = [v for v in vpcs if v["is_default"]]
    assert default["cidr_block"] == "172.31.0.0/16"
    assert VPC.protected is not None and VPC.protected(default)
    assert TOKEN not in default


def test_subnet_lifecycle(moto: MotoServer) -> None:
    subnets = mapper(SUBNET)

    async def scenario(cloud: AwsCloud) -> tuple[str, str]:
        vpc = await mapper(VPC).create(cloud, new_vpc("10.30.0.0/16", "tok-subnet-vpc"))
        wanted = {
            "cidr_block": "10.30.1.0/24",
            "availability_zone": "us-east-1b",
            "vpc_id": vpc["vpc_id"],
            "region": REGION,
            TOKEN: "tok-subnet",
        }
        created = await subnets.create(cloud, wanted)
        assert created["subnet_id"].startswith("subnet-")
        assert {k: created[k] for k in wanted} == wanted
        assert created["state"] == "available"
        assert created["available_ip_address_count"] > 0
        assert created["subnet_arn"].endswith(created["subnet_id"])
        assert created["default_for_az"] is False
        assert (await read_by(SUBNET, cloud, "subnet_id"))[created["subnet_id"]] == created
        assert await subnets.update(cloud, created, created) == created

        await subnets.delete(cloud, created)
        await subnets.delete(cloud, created)
        assert created["subnet_id"] not in await read_by(SUBNET, cloud, "subnet_id")
        await mapper(VPC).delete(cloud, vpc)
        return created["subnet_id"], vpc["vpc_id"]

    subnet_id, vpc_id = in_cloud(moto, scenario)
    ec2 = ec2_client(moto)
    assert (
        ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["Subnets"]
        == []
    )
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []


def test_default_subnets_are_protected(moto: MotoServer) -> None:
    subnets = in_cloud(moto, lambda cloud: mapper(SUBNET).read(cloud, REGION))
    defaults = [s for s in subnets if s["default_for_az"]]
    assert defaults
    assert SUBNET.protected is not None and all(SUBNET.protected(s) for s in defaults)
