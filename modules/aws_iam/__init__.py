"""aws_iam: IAM roles (with an EC2 instance profile when EC2 may assume them), users and their
access keys, plus the RPCs that hand out secrets once: `access_key_request` and
`set_user_password`.

IAM is global: the tables have no region column and every call goes to the global endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.policy import canonical_policy, load_policy, policy_text
from modules.concurrency import gather_bounded
from modules.errors import error_code, ignoring
from modules.spec import Cloud, CloudError, Column, ModuleFunction, ModuleSpec, Record, Ref, Table

# IAM throttles far sooner than EC2: per-resource reads (attached policies, keys) go a few at a
# time; botocore's standard retry mode takes care of the occasional Throttling answer.
IAM_CONCURRENCY = 8
# Waiters for a role, a user or an instance profile that was just made: IAM is eventually
# consistent, and EC2 refuses an instance profile it cannot see yet.
WAIT = {"Delay": 2, "MaxAttempts": 30}

# --- canonical forms ------------------------------------------------------------------------


def normalize_arns(value: Any) -> list[str] | None:
    """Attached policies are a set: sorted, without duplicates; none is NULL."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return sorted({str(v) for v in value if v is not None}) or None


def normalize_description(value: Any) -> str | None:
    return value or None  # IAM does not tell an empty description from none


def normalize_path(value: Any) -> str:
    return value or "/"  # IAM's default path


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def trusts_ec2(document: Any) -> bool:
    """Whether an assume-role policy lets EC2 assume the role: such a role gets an instance
    profile of its own name, which is what an instance is launched with."""
    loaded = load_policy(document)
    statements = _as_list(loaded.get("Statement")) if isinstance(loaded, dict) else []
    for statement in statements:
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal")
        services = _as_list(principal.get("Service")) if isinstance(principal, dict) else []
        actions = {str(a).lower() for a in _as_list(statement.get("Action"))}
        if "ec2.amazonaws.com" in services and actions & {"sts:assumerole", "sts:*", "*"}:
            return True
    return False


# --- small IAM helpers ----------------------------------------------------------------------


def _message(error: ClientError) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'Error')}: {details.get('Message', '')}"


async def _listed(iam: Any, operation: str, key: str, **params: Any) -> list[Any]:
    """Every item of a paginated IAM list call; nothing when its owner is gone (deleted since
    it was listed, or by someone else before our delete)."""
    with ignoring("NoSuchEntity"):
        pages = iam.get_paginator(operation).paginate(**params)
        return [item async for page in pages for item in page[key]]
    return []


async def _attached(iam: Any, kind: str, name: str) -> list[str] | None:
    """ARNs of the managed policies attached to a role or a user (`kind`)."""
    policies = await _listed(
        iam, f"list_attached_{kind}_policies", "AttachedPolicies", **{_NAME_KEY[kind]: name}
    )
    return normalize_arns([p["PolicyArn"] for p in policies])


_NAME_KEY = {"role": "RoleName", "user": "UserName"}


async def _attach(iam: Any, kind: str, name: str, wanted: Any, current: Any) -> None:
    """Attaches the policies `wanted` has and `current` lacks, then detaches the others, so
    that a swap never leaves the identity without either."""
    new, old = set(normalize_arns(wanted) or ()), set(normalize_arns(current) or ())
    params = {_NAME_KEY[kind]: name}
    for arn in sorted(new - old):
        await getattr(iam, f"attach_{kind}_policy")(PolicyArn=arn, **params)
    for arn in sorted(old - new):
        with ignoring("NoSuchEntity"):
            await getattr(iam, f"detach_{kind}_policy")(PolicyArn=arn, **params)


async def _detach_all(iam: Any, kind: str, name: str) -> None:
    """Removes the managed and inline policies IAM requires gone before a delete."""
    await _attach(iam, kind, name, None, await _attached(iam, kind, name))
    params = {_NAME_KEY[kind]: name}
    for policy in await _listed(iam, f"list_{kind}_policies", "PolicyNames", **params):
        with ignoring("NoSuchEntity"):
            await getattr(iam, f"delete_{kind}_policy")(PolicyName=policy, **params)


