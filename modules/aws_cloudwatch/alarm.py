"""aws_cloudwatch.metric_alarm: CloudWatch metric alarms.

An alarm is named by the user (its name and region are its cloud id), and PutMetricAlarm both
creates it and overwrites its whole configuration: an update sends every column again, and a
setting left NULL goes back to AWS's default. A new name is a new alarm (the old one is
deleted)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from modules._aws.attributes import AttributeMap
from modules._aws.checks import one_of
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.spec import Cloud, Column, Record, Table

# IaSQL's value lists (src/modules/aws_cloudwatch/entity/metric_alarm.ts).
COMPARISON_OPERATORS = (
    "GreaterThanOrEqualToThreshold",
    "GreaterThanThreshold",
    "GreaterThanUpperThreshold",
    "LessThanLowerOrGreaterThanUpperThreshold",
    "LessThanLowerThreshold",
    "LessThanOrEqualToThreshold",
    "LessThanThreshold",
)
LOW_SAMPLE_COUNT_PERCENTILES = ("evaluate", "ignore")
STATISTICS = ("Average", "Maximum", "Minimum", "SampleCount", "Sum")
TREAT_MISSING_DATA = ("breaching", "notBreaching", "ignore", "missing")
UNITS = (
    "Bits",
    "Bits/Second",
    "Bytes",
    "Bytes/Second",
    "Count",
    "Count/Second",
    "Gigabits",
    "Gigabits/Second",
    "Gigabytes",
    "Gigabytes/Second",
    "Kilobits",
    "Kilobits/Second",
    "Kilobytes",
    "Kilobytes/Second",
    "Megabits",
    "Megabits/Second",
    "Megabytes",
    "Megabytes/Second",
    "Microseconds",
    "Milliseconds",
    "None",
    "Percent",
    "Seconds",
    "Terabits",
    "Terabits/Second",
    "Terabytes",
    "Terabytes/Second",
)

# The columns as DescribeAlarms reports them and PutMetricAlarm takes them.
_FIELDS = AttributeMap(
    "alarm_name",
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
    named={"ok_actions": "OKActions"},
)

NAMES_PER_CALL = 100  # DescribeAlarms takes at most 100 AlarmNames


def _loaded(value: Any) -> Any:
    """JSON text as Python data; anything else (or text that is no JSON) as it is."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def canonical_set(value: Any) -> Any:
    """An action list or dimension list: AWS keeps it as a set, and reports none as []. Order
    and duplicates don't count, and an empty list is NULL."""
    value = _without_nulls(_loaded(value))
    if not isinstance(value, list):
        return value
    unique = {_sort_key(v): v for v in value}
    return [unique[k] for k in sorted(unique)] or None


def canonical_metrics(value: Any) -> Any:
    """Metric-math queries in order (the order is the user's), keys without a value left
    out, and an empty list as NULL."""
    value = _without_nulls(_loaded(value))
    if isinstance(value, list) and not value:
        return None
    return value


def _record(alarm: dict[str, Any]) -> Record:
    record = _FIELDS.record(alarm)
    record["alarm_arn"] = alarm.get("AlarmArn")
    if record["actions_enabled"] is None:
        record["actions_enabled"] = True
    return record


def _put_arguments(record: Record) -> dict[str, Any]:
    """PutMetricAlarm's arguments: every column that holds a value (it replaces the whole
    configuration, so the others go back to AWS's defaults)."""
    arguments = _FIELDS.attributes(record)
    for name in ("AlarmActions", "OKActions", "InsufficientDataActions", "Dimensions", "Metrics"):
        if name in arguments:
            arguments[name] = _loaded(arguments[name])
    arguments.setdefault("ActionsEnabled", True)
    return arguments


class MetricAlarmMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        records = []
        async with cloud.client("cloudwatch", region) as cloudwatch:
            pages = cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"])
            async for page in pages:
                records += [_record(a) for a in page.get("MetricAlarms", [])]
        return records

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]:
        """The alarms named in `wanted`, a hundred names a call, the calls at once."""
        names = sorted({w["alarm_name"] for w in wanted})
        chunks = [names[i : i + NAMES_PER_CALL] for i in range(0, len(names), NAMES_PER_CALL)]

        async def read_chunk(chunk: list[str]) -> list[Record]:
            found = []
            async with cloud.client("cloudwatch", region) as cloudwatch:
                pages = cloudwatch.get_paginator("describe_alarms").paginate(
                    AlarmNames=chunk, AlarmTypes=["MetricAlarm"]
                )
                async for page in pages:
                    found += [_record(a) for a in page.get("MetricAlarms", [])]
            return found

        reads = await gather_bounded((read_chunk(c) for c in chunks), 8)
        keep = set(names)
        return [r for found in reads for r in found if r["alarm_name"] in keep]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        # PutMetricAlarm overwrites an alarm already there (a retried create): idempotent.
        async with cloud.client("cloudwatch", record["region"]) as cloudwatch:
            await cloudwatch.put_metric_alarm(**_put_arguments(record))
        # The name is the cloud id; the arn comes with the read-back that ends every commit
        # (read_some).
        return {"alarm_name": record["alarm_name"], "region": record["region"]}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        async with cloud.client("cloudwatch", record["region"]) as cloudwatch:
            await cloudwatch.put_metric_alarm(**_put_arguments(record))
        return {"alarm_name": record["alarm_name"], "region": record["region"]}

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("cloudwatch", current["region"]) as cloudwatch:
            # Already gone: AWS answers ResourceNotFound.
            with contextlib.suppress(cloudwatch.exceptions.ResourceNotFound):
                await cloudwatch.delete_alarms(AlarmNames=[current["alarm_name"]])


METRIC_ALARM = Table(
    name="metric_alarm",
    columns=(
        Column("alarm_name", "varchar", nullable=False, replaces=True),
        Column("alarm_arn", "varchar", cloud_assigned=True),
        Column("alarm_description", "varchar"),
        Column("actions_enabled", "boolean", nullable=False, default="true"),
        Column("alarm_actions", "json", normalize=canonical_set),
        Column(
            "comparison_operator",
            "varchar",
            check=one_of("comparison_operator", COMPARISON_OPERATORS),
        ),
        Column("datapoints_to_alarm", "integer"),
        Column("dimensions", "json", normalize=canonical_set),
        Column(
            "evaluate_low_sample_count_percentile",
            "varchar",
            check=one_of("evaluate_low_sample_count_percentile", LOW_SAMPLE_COUNT_PERCENTILES),
        ),
        Column("evaluation_periods", "integer"),
        Column("extended_statistic", "varchar"),
        Column("insufficient_data_actions", "json", normalize=canonical_set),
        Column("metric_name", "varchar"),
        Column("metrics", "json", normalize=canonical_metrics),
        Column("namespace", "varchar"),
        Column("ok_actions", "json", normalize=canonical_set),
        Column("period", "integer"),
        Column("statistic", "varchar", check=one_of("statistic", STATISTICS)),
        Column("threshold", "double precision"),
        Column("threshold_metric_id", "varchar"),
        Column(
            "treat_missing_data", "varchar", check=one_of("treat_missing_data", TREAT_MISSING_DATA)
        ),
        Column("unit", "varchar", check=one_of("unit", UNITS)),
        region_column(),
    ),
    mapper=MetricAlarmMapper(),
    natural_key=("alarm_name", "region"),
    cloud_id=("alarm_name", "region"),
)
