"""aws_vpc, part two: network ACLs (and which one each subnet uses), VPC peering connections
and VPC endpoints (gateway, interface, and the subnets of an interface endpoint)."""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.waiter import create_waiter_with_client
from botocore.waiter import WaiterModel

from modules._aws.cidr import normalize_cidr
from modules._aws.policy import canonical_policy, policy_text
from modules._aws.region import region_column
from modules._aws.tags import (
    sync_tags,
    tag_specifications,
    tags_as_text,
    tags_column,
    update_tags,
    user_tags,
    with_token,
)
from modules._aws.waiters import wait_for
from modules.concurrency import KeyedLocks
from modules.errors import ignoring
from modules.spec import TOKEN, Cloud, CloudError, Column, Record, Ref, Table, foreign_key

# --- network_acl ---------------------------------------------------------------------------

# AWS ends every ACL with rule 32767 (deny all, in and out, IPv4 and IPv6). It can be neither
# changed nor removed, so it is not part of `entries`.
_LAST_RULE = 32767
_PROTOCOL_NUMBERS = {"all": "-1", "icmp": "1", "tcp": "6", "udp": "17", "icmpv6": "58"}
_PORT_PROTOCOLS = {"6", "17"}  # AWS keeps a port range only for these
_ICMP_PROTOCOLS = {"1", "58"}  # and an ICMP type and code only for these
# An entry's keys as AWS spells them, found from any casing or snake_case the user writes.
_ENTRY_KEYS = {
    key.lower(): key
    for key in (
        "RuleNumber",
        "Egress",
        "Protocol",
        "RuleAction",
        "CidrBlock",
        "Ipv6CidrBlock",
        "PortRange",
        "IcmpTypeCode",
    )
}


def _aws_keys(item: dict[str, Any]) -> dict[str, Any]:
    return {_ENTRY_KEYS.get(str(k).replace("_", "").lower(), str(k)): v for k, v in item.items()}


def _protocol(value: Any) -> str:
    """AWS reports a protocol by number ("6"); "tcp", "TCP", 6 and "all" are accepted too."""
    text = str(value).strip().lower()
    return _PROTOCOL_NUMBERS.get(text, text)


def _pair(value: Any, first: str, second: str) -> dict[str, int] | None:
    if not value:
        return None
    item = {str(k).lower(): v for k, v in value.items()}
    return {first: int(item.get(first.lower(), -1)), second: int(item.get(second.lower(), -1))}


def normalize_entry(value: dict[str, Any]) -> dict[str, Any]:
    """One ACL entry in AWS's shape, keeping only what AWS keeps for its protocol."""
    entry = _aws_keys(value)
    protocol = _protocol(entry.get("Protocol", "-1"))
    canonical: dict[str, Any] = {
        "RuleNumber": int(entry["RuleNumber"]),
        "Egress": bool(entry.get("Egress", False)),
        "Protocol": protocol,
        "RuleAction": str(entry.get("RuleAction", "")).lower(),
    }
    for key in ("CidrBlock", "Ipv6CidrBlock"):
        if entry.get(key):
            canonical[key] = normalize_cidr(entry[key])
    ports = _pair(entry.get("PortRange"), "From", "To")
    if ports is not None and protocol in _PORT_PROTOCOLS:
        canonical["PortRange"] = ports
    icmp = _pair(entry.get("IcmpTypeCode"), "Code", "Type")
    if icmp is not None and protocol in _ICMP_PROTOCOLS:
        canonical["IcmpTypeCode"] = icmp
    return canonical


