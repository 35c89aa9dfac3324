"""aws_acm: ACM certificates. Rows come from the cloud: a certificate is made by importing one
(certificate_import) or asking ACM for one (certificate_request), not by INSERT. Deleting a
row deletes the certificate; tags change in place."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules._aws.tags import normalize_tags, tags_column, user_tags
from modules.concurrency import gather_bounded
from modules.errors import ignoring
from modules.spec import Cloud, CloudError, Column, ModuleFunction, ModuleSpec, Record, Table

# list_certificates leaves out every key type but RSA_1024 and RSA_2048 unless asked.
_KEY_TYPES = [
    "RSA_1024",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "EC_prime256v1",
    "EC_secp384r1",
    "EC_secp521r1",
]

_HOW_TO_MAKE_ONE = (
    "a certificate cannot be made by INSERT: import one with"
    " certificate_import(certificate, private_key, chain, region) or ask ACM for one with"
    " certificate_request(domain_name, validation_method, domain_validation_options, region)"
)


def _certificate_record(cert: dict[str, Any], tags: list[dict[str, str]], region: str) -> Record:
    arn = cert["CertificateArn"]
    return {
        "arn": arn,
        "certificate_id": arn.rsplit("/", 1)[-1],
        "domain_name": cert["DomainName"],
        "certificate_type": cert.get("Type"),
        "status": cert.get("Status"),
        "renewal_eligibility": cert.get("RenewalEligibility"),
        "in_use": bool(cert.get("InUseBy")),
        "region": region,
        "tags": user_tags(tags),
    }


async def _describe(acm: Any, arn: str, region: str) -> Record:
    cert, tags = await asyncio.gather(
        acm.describe_certificate(CertificateArn=arn),
        acm.list_tags_for_certificate(CertificateArn=arn),
    )
    return _certificate_record(cert["Certificate"], tags.get("Tags", []), region)


class CertificateMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("acm", region) as acm:
            pages = acm.get_paginator("list_certificates").paginate(
                Includes={"keyTypes": _KEY_TYPES}
            )
            arns = [
                c["CertificateArn"] async for page in pages for c in page["CertificateSummaryList"]
            ]
            return await gather_bounded(_describe(acm, arn, region) for arn in arns)

    async def create(self, cloud: Cloud, record: Record) -> Record:
        raise CloudError(_HOW_TO_MAKE_ONE)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        if record.get("domain_name") != current.get("domain_name"):
            raise CloudError(
                f"the domain name of certificate {current['arn']} cannot change; {_HOW_TO_MAKE_ONE}"
            )
        arn = current["arn"]
        new = normalize_tags(record.get("tags")) or {}
        old = normalize_tags(current.get("tags")) or {}
        async with cloud.client("acm", current["region"]) as acm:
            removed = [{"Key": k, "Value": v} for k, v in old.items() if k not in new]
            changed = [{"Key": k, "Value": v} for k, v in new.items() if old.get(k) != v]
            if removed:
                await acm.remove_tags_from_certificate(CertificateArn=arn, Tags=removed)
            if changed:
                await acm.add_tags_to_certificate(CertificateArn=arn, Tags=changed)
            return await _describe(acm, arn, current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("acm", current["region"]) as acm:
            with ignoring("ResourceNotFoundException"):
                await acm.delete_certificate(CertificateArn=current["arn"])


CERTIFICATE = Table(
    name="certificate",
    columns=(
        Column("arn", "varchar", cloud_assigned=True),
        Column("certificate_id", "varchar", cloud_assigned=True),
        Column("domain_name", "varchar", nullable=False),
        Column(
            "certificate_type",
            "varchar",
            check="certificate_type IN ('AMAZON_ISSUED', 'IMPORTED', 'PRIVATE')",
            cloud_assigned=True,
        ),
        Column(
            "status",
            "varchar",
            check="status IN ('EXPIRED', 'FAILED', 'INACTIVE', 'ISSUED', 'PENDING_VALIDATION',"
            " 'REVOKED', 'VALIDATION_TIMED_OUT')",
            cloud_assigned=True,
        ),
        Column(
            "renewal_eligibility",
            "varchar",
            check="renewal_eligibility IN ('ELIGIBLE', 'INELIGIBLE')",
            cloud_assigned=True,
        ),
        Column("in_use", "boolean", nullable=False, default="false", cloud_assigned=True),
        region_column(),
        tags_column(),
    ),
    mapper=CertificateMapper(),
    # A certificate has no name but its domain: in another account the certificate for the
    # same domain in the same region stands for it.
    natural_key=("domain_name", "region"),
    cloud_id=("arn",),
)

# --- RPCs ----------------------------------------------------------------------------------


def _need_region(region: str | None) -> str:
    if not region:
        raise CloudError("name the region the certificate goes to")
    return region


async def _arn_and_status(acm: Any, arn: str) -> list[Record]:
    answer = await acm.describe_certificate(CertificateArn=arn)
    return [{"arn": arn, "status": answer["Certificate"].get("Status")}]


async def certificate_import(
    cloud: Cloud,
    certificate: str,
    private_key: str,
    chain: str | None = None,
    region: str | None = None,
) -> list[Record]:
    """Imports a PEM certificate with its key. The key goes to ACM only: it is neither
    returned nor kept, and never part of an error message of ours."""
    if not certificate or not private_key:
        raise CloudError("certificate_import needs the PEM certificate and its private key")
    extra = {"CertificateChain": chain.encode()} if chain else {}
    async with cloud.client("acm", _need_region(region)) as acm:
        answer = await acm.import_certificate(
            Certificate=certificate.encode(), PrivateKey=private_key.encode(), **extra
        )
        return await _arn_and_status(acm, answer["CertificateArn"])


def _validation_options(value: Any) -> list[dict[str, Any]]:
    """DomainValidationOptions from json: a list of {DomainName, ValidationDomain}, or one."""
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value)
    options = [value] if isinstance(value, dict) else list(value)
    if not all(isinstance(o, dict) for o in options):
        raise CloudError(
            "domain_validation_options is a JSON list of"
            ' {"DomainName": ..., "ValidationDomain": ...} objects'
        )
    return options


async def certificate_request(
    cloud: Cloud,
    domain_name: str,
    validation_method: str | None = None,
    domain_validation_options: Any = None,
    region: str | None = None,
) -> list[Record]:
    """Asks ACM for a certificate; it stays PENDING_VALIDATION until the domain is proven."""
    method = (validation_method or "DNS").upper()
    if method not in ("DNS", "EMAIL"):
        raise CloudError(f"validation_method is DNS or EMAIL, not {validation_method!r}")
    options = _validation_options(domain_validation_options)
    extra = {"DomainValidationOptions": options} if options else {}
    async with cloud.client("acm", _need_region(region)) as acm:
        answer = await acm.request_certificate(
            DomainName=domain_name, ValidationMethod=method, **extra
        )
        return await _arn_and_status(acm, answer["CertificateArn"])


_RESULT = (("arn", "varchar"), ("status", "varchar"))

CERTIFICATE_IMPORT = ModuleFunction(
    name="certificate_import",
    columns=_RESULT,
    params=(
        ("certificate", "text"),
        ("private_key", "text"),
        ("chain", "text"),
        ("region", "text"),
    ),
    run=certificate_import,
    description="Imports a PEM certificate and its private key into ACM (the key is not kept)",
    optional=("chain", "region"),
    sample="SELECT * FROM certificate_import('-----BEGIN CERTIFICATE-----...',"
    " '-----BEGIN PRIVATE KEY-----...', '', 'us-east-1')",
)

CERTIFICATE_REQUEST = ModuleFunction(
    name="certificate_request",
    columns=_RESULT,
    params=(
        ("domain_name", "text"),
        ("validation_method", "text"),
        ("domain_validation_options", "json"),
        ("region", "text"),
    ),
    run=certificate_request,
    description="Asks ACM for a certificate for a domain, validated by DNS or e-mail",
    optional=("validation_method", "domain_validation_options", "region"),
    sample="SELECT * FROM certificate_request('example.com', 'DNS',"
    ' \'[{"DomainName": "example.com", "ValidationDomain": "example.com"}]\', \'us-east-1\')',
)

MODULE = ModuleSpec(
    name="aws_acm",
    version=VERSION,
    dependencies=("aws_account",),
    description="ACM certificates: imported or requested with the RPCs, deleted as rows",
    tables=(CERTIFICATE,),
    functions=(CERTIFICATE_IMPORT, CERTIFICATE_REQUEST),
)
