"""aws_cloudfront: CloudFront distributions, as IaSQL keeps them.

CloudFront is global: the table has no region column and every call goes to the global
endpoint. `origins` is the API's list of Origin objects and `default_cache_behavior` its
DefaultCacheBehavior, in IaSQL's JSON form. A distribution changes in place with
UpdateDistribution (the whole config, sent with the ETag of the one it replaces); only its
caller reference needs a new one. AWS deletes only a disabled, deployed distribution, so a
delete disables it first and waits until the change is deployed."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import TOKEN, Cloud, CloudError, Column, ModuleSpec, Record, Table, foreign_key

# UpdateDistribution and deletes wait for the change to reach the edge (AWS: minutes).
_DEPLOYED = {"Delay": 5, "MaxAttempts": 180}
# The TLS settings IaSQL gives a distribution with a certificate of its own.
_CUSTOM_CERTIFICATE = {
    "CloudFrontDefaultCertificate": False,
    "MinimumProtocolVersion": "TLSv1.2_2021",
    "SSLSupportMethod": "sni-only",
}

# --- canonical forms ------------------------------------------------------------------------

# The three keys of a default cache behaviour that IaSQL reads and compares. Other keys a user
# writes (ForwardedValues, Compress, ...) are sent to AWS but not compared: AWS fills in many
# of them with values of its own.
_BEHAVIOR_KEYS = ("TargetOriginId", "ViewerProtocolPolicy", "CachePolicyId")

# What AWS fills in for an origin that does not say: the same as not saying it.
_ORIGIN_DEFAULTS: dict[str, Any] = {
    "OriginPath": "",
    "ConnectionAttempts": 3,
    "ConnectionTimeout": 10,
    "OriginAccessControlId": "",
}
_CUSTOM_ORIGIN_DEFAULTS: dict[str, Any] = {
    "HTTPPort": 80,
    "HTTPSPort": 443,
    "OriginReadTimeout": 30,
    "OriginKeepaliveTimeout": 5,
}
# Settings compared only when written as something else than nothing: AWS reports them
# always, and AWS's default (OriginSslProtocols) is not documented as one value.
_ORIGIN_UNCOMPARED = ("OriginSslProtocols",)


def _loaded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def normalize_behavior(value: Any) -> Any:
    """A default cache behaviour as IaSQL compares it: its target origin, viewer protocol
    policy and cache policy (none when empty), as key-sorted JSON."""
    behavior = _loaded(value)
    if not isinstance(behavior, dict):
        return behavior
    kept = {k: behavior[k] for k in _BEHAVIOR_KEYS if behavior.get(k) not in (None, "")}
    return json.dumps(kept, sort_keys=True)


def _empty_list(value: Any) -> bool:
    """An API list wrapper holding nothing ({"Quantity": 0}, {"Items": []})."""
    return isinstance(value, dict) and not value.get("Items") and not value.get("Quantity")


def _origin(origin: Any) -> Any:
    if not isinstance(origin, dict):
        return origin
    out: dict[str, Any] = {}
    for key, value in origin.items():
        if value is None or _ORIGIN_DEFAULTS.get(key, object()) == value:
            continue
        if key == "CustomHeaders":
            if _empty_list(value):
                continue
            items = value.get("Items") or []
            value = sorted(items, key=lambda h: json.dumps(h, sort_keys=True))
        elif key == "OriginShield":
            if not isinstance(value, dict) or not value.get("Enabled"):
                continue
        elif key == "S3OriginConfig" and isinstance(value, dict):
            # No origin access identity is an empty S3OriginConfig, which some endpoints
            # (moto) leave out when they read the origin back.
            value = {k: v for k, v in value.items() if v not in (None, "")}
            if not value:
                continue
        elif key == "CustomOriginConfig" and isinstance(value, dict):
            value = {
                k: v
                for k, v in value.items()
                if v is not None
                and k not in _ORIGIN_UNCOMPARED
                and _CUSTOM_ORIGIN_DEFAULTS.get(k, object()) != v
            }
        out[key] = value
    return out


def normalize_origins(value: Any) -> Any:
    """Origins as key-sorted JSON, in the order of their ids, without what AWS fills in
    by default (an empty origin path, 3 connection attempts, no custom headers, ...)."""
    origins = _loaded(value)
    if isinstance(origins, dict) and "Items" in origins:  # the API's {Quantity, Items}
        origins = origins["Items"]
    if not isinstance(origins, list):
        return origins
    cleaned = [_origin(o) for o in origins]
    cleaned.sort(key=lambda o: str(o.get("Id")) if isinstance(o, dict) else json.dumps(o))
    return json.dumps(cleaned, sort_keys=True)


def normalize_names(value: Any) -> list[str] | None:
    """Alternate domain names are a set: sorted, none is NULL (AWS can't tell [] from none)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return sorted({str(v) for v in value}) or None


def normalize_blank(value: Any) -> Any:
    """AWS reports no web ACL as an empty string."""
    return value or None


# --- records --------------------------------------------------------------------------------


def _behavior(behavior: dict[str, Any]) -> dict[str, Any]:
    return {k: behavior[k] for k in _BEHAVIOR_KEYS if behavior.get(k) not in (None, "")}


def _record(distribution: dict[str, Any], etag: str | None) -> Record:
    config = distribution.get("DistributionConfig", {})
    certificate = (config.get("ViewerCertificate") or {}).get("ACMCertificateArn") or None
    aliases = (config.get("Aliases") or {}).get("Items") or None
    record: Record = {
        "distribution_id": distribution["Id"],
        "domain_name": distribution.get("DomainName"),
        "caller_reference": config.get("CallerReference"),
        "comment": config.get("Comment") or "",
        "enabled": bool(config.get("Enabled")),
        "is_ipv6_enabled": config.get("IsIPV6Enabled"),
        "web_acl_id": config.get("WebACLId") or None,
        "default_cache_behavior": _behavior(config.get("DefaultCacheBehavior") or {}),
        "origins": (config.get("Origins") or {}).get("Items") or [],
        "e_tag": etag,
        "status": distribution.get("Status"),
        "alternate_domain_names": aliases,
        "custom_ssl_certificate_id": certificate,
    }
    if record["caller_reference"]:
        # A distribution made without a caller reference gets the create token as its own:
        # a create cut short is found again by it.
        record[TOKEN] = record["caller_reference"]
    return record


def _as_list(value: Any, what: str) -> list[Any]:
    loaded = _loaded(value)
    if isinstance(loaded, dict) and "Items" in loaded:
        loaded = loaded["Items"]
    if not isinstance(loaded, list):
        raise CloudError(f"{what} is a JSON list, not {json.dumps(loaded)}")
    return loaded


def _as_object(value: Any, what: str) -> dict[str, Any]:
    loaded = _loaded(value)
    if not isinstance(loaded, dict):
        raise CloudError(f"{what} is a JSON object, not {json.dumps(loaded)}")
    return dict(loaded)


# The legacy cache settings, which a cache policy takes the place of.
_LEGACY_CACHE_KEYS = ("ForwardedValues", "MinTTL", "DefaultTTL", "MaxTTL")


def _merged_behavior(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The behaviour to send for an update, as IaSQL makes it: the current one with the
    row's settings; the row's target, viewer policy and cache policy win, absent ones too."""
    merged = {k: v for k, v in current.items() if k not in _BEHAVIOR_KEYS}
    if wanted.get("CachePolicyId"):
        merged = {k: v for k, v in merged.items() if k not in _LEGACY_CACHE_KEYS}
    merged.update(wanted)
    return merged


def _config(record: Record, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DistributionConfig the row asks for. For an update, `current` is the distribution's
    config now: what the table does not hold (logging, other cache behaviours, price class,
    ...) stays as it is, and so do the behaviour settings the row leaves out."""
    config: dict[str, Any] = dict(current or {})
    origins = _as_list(record.get("origins"), "origins")
    behavior = _as_object(record.get("default_cache_behavior"), "default_cache_behavior")
    # An empty cache policy (as AWS reports a legacy behaviour's) is none.
    behavior = {k: v for k, v in behavior.items() if not (k in _BEHAVIOR_KEYS and v in (None, ""))}
    if current is not None:
        behavior = _merged_behavior(current.get("DefaultCacheBehavior") or {}, behavior)
    aliases = record.get("alternate_domain_names") or []
    config.update(
        CallerReference=record.get("caller_reference") or record.get(TOKEN),
        Comment=record.get("comment") or "",
        Enabled=bool(record.get("enabled", True)),
        Origins={"Quantity": len(origins), "Items": origins},
        DefaultCacheBehavior=behavior,
        Aliases={"Quantity": len(aliases), "Items": list(aliases)},
    )
    if record.get("is_ipv6_enabled") is not None:
        config["IsIPV6Enabled"] = bool(record["is_ipv6_enabled"])
    config["WebACLId"] = record.get("web_acl_id") or ""
    certificate = record.get("custom_ssl_certificate_id")
    viewer = (current or {}).get("ViewerCertificate") or {}
    if certificate:
        config["ViewerCertificate"] = {"ACMCertificateArn": certificate, **_CUSTOM_CERTIFICATE}
    elif viewer.get("ACMCertificateArn") or current is None:
        # An IAM certificate (which has no row) is left as it is.
        config["ViewerCertificate"] = {"CloudFrontDefaultCertificate": True}
    return config


async def _read_one(cloudfront: Any, distribution_id: str) -> Record:
    answer = await cloudfront.get_distribution(Id=distribution_id)
    return _record(answer["Distribution"], answer.get("ETag"))


async def _wait_deployed(cloudfront: Any, distribution_id: str) -> None:
    waiter = cloudfront.get_waiter("distribution_deployed")
    await waiter.wait(Id=distribution_id, WaiterConfig=_DEPLOYED)


class DistributionMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("cloudfront", None) as cloudfront:
            pages = cloudfront.get_paginator("list_distributions").paginate()
            ids = [
                d["Id"]
                async for page in pages
                for d in (page.get("DistributionList") or {}).get("Items") or []
            ]
            found = await gather_bounded(self._maybe(cloudfront, i) for i in ids)
            return [r for r in found if r is not None]

    async def _maybe(self, cloudfront: Any, distribution_id: str) -> Record | None:
        with ignoring("NoSuchDistribution"):  # deleted since it was listed
            return await _read_one(cloudfront, distribution_id)
        return None

    async def create(self, cloud: Cloud, record: Record) -> Record:
        config = _config(record)
        async with cloud.client("cloudfront", None) as cloudfront:
            try:
                answer = await cloudfront.create_distribution(DistributionConfig=config)
                distribution_id = answer["Distribution"]["Id"]
            except cloudfront.exceptions.DistributionAlreadyExists:
                # A retried create: the distribution with this caller reference is ours.
                mine = await self._by_caller_reference(cloudfront, config["CallerReference"])
                if mine is None:
                    raise
                distribution_id = mine
            await _wait_deployed(cloudfront, distribution_id)
            return await _read_one(cloudfront, distribution_id)

    async def _by_caller_reference(self, cloudfront: Any, reference: str) -> str | None:
        pages = cloudfront.get_paginator("list_distributions").paginate()
        async for page in pages:
            for summary in (page.get("DistributionList") or {}).get("Items") or []:
                answer = await cloudfront.get_distribution_config(Id=summary["Id"])
                if answer["DistributionConfig"].get("CallerReference") == reference:
                    return str(summary["Id"])
        return None

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        distribution_id = current["distribution_id"]
        async with cloud.client("cloudfront", None) as cloudfront:
            answer = await cloudfront.get_distribution_config(Id=distribution_id)
            config = _config(record, answer["DistributionConfig"])
            if config["CallerReference"] != answer["DistributionConfig"].get("CallerReference"):
                raise CloudError(
                    f"the caller reference of distribution {distribution_id} cannot change"
                )
            await cloudfront.update_distribution(
                Id=distribution_id, DistributionConfig=config, IfMatch=answer["ETag"]
            )
            await _wait_deployed(cloudfront, distribution_id)
            return await _read_one(cloudfront, distribution_id)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        distribution_id = current["distribution_id"]
        async with cloud.client("cloudfront", None) as cloudfront:
            with ignoring("NoSuchDistribution"):
                answer = await cloudfront.get_distribution_config(Id=distribution_id)
                config, etag = answer["DistributionConfig"], answer["ETag"]
                if config.get("Enabled"):
                    # AWS deletes only a disabled distribution whose change is deployed.
                    config = {**config, "Enabled": False}
                    updated = await cloudfront.update_distribution(
                        Id=distribution_id, DistributionConfig=config, IfMatch=etag
                    )
                    etag = updated["ETag"]
                await _wait_deployed(cloudfront, distribution_id)
                try:
                    await cloudfront.delete_distribution(Id=distribution_id, IfMatch=etag)
                except ClientError as error:
                    if error_code(error) != "PreconditionFailed":
                        raise
                    # Changed since: delete the version there is now.
                    fresh = await cloudfront.get_distribution_config(Id=distribution_id)
                    await cloudfront.delete_distribution(Id=distribution_id, IfMatch=fresh["ETag"])


DISTRIBUTION = Table(
    name="distribution",
    columns=(
        Column("distribution_id", "varchar", cloud_assigned=True),
        Column("domain_name", "varchar", cloud_assigned=True),
        # CloudFront's idempotency key: it names the distribution, and cannot change.
        Column("caller_reference", "varchar", replaces=True),
        Column("comment", "varchar", nullable=False, default="''"),
        Column("enabled", "boolean", nullable=False, default="true"),
        Column("is_ipv6_enabled", "boolean"),
        Column("web_acl_id", "varchar", normalize=normalize_blank),
        Column("default_cache_behavior", "json", nullable=False, normalize=normalize_behavior),
        Column("origins", "json", nullable=False, normalize=normalize_origins),
        Column("e_tag", "varchar", cloud_assigned=True),
        Column("status", "varchar", cloud_assigned=True),
        Column("alternate_domain_names", "varchar[]", normalize=normalize_names),
        foreign_key(
            "custom_ssl_certificate_id", "certificate", "arn", nullable=True, replaces=False
        ),
    ),
    mapper=DistributionMapper(),
    natural_key=("caller_reference",),
    cloud_id=("distribution_id",),
    regional=False,
)

MODULE = ModuleSpec(
    name="aws_cloudfront",
    version=VERSION,
    dependencies=("aws_account", "aws_acm"),
    description="CloudFront distributions: origins and default cache behaviour as JSON",
    tables=(DISTRIBUTION,),
)
