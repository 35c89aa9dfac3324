"""aws_opensearch: OpenSearch Service domains, and the subnets and security groups of their
VPC access (two join tables, as in IaSQL).

What changes in place (UpdateDomainConfig): the cluster (instance type and count, zone
awareness, dedicated masters, warm nodes, cold storage), EBS options, the access policy,
Auto-Tune, the custom endpoint and its certificate, turning fine-grained access control on,
and the VPC subnets and security groups. A new engine version replaces the domain (moto has
no UpgradeDomain, and AWS cannot downgrade); a new name or region is a new domain (the old
one is deleted).

Fine-grained access control's master user is write-only, as AWS's DescribeDomain never
returns it: the password is a `secret` column (left out of the audit log, the commit journal
and generated SQL, never read from the cloud), and the user name and user ARN are sent at
create and never compared with the cloud (the row keeps what was written).

The subnets and security groups are rows of domain_subnets and domain_security_groups. AWS
puts a domain in a VPC only when it makes it (it cannot move a public domain into one), so a
new domain is created with the rows of both tables made in the same commit
(Table.created_with); their own creates then find their item there. Later rows add or
remove their subnet or group with UpdateDomainConfig (VPCOptions), which works for a domain
already in a VPC and fails with AWS's own error for a public one.
"""

from __future__ import annotations

import json
from typing import Any

from aiobotocore.waiter import create_waiter_with_client
from botocore.waiter import WaiterModel

from modules import VERSION
from modules._aws.policy import canonical_policy, load_policy, policy_text
from modules._aws.region import region_column
from modules.concurrency import KeyedLocks
from modules.errors import ignoring
from modules.spec import (
    CREATED_WITH,
    Cloud,
    CloudError,
    Column,
    ModuleSpec,
    Record,
    Ref,
    Table,
    foreign_key,
)

# AWS accepts a version named after its engine: `OpenSearch_2.5`, `Elasticsearch_7.10`
# (IaSQL's check).
_VERSION_CHECK = (
    "version ~ '^Elasticsearch_[0-9]{1}.[0-9]{1,2}$|^OpenSearch_[0-9]{1,2}.[0-9]{1,2}$'"
)
_PASSWORD_CHECK = (
    "fine_grained_access_control_master_password IS NULL"
    " OR length(fine_grained_access_control_master_password) >= 8"
)
_TLS_POLICY = "Policy-Min-TLS-1-0-2019-07"

# A domain takes minutes (on AWS, often a quarter of an hour) to be ready after a create or a
# configuration change: `Processing` is true until then.
_WAITERS = WaiterModel(
    {
        "version": 2,
        "waiters": {
            "DomainReady": {
                "operation": "DescribeDomain",
                "delay": 10,
                "maxAttempts": 180,
                "acceptors": [
                    {
                        "state": "success",
                        "matcher": "path",
                        "argument": "DomainStatus.Processing",
                        "expected": False,
                    }
                ],
            },
            # AWS takes minutes to delete a domain, which stays listed (Deleted) meanwhile: a
            # replace that keeps the name can make the new one only after that.
            "DomainGone": {
                "operation": "DescribeDomain",
                "delay": 10,
                "maxAttempts": 180,
                "acceptors": [
                    {
                        "state": "success",
                        "matcher": "error",
                        "expected": "ResourceNotFoundException",
                    }
                ],
            },
        },
    }
)


async def _wait_ready(aws: Any, name: str) -> None:
    waiter = create_waiter_with_client("DomainReady", _WAITERS, aws)
    await waiter.wait(DomainName=name)


async def _wait_gone(aws: Any, name: str) -> None:
    waiter = create_waiter_with_client("DomainGone", _WAITERS, aws)
    await waiter.wait(DomainName=name)


