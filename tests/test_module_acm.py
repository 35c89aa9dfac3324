"""aws_acm: certificates imported with boto3 and found at install, tags changed and rows
deleted through begin / preview / commit, an INSERT refused, and the two RPCs against moto
(directly and through SQL). Every cloud effect is read back with boto3."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest
from psycopg.types.json import Json

from iasql.sandbox import MotoServer
from modules._aws.tags import normalize_tags
from modules.aws_acm import (
    CERTIFICATE,
    CERTIFICATE_IMPORT,
    CERTIFICATE_REQUEST,
    _validation_options,
    certificate_import,
    certificate_request,
)
from modules.spec import CloudError
from tests.support.aws import REGION, make_certificate, mapper, only_one_region
from tests.support.env import add_credentials, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def acm_client(moto: MotoServer, region: str = REGION) -> Any:
    return boto3.client("acm", region_name=region, endpoint_url=moto.endpoint)


def import_with_boto3(acm: Any, domain: str, **extra: Any) -> str:
    pem, key = make_certificate(domain)
    return str(
        acm.import_certificate(Certificate=pem.encode(), PrivateKey=key.encode(), **extra)[
            "CertificateArn"
        ]
    )


# A requested certificate waits for validation; moto validates it after MOTO_ACM_VALIDATION_WAIT
# (1 s), which a loaded machine may take between the request and its describe.
PENDING = ("PENDING_VALIDATION", "ISSUED")

# --- helpers -------------------------------------------------------------------------------


def test_validation_options_from_json() -> None:
    one = {"DomainName": "a.example.com", "ValidationDomain": "example.com"}
    assert _validation_options(None) == []
    assert _validation_options([one]) == [one]
    assert _validation_options(one) == [one]
    assert _validation_options('[{"DomainName": "x", "ValidationDomain": "x"}]') == [
        {"DomainName": "x", "ValidationDomain": "x"}
    ]
    with pytest.raises(CloudError, match="JSON list"):
        _validation_options(["example.com"])


def test_functions_are_declared() -> None:
    # IaSQL's signatures, parameter for parameter, and its result columns.
    assert CERTIFICATE_IMPORT.params == (
        ("certificate", "text"),
        ("private_key", "text"),
        ("region", "text"),
        ("options", "json"),
        ("tags", "json"),
    )
    assert CERTIFICATE_REQUEST.params == (
        ("domain_name", "text"),
        ("validation_method", "text"),
        ("region", "text"),
        ("options", "json"),
        ("tags", "json"),
    )
    assert (
        CERTIFICATE_IMPORT.columns
        == CERTIFICATE_REQUEST.columns
        == (("arn", "varchar"), ("status", "varchar"), ("message", "varchar"))
    )


# --- RPCs and mapper against moto ----------------------------------------------------------


def test_certificate_import_rpc(moto: MotoServer) -> None:
    pem, key = make_certificate("rpc-import.example.com")
    [result] = in_cloud(moto, lambda cloud: certificate_import(cloud, pem, key, REGION))
    assert set(result) == {"arn", "status", "message"}  # the key is not handed back
    assert result["status"] == "ISSUED"
    found = acm_client(moto).describe_certificate(CertificateArn=result["arn"])["Certificate"]
    assert found["DomainName"] == "rpc-import.example.com" and found["Type"] == "IMPORTED"
    # A chain is passed on (options "chain", as IaSQL's): the CA's certificate stands in.
    chain, _ = make_certificate("ca.example.com")
    [chained] = in_cloud(
        moto, lambda cloud: certificate_import(cloud, pem, key, REGION, {"chain": chain})
    )
    assert chained["arn"] != result["arn"]
    got = acm_client(moto).get_certificate(CertificateArn=chained["arn"])
    assert chain.strip() in got["CertificateChain"]  # moto appends a CA of its own
    with pytest.raises(CloudError, match="private key"):
        in_cloud(moto, lambda cloud: certificate_import(cloud, pem, "", REGION))
    with pytest.raises(CloudError, match="region"):
        in_cloud(moto, lambda cloud: certificate_import(cloud, pem, key, None))
    # Our old order (chain before region) names the mistake, and never echoes a key.
    with pytest.raises(CloudError, match="not a region name") as error:
        in_cloud(moto, lambda cloud: certificate_import(cloud, pem, key, key, REGION))
    assert "PRIVATE KEY" not in str(error.value) and "(a private key)" in str(error.value)


def test_certificate_request_rpc(moto: MotoServer) -> None:
    options = [{"DomainName": "rpc-request.example.com", "ValidationDomain": "example.com"}]
    [result] = in_cloud(
        moto,
        lambda cloud: certificate_request(
            cloud,
            "rpc-request.example.com",
            "dns",
            REGION,
            {"domainValidationOptions": options, "subjectAlternativeNames": ["www.example.com"]},
        ),
    )
    assert result["status"] in PENDING  # the status of a moment ago
    found = acm_client(moto).describe_certificate(CertificateArn=result["arn"])["Certificate"]
    assert found["Type"] == "AMAZON_ISSUED"
    assert found["DomainValidationOptions"][0]["ValidationMethod"] == "DNS"
    assert "www.example.com" in found["SubjectAlternativeNames"]
    # The message says what proves the domain: the CNAME record ACM asks for.
    record = found["DomainValidationOptions"][0]["ResourceRecord"]
    assert f"{record['Name']} CNAME {record['Value']}" in result["message"]
    [email] = in_cloud(
        moto, lambda cloud: certificate_request(cloud, "mail.example.com", "EMAIL", REGION)
    )
    described = acm_client(moto).describe_certificate(CertificateArn=email["arn"])
    assert described["Certificate"]["DomainName"] == "mail.example.com"
    with pytest.raises(CloudError, match="'DNS' or 'EMAIL'"):
        in_cloud(moto, lambda cloud: certificate_request(cloud, "x.example.com", "HTTP", REGION))


def test_certificate_mapper(moto: MotoServer) -> None:
    acm = acm_client(moto)
    arn = import_with_boto3(acm, "mapper.example.com", Tags=[{"Key": "team", "Value": "web"}])
    certificates = mapper(CERTIFICATE)

    by_arn = {r["arn"]: r for r in in_cloud(moto, lambda cloud: certificates.read(cloud, REGION))}
    record = by_arn[arn]
    assert record == {
        "arn": arn,
        "certificate_id": arn.rsplit("/", 1)[-1],
        "domain_name": "mapper.example.com",
        "certificate_type": "IMPORTED",
        "status": "ISSUED",
        "renewal_eligibility": "INELIGIBLE",
        "in_use": False,
        "region": REGION,
        "tags": {"team": "web"},
    }
    with pytest.raises(CloudError, match="certificate_import"):
        in_cloud(moto, lambda cloud: certificates.create(cloud, {**record, "arn": None}))

    wanted = {**record, "tags": {"env": "prod"}}
    updated = in_cloud(moto, lambda cloud: certificates.update(cloud, wanted, record))
    assert updated["tags"] == {"env": "prod"}
    assert acm.list_tags_for_certificate(CertificateArn=arn)["Tags"] == [
        {"Key": "env", "Value": "prod"}
    ]
    with pytest.raises(CloudError, match="domain name"):
        in_cloud(
            moto,
            lambda cloud: certificates.update(
                cloud, {**updated, "domain_name": "other.example.com"}, updated
            ),
        )

    in_cloud(moto, lambda cloud: certificates.delete(cloud, updated))
    with pytest.raises(acm.exceptions.ResourceNotFoundException):
        acm.describe_certificate(CertificateArn=arn)
    in_cloud(moto, lambda cloud: certificates.delete(cloud, updated))  # already gone: fine


# --- through SQL ---------------------------------------------------------------------------


@pytest.fixture
def acm_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any]:
    """An environment on its own moto account, with certificates made before install."""
    moto: MotoServer = moto_accounts()
    acm = acm_client(moto)
    import_with_boto3(acm, "imported.example.com", Tags=[{"Key": "team", "Value": "web"}])
    acm.request_certificate(DomainName="requested.example.com", ValidationMethod="DNS")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_acm')")
    only_one_region(envdb)
    return envdb, acm


def test_certificates_through_sql(acm_env: Any) -> None:
    conn, acm = acm_env
    imported = rows(
        conn,
        "SELECT domain_name, certificate_type, in_use, region, tags::text"
        " FROM certificate ORDER BY domain_name",
    )
    assert imported == [
        ("imported.example.com", "IMPORTED", False, REGION, '{"team": "web"}'),
        ("requested.example.com", "AMAZON_ISSUED", False, REGION, None),
    ]
    # moto validates a requested certificate after MOTO_ACM_VALIDATION_WAIT (1 s) seconds.
    statuses = dict(rows(conn, "SELECT domain_name, status FROM certificate"))
    assert statuses["imported.example.com"] == "ISSUED"
    assert statuses["requested.example.com"] in ("PENDING_VALIDATION", "ISSUED")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    arn = rows(conn, "SELECT arn FROM certificate WHERE domain_name = 'imported.example.com'")[0][0]

    # Tags change in place.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        'UPDATE certificate SET tags = \'{"team": "platform", "env": "prod"}\''
        " WHERE domain_name = 'imported.example.com'"
    )
    [(action, table, description, changes)] = rows(
        conn, "SELECT action, table_name, description, changes FROM iasql_preview()"
    )
    assert (action, table, description) == ("update", "certificate", arn)
    assert changes == {"tags": {"old": {"team": "web"}, "new": {"env": "prod", "team": "platform"}}}
    conn.execute("SELECT * FROM iasql_commit()")
    tags = acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "prod"), ("team", "platform")]
    assert rows(conn, f"SELECT arn FROM certificate WHERE arn = '{arn}'") == [(arn,)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]

    # A certificate can't be made by INSERT: the statement is refused, naming the RPCs.
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        conn.execute("INSERT INTO certificate (domain_name) VALUES ('inserted.example.com')")
    hint = refused.value.diag.message_hint or ""
    assert "certificate_request('inserted.example.com', 'DNS', 'us-east-1')" in hint
    assert "certificate_import(" in hint
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert len(acm.list_certificates()["CertificateSummaryList"]) == 2

    # Deleting the row deletes the certificate.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM certificate WHERE domain_name = 'requested.example.com'")
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_preview()")
    assert action == "delete"
    assert changes["domain_name"] == {"old": "requested.example.com", "new": None}
    conn.execute("SELECT * FROM iasql_commit()")
    assert [c["DomainName"] for c in acm.list_certificates()["CertificateSummaryList"]] == [
        "imported.example.com"
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def test_rpcs_through_sql(acm_env: Any) -> None:
    conn, acm = acm_env
    listed = dict(rows(conn, "SELECT name, module FROM iasql_help() WHERE module = 'aws_acm'"))
    assert listed == {"certificate_import": "aws_acm", "certificate_request": "aws_acm"}
    pem, key = make_certificate("sql-import.example.com")
    [(arn, status, message)] = rows(
        conn,
        f"SELECT * FROM certificate_import('{pem}', '{key}', 'us-east-1', '{{}}')",
    )
    assert (status, message) == ("ISSUED", "Imported the certificate")
    assert acm.describe_certificate(CertificateArn=arn)["Certificate"]["Type"] == "IMPORTED"
    # The RPC's sync brings the new certificate in as a row.
    assert rows(conn, f"SELECT domain_name FROM certificate WHERE arn = '{arn}'") == [
        ("sql-import.example.com",)
    ]
    # The private key is kept nowhere in the database.
    kept = rows(
        conn,
        "SELECT count(*) FROM iasql_audit_log"
        " WHERE change::text LIKE '%PRIVATE KEY%' OR message LIKE '%PRIVATE KEY%'",
    )
    assert kept == [(0,)]

    [(requested, pending)] = rows(
        conn,
        "SELECT arn, status FROM certificate_request('sql-request.example.com', 'DNS',"
        ' options => \'{"domainValidationOptions": [{"DomainName": "sql-request.example.com",'
        ' "ValidationDomain": "example.com"}]}\')',
    )
    assert pending in PENDING
    described = acm.describe_certificate(CertificateArn=requested)["Certificate"]
    assert described["DomainName"] == "sql-request.example.com"
    assert rows(conn, f"SELECT region FROM certificate WHERE arn = '{requested}'") == [(REGION,)]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


# --- IaSQL's SQL, unchanged (issue 15) -------------------------------------------------------


def test_iasql_rpc_calls_run_unchanged(acm_env: Any) -> None:
    """The calls of IaSQL's docs and tests: (certificate, key, region, options, tags), with ''
    or '{}' for no options, and the (arn, status, message) they return."""
    conn, acm = acm_env
    pem, key = make_certificate("iasql-import.example.com")
    [(arn, status, message)] = rows(
        conn, f"SELECT * FROM certificate_import('{pem}', '{key}', 'us-east-1', '')"
    )
    assert (status, message) == ("ISSUED", "Imported the certificate")
    assert acm.describe_certificate(CertificateArn=arn)["Certificate"]["Type"] == "IMPORTED"
    # IaSQL's aws-acm-import test: tags as the fifth argument, then a tag update.
    [(tagged, _, _)] = rows(
        conn,
        f"SELECT * FROM certificate_import('{pem}', '{key}', 'us-east-1', '{{}}',"
        ' \'{ "toUpdate": "value", "toDelete": "value2" }\')',
    )
    found = rows(
        conn,
        f"SELECT count(*) FROM certificate WHERE arn = '{tagged}'"
        " AND tags ->> 'toDelete' = 'value2' AND tags ->> 'toUpdate' = 'value'",
    )
    assert found == [(1,)]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        'UPDATE certificate SET tags = \'{ "toUpdate": "value2", "newTag": "value3" }\''
        f" WHERE arn = '{tagged}'"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    tags = acm.list_tags_for_certificate(CertificateArn=tagged)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [
        ("newTag", "value3"),
        ("toUpdate", "value2"),
    ]
    # IaSQL's aws-acm-request call.
    [(requested, pending, said)] = rows(
        conn,
        "SELECT * FROM certificate_request('iasql-request.example.com', 'DNS', 'us-east-1', '')",
    )
    assert pending in PENDING and "CNAME" in said
    assert rows(conn, f"SELECT domain_name FROM certificate WHERE arn = '{requested}'") == [
        ("iasql-request.example.com",)
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    # Bound parameters (the extended protocol), JSON ones included, as a driver sends them.
    chain, _ = make_certificate("ca.example.com")
    [(bound, _, _)] = conn.execute(
        "SELECT * FROM certificate_import(%s, %s, %s, %s, %s)",
        (pem, key, "us-east-1", Json({"chain": chain}), Json({"via": "params"})),
    ).fetchall()
    assert chain.strip() in acm.get_certificate(CertificateArn=bound)["CertificateChain"]
    assert acm.list_tags_for_certificate(CertificateArn=bound)["Tags"] == [
        {"Key": "via", "Value": "params"}
    ]


def test_bad_rpc_arguments_are_no_internal_errors(acm_env: Any) -> None:
    """Each bad argument is refused before ACM is called, in one line naming the signature;
    none is XX000 (IaSQL's own order once ended in XX000 JSONDecodeError here)."""
    conn, acm = acm_env
    pem, key = make_certificate("bad-arguments.example.com")
    bad = {
        f"certificate_import('{pem}', '{key}', 'us-east-1', '{{bad')": "options is not valid JSON",
        f"certificate_import('{pem}', '{key}', 'us-east-1', '[1]')": "options is a JSON object",
        f"certificate_import('{pem}', '{key}', 'us-east-1', '{{\"chian\": \"x\"}}')": "no key chian",
        f"certificate_import('{pem}', '{key}', 'us-east-1', '{{}}', 'x')": "tags is not valid JSON",
        # our old order, (certificate, private_key, chain, region)
        f"certificate_import('{pem}', '{key}', NULL, 'us-east-1')": "options is not valid JSON",
        f"certificate_import('{pem}', '{key}', '{pem}', '')": "is not a region name",
        "certificate_request('x.example.com', 'HTTP', 'us-east-1', '')": "'DNS' or 'EMAIL'",
        "certificate_request('x.example.com', 'DNS', 'us-east-1', 'nope')": "options is not",
        "certificate_request('x.example.com', 'DNS', 'us-east-1',"
        ' \'{"subjectAlternativeNames": "www"}\')': "a JSON list of domain names",
    }
    for call, says in bad.items():
        with pytest.raises(psycopg.Error) as error:
            conn.execute(f"SELECT * FROM {call}")
        assert error.value.sqlstate == "22023", call  # an argument error, not the cloud's
        text = str(error.value)
        assert says in text and "\n" not in text.strip(), (call, text)
        assert "(certificate, private_key, region, options json, tags json)" in text or (
            "(domain_name, validation_method, region, options json, tags json)" in text
        )
        assert "PRIVATE KEY" not in text
    assert len(acm.list_certificates()["CertificateSummaryList"]) == 2  # nothing was made


def test_certificate_row_writes(acm_env: Any) -> None:
    """An INSERT, or a change of domain or region, is refused at once with what to write
    instead; a cloud-assigned column is restored by the commit, as IaSQL does."""
    conn, acm = acm_env
    arn = rows(conn, "SELECT arn FROM certificate WHERE domain_name = 'imported.example.com'")[0][0]
    conn.execute("SELECT * FROM iasql_begin()")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        conn.execute(
            "INSERT INTO certificate (domain_name, region) VALUES ('new.example.com', 'us-east-1')"
        )
    assert "cannot be made by INSERT" in str(refused.value)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as moved:
        conn.execute(
            "UPDATE certificate SET domain_name = 'other.example.com'"
            " WHERE domain_name = 'imported.example.com'"
        )
    assert arn in str(moved.value) and "only its tags" in (moved.value.diag.message_hint or "")
    conn.execute(
        "UPDATE certificate SET status = 'EXPIRED' WHERE domain_name = 'imported.example.com'"
    )
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_preview()")
    assert action == "update" and changes["status"]["restored_from_cloud"]
    conn.execute("SELECT * FROM iasql_commit()")
    assert rows(conn, f"SELECT status FROM certificate WHERE arn = '{arn}'") == [("ISSUED",)]
    assert acm.describe_certificate(CertificateArn=arn)["Certificate"]["Status"] == "ISSUED"
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]


