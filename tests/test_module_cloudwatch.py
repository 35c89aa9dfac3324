"""aws_cloudwatch.metric_alarm: alarms made with boto3 found at install and by iasql_sync(),
then created, updated in place (PutMetricAlarm), renamed (a new alarm), deleted and rolled
back through begin / preview / commit. Every cloud effect is read back with boto3, and after
every commit nothing is left to preview and nothing drifts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from psycopg.types.json import Json

from iasql.sandbox import MotoServer
from modules.aws_cloudwatch import MODULE
from modules.aws_cloudwatch.alarm import (
    COMPARISON_OPERATORS,
    METRIC_ALARM,
    UNITS,
    MetricAlarmMapper,
    canonical_metrics,
    canonical_set,
)
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

QUEUE_DIMENSION = [{"Name": "QueueName", "Value": "jobs"}]
TOPIC = f"arn:aws:sns:{REGION}:123456789012:alerts"
OTHER_TOPIC = f"arn:aws:sns:{REGION}:123456789012:pager"

# IaSQL's documented example, unchanged.
IASQL_INSERT = """INSERT INTO metric_alarm (alarm_name, alarm_description, actions_enabled, \
comparison_operator, datapoints_to_alarm, dimensions, metric_name, namespace, period, statistic, \
threshold, evaluation_periods)
VALUES ('alarm_name', 'Metric alarm description', true, 'GreaterThanThreshold', 1, \
'[{"Name": "InstanceId", "Value": "test"}]', 'CPUUtilization', 'AWS/EC2', 60, 'Average', 10, 1);"""

# A metric-math alarm.
MATH_METRICS = [
    {"Id": "e1", "Expression": "m1 * 2", "Label": "doubled", "ReturnData": True},
    {
        "Id": "m1",
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SQS",
                "MetricName": "NumberOfMessagesSent",
                "Dimensions": QUEUE_DIMENSION,
            },
            "Period": 60,
            "Stat": "Sum",
        },
        "ReturnData": False,
    },
]


def cloudwatch_client(moto: MotoServer) -> Any:
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto.endpoint)


def alarms(cloudwatch: Any) -> dict[str, dict[str, Any]]:
    return {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}


def clean(conn: psycopg.Connection) -> None:
    """Nothing left to commit, and the rows are what the cloud has."""
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM iasql_drift()") == [(0,)]


# --- the table and its canonical forms, without a cloud --------------------------------------


def test_table_is_iasqls() -> None:
    names = [c.name for c in METRIC_ALARM.columns]
    assert names == [
        "id",
        "alarm_name",
        "alarm_arn",
        "alarm_description",
        "actions_enabled",
        "alarm_actions",
        "comparison_operator",
        "datapoints_to_alarm",
        "dimensions",
        "evaluate_low_sample_count_percentile",
        "evaluation_periods",
        "extended_statistic",
        "insufficient_data_actions",
        "metric_name",
        "metrics",
        "namespace",
        "ok_actions",
        "period",
        "statistic",
        "threshold",
        "threshold_metric_id",
        "treat_missing_data",
        "unit",
        "region",
    ]
    assert [t.name for t in MODULE.tables] == ["log_group", "metric_alarm"]
    assert len(COMPARISON_OPERATORS) == 7 and len(UNITS) == 27
    assert METRIC_ALARM.column("alarm_name").replaces
    assert METRIC_ALARM.column("alarm_arn").cloud_assigned


def test_canonical_forms() -> None:
    # Action and dimension lists are sets; AWS reports none as [].
    assert canonical_set([]) is None
    assert canonical_set([TOPIC, OTHER_TOPIC, TOPIC]) == canonical_set([OTHER_TOPIC, TOPIC])
    assert canonical_set(f'["{TOPIC}"]') == [TOPIC]
    two = [{"Name": "B", "Value": "2"}, {"Name": "A", "Value": "1"}]
    assert canonical_set(two) == canonical_set(list(reversed(two)))
    # Metric queries keep their order; a key without a value is no key.
    assert canonical_metrics([]) is None
    assert canonical_metrics([{"Id": "m1", "Label": None}]) == [{"Id": "m1"}]
    assert canonical_metrics(MATH_METRICS) != canonical_metrics(list(reversed(MATH_METRICS)))


# --- the module against moto, through SQL ----------------------------------------------------


@pytest.fixture
def cloudwatch_env(
    envdb: psycopg.Connection, moto_accounts: Callable[[], MotoServer]
) -> tuple[psycopg.Connection, Any, MotoServer]:
    """An environment on its own moto account, with one alarm made before install."""
    moto = moto_accounts()
    cloudwatch = cloudwatch_client(moto)
    cloudwatch.put_metric_alarm(
        AlarmName="queue-depth",
        AlarmDescription="too many messages",
        Namespace="AWS/SQS",
        MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=QUEUE_DIMENSION,
        Statistic="Average",
        Period=300,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=100.0,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
        Unit="Count",
        AlarmActions=[TOPIC],
    )
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    installed = rows(envdb, "SELECT * FROM iasql_install('aws_cloudwatch')")
    assert ("aws_cloudwatch", "metric_alarm", 1) in installed
    only_one_region(envdb)
    return envdb, cloudwatch, moto


def test_metric_alarms_through_sql(cloudwatch_env: Any) -> None:
    conn, cloudwatch, moto = cloudwatch_env

    # 1. Import: the alarm made before install is a row, as the cloud has it.
    imported = rows(
        conn,
        "SELECT alarm_name, alarm_arn, alarm_description, actions_enabled, alarm_actions,"
        " comparison_operator, datapoints_to_alarm, dimensions, evaluation_periods, metric_name,"
        " namespace, period, statistic, threshold, treat_missing_data, unit, region"
        " FROM metric_alarm",
    )
    arn = alarms(cloudwatch)["queue-depth"]["AlarmArn"]
    assert imported == [
        (
            "queue-depth",
            arn,
            "too many messages",
            True,
            [TOPIC],
            "GreaterThanThreshold",
            2,
            QUEUE_DIMENSION,
            2,
            "ApproximateNumberOfMessagesVisible",
            "AWS/SQS",
            300,
            "Average",
            100.0,
            "notBreaching",
            "Count",
            REGION,
        )
    ]
    clean(conn)

    # A second one, made after install, comes in with iasql_sync().
    cloudwatch.put_metric_alarm(
        AlarmName="old-name",
        Namespace="AWS/EC2",
        MetricName="CPUUtilization",
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=90.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(
        conn, "SELECT threshold, ok_actions FROM metric_alarm WHERE alarm_name = 'old-name'"
    ) == [(90.0, [])]
    clean(conn)

    # 2-4. One commit: a create (a metric-math alarm, as IaSQL's SQL writes it), an update in
    # place and a rename (a new alarm; the old one goes).
    conn.execute("SELECT * FROM iasql_begin()")
    # An enum's values are IaSQL's.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO metric_alarm (alarm_name, comparison_operator) VALUES ('bad', 'Above')"
        )
    conn.execute(
        "INSERT INTO metric_alarm (alarm_name, alarm_description, actions_enabled, metrics,"
        " evaluation_periods, threshold, comparison_operator, treat_missing_data,"
        " insufficient_data_actions)"
        " VALUES ('math', 'doubled sends', false, %s::json, 3, 10,"
        " 'LessThanThreshold', 'breaching', %s::json)",
        (Json(MATH_METRICS), Json([OTHER_TOPIC])),
    )
    conn.execute(
        "UPDATE metric_alarm SET threshold = 250, alarm_description = 'far too many',"
        " alarm_actions = %s, ok_actions = %s, treat_missing_data = 'ignore', unit = NULL"
        " WHERE alarm_name = 'queue-depth'",
        (Json([OTHER_TOPIC, TOPIC]), Json([TOPIC])),
    )
    conn.execute("UPDATE metric_alarm SET alarm_name = 'new-name' WHERE alarm_name = 'old-name'")
    conn.execute(IASQL_INSERT)
    preview = rows(conn, "SELECT action, table_name, changes FROM iasql_preview()")
    assert {t for _a, t, _c in preview} == {"metric_alarm"}
    [create] = [c for a, _t, c in preview if a == "create" and c["alarm_name"]["new"] == "math"]
    assert create["metrics"] == {"old": None, "new": MATH_METRICS}
    [update] = [c for a, _t, c in preview if a == "update"]
    assert update == {
        "threshold": {"old": 100.0, "new": 250.0},
        "alarm_description": {"old": "too many messages", "new": "far too many"},
        "alarm_actions": {"old": [TOPIC], "new": [OTHER_TOPIC, TOPIC]},
        "ok_actions": {"old": [], "new": [TOPIC]},
        "treat_missing_data": {"old": "notBreaching", "new": "ignore"},
        "unit": {"old": "Count", "new": None},
    }
    actions = sorted(a for a, _t, c in preview)
    assert actions == ["create", "create", "create", "delete", "update"]
    renamed = [c for a, _t, c in preview if a == "create" and c["alarm_name"]["new"] == "new-name"]
    assert renamed and renamed[0]["threshold"] == {"old": None, "new": 90.0}
    conn.execute("SELECT * FROM iasql_commit()")

    cloud = alarms(cloudwatch)
    assert sorted(cloud) == ["alarm_name", "math", "new-name", "queue-depth"]
    assert cloud["alarm_name"]["Dimensions"] == [{"Name": "InstanceId", "Value": "test"}]
    assert cloud["alarm_name"]["Statistic"] == "Average"
    depth = cloud["queue-depth"]
    assert depth["AlarmArn"] == arn  # the same alarm, changed in place
    assert depth["Threshold"] == 250.0 and depth["AlarmDescription"] == "far too many"
    assert sorted(depth["AlarmActions"]) == sorted([OTHER_TOPIC, TOPIC])
    assert depth["OKActions"] == [TOPIC] and depth["TreatMissingData"] == "ignore"
    assert "Unit" not in depth
    assert depth["Dimensions"] == QUEUE_DIMENSION  # kept: the update sends every column
    math = cloud["math"]
    assert math["ActionsEnabled"] is False and math["ComparisonOperator"] == "LessThanThreshold"
    assert [m["Id"] for m in math["Metrics"]] == ["e1", "m1"]
    assert math["Metrics"][1]["MetricStat"]["Metric"]["Dimensions"] == QUEUE_DIMENSION
    assert math["InsufficientDataActions"] == [OTHER_TOPIC]
    assert cloud["new-name"]["Threshold"] == 90.0
    # The arns came back into the rows.
    assert dict(rows(conn, "SELECT alarm_name, alarm_arn FROM metric_alarm")) == {
        name: alarm["AlarmArn"] for name, alarm in cloud.items()
    }
    clean(conn)

    # The SQL that replays it names alarms by name and region, never by arn.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert not any("arn:aws:cloudwatch" in sql for sql in replay)
    assert any(sql.startswith('INSERT INTO "metric_alarm"') and "'math'" in sql for sql in replay)
    assert any("'new-name'" in sql and "'old-name'" in sql for sql in replay)

    # A rollback discards the changes of an open transaction; the cloud is untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE metric_alarm SET threshold = 1 WHERE alarm_name = 'math'")
    conn.execute("DELETE FROM metric_alarm WHERE alarm_name = 'new-name'")
    assert rows(conn, "SELECT count(*) FROM iasql_preview()") == [(2,)]
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT threshold FROM metric_alarm WHERE alarm_name = 'math'") == [(10.0,)]
    assert rows(conn, "SELECT count(*) FROM metric_alarm") == [(4,)]
    assert sorted(alarms(cloudwatch)) == ["alarm_name", "math", "new-name", "queue-depth"]
    clean(conn)

    # 5. Delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM metric_alarm WHERE alarm_name IN ('math', 'new-name')")
    conn.execute("DELETE FROM metric_alarm WHERE alarm_name='alarm_name';")
    preview = rows(conn, "SELECT action, changes FROM iasql_preview()")
    assert sorted(a for a, _c in preview) == ["delete", "delete", "delete"]
    assert {c["alarm_name"]["old"] for _a, c in preview} == {"alarm_name", "math", "new-name"}
    conn.execute("SELECT * FROM iasql_commit()")
    assert sorted(alarms(cloudwatch)) == ["queue-depth"]
    clean(conn)

    # The mapper's retried steps: a create that had happened, a delete of what is gone.
    record = {
        "alarm_name": "queue-depth",
        "region": REGION,
        **{c.name: None for c in METRIC_ALARM.columns if c.name not in ("alarm_name", "region")},
        "actions_enabled": True,
        "namespace": "AWS/SQS",
        "metric_name": "ApproximateNumberOfMessagesVisible",
        "statistic": "Average",
        "period": 300,
        "evaluation_periods": 2,
        "threshold": 250.0,
        "comparison_operator": "GreaterThanThreshold",
    }

    async def retried(cloud: Any) -> None:
        mapper = MetricAlarmMapper()
        await mapper.delete(cloud, {"alarm_name": "never-made", "region": REGION})
        await mapper.create(cloud, record)
        await mapper.create(cloud, record)
        [read] = await mapper.read_some(cloud, REGION, [record])
        assert read["alarm_arn"] == arn and read["threshold"] == 250.0

    in_cloud(moto, retried)
    assert sorted(alarms(cloudwatch)) == ["queue-depth"]
