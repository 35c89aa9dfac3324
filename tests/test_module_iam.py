"""aws_iam: roles, users and access keys through begin / preview / commit on moto, import at
install, the canonical policy compare, and the RPCs that hand out secrets once."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from engine.cloud import AwsCloud
from iasql.sandbox import MotoServer
from modules.aws_iam import (
    ACCESS_KEY,
    IAM_ROLE,
    canonical_policy,
    normalize_arns,
    request_access_key,
    set_user_password,
    trusts_ec2,
)
from modules.spec import CloudError
from tests.support.aws import only_one_region
from tests.support.env import RunningServer, add_credentials, in_cloud, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

ACCOUNT = "123456789012"  # moto's account
READ_ONLY = "arn:aws:iam::aws:policy/ReadOnlyAccess"  # AWS-managed: needs the sandbox switch


def trust(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }


@pytest.fixture(scope="module")
def iam_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    """One moto account for this file, emptied before each test."""
    return moto_accounts()


@pytest.fixture
def iam(iam_moto: MotoServer) -> Any:
    iam_moto.reset()
    return boto3.client("iam", region_name="us-east-1", endpoint_url=iam_moto.endpoint)


def customer_policy(iam: Any, name: str) -> str:
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    answer = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
    return str(answer["Policy"]["Arn"])


def install(conn: psycopg.Connection, moto: MotoServer) -> None:
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_one_region(conn)
    conn.execute("SELECT * FROM iasql_install('aws_iam')")


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as error:
        call()
    return str(error.value.response["Error"]["Code"])


def preview(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return rows(
        conn,
        "SELECT action, table_name, id, changes FROM iasql_preview() ORDER BY table_name, id",
    )


def attached(iam: Any, kind: str, name: str) -> list[str]:
    key = {"role": "RoleName", "user": "UserName"}[kind]
    listed = getattr(iam, f"list_attached_{kind}_policies")(**{key: name})
    return sorted(p["PolicyArn"] for p in listed["AttachedPolicies"])


# --- canonical forms ------------------------------------------------------------------------


def test_canonical_policy_ignores_what_iam_treats_as_the_same() -> None:
    written = trust("ec2.amazonaws.com")
    same = [
        # key order, the Statement as an object, a string of JSON
        {
            "Statement": {
                "Action": "sts:AssumeRole",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Effect": "Allow",
            },
            "Version": "2012-10-17",
        },
        json.dumps(written),
        # one-element lists, duplicates, an empty Sid
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "",
                    "Effect": "Allow",
                    "Principal": {"Service": ["ec2.amazonaws.com"]},
                    "Action": ["sts:AssumeRole", "sts:AssumeRole"],
                }
            ],
        },
    ]
    for other in same:
        assert canonical_policy(other) == canonical_policy(written)
    # Lists are sets; a missing Version is IAM's default one; an account id is its root ARN.
    two = {"Effect": "Allow", "Action": ["b:x", "a:y"], "Resource": "*"}
    swapped = {"Effect": "Allow", "Action": ["a:y", "b:x"], "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "c:z", "Resource": "*"}
    assert canonical_policy({"Statement": [two, deny]}) == canonical_policy(
        {"Version": "2008-10-17", "Statement": [deny, swapped]}
    )
    by_id = {"Statement": {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "*"}}
    by_arn = {
        "Statement": {
            "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam::{ACCOUNT}:root"]},
            "Action": "*",
        }
    }
    assert canonical_policy(by_id) == canonical_policy(by_arn)
    # What does differ, differs.
    assert canonical_policy(written) != canonical_policy(trust("lambda.amazonaws.com"))
    assert canonical_policy({"Statement": [two]}) != canonical_policy(
        {"Version": "2012-10-17", "Statement": [two]}
    )
    assert canonical_policy(None) is None


def test_ec2_trust_and_policy_sets() -> None:
    assert trusts_ec2(trust("ec2.amazonaws.com"))
    assert trusts_ec2(
        {
            "Statement": {
                "Effect": "Allow",
                "Principal": {"Service": ["lambda.amazonaws.com", "ec2.amazonaws.com"]},
                "Action": ["sts:TagSession", "STS:assumerole"],
            }
        }
    )
    assert not trusts_ec2(trust("lambda.amazonaws.com"))
    denied = trust("ec2.amazonaws.com")
    denied["Statement"][0]["Effect"] = "Deny"
    assert not trusts_ec2(denied)
    assert not trusts_ec2("not json")
    assert normalize_arns(["b", "a", "b"]) == ["a", "b"]
    assert normalize_arns([]) is None and normalize_arns(None) is None
    assert IAM_ROLE.protected is not None
    assert IAM_ROLE.protected({"path": "/aws-service-role/elasticbeanstalk.amazonaws.com/"})
    assert not IAM_ROLE.protected({"path": "/"})


# --- import ---------------------------------------------------------------------------------


def test_install_imports_roles_users_and_keys(
    envdb: psycopg.Connection, iam_moto: MotoServer, iam: Any
) -> None:
    policy = customer_policy(iam, "imported-s3")
    # No Version and a bare Statement object: compared canonically with what IAM hands back.
    document = {
        "Statement": {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    }
    iam.create_role(
        RoleName="imported-app",
        AssumeRolePolicyDocument=json.dumps(document),
        Description="made with boto3",
    )
    iam.attach_role_policy(RoleName="imported-app", PolicyArn=policy)
    iam.attach_role_policy(RoleName="imported-app", PolicyArn=READ_ONLY)
    linked = iam.create_service_linked_role(AWSServiceName="elasticbeanstalk.amazonaws.com")
    linked_name = linked["Role"]["RoleName"]
    user = iam.create_user(UserName="imported-dev", Path="/dev/")["User"]
    iam.attach_user_policy(UserName="imported-dev", PolicyArn=policy)
    key = iam.create_access_key(UserName="imported-dev")["AccessKey"]
    iam.update_access_key(
        UserName="imported-dev", AccessKeyId=key["AccessKeyId"], Status="Inactive"
    )

    install(envdb, iam_moto)

    roles = rows(
        envdb,
        "SELECT role_name, arn, assume_role_policy_document, description, attached_policies_arns"
        " FROM iam_role ORDER BY role_name",
    )
    by_name = {r[0]: r for r in roles}
    assert set(by_name) == {"imported-app", linked_name}
    assert by_name["imported-app"] == (
        "imported-app",
        f"arn:aws:iam::{ACCOUNT}:role/imported-app",
        document,
        "made with boto3",
        sorted([policy, READ_ONLY]),
    )
    assert rows(
        envdb,
        "SELECT user_name, arn, path, user_id, create_date, attached_policies_arns FROM iam_user",
    ) == [
        (
            "imported-dev",
            user["Arn"],
            "/dev/",
            user["UserId"],
            user["CreateDate"],
            [policy],
        )
    ]
    assert rows(envdb, "SELECT access_key_id, status, user_name, create_date FROM access_key") == [
        (key["AccessKeyId"], "Inactive", "imported-dev", key["CreateDate"])
    ]
    # What was imported compares equal to the cloud: nothing to do, no drift.
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # The service-linked role is AWS's: deleting its row restores it, the cloud keeps it.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM iam_role WHERE role_name = %s", (linked_name,))
    envdb.execute("SELECT * FROM iasql_commit()")
    assert iam.get_role(RoleName=linked_name)["Role"]["RoleName"] == linked_name
    assert rows(envdb, "SELECT count(*) FROM iam_role") == [(2,)]


# --- iam_role -------------------------------------------------------------------------------


def test_role_lifecycle_with_instance_profile(
    envdb: psycopg.Connection, iam_moto: MotoServer, iam: Any
) -> None:
    install(envdb, iam_moto)
    first, second = customer_policy(iam, "app-first"), customer_policy(iam, "app-second")

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO iam_role (role_name, assume_role_policy_document, description,"
        " attached_policies_arns) VALUES ('app', %s::jsonb, 'app servers', %s)",
        (json.dumps(trust("ec2.amazonaws.com")), [first, READ_ONLY]),
    )
    [(action, table, row_id, changes)] = preview(envdb)
    assert (action, table, row_id) == ("create", "iam_role", "app")
    assert changes == {
        "role_name": {"old": None, "new": "app"},
        "assume_role_policy_document": {"old": None, "new": trust("ec2.amazonaws.com")},
        "description": {"old": None, "new": "app servers"},
        "attached_policies_arns": {"old": None, "new": [first, READ_ONLY]},
    }
    envdb.execute("SELECT * FROM iasql_commit()")

    role = iam.get_role(RoleName="app")["Role"]
    assert role["AssumeRolePolicyDocument"] == trust("ec2.amazonaws.com")
    assert role["Description"] == "app servers"
    assert attached(iam, "role", "app") == sorted([first, READ_ONLY])
    profile = iam.get_instance_profile(InstanceProfileName="app")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["app"]
    assert rows(envdb, "SELECT arn FROM iam_role WHERE role_name = 'app'") == [(role["Arn"],)]
    assert preview(envdb) == []
    # The SQL for another environment: the document as jsonb, the policies as text[], no arn.
    [(statement,)] = rows(envdb, "SELECT sql FROM iasql_get_sql_for_transaction()")
    assert statement.startswith(
        'INSERT INTO "iam_role" ("role_name", "assume_role_policy_document", "description",'
        " \"attached_policies_arns\") VALUES ('app', '{"
    )
    assert f"}}'::jsonb, 'app servers', ARRAY['{first}', '{READ_ONLY}']::text[]);" in statement
    assert role["Arn"] not in statement

    # The same document written otherwise (key order, Statement as an object, a one-element
    # Action list) and the same policies in another order: nothing to do, before and after a
    # commit.
    envdb.execute("SELECT * FROM iasql_begin()")
    reordered = (
        '{"Statement": {"Action": ["sts:AssumeRole"], "Principal": {"Service":'
        ' "ec2.amazonaws.com"}, "Effect": "Allow"}, "Version": "2012-10-17"}'
    )
    envdb.execute(
        "UPDATE iam_role SET assume_role_policy_document = %s::jsonb,"
        " attached_policies_arns = %s WHERE role_name = 'app'",
        (reordered, [READ_ONLY, first, first]),
    )
    assert preview(envdb) == []
    assert rows(envdb, "SELECT action FROM iasql_commit()") == []
    assert preview(envdb) == []
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # In place: another trust (no longer EC2), another description, one policy swapped.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE iam_role SET assume_role_policy_document = %s::jsonb, description = 'jobs',"
        " attached_policies_arns = %s WHERE role_name = 'app'",
        (json.dumps(trust("lambda.amazonaws.com")), [READ_ONLY, second]),
    )
    [(action, _, _, changes)] = preview(envdb)
    assert action == "update"
    assert set(changes) == {"assume_role_policy_document", "description", "attached_policies_arns"}
    assert changes["description"] == {"old": "app servers", "new": "jobs"}
    assert changes["attached_policies_arns"] == {
        "old": sorted([first, READ_ONLY]),
        "new": [READ_ONLY, second],
    }
    envdb.execute("SELECT * FROM iasql_commit()")
    role = iam.get_role(RoleName="app")["Role"]
    assert role["AssumeRolePolicyDocument"] == trust("lambda.amazonaws.com")
    assert role["Description"] == "jobs"
    assert attached(iam, "role", "app") == sorted([second, READ_ONLY])
    assert error_code(lambda: iam.get_instance_profile(InstanceProfileName="app")) == (
        "NoSuchEntity"
    )
    assert preview(envdb) == []

    # Back to EC2, without a description: the instance profile comes back.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE iam_role SET assume_role_policy_document = %s::jsonb, description = NULL"
        " WHERE role_name = 'app'",
        (json.dumps(trust("ec2.amazonaws.com")),),
    )
    envdb.execute("SELECT * FROM iasql_commit()")
    assert iam.get_role(RoleName="app")["Role"].get("Description") in (None, "")
    profile = iam.get_instance_profile(InstanceProfileName="app")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["app"]
    assert preview(envdb) == []

    # Delete: policies detached, instance profile and role gone.
    inline = {
        "Version": "2012-10-17",
        "Statement": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    }
    iam.put_role_policy(RoleName="app", PolicyName="inline", PolicyDocument=json.dumps(inline))
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM iam_role WHERE role_name = 'app'")
    [(action, _, _, changes)] = preview(envdb)
    assert action == "delete" and changes["role_name"] == {"old": "app", "new": None}
    envdb.execute("SELECT * FROM iasql_commit()")
    assert error_code(lambda: iam.get_role(RoleName="app")) == "NoSuchEntity"
    assert error_code(lambda: iam.get_instance_profile(InstanceProfileName="app")) == (
        "NoSuchEntity"
    )
    assert rows(envdb, "SELECT count(*) FROM iam_role") == [(0,)]


def test_failed_role_create_leaves_nothing_behind(
    envdb: psycopg.Connection, iam_moto: MotoServer, iam: Any
) -> None:
    install(envdb, iam_moto)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO iam_role (role_name, assume_role_policy_document, attached_policies_arns)"
        " VALUES ('broken', %s::jsonb, %s)",
        (json.dumps(trust("ec2.amazonaws.com")), [f"arn:aws:iam::{ACCOUNT}:policy/missing"]),
    )
    with pytest.raises(psycopg.Error, match="missing"):
        envdb.execute("SELECT * FROM iasql_commit()")
    assert error_code(lambda: iam.get_role(RoleName="broken")) == "NoSuchEntity"
    assert error_code(lambda: iam.get_instance_profile(InstanceProfileName="broken")) == (
        "NoSuchEntity"
    )
    assert rows(envdb, "SELECT count(*) FROM iam_role") == [(0,)]


# --- iam_user and access_key ----------------------------------------------------------------


def test_user_and_access_key_lifecycle(
    envdb: psycopg.Connection, iam_moto: MotoServer, iam: Any
) -> None:
    install(envdb, iam_moto)
    first, second = customer_policy(iam, "dev-first"), customer_policy(iam, "dev-second")

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO iam_user (user_name, path, attached_policies_arns) VALUES ('dev', '/team/', %s)",
        ([first],),
    )
    [(action, table, row_id, changes)] = preview(envdb)
    assert (action, table, row_id) == ("create", "iam_user", "dev")
    assert changes == {
        "user_name": {"old": None, "new": "dev"},
        "path": {"old": None, "new": "/team/"},
        "attached_policies_arns": {"old": None, "new": [first]},
    }
    envdb.execute("SELECT * FROM iasql_commit()")
    user = iam.get_user(UserName="dev")["User"]
    assert user["Path"] == "/team/"
    assert attached(iam, "user", "dev") == [first]
    assert rows(envdb, "SELECT arn, user_id, create_date FROM iam_user") == [
        (user["Arn"], user["UserId"], user["CreateDate"])
    ]
    assert preview(envdb) == []

    # In place: path and policies.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE iam_user SET path = '/ops/', attached_policies_arns = %s WHERE user_name = 'dev'",
        ([second],),
    )
    [(action, _, _, changes)] = preview(envdb)
    assert action == "update"
    assert changes == {
        "path": {"old": "/team/", "new": "/ops/"},
        "attached_policies_arns": {"old": [first], "new": [second]},
    }
    envdb.execute("SELECT * FROM iasql_commit()")
    assert iam.get_user(UserName="dev")["User"]["Path"] == "/ops/"
    assert attached(iam, "user", "dev") == [second]
    assert preview(envdb) == []

    # A key comes from the RPC, once; its row follows, without the secret.
    [(status, key_id, secret)] = rows(
        envdb, "SELECT status, access_key_id, secret_access_key FROM access_key_request('dev')"
    )
    assert status == "SUCCESS" and key_id.startswith("AKIA") and len(secret) >= 40
    listed = iam.list_access_keys(UserName="dev")["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in listed] == [(key_id, "Active")]
    assert rows(envdb, "SELECT access_key_id, status, user_name FROM access_key") == [
        (key_id, "Active", "dev")
    ]
    logged = envdb.execute(
        "SELECT count(*) FROM iasql_audit_log WHERE change::text LIKE %s OR message LIKE %s",
        (f"%{secret}%", f"%{secret}%"),
    )
    assert logged.fetchall() == [(0,)]

    # A key can't be made with INSERT: refused at once without an id, at commit with one.
    with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
        envdb.execute("INSERT INTO access_key (user_name) VALUES ('dev')")
    assert "access_key_request('dev')" in str(refused.value.diag.message_hint)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO access_key (access_key_id, user_name) VALUES ('AKIAMADEUPKEY0000000', 'dev')"
    )
    assert [r[0] for r in preview(envdb)] == ["create"]
    with pytest.raises(psycopg.Error, match="access_key_request"):
        envdb.execute("SELECT * FROM iasql_commit()")
    assert rows(envdb, "SELECT access_key_id FROM access_key") == [(key_id,)]

    # Status changes in place; the generated SQL names the key by user and id.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE access_key SET status = 'Inactive' WHERE access_key_id = %s", (key_id,))
    assert preview(envdb) == [
        (
            "update",
            "access_key",
            rows(envdb, "SELECT id::text FROM access_key")[0][0],
            {"status": {"old": "Active", "new": "Inactive"}},
        )
    ]
    envdb.execute("SELECT * FROM iasql_commit()")
    listed = iam.list_access_keys(UserName="dev")["AccessKeyMetadata"]
    assert [k["Status"] for k in listed] == ["Inactive"]
    assert rows(envdb, "SELECT sql FROM iasql_get_sql_for_transaction()") == [
        (
            'UPDATE "access_key" SET "status" = \'Inactive\''
            f" WHERE \"user_name\" = 'dev' AND \"access_key_id\" = '{key_id}';",
        )
    ]
    assert preview(envdb) == []

    # A key can't move to another user: refused before anything changes.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("INSERT INTO iam_user (user_name) VALUES ('ops')")
    envdb.execute("UPDATE access_key SET user_name = 'ops'")
    with pytest.raises(psycopg.Error, match="cannot move"):
        envdb.execute("SELECT * FROM iasql_commit()")
    assert [
        k["AccessKeyId"] for k in iam.list_access_keys(UserName="dev")["AccessKeyMetadata"]
    ] == [key_id]

    # Deleting the user takes its key row with it (ON DELETE CASCADE) and its password.
    # The password reaches AWS only (IaSQL's name for the RPC works too, with its text flag).
    assert rows(envdb, "SELECT * FROM set_user_password('dev', 'Str0ng!passw0rd', true)") == [
        ("OK", "login profile created")
    ]
    assert rows(envdb, "SELECT * FROM set_user_password_request('dev', 'An0ther!passw0rd')") == [
        ("OK", "password updated")
    ]
    assert iam.get_login_profile(UserName="dev")["LoginProfile"]["PasswordResetRequired"] is False
    logged = envdb.execute(
        "SELECT count(*) FROM iasql_audit_log WHERE change::text LIKE '%passw0rd%'"
        " OR message LIKE '%passw0rd%'"
    )
    assert logged.fetchall() == [(0,)]
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM iam_user WHERE user_name = 'dev'")
    assert [(a, t) for a, t, _, _ in preview(envdb)] == [
        ("delete", "access_key"),
        ("delete", "iam_user"),
    ]
    envdb.execute("SELECT * FROM iasql_commit()")
    assert error_code(lambda: iam.get_user(UserName="dev")) == "NoSuchEntity"
    assert error_code(lambda: iam.list_access_keys(UserName="dev")) == "NoSuchEntity"
    assert rows(envdb, "SELECT count(*) FROM access_key") == [(0,)]
    assert preview(envdb) == []


def second_environment(server: RunningServer) -> str:
    """Another environment database (another account), made as a user would."""
    with psycopg.connect(server.dsn(database="iasql"), autocommit=True) as admin:
        url = admin.execute(
            "SELECT url FROM iasql_connect(%s)", (f"env_iam_{secrets.token_hex(4)}",)
        )
        return str(url.fetchone()[0])  # type: ignore[index]


def test_replayed_access_key_sql_does_nothing_in_another_account(
    envdb: psycopg.Connection, iam_moto: MotoServer, iam: Any, iasql: RunningServer
) -> None:
    """A key exists in one account only: its SQL names it by its id, which no row of another
    account has. A replayed INSERT stops at once: a key there must be requested there."""
    iam.create_user(UserName="ci")
    key_id = iam.create_access_key(UserName="ci")["AccessKey"]["AccessKeyId"]
    install(envdb, iam_moto)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE access_key SET status = 'Inactive'")
    envdb.execute("SELECT * FROM iasql_commit()")
    statements = [r[0] for r in rows(envdb, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(statements) == 1 and key_id in statements[0]

    # "Prod": the same user, its own key (the emptied moto stands for another account).
    iam_moto.reset()
    iam.create_user(UserName="ci")
    prod_key = iam.create_access_key(UserName="ci")["AccessKey"]["AccessKeyId"]
    with psycopg.connect(second_environment(iasql), autocommit=True) as prod:
        install(prod, iam_moto)
        prod.execute("SELECT * FROM iasql_begin()")
        assert prod.execute(statements[0]).rowcount == 0
        assert preview(prod) == []
        prod.execute("SELECT * FROM iasql_commit()")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            prod.execute("INSERT INTO access_key (status, user_name) VALUES ('Active', 'ci')")
    listed = iam.list_access_keys(UserName="ci")["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in listed] == [(prod_key, "Active")]


# --- the RPCs, run directly against moto ----------------------------------------------------


def test_rpcs_hand_out_secrets_once(iam_moto: MotoServer, iam: Any) -> None:
    iam.create_user(UserName="rpc")
    password = "Sup3r!secret-pw"

    async def scenario(cloud: AwsCloud) -> list[Any]:
        [key] = await request_access_key(cloud, "rpc")
        with pytest.raises(CloudError, match="NoSuchEntity"):
            await request_access_key(cloud, "nobody")
        created = await set_user_password(cloud, "rpc", password, True)
        assert iam.get_login_profile(UserName="rpc")["LoginProfile"]["UserName"] == "rpc"
        # (moto drops PasswordResetRequired on create; an update keeps it, as AWS does.)
        updated = await set_user_password(cloud, "rpc", password + "2", True)
        assert iam.get_login_profile(UserName="rpc")["LoginProfile"]["PasswordResetRequired"]
        with pytest.raises(CloudError) as failed:
            await set_user_password(cloud, "nobody", password, False)
        assert password not in str(failed.value) and "nobody" in str(failed.value)
        # The table's mapper sees the key, never its secret; and it can't make one.
        records = await ACCESS_KEY.mapper.read(cloud, None) if ACCESS_KEY.mapper else []
        assert [r["access_key_id"] for r in records] == [key["access_key_id"]]
        assert all("secret_access_key" not in r for r in records)
        with pytest.raises(CloudError, match=r"access_key_request\('rpc'\)"):
            assert ACCESS_KEY.mapper is not None
            await ACCESS_KEY.mapper.create(cloud, {"user_name": "rpc", "access_key_id": None})
        removed = await set_user_password(cloud, "rpc", "", None)
        return [key, created, updated, removed]

    key, created, updated, removed = in_cloud(iam_moto, scenario)
    assert key["status"] == "SUCCESS" and key["secret_access_key"]
    assert [
        k["AccessKeyId"] for k in iam.list_access_keys(UserName="rpc")["AccessKeyMetadata"]
    ] == [key["access_key_id"]]
    # The secret works: moto checks the signature against the key it made.
    caller = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=iam_moto.endpoint,
        aws_access_key_id=key["access_key_id"],
        aws_secret_access_key=key["secret_access_key"],
    ).get_caller_identity()
    assert caller["Arn"].endswith(":user/rpc")
    assert created == [{"status": "OK", "message": "login profile created"}]
    assert updated == [{"status": "OK", "message": "password updated"}]
    assert removed == [{"status": "OK", "message": "login profile removed"}]
    assert error_code(lambda: iam.get_login_profile(UserName="rpc")) == "NoSuchEntity"
