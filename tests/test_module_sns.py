"""aws_sns: topics and subscriptions made with boto3 found at install and by iasql_sync(),
then created, updated in place (SetTopicAttributes), renamed (a new topic), deleted and rolled
back through begin / preview / commit, with an SQS queue as the subscriber. Every cloud effect
is read back with boto3, and after every commit nothing is left to preview and nothing
drifts. moto answers GetDataProtectionPolicy with HTTP 500: the reads take it as no policy."""

from __future__ import annotations

import json
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from iasql.sandbox import MotoServer
from modules.aws_sns import (
    MODULE,
    SUBSCRIPTION,
    TOPIC,
    _boolean_text,
    _json_text,
    _not_implemented,
    _signature_version,
    _topic_record,
    _tracing_config,
    default_policy,
)
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")


def sns_client(moto: MotoServer) -> Any:
    return boto3.client("sns", region_name=REGION, endpoint_url=moto.endpoint)


def sqs_client(moto: MotoServer) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto.endpoint)


def topics(sns: Any) -> dict[str, dict[str, Any]]:
    """Every topic by name, with its attributes."""
    arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    return {
        arn.rsplit(":", 1)[-1]: sns.get_topic_attributes(TopicArn=arn)["Attributes"] for arn in arns
    }


def subscriptions(sns: Any) -> set[tuple[str, str, str]]:
    """Every subscription as (topic name, protocol, endpoint)."""
    return {
        (s["TopicArn"].rsplit(":", 1)[-1], s["Protocol"], s["Endpoint"])
        for s in sns.list_subscriptions()["Subscriptions"]
    }


def queue_arn(sqs: Any, name: str) -> str:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return str(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    )


def clean(conn: psycopg.Connection) -> None:
    """Nothing left to commit, and the rows are what the cloud has."""
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


def custom_policy(arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "publish",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sns:Publish",
                "Resource": arn,
            }
        ],
    }


# --- the tables and their canonical forms, without a cloud -----------------------------------


def test_tables_are_iasqls() -> None:
    assert [c.name for c in TOPIC.columns] == [
        "id",
        "name",
        "delivery_policy",
        "display_name",
        "policy",
        "tracing_config",
        "kms_master_key_id",
        "signature_version",
        "content_based_deduplication",
        "fifo_topic",
        "data_protection_policy",
        "arn",
        "region",
    ]
    assert [c.name for c in SUBSCRIPTION.columns] == [
        "id",
        "endpoint",
        "region",
        "protocol",
        "arn",
        "topic",
    ]
    assert [t.name for t in MODULE.tables] == ["topic", "subscription"]
    assert TOPIC.column("fifo_topic").replaces and TOPIC.column("name").replaces
    assert all(SUBSCRIPTION.column(c).replaces for c in ("endpoint", "protocol", "topic"))


def test_aws_defaults_read_as_null() -> None:
    assert _tracing_config("PassThrough") is None and _tracing_config("Active") == "Active"
    assert _signature_version("1") is None and _signature_version("2") == "2"
    assert _boolean_text("false") is None and _boolean_text("True") == "true"
    assert _json_text('{"b": 1,  "a": 2}') == _json_text({"a": 2, "b": 1}) == '{"a":2,"b":1}'
    assert _json_text("") is None and _json_text("not json") == "not json"
    arn = f"arn:aws:sns:{REGION}:123456789012:t"
    attributes = {"Policy": json.dumps(default_policy(arn)), "DisplayName": "", "FifoTopic": "true"}
    record = _topic_record(arn, REGION, attributes, None)
    assert record["policy"] is None and record["display_name"] is None
    assert record["fifo_topic"] is True and record["name"] == "t"
    custom = json.dumps(custom_policy(arn))
    assert _topic_record(arn, REGION, {"Policy": custom}, '{"Name": "p"}')["policy"] == custom


def test_a_bare_server_error_is_not_implemented() -> None:
    def error(status: int, code: str) -> ClientError:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "GetDataProtectionPolicy")

    assert _not_implemented(error(500, "500"))
    assert not _not_implemented(error(500, "InternalError"))  # AWS's own: raised
    assert not _not_implemented(error(400, "InvalidParameter"))


# --- through SQL, against moto -----------------------------------------------------------------