def normalize_entries(value: Any) -> list[dict[str, Any]] | None:
    """An ACL's entries as compared: in AWS's shape, ingress then egress, by rule number,
    without AWS's fixed last rule. No entries is None, as a new ACL has none but that rule."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        value = [value]
    entries = [normalize_entry(e) for e in value]
    entries = [e for e in entries if e["RuleNumber"] != _LAST_RULE]
    entries.sort(key=lambda e: (e["Egress"], e["RuleNumber"]))
    return entries or None


def _entry_request(acl_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"NetworkAclId": acl_id, **entry}


def _acl_record(acl: dict[str, Any], region: str | None) -> Record:
    record = {
        "network_acl_id": acl["NetworkAclId"],
        "is_default": bool(acl.get("IsDefault")),
        "entries": normalize_entries(acl.get("Entries") or []),
        "tags": user_tags(acl.get("Tags")),
        "region": region,
        "vpc_id": acl["VpcId"],
    }
    return with_token(record, acl.get("Tags"))


async def _describe_acls(ec2: Any, *filters: tuple[str, str]) -> list[dict[str, Any]]:
    given = [{"Name": name, "Values": [value]} for name, value in filters]
    pages = ec2.get_paginator("describe_network_acls").paginate(Filters=given)
    return [acl async for page in pages for acl in page["NetworkAcls"]]


async def network_acls_of_subnets(ec2: Any) -> dict[str, str]:
    """subnet id -> the id of the one network ACL it is associated with, in a region."""
    return {
        association["SubnetId"]: acl["NetworkAclId"]
        for acl in await _describe_acls(ec2)
        for association in acl.get("Associations") or ()
    }


async def _default_acl(ec2: Any, vpc_id: str) -> dict[str, Any]:
    found = await _describe_acls(ec2, ("vpc-id", vpc_id), ("default", "true"))
    if not found:
        raise CloudError(f"VPC {vpc_id} has no default network ACL")
    return found[0]


_ACL_WAITERS = WaiterModel(
    {
        "version": 2,
        "waiters": {
            "SubnetAssociated": {
                "operation": "DescribeNetworkAcls",
                "delay": 2,
                "maxAttempts": 30,
                "acceptors": [
                    {
                        "state": "success",
                        "matcher": "path",
                        "argument": "length(NetworkAcls[]) > `0`",
                        "expected": True,
                    }
                ],
            }
        },
    }
)


async def associate_network_acl(
    ec2: Any, subnet_id: str, vpc_id: str, network_acl_id: str | None
) -> None:
    """Associates the subnet with the ACL (None: its VPC's default one). A subnet always has
    exactly one association, which is replaced."""
    if network_acl_id is None:
        network_acl_id = (await _default_acl(ec2, vpc_id))["NetworkAclId"]
    # A subnet just made may take a moment to show its association with the default ACL.
    waiter = create_waiter_with_client("SubnetAssociated", _ACL_WAITERS, ec2)
    await waiter.wait(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])
    for acl in await _describe_acls(ec2, ("association.subnet-id", subnet_id)):
        for association in acl.get("Associations") or ():
            if association["SubnetId"] != subnet_id:
                continue
            if acl["NetworkAclId"] != network_acl_id:
                await ec2.replace_network_acl_association(
                    AssociationId=association["NetworkAclAssociationId"],
                    NetworkAclId=network_acl_id,
                )
            return
    raise CloudError(f"subnet {subnet_id} has no network ACL association to replace")


class NetworkAclMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            return [_acl_record(acl, region) for acl in await _describe_acls(ec2)]

    async def _read_one(self, ec2: Any, acl_id: str, region: str) -> Record:
        answer = await ec2.describe_network_acls(NetworkAclIds=[acl_id])
        return _acl_record(answer["NetworkAcls"][0], region)

    async def _set_entries(self, ec2: Any, acl_id: str, wanted: Any, current: Any) -> None:
        """Deletes, replaces and adds entries (in that order) to go from current to wanted;
        an entry is known by its direction and rule number."""
        new = {(e["Egress"], e["RuleNumber"]): e for e in normalize_entries(wanted) or ()}
        old = {(e["Egress"], e["RuleNumber"]): e for e in normalize_entries(current) or ()}
        for egress, number in old.keys() - new.keys():
            await ec2.delete_network_acl_entry(
                NetworkAclId=acl_id, Egress=egress, RuleNumber=number
            )
        for key, entry in sorted(new.items()):
            if key not in old:
                await ec2.create_network_acl_entry(**_entry_request(acl_id, entry))
            elif old[key] != entry:
                await ec2.replace_network_acl_entry(**_entry_request(acl_id, entry))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        async with cloud.client("ec2", region) as ec2:
            if record.get("is_default"):
                # The row of a VPC's default ACL, its VPC replaced: AWS made the new VPC's
                # default ACL, which takes the row's entries and tags.
                current = _acl_record(await _default_acl(ec2, record["vpc_id"]), region)
                return await self._update(ec2, record, current)
            answer = await ec2.create_network_acl(
                VpcId=record["vpc_id"],
                TagSpecifications=tag_specifications(
                    "network-acl", record.get("tags"), record.get(TOKEN)
                ),
            )
            acl_id = answer["NetworkAcl"]["NetworkAclId"]
            await self._set_entries(ec2, acl_id, record.get("entries"), None)
            return await self._read_one(ec2, acl_id, region)

    async def _update(self, ec2: Any, record: Record, current: Record) -> Record:
        acl_id = current["network_acl_id"]
        await self._set_entries(ec2, acl_id, record.get("entries"), current.get("entries"))
        await sync_tags(ec2, acl_id, record.get("tags"), current.get("tags"))
        return await self._read_one(ec2, acl_id, current["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        async with cloud.client("ec2", current["region"]) as ec2:
            return await self._update(ec2, record, current)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        if current.get("is_default"):
            return  # AWS deletes a VPC's default ACL with the VPC, and only then
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidNetworkAclID.NotFound"):
                await ec2.delete_network_acl(NetworkAclId=current["network_acl_id"])


NETWORK_ACL = Table(
    name="network_acl",
    extra_ddl=tags_as_text("network_acl"),
    columns=(
        Column("network_acl_id", "varchar", cloud_assigned=True),
        # Not in TABLES.md's list, but IaSQL had it: the ACL AWS made with the VPC.
        Column("is_default", "boolean", nullable=False, default="false", cloud_assigned=True),
        Column("entries", "json", normalize=normalize_entries),
        tags_column(),
        region_column(),
        foreign_key("vpc_id", "vpc", "vpc_id", on_delete="CASCADE"),
    ),
    mapper=NetworkAclMapper(),
    # An ACL has no name. A VPC's default ACL is (vpc, is_default) in any account; a user's
    # ACLs are told apart by their tags (a Name) within their VPC.
    natural_key=("vpc_id", "is_default", "tags"),
    cloud_id=("network_acl_id",),
    protected=lambda record: bool(record.get("is_default")),
)

# The subnet's network_acl_id: NULL means its VPC's default ACL, and the row says so as soon as
# that ACL has a row in the subnet's region (a new VPC's gets one at the commit that creates the
# VPC). A subnet that moves to another VPC leaves its old VPC's ACL behind; one that moves to
# another region with its VPC (both replaced) leaves behind the default ACL of the old region,
# which the new VPC does not have: it goes back to NULL until the commit reads the new one.
SUBNET_ACL_DDL = (
    """CREATE OR REPLACE FUNCTION subnet_default_network_acl() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.network_acl_id IS NULL OR (TG_OP = 'UPDATE'
                AND (NEW.vpc_id IS DISTINCT FROM OLD.vpc_id
                    OR NEW.region IS DISTINCT FROM OLD.region AND EXISTS (
                        SELECT 1 FROM network_acl
                        WHERE id = NEW.network_acl_id AND is_default
                            AND region IS DISTINCT FROM NEW.region))
                AND NEW.network_acl_id IS NOT DISTINCT FROM OLD.network_acl_id) THEN
            NEW.network_acl_id := (SELECT id FROM network_acl
                WHERE vpc_id = NEW.vpc_id AND is_default AND region = NEW.region
                ORDER BY id LIMIT 1);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER subnet_default_network_acl BEFORE INSERT OR UPDATE ON subnet
        FOR EACH ROW EXECUTE FUNCTION subnet_default_network_acl()""",
)


def subnet_network_acl_column() -> Column:
    """The subnet's ACL, changed in place by replacing the subnet's association. Deleting the
    ACL's row moves the subnet back to its VPC's default ACL (SET NULL, then the trigger)."""
    return foreign_key(
        "network_acl_id",
        "network_acl",
        "network_acl_id",
        on_delete="SET NULL",
        nullable=True,
        replaces=False,
        optional=True,
    )


# --- peering_connection --------------------------------------------------------------------

# Connections in these states are over: AWS shows them for a while, but they peer nothing.
_PEERING_GONE = {"deleted", "deleting", "rejected", "expired", "failed"}
_PEERING_STATES = (
    "'initiating-request', 'pending-acceptance', 'provisioning', 'active', 'deleting',"
    " 'deleted', 'rejected', 'failed', 'expired'"
)


def _peering_record(peering: dict[str, Any], region: str | None) -> Record:
    record = {
        "peering_connection_id": peering["VpcPeeringConnectionId"],
        "state": peering.get("Status", {}).get("Code"),
        "tags": user_tags(peering.get("Tags")),
        "region": region,
        "requester_id": peering["RequesterVpcInfo"]["VpcId"],
        "accepter_id": peering["AccepterVpcInfo"]["VpcId"],
        "accepter_region": peering["AccepterVpcInfo"].get("Region", region),
    }
    return with_token(record, peering.get("Tags"))


def _in_region(peering: dict[str, Any], region: str | None) -> bool:
    """Requested from `region`: a connection between regions is listed in both, and is a row
    of its requester's region alone."""
    return bool(peering["RequesterVpcInfo"].get("Region", region) == region)


class PeeringConnectionMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            pages = ec2.get_paginator("describe_vpc_peering_connections").paginate()
            found = [p async for page in pages for p in page["VpcPeeringConnections"]]
        return [
            _peering_record(p, region)
            for p in found
            if p.get("Status", {}).get("Code") not in _PEERING_GONE and _in_region(p, region)
        ]

    async def _read_one(self, ec2: Any, peering_id: str, region: str) -> Record:
        answer = await ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[peering_id])
        return _peering_record(answer["VpcPeeringConnections"][0], region)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        accepter_region = record.get("accepter_region") or region
        peer = {} if accepter_region == region else {"PeerRegion": accepter_region}
        async with (
            cloud.client("ec2", region) as ec2,
            cloud.client("ec2", accepter_region) as accepter,
        ):
            answer = await ec2.create_vpc_peering_connection(
                VpcId=record["requester_id"],
                PeerVpcId=record["accepter_id"],
                TagSpecifications=tag_specifications(
                    "vpc-peering-connection", record.get("tags"), record.get(TOKEN)
                ),
                **peer,
            )
            peering_id = answer["VpcPeeringConnection"]["VpcPeeringConnectionId"]
            try:
                # Both VPCs are this account's: the connection is accepted at once, from the
                # accepter's region (AWS refuses an acceptance from the requester's).
                await wait_for(
                    accepter, "vpc_peering_connection_exists", VpcPeeringConnectionIds=[peering_id]
                )
                await accepter.accept_vpc_peering_connection(VpcPeeringConnectionId=peering_id)
                await wait_for(
                    ec2,
                    "vpc_peering_connection_exists",
                    VpcPeeringConnectionIds=[peering_id],
                    Filters=[{"Name": "status-code", "Values": ["active"]}],
                )
            except Exception:
                # Not left pending: the step failed, so the commit's undo won't delete it.
                with ignoring("InvalidVpcPeeringConnectionID.NotFound"):
                    await ec2.delete_vpc_peering_connection(VpcPeeringConnectionId=peering_id)
                raise
            return await self._read_one(ec2, peering_id, region)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return await update_tags(cloud, record, current, "peering_connection_id", self._read_one)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidVpcPeeringConnectionID.NotFound"):
                await ec2.delete_vpc_peering_connection(
                    VpcPeeringConnectionId=current["peering_connection_id"]
                )


