"""key_pair: EC2 key pairs, imported from a public key (a row with public_key, or the
key_pair_import RPC) or made by AWS (the key_pair_request RPC, whose private key is shown
once and never stored)."""

from __future__ import annotations

from typing import Any

from modules._aws.region import region_column
from modules._aws.waiters import wait_for
from modules.errors import ignoring
from modules.spec import Cloud, CloudError, Column, ModuleFunction, Record, Table


def normalize_public_key(value: Any) -> str | None:
    """An OpenSSH public key as `<type> <base64>`: AWS drops or rewrites the comment."""
    if value is None:
        return None
    return " ".join(str(value).split()[:2]) or None


def _record(pair: dict[str, Any], region: str | None) -> Record:
    return {
        "name": pair["KeyName"],
        "key_pair_id": pair.get("KeyPairId"),
        "type": pair.get("KeyType"),
        "fingerprint": pair.get("KeyFingerprint"),
        "public_key": normalize_public_key(pair.get("PublicKey")),
        "region": region,
    }


async def _read_one(ec2: Any, name: str, region: str) -> Record:
    await wait_for(ec2, "key_pair_exists", KeyNames=[name])
    answer = await ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)
    return _record(answer["KeyPairs"][0], region)


async def import_key(cloud: Cloud, name: str, public_key: str, region: str) -> Record:
    async with cloud.client("ec2", region) as ec2:
        await ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.strip().encode())
        return await _read_one(ec2, name, region)


class KeyPairMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.describe_key_pairs(IncludePublicKey=True)
        return [_record(p, region) for p in answer["KeyPairs"]]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if not record.get("public_key"):
            raise CloudError(
                f"key pair {record['name']} has no public_key to import; to have AWS make the"
                f" key, call SELECT * FROM key_pair_request('{record['name']}',"
                f" '{record['region']}')"
            )
        return await import_key(cloud, record["name"], record["public_key"], record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # the public key replaces the pair; the rest is AWS's

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidKeyPair.NotFound"):
                await ec2.delete_key_pair(KeyName=current["name"])


KEY_PAIR = Table(
    name="key_pair",
    columns=(
        Column("name", "varchar", nullable=False),
        Column("key_pair_id", "varchar", cloud_assigned=True),
        Column("type", "varchar", check="type IN ('rsa', 'ed25519')", cloud_assigned=True),
        Column("fingerprint", "varchar", cloud_assigned=True),
        Column("public_key", "varchar", replaces=True, normalize=normalize_public_key),
        region_column(),
    ),
    mapper=KeyPairMapper(),
    # AWS keeps key pair names unique per region.
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
)

# --- RPCs ----------------------------------------------------------------------------------


# The parameters are not called `name`: a result column is, and the function stubs in the
# database (RETURNS TABLE) can't have a parameter and a column of the same name.


async def key_pair_import(
    cloud: Cloud, key_name: str, public_key: str, region: str
) -> list[Record]:
    pair = await import_key(cloud, key_name, public_key, region)
    return [{**pair, "status": "OK", "message": f"imported key pair {key_name} in {region}"}]


async def key_pair_request(cloud: Cloud, key_name: str, region: str) -> list[Record]:
    """AWS makes the pair and hands the private key out this once: it is returned to the
    caller and kept nowhere (the row that the sync adds has only the public key)."""
    async with cloud.client("ec2", region) as ec2:
        answer = await ec2.create_key_pair(KeyName=key_name)
    return [
        {
            "name": key_name,
            "status": "OK",
            "message": f"created key pair {key_name} in {region}; save the private key now",
            "private_key": answer["KeyMaterial"],
        }
    ]


_RESULT = (("name", "varchar"), ("status", "varchar"), ("message", "varchar"))

KEY_PAIR_IMPORT = ModuleFunction(
    name="key_pair_import",
    columns=_RESULT,
    params=(("key_name", "text"), ("public_key", "text"), ("region", "text")),
    run=key_pair_import,
    description="Imports an OpenSSH public key as an EC2 key pair",
    optional=("region",),
    sample="SELECT * FROM key_pair_import('deploy', 'ssh-ed25519 AAAA...', 'us-east-1')",
)

KEY_PAIR_REQUEST = ModuleFunction(
    name="key_pair_request",
    columns=(*_RESULT, ("private_key", "varchar")),
    params=(("key_name", "text"), ("region", "text")),
    run=key_pair_request,
    description="Has AWS make a key pair; returns its private key once, never stored",
    optional=("region",),
    sample="SELECT * FROM key_pair_request('deploy', 'us-east-1')",
)