def normalize_ebs(value: Any) -> Any:
    """EBS options as AWS's EBSOptions object with sorted keys; disabled EBS with nothing
    else (what AWS reports for a domain without EBS) is none at all."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        return value
    options = {k: v for k, v in sorted(value.items()) if v is not None}
    if not options or options == {"EBSEnabled": False}:
        return None
    return options


def write_only(value: Any) -> Any:
    """The form of a value the cloud never returns: every value compares as the same."""
    return None


def normalize_access_policy(value: Any) -> Any:
    """The access policy as `canonical_policy` compares it; an empty one ({} or "") is no
    policy, as AWS reports a domain without one."""
    document = load_policy(value)
    if document in (None, "", {}):
        return None
    return canonical_policy(document)


def _policy(value: Any) -> dict[str, Any]:
    document = load_policy(value) if value else {}
    return document if isinstance(document, dict) else {}


def _endpoint(domain: dict[str, Any]) -> str | None:
    """The domain's endpoint: its public one, or the VPC one for a domain in a VPC."""
    endpoint = domain.get("Endpoint") or (domain.get("Endpoints") or {}).get("vpc")
    return str(endpoint) if endpoint else None


def _auto_tune(options: dict[str, Any] | None) -> bool:
    return (options or {}).get("State") in ("ENABLED", "ENABLE_IN_PROGRESS")


def _domain_record(domain: dict[str, Any]) -> Record:
    cluster = domain.get("ClusterConfig") or {}
    zones = (cluster.get("ZoneAwarenessConfig") or {}).get("AvailabilityZoneCount")
    endpoint_options = domain.get("DomainEndpointOptions") or {}
    custom = endpoint_options.get("CustomEndpointEnabled")
    warm = cluster.get("WarmEnabled")
    master = cluster.get("DedicatedMasterEnabled")
    return {
        "domain_name": domain["DomainName"],
        "custom_endpoint": endpoint_options.get("CustomEndpoint") if custom else None,
        "endpoint_certificate_id": (
            endpoint_options.get("CustomEndpointCertificateArn") if custom else None
        ),
        "version": domain.get("EngineVersion"),
        # Zone awareness without a count is AWS's default of 2 zones.
        "availability_zone_count": (zones or 2) if cluster.get("ZoneAwarenessEnabled") else 1,
        "instance_type": cluster.get("InstanceType"),
        "instance_count": cluster.get("InstanceCount"),
        "ebs_options": normalize_ebs(domain.get("EBSOptions")),
        "warm_instance_type": cluster.get("WarmType") if warm else None,
        "warm_instance_count": cluster.get("WarmCount") if warm else None,
        "cold_storage": bool((cluster.get("ColdStorageOptions") or {}).get("Enabled")),
        "dedicated_master_type": cluster.get("DedicatedMasterType") if master else None,
        "dedicated_master_count": cluster.get("DedicatedMasterCount") if master else None,
        "auto_tune": _auto_tune(domain.get("AutoTuneOptions")),
        "enable_fine_grained_access_control": bool(
            (domain.get("AdvancedSecurityOptions") or {}).get("Enabled")
        ),
        # The master user (name, ARN, password) is write-only: never read, so the row keeps
        # what was written.
        "access_policy": _policy(domain.get("AccessPolicies")),
        "endpoint": _endpoint(domain),
        # Not columns: what domain_subnets and domain_security_groups show.
        "subnets": list((domain.get("VPCOptions") or {}).get("SubnetIds") or []),
        "security_groups": list((domain.get("VPCOptions") or {}).get("SecurityGroupIds") or []),
    }


def _cluster_config(record: Record) -> dict[str, Any]:
    zones = record.get("availability_zone_count") or 1
    config: dict[str, Any] = {
        "InstanceType": record["instance_type"],
        "InstanceCount": record["instance_count"],
        "ZoneAwarenessEnabled": zones > 1,
        "DedicatedMasterEnabled": bool(record.get("dedicated_master_count")),
        "WarmEnabled": bool(record.get("warm_instance_count")),
        "ColdStorageOptions": {"Enabled": bool(record.get("cold_storage"))},
    }
    if zones > 1:
        config["ZoneAwarenessConfig"] = {"AvailabilityZoneCount": zones}
    if record.get("dedicated_master_count"):
        config["DedicatedMasterType"] = record.get("dedicated_master_type")
        config["DedicatedMasterCount"] = record["dedicated_master_count"]
    if record.get("warm_instance_count"):
        config["WarmType"] = record.get("warm_instance_type")
        config["WarmCount"] = record["warm_instance_count"]
    return {k: v for k, v in config.items() if v is not None}


_CLUSTER_COLUMNS = (
    "availability_zone_count",
    "instance_type",
    "instance_count",
    "warm_instance_type",
    "warm_instance_count",
    "cold_storage",
    "dedicated_master_type",
    "dedicated_master_count",
)