# IaSQL's peering_connection has no region: it is the requester VPC's, and accepter_region the
# accepter VPC's (the two differ for a connection between regions, as in IaSQL), set here so
# that the engine knows where to call.
_PEERING_REGION_DDL = (
    """CREATE OR REPLACE FUNCTION peering_connection_region() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.region := coalesce(
            (SELECT region FROM vpc WHERE id = NEW.requester_id), NEW.region);
        NEW.accepter_region := coalesce(
            (SELECT region FROM vpc WHERE id = NEW.accepter_id), NEW.accepter_region, NEW.region);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER peering_connection_region BEFORE INSERT OR UPDATE ON peering_connection
        FOR EACH ROW EXECUTE FUNCTION peering_connection_region()""",
)


PEERING_CONNECTION = Table(
    name="peering_connection",
    columns=(
        Column("peering_connection_id", "varchar", cloud_assigned=True),
        Column("state", "varchar", check=f"state IN ({_PEERING_STATES})", cloud_assigned=True),
        tags_column(),
        foreign_key("requester_id", "vpc", "vpc_id"),
        foreign_key("accepter_id", "vpc", "vpc_id"),
        region_column(),  # ours: see _PEERING_REGION_DDL
        # Ours too, from the accepter VPC: another region is another connection.
        Column("accepter_region", "varchar", replaces=True),
    ),
    mapper=PeeringConnectionMapper(),
    # The two VPCs it joins (each found by its own natural key); a second connection between
    # the same two VPCs is refused by AWS while one is active.
    natural_key=("requester_id", "accepter_id"),
    cloud_id=("peering_connection_id",),
    extra_ddl=(*_PEERING_REGION_DDL, *tags_as_text("peering_connection")),
)