@pytest.fixture
def sns_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Any, Any]:
    moto: MotoServer = moto_accounts()
    sns, sqs = sns_client(moto), sqs_client(moto)
    imported = sns.create_topic(Name="imported", Attributes={"DisplayName": "Imported"})
    sns.create_topic(
        Name="imported.fifo",
        Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"},
    )
    sns.subscribe(TopicArn=imported["TopicArn"], Protocol="sqs", Endpoint=queue_arn(sqs, "inbox"))
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_sync()")  # reads the account's regions
    only_one_region(envdb)
    installed = rows(envdb, "SELECT * FROM iasql_install('aws_sns')")
    assert ("aws_sns", "topic", 2) in installed
    return envdb, sns, sqs


def test_topics_and_subscriptions_through_sql(sns_env: Any) -> None:
    conn, sns, sqs = sns_env
    inbox, outbox = queue_arn(sqs, "inbox"), queue_arn(sqs, "outbox")
    cloud = topics(sns)
    imported_arn = cloud["imported"]["TopicArn"]

    # 1. Import: the topics and the subscription made before install are rows. moto's 500 on
    # GetDataProtectionPolicy reads as no policy; AWS's default access policy as none.
    assert rows(
        conn,
        "SELECT name, display_name, policy, fifo_topic, content_based_deduplication,"
        " data_protection_policy, arn, region FROM topic ORDER BY name",
    ) == [
        ("imported", "Imported", None, False, None, None, imported_arn, REGION),
        (
            "imported.fifo",
            None,
            None,
            True,
            "true",
            None,
            cloud["imported.fifo"]["TopicArn"],
            REGION,
        ),
    ]
    [(sub_arn, topic, protocol, endpoint)] = rows(
        conn, "SELECT arn, topic, protocol, endpoint FROM subscription"
    )
    assert (topic, protocol, endpoint) == (imported_arn, "sqs", inbox)
    assert sub_arn.startswith(imported_arn + ":")
    clean(conn)

    # A topic made after install comes in with iasql_sync(), its policy as the cloud has it.
    later = sns.create_topic(Name="later")["TopicArn"]
    sns.set_topic_attributes(
        TopicArn=later, AttributeName="Policy", AttributeValue=json.dumps(custom_policy(later))
    )
    conn.execute("SELECT * FROM iasql_sync()")
    [(policy,)] = rows(conn, "SELECT policy FROM topic WHERE name = 'later'")
    assert json.loads(policy) == custom_policy(later)
    clean(conn)

    # 2-4. One commit: a create, an update in place and a rename (a new topic; the old one
    # goes, and with it its subscriptions).
    delivery = {"http": {"defaultHealthyRetryPolicy": {"numRetries": 5}}}
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO topic (name, display_name, delivery_policy) VALUES ('made', 'Made', %s)",
        (json.dumps(delivery, indent=2),),
    )
    conn.execute(
        "UPDATE topic SET display_name = 'Changed', policy = %s WHERE name = 'imported'",
        (json.dumps(custom_policy(imported_arn)),),
    )
    conn.execute("UPDATE topic SET name = 'renamed' WHERE name = 'later'")
    preview = rows(conn, "SELECT action, table_name, description, changes FROM iasql_preview()")
    assert sorted((a, t) for a, t, _d, _c in preview) == [
        ("create", "topic"),
        ("create", "topic"),
        ("delete", "topic"),
        ("update", "topic"),
    ]
    creates = {c["name"]["new"]: c for a, _t, _d, c in preview if a == "create"}
    assert creates["made"]["display_name"] == {"old": None, "new": "Made"}
    assert json.loads(creates["made"]["delivery_policy"]["new"]) == delivery
    assert json.loads(creates["renamed"]["policy"]["new"]) == custom_policy(later)
    [update] = [c for a, _t, _d, c in preview if a == "update"]
    assert update["display_name"] == {"old": "Imported", "new": "Changed"}
    assert update["policy"]["old"] is None
    assert json.loads(update["policy"]["new"]) == custom_policy(imported_arn)
    assert set(update) == {"display_name", "policy"}
    [delete] = [c for a, _t, _d, c in preview if a == "delete"]
    assert delete["name"] == {"old": "later", "new": None}
    conn.execute("SELECT * FROM iasql_commit()")

    cloud = topics(sns)
    assert sorted(cloud) == ["imported", "imported.fifo", "made", "renamed"]
    assert cloud["imported"]["TopicArn"] == imported_arn  # the same topic, changed in place
    assert cloud["imported"]["DisplayName"] == "Changed"
    assert json.loads(cloud["imported"]["Policy"]) == custom_policy(imported_arn)
    assert cloud["made"]["DisplayName"] == "Made"
    assert json.loads(cloud["made"]["DeliveryPolicy"]) == delivery
    assert json.loads(cloud["renamed"]["Policy"]) == custom_policy(later)
    # The arns came back into the rows.
    assert dict(rows(conn, "SELECT name, arn FROM topic")) == {
        name: attributes["TopicArn"] for name, attributes in cloud.items()
    }
    clean(conn)

    # The SQL that replays it names topics by name and region, never by arn.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3, replay
    # (The one ARN in it is the policy document's Resource, which the user wrote.)
    assert not any("arn:aws:sns" in sql for sql in replay if '"policy"' not in sql), replay
    assert any('"policy"' in sql and "\"name\" = 'imported'" in sql for sql in replay), replay
    assert any(sql.startswith('INSERT INTO "topic"') and "'made'" in sql for sql in replay)
    assert any("'renamed'" in sql and "'later'" in sql for sql in replay)

    # Setting a column back to NULL puts AWS's default back: the default access policy.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE topic SET policy = NULL, display_name = NULL WHERE name = 'imported'")

    # Subscriptions: a new one to a topic made above, by sub-select, and a new endpoint for
    # the imported one (a new subscription; the old one is unsubscribed).
    conn.execute("UPDATE subscription SET endpoint = %s WHERE endpoint = %s", (outbox, inbox))
    conn.execute(
        "INSERT INTO subscription (endpoint, protocol, topic)"
        " VALUES (%s, 'sqs', (SELECT arn FROM topic WHERE name = 'made'))",
        (inbox,),
    )
    preview = rows(conn, "SELECT action, table_name, changes FROM iasql_preview()")
    made_arn = cloud["made"]["TopicArn"]
    [made_sub] = [c for a, _t, c in preview if a == "create" and c["topic"]["new"] == made_arn]
    assert made_sub["endpoint"] == {"old": None, "new": inbox}
    assert made_sub["protocol"] == {"old": None, "new": "sqs"}
    by = sorted((a, t) for a, t, _c in preview)
    assert by == [
        ("create", "subscription"),
        ("create", "subscription"),
        ("delete", "subscription"),
        ("update", "topic"),
    ], preview
    conn.execute("SELECT * FROM iasql_commit()")
    attributes = topics(sns)["imported"]
    assert json.loads(attributes["Policy"]) == default_policy(imported_arn)
    assert attributes["DisplayName"] == ""
    assert subscriptions(sns) == {("made", "sqs", inbox), ("imported", "sqs", outbox)}
    assert {r[0] for r in rows(conn, "SELECT arn FROM subscription")} == {
        s["SubscriptionArn"] for s in sns.list_subscriptions()["Subscriptions"]
    }
    clean(conn)
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert not any("arn:aws:sns" in sql for sql in replay), replay
    assert any('(SELECT "arn" FROM "topic" WHERE' in sql for sql in replay), replay

    # A rollback discards the changes of an open transaction; the cloud is untouched. A FIFO
    # flag changed alone would replace the topic (the preview says so), and AWS would delete
    # its subscriptions with the old one: their rows go too.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE topic SET fifo_topic = true, display_name = 'x' WHERE name = 'made'")
    preview = rows(conn, "SELECT action, table_name, changes FROM iasql_preview()")
    by_table = {t: (a, c) for a, t, c in preview}
    assert len(preview) == 2 and by_table["subscription"][0] == "delete"
    action, changes = by_table["topic"]
    assert action == "replace"
    assert changes["fifo_topic"] == {"old": False, "new": True, "forces_replace": True}
    assert changes["display_name"] == {"old": "Made", "new": "x"}
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT fifo_topic, display_name FROM topic WHERE name = 'made'") == [
        (False, "Made")
    ]
    assert rows(conn, "SELECT count(*) FROM subscription") == [(2,)]
    assert topics(sns)["made"]["DisplayName"] == "Made"
    clean(conn)

    # 5. Delete: a topic row takes its subscriptions' rows along; the commit unsubscribes them,
    # then deletes the topic.
    # A subscription row deleted alone is unsubscribed.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM topic WHERE name IN ('made', 'renamed')")
    assert rows(conn, "SELECT count(*) FROM subscription") == [(1,)]
    conn.execute("DELETE FROM subscription WHERE endpoint = %s", (outbox,))
    preview = rows(conn, "SELECT action, table_name FROM iasql_preview()")
    assert sorted(preview) == [
        ("delete", "subscription"),
        ("delete", "subscription"),
        ("delete", "topic"),
        ("delete", "topic"),
    ]
    conn.execute("SELECT * FROM iasql_commit()")
    assert sorted(topics(sns)) == ["imported", "imported.fifo"]
    assert subscriptions(sns) == set()
    clean(conn)
