"""aws_cloudfront: distributions made with boto3 found at install and by iasql_sync(), one
inserted with IaSQL's SQL (rolled back once, then committed), changed in place (comment,
enabled, an imported certificate with an alternate domain name), replaced (caller
reference) and deleted; the mapper's update and delete calls (ETag, disable first). Every
cloud effect is read back with boto3."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import boto3
import psycopg
import pytest

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules.aws_cloudfront import (
    DISTRIBUTION,
    _config,
    _merged_behavior,
    normalize_behavior,
    normalize_names,
    normalize_origins,
)
from tests.support.aws import REGION, make_certificate, mapper, only_one_region
from tests.support.env import add_credentials, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

BUCKET = "cf-origin-bucket"
CACHE_POLICY = "658327ea-f89d-4fab-a63d-7e88639e58f6"  # AWS's CachingOptimized
DOMAIN = "cdn.cloudfront-test.com"


def s3_origin(origin_id: str) -> dict[str, Any]:
    return {
        "DomainName": f"{BUCKET}.s3.amazonaws.com",
        "Id": origin_id,
        "S3OriginConfig": {"OriginAccessIdentity": ""},
        "ConnectionAttempts": 3,
        "ConnectionTimeout": 10,
    }


def behavior(origin_id: str) -> dict[str, Any]:
    return {
        "TargetOriginId": origin_id,
        "ViewerProtocolPolicy": "allow-all",
        "CachePolicyId": CACHE_POLICY,
    }


def boto3_distribution(cloudfront: Any, reference: str, comment: str) -> str:
    """A distribution as a console or script makes one: a legacy (ForwardedValues) behaviour."""
    answer = cloudfront.create_distribution(
        DistributionConfig={
            "CallerReference": reference,
            "Comment": comment,
            "Enabled": True,
            "Origins": {"Quantity": 1, "Items": [s3_origin("s3-origin")]},
            "DefaultCacheBehavior": {
                "TargetOriginId": "s3-origin",
                "ViewerProtocolPolicy": "redirect-to-https",
                "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                "MinTTL": 0,
            },
        }
    )
    return str(answer["Distribution"]["Id"])


def cloud_config(cloudfront: Any, distribution_id: str) -> dict[str, Any]:
    return dict(cloudfront.get_distribution_config(Id=distribution_id)["DistributionConfig"])


def cloud_ids(cloudfront: Any) -> set[str]:
    listed = cloudfront.list_distributions()["DistributionList"].get("Items") or []
    return {d["Id"] for d in listed}


def nothing_to_do(conn: psycopg.Connection) -> None:
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


# --- canonical forms ------------------------------------------------------------------------


def test_canonical_forms() -> None:
    # What AWS fills in for an origin compares as not said; origin order does not count.
    written = [s3_origin("b"), {"Id": "a", "DomainName": "x.example.com"}]
    read = [
        {"Id": "a", "DomainName": "x.example.com", "OriginPath": "", "ConnectionAttempts": 3},
        {
            **s3_origin("b"),
            "OriginPath": "",
            "CustomHeaders": {"Quantity": 0},
            "OriginShield": {"Enabled": False},
            "OriginAccessControlId": "",
        },
    ]
    assert normalize_origins(written) == normalize_origins(json.dumps(read))
    other = [{**s3_origin("b"), "OriginPath": "/v2"}, written[1]]
    assert normalize_origins(other) != normalize_origins(written)
    # A behaviour compares by IaSQL's three keys; an empty cache policy is none.
    assert normalize_behavior({**behavior("o"), "Compress": True}) == normalize_behavior(
        json.dumps(behavior("o"))
    )
    assert normalize_behavior({"TargetOriginId": "o", "CachePolicyId": ""}) == normalize_behavior(
        {"TargetOriginId": "o"}
    )
    assert normalize_names([]) is None and normalize_names(["b", "a", "b"]) == ["a", "b"]
    # An update keeps what the row does not hold; a cache policy replaces legacy settings.
    current = {
        "TargetOriginId": "o",
        "ViewerProtocolPolicy": "allow-all",
        "ForwardedValues": {"QueryString": False},
        "MinTTL": 0,
        "Compress": True,
    }
    assert _merged_behavior(current, behavior("o")) == {**behavior("o"), "Compress": True}
    # A config for a row with a certificate uses it, with IaSQL's TLS settings.
    row = {
        "caller_reference": "r",
        "origins": [s3_origin("o")],
        "default_cache_behavior": behavior("o"),
        "enabled": True,
        "custom_ssl_certificate_id": "arn:aws:acm:us-east-1:1:certificate/x",
        "alternate_domain_names": [DOMAIN],
    }
    config = _config(row)
    assert config["ViewerCertificate"]["ACMCertificateArn"].endswith("/x")
    assert config["ViewerCertificate"]["SSLSupportMethod"] == "sni-only"
    assert config["Aliases"] == {"Quantity": 1, "Items": [DOMAIN]}


# --- the mapper's calls ------------------------------------------------------------------


class RecordingCloud:
    """The engine's cloud access, noting each CloudFront call and its parameters."""

    def __init__(self, cloud: AwsCloud) -> None:
        self.cloud = cloud
        self.calls: list[tuple[str, Any]] = []

    @contextlib.asynccontextmanager
    async def client(self, service: str, region: str | None) -> AsyncIterator[Any]:
        async with self.cloud.client(service, region) as client:

            def note(model: Any, params: Any, **_: Any) -> None:
                self.calls.append((model.name, params))

            # Clients are shared: one handler per client, whatever the number of uses.
            client.meta.events.register(
                "provide-client-params.cloudfront.*", note, unique_id=f"record-{id(self)}"
            )
            yield client