def _endpoint_options(record: Record) -> dict[str, Any]:
    options: dict[str, Any] = {"EnforceHTTPS": True, "TLSSecurityPolicy": _TLS_POLICY}
    if record.get("custom_endpoint"):
        options["CustomEndpointEnabled"] = True
        options["CustomEndpoint"] = record["custom_endpoint"]
        if record.get("endpoint_certificate_id"):
            options["CustomEndpointCertificateArn"] = record["endpoint_certificate_id"]
    else:
        options["CustomEndpointEnabled"] = False
    return options


def _security_options(record: Record) -> dict[str, Any]:
    """AdvancedSecurityOptions turning fine-grained access control on, with its master user:
    an IAM ARN, or a user of the internal database (name and password)."""
    arn = record.get("fine_grained_access_control_user_arn")
    options: dict[str, Any] = {"Enabled": True, "InternalUserDatabaseEnabled": not arn}
    if arn:
        options["MasterUserOptions"] = {"MasterUserARN": arn}
    elif record.get("fine_grained_access_control_master_username"):
        options["MasterUserOptions"] = {
            "MasterUserName": record["fine_grained_access_control_master_username"],
            "MasterUserPassword": record.get("fine_grained_access_control_master_password"),
        }
    return options


def _auto_tune_options(record: Record) -> dict[str, Any]:
    return {"DesiredState": "ENABLED" if record.get("auto_tune") else "DISABLED"}


async def _describe(aws: Any, name: str) -> dict[str, Any] | None:
    """DescribeDomain, or None for a domain that is not there (or is being deleted)."""
    try:
        answer = await aws.describe_domain(DomainName=name)
    except aws.exceptions.ResourceNotFoundException:
        return None
    domain: dict[str, Any] = answer["DomainStatus"]
    return None if domain.get("Deleted") else domain


async def _domains(cloud: Cloud, region: str) -> list[Record]:
    async with cloud.client("opensearch", region) as aws:
        names = [d["DomainName"] for d in (await aws.list_domain_names()).get("DomainNames", [])]
        found: list[dict[str, Any]] = []
        # DescribeDomains takes at most 5 names.
        for start in range(0, len(names), 5):
            answer = await aws.describe_domains(DomainNames=names[start : start + 5])
            found.extend(answer.get("DomainStatusList", []))
    return [{**_domain_record(d), "region": region} for d in found if not d.get("Deleted")]


# A domain's VPC options are one list of subnets and one of groups: changes to them (from
# either join table) are made one at a time.
_vpc_lock: KeyedLocks[str] = KeyedLocks()


def _vpc_options(made_with: dict[str, list[Record]]) -> dict[str, list[str]]:
    """The VPCOptions of a new domain: its subnet and group rows made in the same commit."""
    subnets = [r["subnet_id"] for r in made_with.get("domain_subnets", [])]
    groups = [r["security_group_id"] for r in made_with.get("domain_security_groups", [])]
    options = {"SubnetIds": subnets, "SecurityGroupIds": groups}
    return {key: items for key, items in options.items() if items}


class DomainMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return await _domains(cloud, region)

    async def _read_one(self, aws: Any, name: str, region: str) -> Record:
        domain = await _describe(aws, name)
        if domain is None:
            raise CloudError(f"opensearch domain {name} is gone from {region}")
        return {**_domain_record(domain), "region": region}

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, region = record["domain_name"], record["region"]
        request: dict[str, Any] = {
            "DomainName": name,
            "EngineVersion": record["version"],
            "ClusterConfig": _cluster_config(record),
            "AccessPolicies": _access_policies(record),
            "EncryptionAtRestOptions": {"Enabled": True},
            "NodeToNodeEncryptionOptions": {"Enabled": True},
            "AutoTuneOptions": _auto_tune_options(record),
        }
        ebs = normalize_ebs(record.get("ebs_options"))
        if ebs:
            request["EBSOptions"] = ebs
        if record.get("custom_endpoint") or record.get("enable_fine_grained_access_control"):
            request["DomainEndpointOptions"] = _endpoint_options(record)
        if record.get("enable_fine_grained_access_control"):
            request["AdvancedSecurityOptions"] = _security_options(record)
        vpc = _vpc_options(record.get(CREATED_WITH) or {})
        if vpc:  # AWS puts a domain in a VPC only when it makes it
            request["VPCOptions"] = vpc
        async with cloud.client("opensearch", region) as aws:
            if await _describe(aws, name) is None:  # else a retried create: it is there
                await aws.create_domain(**request)
            await _wait_ready(aws, name)
            made = await self._read_one(aws, name, region)
            if made["auto_tune"] != bool(record.get("auto_tune")):
                # Some endpoints (moto) start Auto-Tune whatever the create asked for.
                await aws.update_domain_config(
                    DomainName=name, AutoTuneOptions=_auto_tune_options(record)
                )
                await _wait_ready(aws, name)
                made = await self._read_one(aws, name, region)
            return made

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name, region = current["domain_name"], current["region"]
        changes: dict[str, Any] = {}
        if any(record.get(c) != current.get(c) for c in _CLUSTER_COLUMNS):
            changes["ClusterConfig"] = _cluster_config(record)
        if normalize_ebs(record.get("ebs_options")) != normalize_ebs(current.get("ebs_options")):
            changes["EBSOptions"] = normalize_ebs(record.get("ebs_options")) or {
                "EBSEnabled": False
            }
        if normalize_access_policy(record.get("access_policy")) != normalize_access_policy(
            current.get("access_policy")
        ):
            changes["AccessPolicies"] = _access_policies(record)
        if bool(record.get("auto_tune")) != bool(current.get("auto_tune")):
            changes["AutoTuneOptions"] = _auto_tune_options(record)
        if (record.get("custom_endpoint"), record.get("endpoint_certificate_id")) != (
            current.get("custom_endpoint"),
            current.get("endpoint_certificate_id"),
        ):
            changes["DomainEndpointOptions"] = _endpoint_options(record)
        wanted_fgac = bool(record.get("enable_fine_grained_access_control"))
        if wanted_fgac != bool(current.get("enable_fine_grained_access_control")):
            if not wanted_fgac:
                raise CloudError(
                    f"opensearch domain {name}: fine-grained access control cannot be turned"
                    " off once it is on (AWS allows only enabling it); recreate the domain"
                    " under another name to drop it"
                )
            changes["AdvancedSecurityOptions"] = _security_options(record)
            changes.setdefault("DomainEndpointOptions", _endpoint_options(record))
            changes["EncryptionAtRestOptions"] = {"Enabled": True}
            changes["NodeToNodeEncryptionOptions"] = {"Enabled": True}
        async with _vpc_lock(name + "@" + region), cloud.client("opensearch", region) as aws:
            if changes:
                await aws.update_domain_config(DomainName=name, **changes)
                await _wait_ready(aws, name)
            return await self._read_one(aws, name, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("opensearch", current["region"]) as aws:
            with ignoring("ResourceNotFoundException"):
                await aws.delete_domain(DomainName=current["domain_name"])
            await _wait_gone(aws, current["domain_name"])


def _access_policies(record: Record) -> str:
    document = load_policy(record.get("access_policy"))
    return "" if document in (None, "", {}) else policy_text(document)


DOMAIN = Table(
    name="domain",
    columns=(
        Column("domain_name", "varchar", nullable=False, replaces=True),
        Column("custom_endpoint", "varchar"),
        Column("version", "varchar", nullable=False, check=_VERSION_CHECK, replaces=True),
        Column("availability_zone_count", "integer", nullable=False),
        Column("instance_type", "varchar", nullable=False),
        Column("instance_count", "integer", nullable=False),
        Column("ebs_options", "jsonb", normalize=normalize_ebs),
        Column("warm_instance_type", "varchar"),
        Column("warm_instance_count", "integer"),
        Column("cold_storage", "boolean", default="false"),
        Column("dedicated_master_type", "varchar"),
        Column("dedicated_master_count", "integer"),
        Column("auto_tune", "boolean", nullable=False, default="true"),
        Column("enable_fine_grained_access_control", "boolean", nullable=False, default="false"),
        Column("fine_grained_access_control_user_arn", "varchar", normalize=write_only),
        Column("fine_grained_access_control_master_username", "varchar", normalize=write_only),
        Column(
            "fine_grained_access_control_master_password",
            "varchar",
            secret=True,
            check=_PASSWORD_CHECK,
        ),
        Column("access_policy", "jsonb", nullable=False, normalize=normalize_access_policy),
        Column("endpoint", "varchar", cloud_assigned=True),
        region_column(),
        # The custom endpoint's ACM certificate (records hold its ARN).
        foreign_key(
            "endpoint_certificate_id",
            "certificate",
            "arn",
            nullable=True,
            replaces=False,
            optional=True,
        ),
    ),
    mapper=DomainMapper(),
    natural_key=("domain_name", "region"),
    cloud_id=("domain_name", "region"),
    created_with=("domain_subnets", "domain_security_groups"),
)

# --- domain_subnets and domain_security_groups --------------------------------------------
# The join tables have no region column (as in IaSQL), so their records name the domain by its
# endpoint, which holds its region: `search-NAME-ID.REGION.es.amazonaws.com`.


def region_of_endpoint(endpoint: str) -> str:
    """The region of a domain endpoint: the label before `es.amazonaws.com`."""
    labels = endpoint.split(".")
    for i in range(len(labels) - 2, 0, -1):
        if labels[i] == "es" and labels[i + 1] == "amazonaws":
            return labels[i - 1]
    raise CloudError(f"{endpoint} is no OpenSearch domain endpoint")


async def _change_vpc(cloud: Cloud, endpoint: str, key: str, item: str, *, add: bool) -> None:
    """Adds `item` to (or removes it from) the VPCOptions list `key` (SubnetIds or
    SecurityGroupIds) of the domain at `endpoint`."""
    region = region_of_endpoint(endpoint)
    found = [d for d in await _domains(cloud, region) if d["endpoint"] == endpoint]
    if not found:
        if add:
            raise CloudError(f"no opensearch domain has the endpoint {endpoint}")
        return
    name = found[0]["domain_name"]
    async with _vpc_lock(name + "@" + region), cloud.client("opensearch", region) as aws:
        domain = await _describe(aws, name)
        if domain is None:
            return
        vpc = domain.get("VPCOptions") or {}
        options = {
            "SubnetIds": list(vpc.get("SubnetIds") or []),
            "SecurityGroupIds": list(vpc.get("SecurityGroupIds") or []),
        }
        items = options[key]
        if add == (item in items):
            return
        options[key] = [*items, item] if add else [i for i in items if i != item]
        await aws.update_domain_config(DomainName=name, VPCOptions=options)
        await _wait_ready(aws, name)


class _JoinMapper:
    """domain_subnets or domain_security_groups: one row per item of a VPCOptions list."""

    def __init__(self, column: str, field: str, key: str) -> None:
        self.column, self.field, self.key = column, field, key

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        return [
            {"domain_id": d["endpoint"], self.column: item}
            for d in await _domains(cloud, region)
            if d["endpoint"]
            for item in d[self.field]
        ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if record.get("domain_id") is None or record.get(self.column) is None:
            raise CloudError(f"a domain {self.field} row needs both of its references")
        await _change_vpc(cloud, record["domain_id"], self.key, record[self.column], add=True)
        return record

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        await _change_vpc(cloud, current["domain_id"], self.key, current[self.column], add=False)


def _join_table(name: str, column: str, table: str, cloud_column: str, mapper: Any) -> Table:
    return Table(
        name=name,
        columns=(
            Column(
                "domain_id",
                "integer",
                nullable=False,
                ref=Ref("domain", key="id", cloud="endpoint", on_delete="CASCADE"),
            ),
            foreign_key(column, table, cloud_column, on_delete="CASCADE", replaces=False),
        ),
        mapper=mapper,
        natural_key=("domain_id", column),
        cloud_id=("domain_id", column),
        primary_key=("domain_id", column),
        regional=True,
    )


DOMAIN_SUBNETS = _join_table(
    "domain_subnets",
    "subnet_id",
    "subnet",
    "subnet_id",
    _JoinMapper("subnet_id", "subnets", "SubnetIds"),
)
DOMAIN_SECURITY_GROUPS = _join_table(
    "domain_security_groups",
    "security_group_id",
    "security_group",
    "group_id",
    _JoinMapper("security_group_id", "security_groups", "SecurityGroupIds"),
)

MODULE = ModuleSpec(
    name="aws_opensearch",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc", "aws_security_group", "aws_acm"),
    description="OpenSearch Service domains, with the subnets and security groups of their VPC",
    tables=(DOMAIN, DOMAIN_SUBNETS, DOMAIN_SECURITY_GROUPS),
)