# --- VPC endpoints: shared -----------------------------------------------------------------

# What AWS gives an endpoint made without a policy: full access. The row says NULL for it.
_FULL_ACCESS = canonical_policy(
    {"Statement": {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}}
)
_FULL_ACCESS_DOCUMENT = json.dumps(
    {
        "Version": "2008-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}],
    }
)
# States of an endpoint that is going or gone.
_ENDPOINT_GONE = {"deleting", "deleted", "rejected", "expired"}
# Services named without a region (com.amazonaws.<service>).
_GLOBAL_SERVICES = {"s3-global.accesspoint"}


def normalize_endpoint_policy(value: Any) -> str | None:
    """A policy as canonical JSON (see aws_s3), with AWS's full-access default as None."""
    policy = canonical_policy(value)
    if policy is None:
        return None
    try:
        parsed = json.loads(policy)
    except ValueError:
        return policy
    if isinstance(parsed, dict):
        parsed.pop("Version", None)
        if canonical_policy(parsed) == _FULL_ACCESS:
            return None
    return policy


def _policy_document(value: Any) -> str:
    """The PolicyDocument to send. No policy is the full-access one, sent as such rather than
    with ResetPolicy (which moto ignores)."""
    if value is None:
        return _FULL_ACCESS_DOCUMENT
    return policy_text(value)


def _read_policy(document: str | None) -> Any:
    if document is None or normalize_endpoint_policy(document) is None:
        return None
    try:
        return json.loads(document)
    except ValueError:
        return document