def test_update_and_delete_send_the_etag_and_disable_first(moto: MotoServer) -> None:
    """What AWS needs (moto checks neither): every update names the ETag it replaces, and a
    delete disables the distribution, waits for it to be deployed, then deletes."""
    boto3.client("s3", region_name=REGION, endpoint_url=moto.endpoint).create_bucket(Bucket=BUCKET)
    cloudfront = boto3.client("cloudfront", region_name=REGION, endpoint_url=moto.endpoint)
    distributions = mapper(DISTRIBUTION)

    async def scenario(cloud: AwsCloud) -> list[Any]:
        recording = RecordingCloud(cloud)
        row = {
            "caller_reference": "mapper-made",
            "comment": "",
            "enabled": True,
            "default_cache_behavior": behavior("o"),
            "origins": [s3_origin("o")],
        }
        made = await distributions.create(recording, row)
        assert made["status"] == "Deployed" and made["e_tag"]
        changed = await distributions.update(recording, {**row, "comment": "changed"}, made)
        assert changed["comment"] == "changed"
        await distributions.delete(recording, changed)
        await distributions.delete(recording, changed)  # already gone: fine
        return recording.calls

    calls = in_cloud(moto, scenario)
    names = [name for name, _ in calls]
    assert names[:2] == ["CreateDistribution", "GetDistribution"]  # the waiter's, then ours
    updates = [params for name, params in calls if name == "UpdateDistribution"]
    assert len(updates) == 2 and all(p["IfMatch"] for p in updates)
    assert updates[0]["DistributionConfig"]["Comment"] == "changed"
    assert updates[1]["DistributionConfig"]["Enabled"] is False  # disabled before the delete
    first_delete = names.index("DeleteDistribution")
    disable = max(i for i, name in enumerate(names[:first_delete]) if name == "UpdateDistribution")
    assert "GetDistribution" in names[disable:first_delete]  # waited until deployed
    assert next(p for n, p in calls if n == "DeleteDistribution")["IfMatch"]
    assert cloud_ids(cloudfront) == set()


# --- through SQL ----------------------------------------------------------------------------


@pytest.fixture
def cloudfront_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any]:
    moto: MotoServer = moto_accounts()
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto.endpoint)
    s3.create_bucket(Bucket=BUCKET)
    cloudfront = boto3.client("cloudfront", region_name=REGION, endpoint_url=moto.endpoint)
    boto3_distribution(cloudfront, "pre-existing", "made before install")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_acm')")  # fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_cloudfront')")
    return envdb, cloudfront