def test_tag_values_are_text(acm_env: Any) -> None:
    """A JSON true or number as a tag value is stored as the text AWS keeps ("true", not
    Python's "True"), so that the row reads as the cloud does and nothing drifts."""
    conn, acm = acm_env
    assert normalize_tags({"public": True, "n": 1, "x": 1.5, "none": None}) == {
        "n": "1",
        "none": "",
        "public": "true",
        "x": "1.5",
    }
    arn = rows(conn, "SELECT arn FROM certificate WHERE domain_name = 'imported.example.com'")[0][0]
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        'UPDATE certificate SET tags = \'{"public": true, "n": 1, "team": "web"}\''
        f" WHERE arn = '{arn}'"
    )
    stored = rows(conn, f"SELECT tags::jsonb FROM certificate WHERE arn = '{arn}'")
    assert stored == [({"public": "true", "n": "1", "team": "web"},)]
    conn.execute("SELECT * FROM iasql_commit()")
    tags = acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [
        ("n", "1"),
        ("public", "true"),
        ("team", "web"),
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    # The RPCs' tags too.
    pem, key = make_certificate("tagged.example.com")
    [(tagged, _, _)] = rows(
        conn,
        f"SELECT * FROM certificate_import('{pem}', '{key}', 'us-east-1', '', '{{\"on\": true}}')",
    )
    assert acm.list_tags_for_certificate(CertificateArn=tagged)["Tags"] == [
        {"Key": "on", "Value": "true"}
    ]
    assert rows(conn, f"SELECT tags::text FROM certificate WHERE arn = '{tagged}'") == [
        ('{"on": "true"}',)
    ]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]