def service_name(service: str, region: str) -> str:
    """AWS's full service name of a short one: "s3" is com.amazonaws.<region>.s3. A name
    already in full (com.amazonaws..., aws.sagemaker...) is used as it is."""
    if service.startswith(("com.amazonaws.", "aws.")):
        return service
    if service in _GLOBAL_SERVICES:
        return f"com.amazonaws.{service}"
    return f"com.amazonaws.{region}.{service}"


def short_service(name: str, region: str | None) -> str:
    for prefix in (f"com.amazonaws.{region}.", "com.amazonaws."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def normalize_route_tables(value: Any) -> list[str] | None:
    """Route table ids as a sorted list; none is None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return sorted({str(v) for v in value}) or None


def _endpoint_states(result: str, matcher: str, *states: str) -> list[dict[str, Any]]:
    """Waiter acceptors: `result` when the endpoint's state (all of them: pathAll; any:
    pathAny) is one of `states`."""
    return [
        {"state": result, "matcher": matcher, "argument": "VpcEndpoints[].State", "expected": s}
        for s in states
    ]


def _endpoint_waiter(*acceptors: dict[str, Any]) -> dict[str, Any]:
    return {
        "operation": "DescribeVpcEndpoints",
        "delay": 2,
        "maxAttempts": 300,
        "acceptors": list(acceptors),
    }


_ENDPOINT_WAITERS = WaiterModel(
    {
        "version": 2,
        "waiters": {
            # AWS spells states in lower case ("available"); both spellings are accepted.
            "EndpointAvailable": _endpoint_waiter(
                # pendingAcceptance: waits for the service's owner, not for AWS.
                *_endpoint_states(
                    "success", "pathAll", "available", "Available", "pendingAcceptance"
                ),
                *_endpoint_states("failure", "pathAny", "failed", "Failed", "rejected", "Rejected"),
            ),
            "EndpointDeleted": _endpoint_waiter(
                *_endpoint_states("success", "pathAll", "deleted", "Deleted"),
                {
                    "state": "success",
                    "matcher": "path",
                    "argument": "length(VpcEndpoints[]) == `0`",
                    "expected": True,
                },
                {
                    "state": "success",
                    "matcher": "error",
                    "expected": "InvalidVpcEndpointId.NotFound",
                },
            ),
        },
    }
)


async def _wait_endpoint(ec2: Any, name: str, endpoint_id: str) -> None:
    """Waits until the endpoint is available (or gone). Interface endpoints take a minute or
    two to make their network interfaces, and refuse changes meanwhile. Described by id:
    moto has no vpc-endpoint-id filter."""
    waiter = create_waiter_with_client(name, _ENDPOINT_WAITERS, ec2)
    await waiter.wait(VpcEndpointIds=[endpoint_id])


# One change at a time per endpoint: each one puts it back into `pending` for a while.
_ENDPOINT_LOCKS: KeyedLocks[str] = KeyedLocks()


@contextlib.asynccontextmanager
async def _changing(ec2: Any, endpoint_id: str) -> AsyncIterator[None]:
    async with _ENDPOINT_LOCKS(endpoint_id):
        await _wait_endpoint(ec2, "EndpointAvailable", endpoint_id)
        yield
        await _wait_endpoint(ec2, "EndpointAvailable", endpoint_id)


async def _describe_endpoints(ec2: Any, kind: str) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_vpc_endpoints").paginate(
        Filters=[{"Name": "vpc-endpoint-type", "Values": [kind]}]
    )
    return [
        e
        async for page in pages
        for e in page["VpcEndpoints"]
        if e.get("VpcEndpointType", kind) == kind
        and str(e.get("State", "")).lower() not in _ENDPOINT_GONE
    ]


async def _describe_endpoint(ec2: Any, endpoint_id: str) -> dict[str, Any]:
    answer = await ec2.describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])
    return dict(answer["VpcEndpoints"][0])


def _state(endpoint: dict[str, Any]) -> str | None:
    state = endpoint.get("State")
    return None if state is None else str(state).lower()


async def _create_endpoint(ec2: Any, kind: str, record: Record, **extra: Any) -> dict[str, Any]:
    region = record["region"]
    if record.get("policy") is not None:
        extra["PolicyDocument"] = _policy_document(record["policy"])
    if record.get(TOKEN):
        extra["ClientToken"] = record[TOKEN]  # a retried create makes no second endpoint
    answer = await ec2.create_vpc_endpoint(
        VpcEndpointType=kind,
        VpcId=record["vpc_id"],
        ServiceName=service_name(record["service"], region),
        TagSpecifications=tag_specifications("vpc-endpoint", record.get("tags"), record.get(TOKEN)),
        **extra,
    )
    endpoint_id = answer["VpcEndpoint"]["VpcEndpointId"]
    await _wait_endpoint(ec2, "EndpointAvailable", endpoint_id)
    return await _describe_endpoint(ec2, endpoint_id)


async def _delete_endpoint(cloud: Cloud, current: Record) -> None:
    endpoint_id = current["vpc_endpoint_id"]
    async with cloud.client("ec2", current["region"]) as ec2:
        with ignoring("InvalidVpcEndpointId.NotFound"):
            answer = await ec2.delete_vpc_endpoints(VpcEndpointIds=[endpoint_id])
            # A refusal comes back as a list, not as an error.
            for failure in answer.get("Unsuccessful") or ():
                error = failure.get("Error", {})
                if error.get("Code") != "InvalidVpcEndpointId.NotFound":
                    raise CloudError(
                        f"{endpoint_id}: {error.get('Code')}: {error.get('Message')}".strip()
                    )
            # Interface endpoints take their network interfaces away for a while; the VPC
            # and subnets can only go after that.
            await _wait_endpoint(ec2, "EndpointDeleted", endpoint_id)


async def _set_policy_and_tags(ec2: Any, record: Record, current: Record) -> None:
    endpoint_id = current["vpc_endpoint_id"]
    wanted = record.get("policy")
    if normalize_endpoint_policy(wanted) != normalize_endpoint_policy(current.get("policy")):
        async with _changing(ec2, endpoint_id):
            await ec2.modify_vpc_endpoint(
                VpcEndpointId=endpoint_id, PolicyDocument=_policy_document(wanted)
            )
    await sync_tags(ec2, endpoint_id, record.get("tags"), current.get("tags"))


class _EndpointMapper(abc.ABC):
    """What gateway and interface endpoints share. A subclass names its `kind`, makes its
    records, and turns its own columns into arguments of create_vpc_endpoint
    (`_create_options`) and modify_vpc_endpoint (`_changes`)."""

    kind: str

    @abc.abstractmethod
    def _record(self, endpoint: dict[str, Any], region: str | None) -> Record: ...

    @abc.abstractmethod
    def _create_options(self, record: Record) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _changes(self, record: Record, current: Record) -> dict[str, Any]:
        """What differs in this kind's own columns ({}: nothing to modify)."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            found = await _describe_endpoints(ec2, self.kind)
        return [self._record(e, region) for e in found]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        extra = self._create_options(record)
        async with cloud.client("ec2", record["region"]) as ec2:
            endpoint = await _create_endpoint(ec2, self.kind, record, **extra)
        return self._record(endpoint, record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        endpoint_id = current["vpc_endpoint_id"]
        changes = self._changes(record, current)
        async with cloud.client("ec2", current["region"]) as ec2:
            if changes:
                async with _changing(ec2, endpoint_id):
                    await ec2.modify_vpc_endpoint(VpcEndpointId=endpoint_id, **changes)
            await _set_policy_and_tags(ec2, record, current)
            return self._record(await _describe_endpoint(ec2, endpoint_id), current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await _delete_endpoint(cloud, current)


def _endpoint_columns(service_check: str) -> tuple[Column, ...]:
    return (
        Column("vpc_endpoint_id", "varchar", cloud_assigned=True),
        Column("service", "varchar", nullable=False, check=service_check, replaces=True),
        Column("policy", "json", normalize=normalize_endpoint_policy),
        Column("state", "varchar", cloud_assigned=True),
    )


# --- endpoint_gateway ----------------------------------------------------------------------


def _gateway_record(endpoint: dict[str, Any], region: str | None) -> Record:
    record = {
        "vpc_endpoint_id": endpoint["VpcEndpointId"],
        "service": short_service(endpoint["ServiceName"], region),
        "policy": _read_policy(endpoint.get("PolicyDocument")),
        "state": _state(endpoint),
        "route_table_ids": normalize_route_tables(endpoint.get("RouteTableIds")),
        "tags": user_tags(endpoint.get("Tags")),
        "region": region,
        "vpc_id": endpoint["VpcId"],
    }
    return with_token(record, endpoint.get("Tags"))


class EndpointGatewayMapper(_EndpointMapper):
    kind = "Gateway"

    def _record(self, endpoint: dict[str, Any], region: str | None) -> Record:
        return _gateway_record(endpoint, region)

    def _create_options(self, record: Record) -> dict[str, Any]:
        tables = normalize_route_tables(record.get("route_table_ids"))
        return {"RouteTableIds": tables} if tables else {}

    def _changes(self, record: Record, current: Record) -> dict[str, Any]:
        new = set(normalize_route_tables(record.get("route_table_ids")) or ())
        old = set(normalize_route_tables(current.get("route_table_ids")) or ())
        # AWS adds and removes the prefix-list routes to the service itself.
        changes = {"AddRouteTableIds": sorted(new - old)} if new - old else {}
        if old - new:
            changes["RemoveRouteTableIds"] = sorted(old - new)
        return changes


ENDPOINT_GATEWAY = Table(
    name="endpoint_gateway",
    extra_ddl=tags_as_text("endpoint_gateway"),
    columns=(
        *_endpoint_columns("service IN ('s3', 'dynamodb')"),
        # Cloud ids of route tables (rtb-...), as in IaSQL: the tables must exist already.
        # Replayed SQL names them by natural key, and a route table is deleted only after
        # the endpoint has let go of it.
        Column(
            "route_table_ids",
            "text[]",
            normalize=normalize_route_tables,
            cloud_ref=Ref("route_table", key="route_table_id"),
        ),
        tags_column(),
        region_column(),
        foreign_key("vpc_id", "vpc", "vpc_id"),
    ),
    mapper=EndpointGatewayMapper(),
    # The VPC and the service: one gateway endpoint per service and VPC is the rule (AWS
    # allows more, with other route tables, which this key could not tell apart).
    natural_key=("vpc_id", "service"),
    cloud_id=("vpc_endpoint_id",),
)

# --- endpoint_interface --------------------------------------------------------------------

_DNS_RECORD_TYPES = ("ipv4", "dualstack", "ipv6", "service-defined")


def normalize_dns_record_type(value: Any) -> str:
    """AWS's default record type is ipv4; an endpoint that reports none (moto's) has it."""
    return "ipv4" if value is None else str(value).lower()


def _interface_record(endpoint: dict[str, Any], region: str | None) -> Record:
    record = {
        "vpc_endpoint_id": endpoint["VpcEndpointId"],
        "service": short_service(endpoint["ServiceName"], region),
        "policy": _read_policy(endpoint.get("PolicyDocument")),
        "state": _state(endpoint),
        "private_dns_enabled": bool(endpoint.get("PrivateDnsEnabled")),
        "dns_name_record_type": normalize_dns_record_type(
            (endpoint.get("DnsOptions") or {}).get("DnsRecordIpType")
        ),
        "tags": user_tags(endpoint.get("Tags")),
        "region": region,
        "vpc_id": endpoint["VpcId"],
    }
    return with_token(record, endpoint.get("Tags"))


class EndpointInterfaceMapper(_EndpointMapper):
    """The endpoint itself; its subnets are rows of endpoint_interface_subnets, added once
    the endpoint exists."""

    kind = "Interface"

    def _record(self, endpoint: dict[str, Any], region: str | None) -> Record:
        return _interface_record(endpoint, region)

    def _create_options(self, record: Record) -> dict[str, Any]:
        # AWS turns private DNS on unless told otherwise; the column's default is off.
        extra: dict[str, Any] = {"PrivateDnsEnabled": bool(record.get("private_dns_enabled"))}
        record_type = normalize_dns_record_type(record.get("dns_name_record_type"))
        if record_type != "ipv4":
            extra["DnsOptions"] = {"DnsRecordIpType": record_type}
        return extra

    def _changes(self, record: Record, current: Record) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        private_dns = bool(record.get("private_dns_enabled"))
        if private_dns != bool(current.get("private_dns_enabled")):
            changes["PrivateDnsEnabled"] = private_dns
        record_type = normalize_dns_record_type(record.get("dns_name_record_type"))
        if record_type != normalize_dns_record_type(current.get("dns_name_record_type")):
            changes["DnsOptions"] = {"DnsRecordIpType": record_type}
        return changes


ENDPOINT_INTERFACE = Table(
    name="endpoint_interface",
    extra_ddl=tags_as_text("endpoint_interface"),
    columns=(
        # IaSQL's enum listed 15 services; any AWS service name is accepted here.
        *_endpoint_columns("service ~ '^[a-z0-9][a-z0-9.-]*$'"),
        Column("private_dns_enabled", "boolean", default="false"),
        Column(
            "dns_name_record_type",
            "varchar",
            default="'ipv4'",
            check=f"dns_name_record_type IN {_DNS_RECORD_TYPES!r}",
            normalize=normalize_dns_record_type,
        ),
        tags_column(),
        region_column(),
        foreign_key("vpc_id", "vpc", "vpc_id"),
    ),
    mapper=EndpointInterfaceMapper(),
    # The VPC and the service, as for gateway endpoints (with private DNS on, AWS allows
    # only one per service and VPC).
    natural_key=("vpc_id", "service"),
    cloud_id=("vpc_endpoint_id",),
)

# --- endpoint_interface_subnets ------------------------------------------------------------


class EndpointInterfaceSubnetsMapper:
    """One row per subnet an interface endpoint has a network interface in."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            found = await _describe_endpoints(ec2, "Interface")
        return [
            {
                "endpoint_interface_id": e["VpcEndpointId"],
                "subnet_id": subnet,
                "region": region,
            }
            for e in found
            for subnet in e.get("SubnetIds") or ()
        ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        endpoint_id = record["endpoint_interface_id"]
        async with cloud.client("ec2", record["region"]) as ec2, _changing(ec2, endpoint_id):
            await ec2.modify_vpc_endpoint(
                VpcEndpointId=endpoint_id, AddSubnetIds=[record["subnet_id"]]
            )
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns name the pair: a change is another pair

    async def delete(self, cloud: Cloud, current: Record) -> None:
        endpoint_id = current["endpoint_interface_id"]
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidVpcEndpointId.NotFound"):
                async with _changing(ec2, endpoint_id):
                    await ec2.modify_vpc_endpoint(
                        VpcEndpointId=endpoint_id, RemoveSubnetIds=[current["subnet_id"]]
                    )


# The join table has no region in IaSQL; it is its endpoint's, for the engine to know where to
# call.
_SUBNETS_REGION_DDL = (
    """CREATE OR REPLACE FUNCTION endpoint_interface_subnets_region() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.region := coalesce(
            (SELECT region FROM endpoint_interface WHERE id = NEW.endpoint_interface_id),
            NEW.region);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER endpoint_interface_subnets_region
        BEFORE INSERT OR UPDATE ON endpoint_interface_subnets
        FOR EACH ROW EXECUTE FUNCTION endpoint_interface_subnets_region()""",
)

# As IaSQL does: an interface endpoint written without subnets gets its VPC's, here one per
# availability zone (AWS refuses two of one zone; IaSQL sent them all), the oldest row of each.
# They are rows before the commit, made at the end of the SQL transaction that inserts the
# endpoint, unless that transaction gave it subnets itself. Subnets given later, before the
# endpoint is created, take the place of the ones added (told apart by being written in the
# endpoint's own SQL transaction: the same xmin).
_DEFAULT_SUBNETS_DDL = (
    """CREATE OR REPLACE FUNCTION endpoint_interface_default_subnets() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        endpoint record;
    BEGIN
        SELECT id, vpc_id, region, vpc_endpoint_id INTO endpoint
            FROM endpoint_interface WHERE id = NEW.id;
        IF endpoint.id IS NULL OR endpoint.vpc_endpoint_id IS NOT NULL
                OR EXISTS (SELECT 1 FROM endpoint_interface_subnets
                    WHERE endpoint_interface_id = endpoint.id) THEN
            RETURN NULL;
        END IF;
        INSERT INTO endpoint_interface_subnets (endpoint_interface_id, subnet_id, region)
            SELECT DISTINCT ON (s.availability_zone) endpoint.id, s.id, endpoint.region
            FROM subnet s WHERE s.vpc_id = endpoint.vpc_id AND s.region = endpoint.region
            ORDER BY s.availability_zone, s.id;
        RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER endpoint_interface_default_subnets
        AFTER INSERT ON endpoint_interface DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION endpoint_interface_default_subnets()""",
    """CREATE OR REPLACE FUNCTION endpoint_interface_given_subnets() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM endpoint_interface_subnets s USING endpoint_interface e
            WHERE e.id = NEW.endpoint_interface_id AND s.endpoint_interface_id = e.id
                AND e.vpc_endpoint_id IS NULL AND s.xmin = e.xmin
                AND e.xmin::text::bigint <> txid_current() % 4294967296;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER endpoint_interface_given_subnets
        BEFORE INSERT ON endpoint_interface_subnets
        FOR EACH ROW EXECUTE FUNCTION endpoint_interface_given_subnets()""",
)

ENDPOINT_INTERFACE_SUBNETS = Table(
    name="endpoint_interface_subnets",
    columns=(
        foreign_key(
            "endpoint_interface_id", "endpoint_interface", "vpc_endpoint_id", on_delete="CASCADE"
        ),
        foreign_key("subnet_id", "subnet", "subnet_id", on_delete="CASCADE"),
        region_column(),  # ours: see _SUBNETS_REGION_DDL
    ),
    mapper=EndpointInterfaceSubnetsMapper(),
    # The endpoint and the subnet, each by its own natural key.
    natural_key=("endpoint_interface_id", "subnet_id"),
    cloud_id=("endpoint_interface_id", "subnet_id"),
    primary_key=("endpoint_interface_id", "subnet_id"),
    extra_ddl=(*_SUBNETS_REGION_DDL, *_DEFAULT_SUBNETS_DDL),
)

NETWORK_TEARDOWN = tuple(
    f"DROP FUNCTION IF EXISTS {name}() CASCADE"
    for name in (
        "subnet_default_network_acl",
        "peering_connection_region",
        "endpoint_interface_subnets_region",
        "endpoint_interface_default_subnets",
        "endpoint_interface_given_subnets",
    )
)