def test_distributions_through_sql(cloudfront_env: Any) -> None:
    conn, cloudfront = cloudfront_env

    # 1. Import: the distribution made before install is a row, in IaSQL's form.
    [(pre_id, comment, enabled, cache, origins, e_tag, status, domain)] = rows(
        conn,
        "SELECT distribution_id, comment, enabled, default_cache_behavior, origins, e_tag,"
        " status, domain_name FROM distribution WHERE caller_reference = 'pre-existing'",
    )
    assert pre_id in cloud_ids(cloudfront)
    assert (comment, enabled) == ("made before install", True)
    assert cache == {"TargetOriginId": "s3-origin", "ViewerProtocolPolicy": "redirect-to-https"}
    assert [(o["Id"], o["DomainName"]) for o in origins] == [
        ("s3-origin", f"{BUCKET}.s3.amazonaws.com")
    ]
    assert e_tag and status and domain.endswith(".cloudfront.net")
    nothing_to_do(conn)

    # ...and one made later comes in with iasql_sync().
    synced_id = boto3_distribution(cloudfront, "synced", "made after install")
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT distribution_id FROM distribution WHERE caller_reference = 'synced'")
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # 2. An uncommitted insert (IaSQL's SQL) is rolled back: nothing reaches the cloud.
    insert = (
        "INSERT INTO distribution (caller_reference, comment, enabled, is_ipv6_enabled,"
        " default_cache_behavior, origins) VALUES ('iasql-made', 'a comment', true, false,"
        f" '{json.dumps(behavior('made-origin'))}', '{json.dumps([s3_origin('made-origin')])}')"
    )
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(insert)
    [(action, table, changes)] = rows(
        conn, "SELECT action, table_name, changes FROM iasql_preview()"
    )
    assert (action, table) == ("create", "distribution")
    assert changes["caller_reference"] == {"old": None, "new": "iasql-made"}
    assert changes["default_cache_behavior"]["new"] == behavior("made-origin")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(
        conn, "SELECT count(*) FROM distribution WHERE caller_reference = 'iasql-made'"
    ) == [(0,)]
    assert len(cloud_ids(cloudfront)) == 2

    # 3. Create: the same insert, committed, and one naming only what IaSQL requires.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(insert)
    conn.execute(
        "INSERT INTO distribution (caller_reference, default_cache_behavior, origins)"
        f" VALUES ('minimal', '{json.dumps(behavior('m'))}', '{json.dumps([s3_origin('m')])}')"
    )
    # Without a caller reference, the create token is the distribution's: the row gets it.
    conn.execute(
        "INSERT INTO distribution (comment, default_cache_behavior, origins) VALUES"
        f" ('no reference', '{json.dumps(behavior('n'))}', '{json.dumps([s3_origin('n')])}')"
    )
    conn.execute("SELECT * FROM iasql_commit()")
    [(unnamed_id, reference)] = rows(
        conn,
        "SELECT distribution_id, caller_reference FROM distribution WHERE comment = 'no reference'",
    )
    assert reference and cloud_config(cloudfront, unnamed_id)["CallerReference"] == reference
    [(minimal_id,)] = rows(
        conn, "SELECT distribution_id FROM distribution WHERE caller_reference = 'minimal'"
    )
    assert cloud_config(cloudfront, minimal_id)["Enabled"] is True
    [(made_id, made_etag, made_status)] = rows(
        conn,
        "SELECT distribution_id, e_tag, status FROM distribution"
        " WHERE caller_reference = 'iasql-made'",
    )
    made = cloud_config(cloudfront, made_id)
    assert (made["CallerReference"], made["Comment"], made["Enabled"]) == (
        "iasql-made",
        "a comment",
        True,
    )
    assert made["IsIPV6Enabled"] is False
    assert made["DefaultCacheBehavior"]["CachePolicyId"] == CACHE_POLICY
    assert [(o["Id"], o["DomainName"]) for o in made["Origins"]["Items"]] == [
        ("made-origin", f"{BUCKET}.s3.amazonaws.com")
    ]
    assert made_etag and made_status
    nothing_to_do(conn)

    # 4. Update in place, in one commit: the comment, an imported certificate with an
    # alternate domain name (IaSQL's test), a disabled distribution.
    pem, key = make_certificate(DOMAIN)
    [(certificate_arn, _, _)] = rows(
        conn, f"SELECT * FROM certificate_import('{pem}', '{key}', 'us-east-1', '{{}}')"
    )
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE distribution SET comment = 'new comment',"
        f" custom_ssl_certificate_id = (SELECT id FROM certificate WHERE domain_name = '{DOMAIN}'),"
        f" alternate_domain_names = '{{{DOMAIN}}}' WHERE caller_reference = 'iasql-made'"
    )
    conn.execute("UPDATE distribution SET enabled = false WHERE caller_reference = 'synced'")
    preview = {
        description: (action, changes)
        for action, description, changes in rows(
            conn, "SELECT action, description, changes FROM iasql_preview()"
        )
    }
    assert preview[made_id] == (
        "update",
        {
            "comment": {"old": "a comment", "new": "new comment"},
            "alternate_domain_names": {"old": None, "new": [DOMAIN]},
            "custom_ssl_certificate_id": {"old": None, "new": certificate_arn},
        },
    )
    assert preview[synced_id] == ("update", {"enabled": {"old": True, "new": False}})
    conn.execute("SELECT * FROM iasql_commit()")
    made = cloud_config(cloudfront, made_id)
    assert made["Comment"] == "new comment"
    assert made["ViewerCertificate"]["ACMCertificateArn"] == certificate_arn
    assert made["ViewerCertificate"]["CloudFrontDefaultCertificate"] is False
    assert made["Aliases"]["Items"] == [DOMAIN]
    assert made["DefaultCacheBehavior"]["CachePolicyId"] == CACHE_POLICY  # kept
    assert cloud_config(cloudfront, synced_id)["Enabled"] is False
    # The legacy settings of the synced one stay as they were.
    assert cloud_config(cloudfront, synced_id)["DefaultCacheBehavior"]["ForwardedValues"]
    assert rows(
        conn,
        "SELECT distribution_id, custom_ssl_certificate_id IS NOT NULL, alternate_domain_names"
        " FROM distribution WHERE caller_reference = 'iasql-made'",
    ) == [(made_id, True, [DOMAIN])]
    nothing_to_do(conn)

    # The SQL replaying that transaction names rows by caller reference and the certificate
    # by a sub-select on its domain: no distribution id, no ARN.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert replay
    for cloud_value in (made_id, synced_id, pre_id, minimal_id, certificate_arn, "arn:aws"):
        assert not any(cloud_value in sql for sql in replay), replay
    assert any("'iasql-made'" in sql and DOMAIN in sql for sql in replay), replay

    # 5. Replace (the caller reference) and delete, in one commit.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE distribution SET caller_reference = 'pre-renamed'"
        " WHERE caller_reference = 'pre-existing'"
    )
    conn.execute("DELETE FROM distribution WHERE caller_reference = 'synced'")
    preview = {
        description: (action, changes)
        for action, description, changes in rows(
            conn, "SELECT action, description, changes FROM iasql_preview()"
        )
    }
    assert preview[pre_id][0] == "replace"
    assert preview[pre_id][1]["caller_reference"] == {
        "old": "pre-existing",
        "new": "pre-renamed",
        "forces_replace": True,
    }
    assert preview[synced_id][0] == "delete"
    conn.execute("SELECT * FROM iasql_commit()")
    [(renamed_id,)] = rows(
        conn, "SELECT distribution_id FROM distribution WHERE caller_reference = 'pre-renamed'"
    )
    assert cloud_ids(cloudfront) == {made_id, renamed_id, minimal_id, unnamed_id}
    assert renamed_id != pre_id
    assert cloud_config(cloudfront, renamed_id)["CallerReference"] == "pre-renamed"
    with pytest.raises(cloudfront.exceptions.NoSuchDistribution):
        cloudfront.get_distribution(Id=synced_id)
    nothing_to_do(conn)
