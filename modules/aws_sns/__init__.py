"""aws_sns: SNS topics and their subscriptions.

A topic is named by its name and region (its ARN follows from them). Its attributes change
in place with SetTopicAttributes, its data protection policy with PutDataProtectionPolicy;
a new name (or FIFO flag) is a new topic. AWS deletes a topic's subscriptions with it, so a
user's DELETE or rename of a topic row deletes the rows of its subscriptions too (as IaSQL's
ON DELETE CASCADE did), and the commit unsubscribes them before the topic goes.

A subscription is named by its topic, protocol, endpoint and region: nothing of it changes in
place (a new topic, protocol or endpoint is a new subscription). `topic` holds the topic's
ARN, which generated SQL writes as a sub-select of `topic` by name and region.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.policy import canonical_policy
from modules._aws.region import region_column
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import Cloud, CloudError, Column, ModuleSpec, Record, Ref, Table

# --- canonical forms: what AWS reports for an attribute never set reads as NULL ---------------


def _text(value: Any) -> str | None:
    """Text attributes (DisplayName, KmsMasterKeyId): AWS reports "" for none."""
    if value is None or value == "":
        return None
    return str(value)


def _json_text(value: Any) -> str | None:
    """A JSON document (a delivery policy, a data protection policy) as compact, key-sorted
    JSON; "" is none; text that is no JSON is compared as written."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _tracing_config(value: Any) -> str | None:
    """PassThrough is AWS's default tracing mode."""
    text = _text(value)
    return None if text == "PassThrough" else text


def _signature_version(value: Any) -> str | None:
    """Version 1 is AWS's default (SNS leaves the attribute out then)."""
    text = _text(value)
    return None if text == "1" else text


def _boolean_text(value: Any) -> str | None:
    """ContentBasedDeduplication: "true", or none ("false" is the default)."""
    text = _text(value)
    if text is None:
        return None
    return None if text.lower() == "false" else text.lower()


def _policy(value: Any) -> str | None:
    return canonical_policy(_text(value))


# The topic's columns that are SetTopicAttributes attributes: (column, attribute, the form
# compared, the value that puts AWS's default back when the column is NULL).
_ATTRIBUTES: tuple[tuple[str, str, Callable[[Any], Any], str | None], ...] = (
    ("delivery_policy", "DeliveryPolicy", _json_text, ""),
    ("display_name", "DisplayName", _text, ""),
    ("policy", "Policy", _policy, None),  # None: the topic's default policy
    ("tracing_config", "TracingConfig", _tracing_config, "PassThrough"),
    ("kms_master_key_id", "KmsMasterKeyId", _text, ""),
    ("signature_version", "SignatureVersion", _signature_version, "1"),
    ("content_based_deduplication", "ContentBasedDeduplication", _boolean_text, "false"),
)

_DEFAULT_ACTIONS = (
    "SNS:GetTopicAttributes",
    "SNS:SetTopicAttributes",
    "SNS:AddPermission",
    "SNS:RemovePermission",
    "SNS:DeleteTopic",
    "SNS:Subscribe",
    "SNS:ListSubscriptionsByTopic",
    "SNS:Publish",
)


def default_policy(arn: str) -> dict[str, Any]:
    """The access policy AWS gives a topic made without one: its owner's account may do
    everything to it."""
    owner = arn.split(":")[4]
    return {
        "Version": "2008-10-17",
        "Id": "__default_policy_ID",
        "Statement": [
            {
                "Sid": "__default_statement_ID",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": list(_DEFAULT_ACTIONS),
                "Resource": arn,
                "Condition": {"StringEquals": {"AWS:SourceOwner": owner}},
            }
        ],
    }


def _topic_record(arn: str, region: str, attributes: dict[str, Any], protection: Any) -> Record:
    policy = _text(attributes.get("Policy"))
    if policy is not None and canonical_policy(policy) == canonical_policy(default_policy(arn)):
        policy = None  # the default policy reads as none, as the row that asked for none
    return {
        "name": arn.rsplit(":", 1)[-1],
        "arn": arn,
        "region": region,
        "fifo_topic": str(attributes.get("FifoTopic", "")).lower() == "true",
        "delivery_policy": _text(attributes.get("DeliveryPolicy")),
        "display_name": _text(attributes.get("DisplayName")),
        "policy": policy,
        "tracing_config": _text(attributes.get("TracingConfig")),
        "kms_master_key_id": _text(attributes.get("KmsMasterKeyId")),
        "signature_version": _text(attributes.get("SignatureVersion")),
        "content_based_deduplication": _boolean_text(attributes.get("ContentBasedDeduplication")),
        "data_protection_policy": json.loads(protection) if protection else None,
    }


