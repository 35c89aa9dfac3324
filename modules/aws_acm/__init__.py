"""aws_acm: ACM certificates. Rows come from the cloud: a certificate is made by importing one
(certificate_import) or asking ACM for one (certificate_request), with IaSQL's signatures;
an INSERT is refused at once, naming them. Deleting a row deletes the certificate; tags change
in place, and their values are stored as the text AWS keeps."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from modules import VERSION
from modules._aws.region import region_column
from modules._aws.tags import (
    normalize_tags,
    tag_list,
    tags_as_text,
    tags_as_text_teardown,
    tags_column,
    user_tags,
)
from modules.concurrency import gather_bounded
from modules.errors import ignoring
from modules.spec import (
    ArgumentError,
    Cloud,
    CloudError,
    Column,
    ModuleFunction,
    ModuleSpec,
    Record,
    Table,
)

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
    " certificate_import(certificate, private_key, region, options, tags) or ask ACM for one"
    " with certificate_request(domain_name, validation_method, region, options, tags)"
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


# A user's INSERT, or a change of a certificate's domain or region, is refused at once with
# what to write instead (IaSQL takes the statement and its commit drops or restores the row).
# The engine's own writes (import, sync, rollback) run as the table's owner and pass. A change
# of a cloud-assigned column (status, ...) is let through: the commit restores it, as IaSQL's.
_WRITES_TRIGGER = (
    """CREATE OR REPLACE FUNCTION certificate_writes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN NEW;
        END IF;
        IF TG_OP = 'INSERT' THEN
            RAISE EXCEPTION 'a certificate cannot be made by INSERT: ACM issues or imports it'
                USING ERRCODE = '0A000',
                HINT = format('SELECT * FROM certificate_request(%L, ''DNS'', %L) asks ACM for'
                    ' one; SELECT * FROM certificate_import(certificate, private_key, %L)'
                    ' imports one; either adds its row', NEW.domain_name, NEW.region, NEW.region);
        END IF;
        IF (OLD.domain_name, OLD.region) IS DISTINCT FROM (NEW.domain_name, NEW.region) THEN
            RAISE EXCEPTION 'the domain and region of certificate % cannot change', OLD.arn
                USING ERRCODE = '0A000',
                HINT = 'only its tags change; DELETE the row and request or import another'
                    ' with certificate_request() or certificate_import()';
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER certificate_writes BEFORE INSERT OR UPDATE ON certificate
        FOR EACH ROW EXECUTE FUNCTION certificate_writes()""",
)

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
    extra_ddl=(*_WRITES_TRIGGER, *tags_as_text("certificate")),
)

# --- RPCs ----------------------------------------------------------------------------------
# IaSQL's signatures: certificate_import(certificate, private_key, region, options, tags) and
# certificate_request(domain_name, validation_method, region, options, tags), where options
# and tags are JSON objects ('' or '{}' for none) and the result is (arn, status, message).

_IMPORT_SIGNATURE = "certificate_import(certificate, private_key, region, options json, tags json)"
_REQUEST_SIGNATURE = (
    "certificate_request(domain_name, validation_method, region, options json, tags json)"
)
_REGION_NAME = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$")
_IMPORT_OPTIONS = {"chain": "the PEM chain of the certificate's issuers"}
_REQUEST_OPTIONS = {
    "domainValidationOptions": '[{"DomainName": ..., "ValidationDomain": ...}]',
    "subjectAlternativeNames": '["www.example.com"]',
    "arn": "the ARN of a private CA to issue it",
}


def _one_line(text: str, limit: int = 40) -> str:
    """An argument as an error message quotes it: short, and never a private key."""
    if "PRIVATE KEY" in text:
        return "(a private key)"
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _json_object(value: Any, name: str, signature: str, example: str) -> dict[str, Any]:
    """A JSON object argument ('' or NULL for none), as IaSQL's options and tags are."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            raise ArgumentError(
                f"{name} is not valid JSON: {_one_line(value)!r}; write a JSON object such as"
                f" '{example}' ('{{}}' for none): {signature}"
            ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ArgumentError(
            f"{name} is a JSON object such as '{example}', not {_one_line(json.dumps(value))}:"
            f" {signature}"
        )
    return value


