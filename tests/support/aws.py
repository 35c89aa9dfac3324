"""Module mappers and boto3 clients against moto, a freshly inserted VPC row, a self-signed
certificate to import, and an environment limited to one region."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules.spec import TOKEN, Mapper, Record

REGION = "us-east-1"


def ec2_client(moto: MotoServer, region: str = REGION) -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=moto.endpoint)


def mapper(table: Any) -> Mapper:
    assert table.mapper is not None
    return table.mapper


async def read_by(table: Any, cloud: AwsCloud, key: str) -> dict[str, Record]:
    return {r[key]: r for r in await mapper(table).read(cloud, REGION)}


def new_vpc(cidr: str, token: str, **columns: Any) -> Record:
    """A VPC as a freshly inserted row would give it to create()."""
    return {
        "cidr_block": cidr,
        "enable_dns_hostnames": False,
        "enable_dns_support": False,
        "enable_network_address_usage_metrics": False,
        "tags": None,
        "region": REGION,
        TOKEN: token,
        **columns,
    }


def make_certificate(domain: str) -> tuple[str, str]:
    """A self-signed PEM certificate for `domain` and its PEM private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, private


def only_one_region(conn: psycopg.Connection) -> None:
    """Reads only us-east-1 from now on: every read of every table otherwise visits each
    region. aws_regions is filled by the first install or sync once credentials are there:
    called before that, this syncs first (else the UPDATE would meet no row, and the next
    install would enable every region)."""
    if conn.execute("SELECT count(*) FROM aws_regions").fetchone() == (0,):
        conn.execute("SELECT * FROM iasql_sync()")
    updated = conn.execute("UPDATE aws_regions SET is_enabled = (region = %s)", (REGION,))
    assert updated.rowcount > 1, "aws_regions holds no regions: are the credentials there?"
