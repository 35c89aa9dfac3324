"""instance and instance_security_groups."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from botocore.exceptions import ClientError

from modules._aws.region import region_column
from modules._aws.tags import sync_tags, tag_dict, tags_as_text, token_tag, with_token
from modules._aws.waiters import wait_for
from modules.aws_ec2.common import (
    AMI_TAG,
    INSTANCE_LOCKS,
    LAUNCH_GROUPS_TAG,
    commit_of,
    instance_groups,
    live_instances,
    normalize_instance_tags,
    region_of,
    specification,
)
from modules.errors import ignoring
from modules.spec import (
    TOKEN,
    TOKEN_TAG,
    Cloud,
    CloudError,
    Column,
    Record,
    Ref,
    Table,
    foreign_key,
)

SSM_PREFIX = "resolve:ssm:"


def stopped(state: Any) -> bool:
    """`hibernate` is a request, as in IaSQL: stop with hibernation. The instance is then
    stopped, and its row reads back `stopped` (AWS reports a hibernated instance as stopped)."""
    return state in ("stopped", "hibernate")


def _state(instance: dict[str, Any]) -> str:
    name = instance["State"]["Name"]
    return "running" if name in ("pending", "running") else "stopped"  # stopping or stopped


def _decoded(user_data: str | None) -> str | None:
    return base64.b64decode(user_data).decode() if user_data else None


def _profile_name(instance: dict[str, Any]) -> str | None:
    arn = instance.get("IamInstanceProfile", {}).get("Arn")
    return arn.rsplit("/", 1)[-1] if arn else None


async def _role_of(iam: Any, profile: str, roles: dict[str, str | None]) -> str | None:
    """The role in an instance profile: iasql names the profile after its role, but a profile
    made elsewhere may be named otherwise."""
    if profile not in roles:
        try:
            answer = await iam.get_instance_profile(InstanceProfileName=profile)
            found = answer["InstanceProfile"].get("Roles") or [{}]
            roles[profile] = found[0].get("RoleName")
        except ClientError:
            roles[profile] = profile
    return roles[profile]


async def _records(
    cloud: Cloud, ec2: Any, instances: list[dict[str, Any]], region: str
) -> list[Record]:
    async def user_data(instance_id: str) -> str | None:
        answer = await ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return _decoded(answer.get("UserData", {}).get("Value"))

    texts = await asyncio.gather(*(user_data(i["InstanceId"]) for i in instances))
    roles: dict[str, str | None] = {}
    records = []
    async with cloud.client("iam", None) as iam:
        for instance, text in zip(instances, texts, strict=True):
            profile = _profile_name(instance)
            tags = tag_dict(instance.get("Tags"))
            record = {
                "instance_id": instance["InstanceId"],
                "ami": tags.get(AMI_TAG, instance["ImageId"]),
                "instance_type": instance["InstanceType"],
                "key_pair_name": instance.get("KeyName"),
                "state": _state(instance),
                "user_data": text,
                "tags": normalize_instance_tags(tags),
                "hibernation_enabled": bool(
                    instance.get("HibernationOptions", {}).get("Configured")
                ),
                "region": region,
                "role_name": await _role_of(iam, profile, roles) if profile else None,
                "subnet_id": instance.get("SubnetId"),
            }
            records.append(with_token(record, instance.get("Tags")))
    return records


async def resolve_ami(cloud: Cloud, region: str, ami: str) -> str:
    """An AMI id, or the value of the SSM parameter `resolve:ssm:<name>` names (AWS's own
    syntax; moto's run_instances does not know it, so it is resolved here everywhere)."""
    if not ami.startswith(SSM_PREFIX):
        return ami
    async with cloud.client("ssm", region) as ssm:
        answer = await ssm.get_parameter(Name=ami[len(SSM_PREFIX) :])
    return str(answer["Parameter"]["Value"])


async def _run(ec2: Any, params: dict[str, Any]) -> str:
    """run_instances, retried while a just-made instance profile is not visible to EC2 yet
    (IAM is eventually consistent: AWS says the profile name is invalid for a few seconds)."""
    for attempt in range(8):
        try:
            answer = await ec2.run_instances(**params)
            return str(answer["Instances"][0]["InstanceId"])
        except ClientError as error:
            message = str(error.response.get("Error", {}).get("Message", ""))
            if "iamInstanceProfile" not in message or attempt == 7:
                raise
            await asyncio.sleep(2 + attempt * 2)
    raise AssertionError("unreachable")


class InstanceMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        assert region is not None
        async with cloud.client("ec2", region) as ec2:
            return await _records(cloud, ec2, await live_instances(ec2), region)

    async def _read_one(self, cloud: Cloud, ec2: Any, instance_id: str, region: str) -> Record:
        found = await live_instances(ec2, InstanceIds=[instance_id])
        if not found:
            raise CloudError(f"instance {instance_id} is gone")
        return (await _records(cloud, ec2, found, region))[0]

    def _launch_params(self, record: Record, image_id: str) -> dict[str, Any]:
        markers = token_tag(record.get(TOKEN))
        if record["ami"] != image_id:
            markers[AMI_TAG] = record["ami"]  # read back as written, not as resolved
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": record["instance_type"],
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": specification("instance", record.get("tags"), markers),
        }
        optional = {
            "UserData": record.get("user_data"),
            "KeyName": record.get("key_pair_name"),
            "SubnetId": record.get("subnet_id"),
            "IamInstanceProfile": {"Name": record["role_name"]}
            if record.get("role_name")
            else None,
            "HibernationOptions": {"Configured": True}
            if record.get("hibernation_enabled")
            else None,
        }
        return params | {k: v for k, v in optional.items() if v is not None}

    async def create(self, cloud: Cloud, record: Record) -> Record:
        region = record["region"]
        image_id = await resolve_ami(cloud, region, record["ami"])
        async with cloud.client("ec2", region) as ec2:
            instance_id = await _run(ec2, self._launch_params(record, image_id))
            await wait_for(ec2, "instance_running", InstanceIds=[instance_id])
            await self._note_launch_groups(ec2, instance_id)
            if stopped(record.get("state")):
                await self._set_state(ec2, instance_id, record["state"])
            return await self._read_one(cloud, ec2, instance_id, region)

    async def _note_launch_groups(self, ec2: Any, instance_id: str) -> None:
        """Remembers (in a hidden tag) the groups AWS gave the instance because none were
        asked for: instance_security_groups rows of the same commit replace them."""
        [instance] = await live_instances(ec2, InstanceIds=[instance_id])
        groups = ",".join(instance_groups(instance))
        if groups:
            tags = [{"Key": LAUNCH_GROUPS_TAG, "Value": groups}]
            await ec2.create_tags(Resources=[instance_id], Tags=tags)

    async def _set_state(self, ec2: Any, instance_id: str, state: str) -> None:
        if state == "running":
            await ec2.start_instances(InstanceIds=[instance_id])
            await wait_for(ec2, "instance_running", InstanceIds=[instance_id])
        else:
            await ec2.stop_instances(InstanceIds=[instance_id], Hibernate=state == "hibernate")
            await wait_for(ec2, "instance_stopped", InstanceIds=[instance_id])

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        region, instance_id = current["region"], current["instance_id"]
        async with cloud.client("ec2", region) as ec2:
            await sync_tags(ec2, instance_id, record.get("tags"), current.get("tags"))
            # An instance stopped already can't be hibernated: it stays stopped.
            if stopped(record.get("state")) != stopped(current.get("state")):
                await self._set_state(ec2, instance_id, record["state"])
            return await self._read_one(cloud, ec2, instance_id, region)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("ec2", current["region"]) as ec2:
            with ignoring("InvalidInstanceID.NotFound"):
                await ec2.terminate_instances(InstanceIds=[current["instance_id"]])
                await wait_for(ec2, "instance_terminated", InstanceIds=[current["instance_id"]])