def _known_options(options: dict[str, Any], known: dict[str, str], signature: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(f'"{k}" ({what})' for k, what in known.items())
        raise ArgumentError(
            f"options has no key {', '.join(unknown)}; it takes {listed}: {signature}"
        )


def _region(region: str | None, signature: str) -> str:
    if not region:
        raise ArgumentError(f"name the region the certificate goes to: {signature}")
    if not _REGION_NAME.match(region):
        raise ArgumentError(
            f"{_one_line(region)!r} is not a region name (such as 'us-east-1'): {signature}"
        )
    return region


def _tags(value: Any, signature: str) -> list[dict[str, str]]:
    tags = _json_object(value, "tags", signature, '{"env": "prod"}')
    return tag_list(normalize_tags(tags) or {})


async def _result(acm: Any, arn: str, message: str) -> list[Record]:
    answer = await acm.describe_certificate(CertificateArn=arn)
    return [{"arn": arn, "status": answer["Certificate"].get("Status"), "message": message}]


async def certificate_import(
    cloud: Cloud,
    certificate: str,
    private_key: str,
    region: str | None = None,
    options: Any = None,
    tags: Any = None,
) -> list[Record]:
    """Imports a PEM certificate with its key (options: {"chain": PEM}). The key goes to ACM
    only: it is neither returned nor kept, and never part of an error message of ours."""
    if not certificate or not private_key:
        raise ArgumentError(
            f"certificate_import needs the PEM certificate and its private key: {_IMPORT_SIGNATURE}"
        )
    where = _region(region, _IMPORT_SIGNATURE)
    opts = _json_object(options, "options", _IMPORT_SIGNATURE, '{"chain": "-----BEGIN ..."}')
    _known_options(opts, _IMPORT_OPTIONS, _IMPORT_SIGNATURE)
    chain = opts.get("chain")
    if chain is not None and not isinstance(chain, str):
        raise ArgumentError(f'options "chain" is the PEM text of the chain: {_IMPORT_SIGNATURE}')
    extra: dict[str, Any] = {"CertificateChain": chain.encode()} if chain else {}
    pairs = _tags(tags, _IMPORT_SIGNATURE)
    if pairs:
        extra["Tags"] = pairs
    async with cloud.client("acm", where) as acm:
        answer = await acm.import_certificate(
            Certificate=certificate.encode(), PrivateKey=private_key.encode(), **extra
        )
        return await _result(acm, answer["CertificateArn"], "Imported the certificate")


def _validation_options(value: Any) -> list[dict[str, Any]]:
    """DomainValidationOptions from json: a list of {DomainName, ValidationDomain}, or one."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError:
            value = [value]  # refused below
    if value is None:
        return []
    options = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    if not options or not all(isinstance(o, dict) for o in options):
        raise ArgumentError(
            "domainValidationOptions is a JSON list of"
            f' {{"DomainName": ..., "ValidationDomain": ...}} objects: {_REQUEST_SIGNATURE}'
        )
    return options


def _validation_message(certificate: dict[str, Any], method: str) -> str:
    """What the requester does next: the DNS records to create, or the e-mails to answer."""
    if method == "EMAIL":
        return "Requested: approve the validation e-mails ACM sent to the domain's contacts"
    records = [
        f"{r['Name']} CNAME {r['Value']}"
        for o in certificate.get("DomainValidationOptions", [])
        if (r := o.get("ResourceRecord"))
    ]
    if not records:
        return "Requested: ACM issues it once the domain's DNS validation record exists"
    return "Requested: ACM issues it once DNS has " + "; ".join(records)


async def certificate_request(
    cloud: Cloud,
    domain_name: str,
    validation_method: str | None = None,
    region: str | None = None,
    options: Any = None,
    tags: Any = None,
) -> list[Record]:
    """Asks ACM for a certificate; it stays PENDING_VALIDATION until the domain is proven
    (the message names the DNS record that proves it)."""
    if not domain_name:
        raise ArgumentError(f"certificate_request needs the domain name: {_REQUEST_SIGNATURE}")
    method = (validation_method or "DNS").upper()
    if method not in ("DNS", "EMAIL"):
        raise ArgumentError(
            f"validation_method is 'DNS' or 'EMAIL', not {_one_line(str(validation_method))!r}:"
            f" {_REQUEST_SIGNATURE}"
        )
    where = _region(region, _REQUEST_SIGNATURE)
    opts = _json_object(
        options, "options", _REQUEST_SIGNATURE, '{"subjectAlternativeNames": ["www.example.com"]}'
    )
    _known_options(opts, _REQUEST_OPTIONS, _REQUEST_SIGNATURE)
    extra: dict[str, Any] = {}
    if opts.get("domainValidationOptions") is not None:
        extra["DomainValidationOptions"] = _validation_options(opts["domainValidationOptions"])
    names = opts.get("subjectAlternativeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ArgumentError(
                f"subjectAlternativeNames is a JSON list of domain names: {_REQUEST_SIGNATURE}"
            )
        extra["SubjectAlternativeNames"] = names
    if opts.get("arn"):
        extra["CertificateAuthorityArn"] = str(opts["arn"])
    pairs = _tags(tags, _REQUEST_SIGNATURE)
    if pairs:
        extra["Tags"] = pairs
    async with cloud.client("acm", where) as acm:
        answer = await acm.request_certificate(
            DomainName=domain_name, ValidationMethod=method, **extra
        )
        arn = answer["CertificateArn"]
        described = (await acm.describe_certificate(CertificateArn=arn))["Certificate"]
        message = _validation_message(described, method)
        return [{"arn": arn, "status": described.get("Status"), "message": message}]


_RESULT = (("arn", "varchar"), ("status", "varchar"), ("message", "varchar"))

CERTIFICATE_IMPORT = ModuleFunction(
    name="certificate_import",
    columns=_RESULT,
    params=(
        ("certificate", "text"),
        ("private_key", "text"),
        ("region", "text"),
        ("options", "json"),
        ("tags", "json"),
    ),
    run=certificate_import,
    description="Imports a PEM certificate and its private key into ACM (the key is not kept);"
    ' options: {"chain": PEM}',
    optional=("region", "options", "tags"),
    sample="SELECT * FROM certificate_import('-----BEGIN CERTIFICATE-----...',"
    " '-----BEGIN PRIVATE KEY-----...', 'us-east-1', '{}', '{\"env\": \"prod\"}')",
)

CERTIFICATE_REQUEST = ModuleFunction(
    name="certificate_request",
    columns=_RESULT,
    params=(
        ("domain_name", "text"),
        ("validation_method", "text"),
        ("region", "text"),
        ("options", "json"),
        ("tags", "json"),
    ),
    run=certificate_request,
    description="Asks ACM for a certificate for a domain, validated by DNS or e-mail; options:"
    " domainValidationOptions, subjectAlternativeNames, arn (a private CA)",
    optional=("validation_method", "region", "options", "tags"),
    sample="SELECT * FROM certificate_request('example.com', 'DNS', 'us-east-1',"
    ' \'{"subjectAlternativeNames": ["www.example.com"]}\')',
)

MODULE = ModuleSpec(
    name="aws_acm",
    version=VERSION,
    dependencies=("aws_account",),
    description="ACM certificates: imported or requested with the RPCs, deleted as rows",
    tables=(CERTIFICATE,),
    functions=(CERTIFICATE_IMPORT, CERTIFICATE_REQUEST),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS certificate_writes()",
        tags_as_text_teardown("certificate"),
    ),
)