def _document_text(value: Any) -> str:
    """A JSON column's value as the API takes it: text as written, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# Endpoints that answered GetDataProtectionPolicy with a bare HTTP 5xx (no AWS error body):
# they don't implement it (moto answers 500 NotImplementedError), so it is not asked again.
_NO_DATA_PROTECTION: set[str] = set()


def _not_implemented(error: ClientError) -> bool:
    """A 5xx without an AWS error of its own: the code botocore gives is the bare status.
    AWS's own failures (InternalError, ServiceUnavailable) name themselves and are raised."""
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return status >= 500 and error_code(error) in (str(status), "", "NotImplemented")


class TopicMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("sns", region) as sns:
            pages = sns.get_paginator("list_topics").paginate()
            arns = [t["TopicArn"] async for page in pages for t in page.get("Topics", [])]
            found = await gather_bounded(self._read_one(sns, arn, region) for arn in arns)
            return [r for r in found if r is not None]

    async def _read_one(self, sns: Any, arn: str, region: str) -> Record | None:
        try:
            answer = await sns.get_topic_attributes(TopicArn=arn)
        except ClientError as error:
            if error_code(error) == "NotFound":  # deleted since the listing
                return None
            raise
        attributes = answer.get("Attributes", {})
        fifo = str(attributes.get("FifoTopic", "")).lower() == "true"
        # Message data protection is for standard topics only.
        protection = None if fifo else await self._data_protection(sns, arn)
        return _topic_record(arn, region, attributes, protection)

    async def _data_protection(self, sns: Any, arn: str) -> str | None:
        endpoint = str(sns.meta.endpoint_url)
        if endpoint in _NO_DATA_PROTECTION:
            return None
        try:
            answer = await sns.get_data_protection_policy(ResourceArn=arn)
        except ClientError as error:
            if error_code(error) == "NotFound":
                return None
            if _not_implemented(error):
                _NO_DATA_PROTECTION.add(endpoint)
                return None
            raise
        return answer.get("DataProtectionPolicy") or None

    async def _read_arn(self, sns: Any, arn: str, region: str) -> Record:
        record = await self._read_one(sns, arn, region)
        if record is None:
            raise CloudError(f"topic {arn} is gone")
        return record

    async def create(self, cloud: Cloud, record: Record) -> Record:
        attributes = {
            attribute: str(record[column])
            for column, attribute, _, _ in _ATTRIBUTES
            if record.get(column) is not None
        }
        if record.get("fifo_topic"):
            attributes["FifoTopic"] = "true"
        extra: dict[str, Any] = {}
        if record.get("data_protection_policy") is not None:
            extra["DataProtectionPolicy"] = _document_text(record["data_protection_policy"])
        async with cloud.client("sns", record["region"]) as sns:
            # CreateTopic is idempotent: a retried create gets the topic back.
            answer = await sns.create_topic(Name=record["name"], Attributes=attributes, **extra)
            return await self._read_arn(sns, answer["TopicArn"], record["region"])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        arn = current["arn"]
        async with cloud.client("sns", current["region"]) as sns:
            for column, attribute, canonical, reset in _ATTRIBUTES:
                wanted = record.get(column)
                if canonical(wanted) == canonical(current.get(column)):
                    continue
                if wanted is not None:
                    value = str(wanted)
                elif reset is not None:
                    value = reset
                else:  # no policy: the one AWS gives a new topic
                    value = json.dumps(default_policy(arn))
                await sns.set_topic_attributes(
                    TopicArn=arn, AttributeName=attribute, AttributeValue=value
                )
            wanted_protection = record.get("data_protection_policy")
            if _json_text(wanted_protection) != _json_text(current.get("data_protection_policy")):
                text = "" if wanted_protection is None else _document_text(wanted_protection)
                await sns.put_data_protection_policy(ResourceArn=arn, DataProtectionPolicy=text)
            return await self._read_arn(sns, arn, current["region"])

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("sns", current["region"]) as sns:
            with ignoring("NotFound"):
                await sns.delete_topic(TopicArn=current["arn"])


# The value SNS lists for a subscription that waits for its endpoint's confirmation.
PENDING = "PendingConfirmation"


def _subscription_record(answer: dict[str, Any], region: str) -> Record:
    return {
        "arn": answer.get("SubscriptionArn"),
        "topic": answer.get("TopicArn"),
        "protocol": answer.get("Protocol"),
        "endpoint": answer.get("Endpoint"),
        "region": region,
    }


class SubscriptionMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("sns", region) as sns:
            pages = sns.get_paginator("list_subscriptions").paginate()
            return [
                _subscription_record(s, region)
                async for page in pages
                for s in page.get("Subscriptions", [])
                if s.get("TopicArn") and s.get("Protocol") and s.get("Endpoint")
            ]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        if not record.get("topic"):
            raise CloudError("a subscription needs its topic's ARN (topic is NULL)")
        async with cloud.client("sns", record["region"]) as sns:
            # Subscribing again to the same topic, protocol and endpoint gives the same one.
            answer = await sns.subscribe(
                TopicArn=record["topic"],
                Protocol=record["protocol"],
                Endpoint=record["endpoint"],
                ReturnSubscriptionArn=True,
            )
            return {"arn": answer["SubscriptionArn"]}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # Every column a user sets names the subscription: a change is a new one.
        return dict(current)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        arn = current.get("arn")
        if not arn or not str(arn).startswith("arn:"):
            raise CloudError(
                f"the {current.get('protocol')} subscription of {current.get('endpoint')} is"
                " pending confirmation and has no ARN to unsubscribe: confirm it, or AWS deletes"
                " it after 3 days"
            )
        async with cloud.client("sns", current["region"]) as sns:
            with ignoring("NotFound"):
                await sns.unsubscribe(SubscriptionArn=arn)


TOPIC = Table(
    name="topic",
    columns=(
        Column("name", "varchar", nullable=False, replaces=True),
        Column("delivery_policy", "varchar", normalize=_json_text),
        Column("display_name", "varchar", normalize=_text),
        Column("policy", "varchar", normalize=_policy),
        Column("tracing_config", "varchar", normalize=_tracing_config),
        Column("kms_master_key_id", "varchar", normalize=_text),
        Column("signature_version", "varchar", normalize=_signature_version),
        Column("content_based_deduplication", "varchar", normalize=_boolean_text),
        Column("fifo_topic", "boolean", nullable=False, default="false", replaces=True),
        Column("data_protection_policy", "json", normalize=_json_text),
        Column("arn", "varchar", cloud_assigned=True),
        region_column(),
    ),
    mapper=TopicMapper(),
    natural_key=("name", "region"),
    cloud_id=("name", "region"),
    unique=(("name", "region"), ("arn",)),
)

SUBSCRIPTION = Table(
    name="subscription",
    columns=(
        Column("endpoint", "varchar", nullable=False, replaces=True),
        region_column(),
        Column("protocol", "varchar", nullable=False, replaces=True),
        Column("arn", "varchar", cloud_assigned=True),
        Column("topic", "varchar", cloud_ref=Ref("topic", key="arn"), replaces=True),
    ),
    mapper=SubscriptionMapper(),
    natural_key=("topic", "protocol", "endpoint", "region"),
    cloud_id=("topic", "protocol", "endpoint", "region"),
)

# AWS deletes a topic's subscriptions with it: a user's DELETE of a topic row, or a change
# that makes it a new topic, deletes the rows of its subscriptions (the commit unsubscribes
# them first). The engine's own writes (sync, undo) own the table and are left alone.
SUBSCRIPTIONS_GO_WITH_TOPIC = (
    """CREATE OR REPLACE FUNCTION topic_subscriptions_go() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN COALESCE(NEW, OLD);
        END IF;
        IF OLD.arn IS NOT NULL AND (TG_OP = 'DELETE'
                OR (OLD.name, OLD.region, OLD.fifo_topic)
                    IS DISTINCT FROM (NEW.name, NEW.region, NEW.fifo_topic)) THEN
            DELETE FROM subscription WHERE topic = OLD.arn;
        END IF;
        RETURN COALESCE(NEW, OLD);
    END $$""",
    """CREATE TRIGGER topic_subscriptions_go BEFORE UPDATE OR DELETE ON topic
        FOR EACH ROW EXECUTE FUNCTION topic_subscriptions_go()""",
)

MODULE = ModuleSpec(
    name="aws_sns",
    version=VERSION,
    dependencies=("aws_account",),
    description="SNS topics and subscriptions",
    tables=(TOPIC, SUBSCRIPTION),
    after_tables_sql=SUBSCRIPTIONS_GO_WITH_TOPIC,
    teardown_sql=("DROP FUNCTION IF EXISTS topic_subscriptions_go()",),
)