async def _undo_create(undo: Callable[[], Awaitable[None]]) -> None:
    """Removes what a create made before it failed: the engine only undoes steps that
    finished. The create's own error is the one to report."""
    with contextlib.suppress(Exception):
        await undo()


# --- iam_role -------------------------------------------------------------------------------


def role_name_of(arn: str) -> str:
    """A role's name from its ARN: arn:aws:iam::123456789012:role/some/path/NAME -> NAME.
    For the modules whose rows name a role where AWS holds its ARN."""
    return arn.rsplit("/", 1)[-1]


async def role_arn(cloud: Cloud, role_name: str) -> str:
    """The ARN of the role named `role_name` (GetRole), for an API that takes a role's ARN."""
    async with cloud.client("iam", None) as iam:
        answer = await iam.get_role(RoleName=role_name)
    return str(answer["Role"]["Arn"])


def _role_record(role: dict[str, Any], policies: list[str] | None) -> Record:
    return {
        "arn": role["Arn"],
        "role_name": role["RoleName"],
        "assume_role_policy_document": load_policy(role.get("AssumeRolePolicyDocument")),
        "description": normalize_description(role.get("Description")),
        "attached_policies_arns": policies,
        "path": role.get("Path", "/"),  # not a column: for `protected`
    }


async def _ensure_instance_profile(iam: Any, name: str) -> None:
    """The instance profile named like the role, holding it."""
    with ignoring("EntityAlreadyExists"):
        await iam.create_instance_profile(InstanceProfileName=name)
    await iam.get_waiter("instance_profile_exists").wait(
        InstanceProfileName=name, WaiterConfig=WAIT
    )
    answer = await iam.get_instance_profile(InstanceProfileName=name)
    roles = [r["RoleName"] for r in answer["InstanceProfile"]["Roles"]]
    if name in roles:
        return
    if roles:  # a profile holds one role at most
        raise CloudError(
            f"instance profile {name} already holds role {roles[0]}; role {name} cannot get an"
            " instance profile of its own name"
        )
    await iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


async def _drop_instance_profile(iam: Any, name: str) -> None:
    with ignoring("NoSuchEntity"):
        await iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    with ignoring("NoSuchEntity", "DeleteConflict"):  # another role is in it: not ours
        await iam.delete_instance_profile(InstanceProfileName=name)


async def _leave_instance_profiles(iam: Any, name: str) -> None:
    """Takes the role out of every instance profile (IAM refuses to delete it otherwise) and
    deletes the one named like it, made with it."""
    params = {"RoleName": name}
    for profile in await _listed(
        iam, "list_instance_profiles_for_role", "InstanceProfiles", **params
    ):
        if profile["InstanceProfileName"] == name:
            await _drop_instance_profile(iam, name)
            continue
        with ignoring("NoSuchEntity"):
            await iam.remove_role_from_instance_profile(
                InstanceProfileName=profile["InstanceProfileName"], RoleName=name
            )


async def _delete_role(iam: Any, name: str) -> None:
    await _leave_instance_profiles(iam, name)
    await _detach_all(iam, "role", name)
    with ignoring("NoSuchEntity"):
        await iam.delete_role(RoleName=name)


class RoleMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("iam", None) as iam:
            roles = await _listed(iam, "list_roles", "Roles")
            return await gather_bounded((self._complete(iam, r) for r in roles), IAM_CONCURRENCY)

    async def _complete(self, iam: Any, role: dict[str, Any]) -> Record:
        return _role_record(role, await _attached(iam, "role", role["RoleName"]))

    async def _read_one(self, iam: Any, name: str) -> Record:
        role = (await iam.get_role(RoleName=name))["Role"]
        return _role_record(role, await _attached(iam, "role", name))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name, document = record["role_name"], record["assume_role_policy_document"]
        described = {"Description": record["description"]} if record.get("description") else {}
        async with cloud.client("iam", None) as iam:
            await iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=policy_text(document), **described
            )
            try:
                await iam.get_waiter("role_exists").wait(RoleName=name, WaiterConfig=WAIT)
                await _attach(iam, "role", name, record.get("attached_policies_arns"), None)
                if trusts_ec2(document):
                    await _ensure_instance_profile(iam, name)
            except Exception:
                await _undo_create(lambda: self._remove_new(iam, name, document))
                raise
            return await self._read_one(iam, name)

    async def _remove_new(self, iam: Any, name: str, document: Any) -> None:
        if trusts_ec2(document):  # made here, maybe still empty
            await _drop_instance_profile(iam, name)
        await _delete_role(iam, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name = current["role_name"]
        document = record["assume_role_policy_document"]
        async with cloud.client("iam", None) as iam:
            if canonical_policy(document) != canonical_policy(
                current["assume_role_policy_document"]
            ):
                await iam.update_assume_role_policy(
                    RoleName=name, PolicyDocument=policy_text(document)
                )
            description = normalize_description(record.get("description"))
            if description != normalize_description(current.get("description")):
                await iam.update_role(RoleName=name, Description=description or "")
            await _attach(
                iam,
                "role",
                name,
                record.get("attached_policies_arns"),
                current.get("attached_policies_arns"),
            )
            if trusts_ec2(document):
                await _ensure_instance_profile(iam, name)  # also repairs a deleted one
            elif trusts_ec2(current["assume_role_policy_document"]):
                await _drop_instance_profile(iam, name)
            return await self._read_one(iam, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("iam", None) as iam:
            await _delete_role(iam, current["role_name"])


# Roles AWS makes and manages: service-linked roles (deleted only through
# DeleteServiceLinkedRole) and IAM Identity Center's reserved ones.
_AWS_ROLE_PATHS = ("/aws-service-role/", "/aws-reserved/")

IAM_ROLE = Table(
    name="iam_role",
    columns=(
        Column("arn", "varchar", cloud_assigned=True),
        Column("role_name", "varchar", nullable=False),
        Column(
            "assume_role_policy_document",
            "jsonb",
            nullable=False,
            check="jsonb_typeof(assume_role_policy_document) = 'object'",
            normalize=canonical_policy,
        ),
        Column("description", "varchar", normalize=normalize_description),
        Column("attached_policies_arns", "text[]", normalize=normalize_arns),
    ),
    mapper=RoleMapper(),
    natural_key=("role_name",),
    cloud_id=("role_name",),
    primary_key=("role_name",),
    regional=False,
    protected=lambda record: str(record.get("path", "")).startswith(_AWS_ROLE_PATHS),
)

# --- iam_user -------------------------------------------------------------------------------


def _user_record(user: dict[str, Any], policies: list[str] | None) -> Record:
    return {
        "arn": user["Arn"],
        "user_name": user["UserName"],
        "create_date": user["CreateDate"],
        "path": user.get("Path", "/"),
        "user_id": user["UserId"],
        "attached_policies_arns": policies,
    }


async def _remove_credentials(iam: Any, name: str) -> None:
    """What IAM wants gone before it deletes a user: password, keys, certificates, SSH keys,
    MFA devices and group memberships. (Service-specific credentials are not listed: moto does
    not implement the call; on AWS a user with some gets DeleteConflict, named in the error.)"""
    user = {"UserName": name}
    with ignoring("NoSuchEntity"):
        await iam.delete_login_profile(**user)
    for key in await _listed(iam, "list_access_keys", "AccessKeyMetadata", **user):
        with ignoring("NoSuchEntity"):
            await iam.delete_access_key(AccessKeyId=key["AccessKeyId"], **user)
    for cert in await _listed(iam, "list_signing_certificates", "Certificates", **user):
        with ignoring("NoSuchEntity"):
            await iam.delete_signing_certificate(CertificateId=cert["CertificateId"], **user)
    for ssh in await _listed(iam, "list_ssh_public_keys", "SSHPublicKeys", **user):
        with ignoring("NoSuchEntity"):
            await iam.delete_ssh_public_key(SSHPublicKeyId=ssh["SSHPublicKeyId"], **user)
    for device in await _listed(iam, "list_mfa_devices", "MFADevices", **user):
        with ignoring("NoSuchEntity"):
            await iam.deactivate_mfa_device(SerialNumber=device["SerialNumber"], **user)
    for group in await _listed(iam, "list_groups_for_user", "Groups", **user):
        with ignoring("NoSuchEntity"):
            await iam.remove_user_from_group(GroupName=group["GroupName"], **user)


async def _delete_user(iam: Any, name: str) -> None:
    await _remove_credentials(iam, name)
    await _detach_all(iam, "user", name)
    with ignoring("NoSuchEntity"):
        await iam.delete_user(UserName=name)


class UserMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("iam", None) as iam:
            users = await _listed(iam, "list_users", "Users")
            return await gather_bounded((self._complete(iam, u) for u in users), IAM_CONCURRENCY)

    async def _complete(self, iam: Any, user: dict[str, Any]) -> Record:
        return _user_record(user, await _attached(iam, "user", user["UserName"]))

    async def _read_one(self, iam: Any, name: str) -> Record:
        user = (await iam.get_user(UserName=name))["User"]
        return _user_record(user, await _attached(iam, "user", name))

    async def create(self, cloud: Cloud, record: Record) -> Record:
        name = record["user_name"]
        async with cloud.client("iam", None) as iam:
            await iam.create_user(UserName=name, Path=normalize_path(record.get("path")))
            try:
                await iam.get_waiter("user_exists").wait(UserName=name, WaiterConfig=WAIT)
                await _attach(iam, "user", name, record.get("attached_policies_arns"), None)
            except Exception:
                await _undo_create(lambda: _delete_user(iam, name))
                raise
            return await self._read_one(iam, name)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        name = current["user_name"]
        async with cloud.client("iam", None) as iam:
            path = normalize_path(record.get("path"))
            if path != normalize_path(current.get("path")):
                await iam.update_user(UserName=name, NewPath=path)
            await _attach(
                iam,
                "user",
                name,
                record.get("attached_policies_arns"),
                current.get("attached_policies_arns"),
            )
            return await self._read_one(iam, name)

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("iam", None) as iam:
            await _delete_user(iam, current["user_name"])


IAM_USER = Table(
    name="iam_user",
    columns=(
        Column("arn", "varchar", cloud_assigned=True),
        Column("user_name", "varchar", nullable=False),
        Column("create_date", "timestamptz", nullable=False, default="now()", cloud_assigned=True),
        Column("path", "varchar", default="'/'", normalize=normalize_path),
        Column("user_id", "varchar", cloud_assigned=True),
        Column("attached_policies_arns", "text[]", normalize=normalize_arns),
    ),
    mapper=UserMapper(),
    natural_key=("user_name",),
    cloud_id=("user_name",),
    primary_key=("user_name",),
    regional=False,
)

# --- access_key -----------------------------------------------------------------------------

_REQUEST_HINT = "SELECT * FROM access_key_request('{user}') creates one and shows its secret once"


def _key_record(key: dict[str, Any]) -> Record:
    return {
        "access_key_id": key["AccessKeyId"],
        "create_date": key["CreateDate"],
        "status": key["Status"],
        "user_name": key["UserName"],
    }


async def _user_keys(iam: Any, user: str) -> list[Record]:
    keys = await _listed(iam, "list_access_keys", "AccessKeyMetadata", UserName=user)
    return [_key_record(k) for k in keys]


class AccessKeyMapper:
    """Access keys are read and changed here, never made: AWS shows a key's secret only in the
    answer to CreateAccessKey, which `access_key_request` returns to its caller."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("iam", None) as iam:
            users = await _listed(iam, "list_users", "Users")
            found = await gather_bounded(
                (_user_keys(iam, u["UserName"]) for u in users), IAM_CONCURRENCY
            )
        return [key for keys in found for key in keys]

    async def create(self, cloud: Cloud, record: Record) -> Record:
        user, key = record.get("user_name"), record.get("access_key_id")
        raise CloudError(
            f"access key {key} of user {user} does not exist, and an access key cannot be made"
            " from a row (AWS shows its secret only once, to whoever makes it): "
            + _REQUEST_HINT.format(user=user)
        )

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        key, user = current["access_key_id"], current["user_name"]
        if record.get("user_name") != user:
            # Checked here, before anything changes: a replace would delete the key first.
            raise CloudError(f"access key {key} belongs to user {user}; it cannot move to another")
        async with cloud.client("iam", None) as iam:
            if record.get("status") != current.get("status"):
                await iam.update_access_key(UserName=user, AccessKeyId=key, Status=record["status"])
            found = [k for k in await _user_keys(iam, user) if k["access_key_id"] == key]
        if not found:
            raise CloudError(f"access key {key} of user {user} is gone")
        return found[0]

    async def delete(self, cloud: Cloud, current: Record) -> None:
        async with cloud.client("iam", None) as iam:
            with ignoring("NoSuchEntity"):
                await iam.delete_access_key(
                    UserName=current["user_name"], AccessKeyId=current["access_key_id"]
                )


# A user's INSERT (without a key id) is refused at once, with the way to get a key; the
# engine's own inserts (imports) always carry the id. Runs before the NOT NULL check.
_ACCESS_KEY_TRIGGER = (
    """CREATE OR REPLACE FUNCTION access_key_not_insertable() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.access_key_id IS NULL THEN
            RAISE EXCEPTION 'an access key cannot be created with INSERT: AWS shows its secret'
                ' only once, to whoever makes it' USING ERRCODE = '0A000',
                HINT = format('SELECT * FROM access_key_request(%L) creates one, returns its'
                    ' secret once and adds its row', NEW.user_name);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER access_key_not_insertable BEFORE INSERT ON access_key
        FOR EACH ROW EXECUTE FUNCTION access_key_not_insertable()""",
)

ACCESS_KEY = Table(
    name="access_key",
    columns=(
        # The cloud's id of the key. Cloud-assigned, so replayed SQL never carries it: an
        # INSERT replayed in another account stops at the trigger above (a key there must be
        # requested there), and an UPDATE or DELETE names the key by this id (natural key),
        # which matches no row in another account: it does nothing there.
        Column("access_key_id", "varchar", nullable=False, cloud_assigned=True),
        Column("create_date", "timestamptz", nullable=False, default="now()", cloud_assigned=True),
        Column(
            "status",
            "varchar",
            nullable=False,
            default="'Active'",
            check="status IN ('Active', 'Inactive')",
        ),
        Column(
            "user_name",
            "varchar",
            nullable=False,
            ref=Ref("iam_user", key="user_name", on_delete="CASCADE"),
        ),
    ),
    mapper=AccessKeyMapper(),
    # An access key exists in one account only; see access_key_id.
    natural_key=("user_name", "access_key_id"),
    cloud_id=("access_key_id",),
    regional=False,
    extra_ddl=_ACCESS_KEY_TRIGGER,
)

# --- RPCs -----------------------------------------------------------------------------------


async def request_access_key(cloud: Cloud, user_name: str) -> list[Record]:
    """Makes an access key for the user and returns its secret: the only time anyone sees it.
    Nothing here keeps it; the key's row (without the secret) comes with the next sync."""
    async with cloud.client("iam", None) as iam:
        try:
            answer = await iam.create_access_key(UserName=user_name)
        except ClientError as error:
            raise CloudError(f"no access key for user {user_name}: {_message(error)}") from None
    key = answer["AccessKey"]
    return [
        {
            "status": "SUCCESS",
            "message": "store the secret now: it cannot be shown again",
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
        }
    ]


# After a login profile was just made or removed, IAM refuses changes for a short while.
_UNMODIFIABLE_RETRIES = 6
_UNMODIFIABLE_DELAY = 5.0


async def _change_login_profile(iam: Any, name: str, password: str, reset: bool) -> str:
    """Updates the user's password, or makes the login profile it lives in; says which."""
    fields = {"UserName": name, "Password": password, "PasswordResetRequired": reset}
    for attempt in range(_UNMODIFIABLE_RETRIES):
        try:
            try:
                await iam.update_login_profile(**fields)
                return "password updated"
            except ClientError as error:
                if error_code(error) != "NoSuchEntity":
                    raise
            await iam.create_login_profile(**fields)
            return "login profile created"
        except ClientError as error:
            if error_code(error) != "EntityTemporarilyUnmodifiable":
                raise
            if attempt + 1 == _UNMODIFIABLE_RETRIES:
                raise
            await asyncio.sleep(_UNMODIFIABLE_DELAY)
    raise AssertionError("unreachable")


def _is_true(value: Any) -> bool:
    """IaSQL took the flag as text ('true'); a boolean works too."""
    return value is True or str(value).strip().lower() in ("true", "t", "yes", "on", "1")


async def set_user_password(
    cloud: Cloud, user_name: str, password: str | None, reset_required: Any = None
) -> list[Record]:
    """Sets the user's console password (making the login profile if needed); an empty or
    NULL password removes the login profile. The password goes to AWS only: it is in no
    record, message or error this returns."""
    async with cloud.client("iam", None) as iam:
        try:
            if not password:
                with ignoring("NoSuchEntity"):
                    await iam.delete_login_profile(UserName=user_name)
                done = "login profile removed"
            else:
                done = await _change_login_profile(
                    iam, user_name, password, _is_true(reset_required)
                )
        except ClientError as error:
            text = _message(error)
            if password:
                text = text.replace(password, "***")  # AWS does not echo it; be sure anyway
            raise CloudError(f"password of user {user_name} not set: {text}") from None
    return [{"status": "OK", "message": done}]


async def _set_user_password_request(
    cloud: Cloud, user_name: str, password: str | None, reset_password: Any = None
) -> list[Record]:
    return await set_user_password(cloud, user_name, password, reset_password)


_PASSWORD_COLUMNS = (("status", "text"), ("message", "text"))

ACCESS_KEY_REQUEST = ModuleFunction(
    name="access_key_request",
    columns=(
        ("status", "text"),
        ("message", "text"),
        ("access_key_id", "text"),
        ("secret_access_key", "text"),
    ),
    params=(("user_name", "text"),),
    run=request_access_key,
    description="Creates an access key for an IAM user and returns its secret, once: it is"
    " never stored",
    sample="SELECT * FROM access_key_request('ci-deployer')",
)

SET_USER_PASSWORD = ModuleFunction(
    name="set_user_password",
    columns=_PASSWORD_COLUMNS,
    params=(("user_name", "text"), ("password", "text"), ("reset_required", "boolean")),
    run=set_user_password,
    description="Sets an IAM user's console password (an empty one removes the login"
    " profile); the password is never stored or logged",
    optional=("reset_required",),
    sample="SELECT * FROM set_user_password('alice', 'Str0ng!passw0rd', true)",
)

# IaSQL's name and argument names, so that SQL written for it runs unchanged.
SET_USER_PASSWORD_REQUEST = ModuleFunction(
    name="set_user_password_request",
    columns=_PASSWORD_COLUMNS,
    params=(("user_name", "text"), ("password", "text"), ("reset_password", "text")),
    run=_set_user_password_request,
    description="IaSQL's name for set_user_password",
    optional=("reset_password",),
    sample="SELECT * FROM set_user_password_request('alice', 'Str0ng!passw0rd', 'true')",
)

MODULE = ModuleSpec(
    name="aws_iam",
    version=VERSION,
    dependencies=("aws_account",),
    description="IAM roles, users and access keys",
    tables=(IAM_ROLE, IAM_USER, ACCESS_KEY),
    teardown_sql=("DROP FUNCTION IF EXISTS access_key_not_insertable()",),
    functions=(ACCESS_KEY_REQUEST, SET_USER_PASSWORD, SET_USER_PASSWORD_REQUEST),
)