# The root volume of an instance goes with it (AWS deletes it at termination, and a replace
# terminates the old instance): when a user deletes an instance row, or changes a column that
# replaces the instance, its root volume's row goes too (the mapping row follows by cascade),
# so that the commit's sync sees the volume table and imports the new root volume. The
# engine's own writes (sync, undo) own the table and are left alone.
ROOT_VOLUME_TRIGGER = (
    """CREATE OR REPLACE FUNCTION instance_root_volume_goes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF session_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
        THEN
            RETURN COALESCE(NEW, OLD);
        END IF;
        IF TG_OP = 'DELETE' OR (OLD.ami, OLD.instance_type, OLD.key_pair_name, OLD.user_data,
                OLD.hibernation_enabled, OLD.region, OLD.role_name, OLD.subnet_id)
            IS DISTINCT FROM (NEW.ami, NEW.instance_type, NEW.key_pair_name, NEW.user_data,
                NEW.hibernation_enabled, NEW.region, NEW.role_name, NEW.subnet_id) THEN
            DELETE FROM general_purpose_volume v USING instance_block_device_mapping m
                WHERE m.instance_id = OLD.id AND m.volume_id = v.id AND v.is_root_device;
        END IF;
        RETURN COALESCE(NEW, OLD);
    END $$""",
    """CREATE TRIGGER instance_root_volume_goes BEFORE UPDATE OR DELETE ON instance
        FOR EACH ROW EXECUTE FUNCTION instance_root_volume_goes()""",
)


INSTANCE = Table(
    name="instance",
    extra_ddl=tags_as_text("instance"),
    columns=(
        Column("instance_id", "varchar", cloud_assigned=True),
        # An AMI id, or `resolve:ssm:<parameter>`, kept as written (see resolve_ami).
        Column("ami", "varchar", nullable=False, replaces=True),
        Column("instance_type", "varchar", nullable=False, replaces=True),
        Column("key_pair_name", "varchar", replaces=True),
        Column(
            "state",
            "varchar",
            nullable=False,
            default="'running'",
            check="state IN ('running', 'stopped', 'hibernate')",
        ),
        Column("user_data", "text", replaces=True),
        Column("tags", "json", normalize=normalize_instance_tags),
        Column("hibernation_enabled", "boolean", nullable=False, default="false", replaces=True),
        region_column(),
        Column("role_name", "varchar", ref=Ref("iam_role", key="role_name"), replaces=True),
        foreign_key("subnet_id", "subnet", "subnet_id", nullable=True),
    ),
    mapper=InstanceMapper(),
    # An instance has no name in AWS. Users name theirs with tags (IaSQL's examples tag
    # `Name`); a natural-key column can't be an expression like tags->>'Name', but the
    # whole tags object can, since the generated SQL compares json as jsonb. The AMI (an
    # SSM reference travels between accounts as is), the type and the region tell apart
    # untagged twins as far as anything can; two identical untagged instances in one
    # region can't be told apart in another account, and their replayed UPDATE fails
    # loudly (a sub-select returning two rows) rather than picking one.
    natural_key=("tags", "ami", "instance_type", "region"),
    cloud_id=("instance_id",),
)


# --- instance_security_groups --------------------------------------------------------------


class InstanceSecurityGroupsMapper:
    """One row per (instance, group). AWS sets an instance's groups as a whole list
    (modify_instance_attribute(Groups=...)), so each row's create and delete rewrites the
    list, under a per-instance lock. That is an in-place change, not a replace: an instance
    keeps its id, addresses and disks when its groups change, so replacing it (as a change of
    its launch parameters does) would destroy far more than the change asks for. The instance
    is launched before its rows exist (they reference it), with the groups AWS picks; rows of
    the same commit take their place."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("ec2", region) as ec2:
            instances = await live_instances(ec2)
        return [
            {"instance_id": i["InstanceId"], "security_group_id": group}
            for i in instances
            for group in instance_groups(i)
        ]

    async def _groups(self, ec2: Any, instance_id: str) -> tuple[list[str], dict[str, str]]:
        found = await live_instances(ec2, InstanceIds=[instance_id])
        if not found:
            raise CloudError(f"instance {instance_id} is gone")
        groups = instance_groups(found[0])
        return groups, tag_dict(found[0].get("Tags"))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        instance_id, group = record["instance_id"], record["security_group_id"]
        region = await region_of(cloud, instance_id)
        async with cloud.client("ec2", region) as ec2, INSTANCE_LOCKS(instance_id):
            groups, tags = await self._groups(ec2, instance_id)
            launch = tags.get(LAUNCH_GROUPS_TAG)
            if launch is not None:
                # AWS's launch groups give way to the rows of the commit that made the
                # instance; in a later commit they are the user's (imported as rows).
                if commit_of(tags.get(TOKEN_TAG)) == commit_of(record.get(TOKEN)):
                    groups = [g for g in groups if g not in launch.split(",")]
                await ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": LAUNCH_GROUPS_TAG}])
            if group not in groups:
                groups.append(group)
            await ec2.modify_instance_attribute(InstanceId=instance_id, Groups=groups)
        return {"instance_id": instance_id, "security_group_id": group}

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        return current  # both columns are the row's identity

    async def delete(self, cloud: Cloud, current: Record) -> None:
        instance_id, group = current["instance_id"], current["security_group_id"]
        region = current.get("region") or await region_of(cloud, instance_id)
        async with cloud.client("ec2", region) as ec2, INSTANCE_LOCKS(instance_id):
            with ignoring("InvalidInstanceID.NotFound"):
                groups, _ = await self._groups(ec2, instance_id)
                left = [g for g in groups if g != group]
                # AWS wants at least one group per instance; the last one stays (with its row,
                # back at the sync) unless the instance itself is being terminated.
                if left and left != groups:
                    await ec2.modify_instance_attribute(InstanceId=instance_id, Groups=left)


INSTANCE_SECURITY_GROUPS = Table(
    name="instance_security_groups",
    columns=(
        foreign_key("instance_id", "instance", "instance_id", on_delete="CASCADE", replaces=False),
        foreign_key(
            "security_group_id", "security_group", "group_id", on_delete="CASCADE", replaces=False
        ),
    ),
    mapper=InstanceSecurityGroupsMapper(),
    natural_key=("instance_id", "security_group_id"),
    cloud_id=("instance_id", "security_group_id"),
    primary_key=("instance_id", "security_group_id"),
)
