"""Module install / uninstall / import, through the proxy, against a moto server."""

from __future__ import annotations

import json
import secrets

import boto3
import psycopg
import pytest

from engine import platform
from engine.admin import PublicAddress
from engine.core import Engine, EngineConfig
from iasql.postgres import LocalPostgres
from iasql.sandbox import MotoServer
from tests.support.env import RunningServer, add_credentials, only_regions, rows

# What iasql_modules_installed() lists in every environment database, as IaSQL does.
BUILT_IN = [
    ("iasql_functions", "0.1.0", ["iasql_platform"], 1),
    ("iasql_platform", "0.1.0", [], 1),
]


def logs_client(moto: MotoServer, region: str) -> object:
    return boto3.client("logs", region_name=region, endpoint_url=moto.endpoint)


def test_install_resolves_dependencies_and_imports_existing_resources(
    envdb: psycopg.Connection, moto_accounts
) -> None:
    moto = moto_accounts()
    for region, name in (("us-east-1", "/app/east"), ("eu-west-1", "/app/west")):
        logs_client(moto, region).create_log_group(logGroupName=name)  # type: ignore[attr-defined]

    installed = rows(envdb, "SELECT * FROM iasql_install('aws_account')")
    assert installed == [("aws_account", "aws_credentials", 0), ("aws_account", "aws_regions", 0)]
    add_credentials(envdb, moto)

    installed = rows(envdb, "SELECT * FROM iasql_install('aws_cloudwatch')")
    assert installed == [("aws_cloudwatch", "log_group", 2), ("aws_cloudwatch", "metric_alarm", 0)]
    assert rows(envdb, "SELECT default_aws_region()") == [("us-east-1",)]
    assert rows(envdb, "SELECT log_group_name, region FROM log_group ORDER BY 1") == [
        ("/app/east", "us-east-1"),
        ("/app/west", "eu-west-1"),
    ]
    arn = rows(envdb, "SELECT log_group_arn FROM log_group WHERE region = 'eu-west-1'")[0][0]
    assert arn.startswith("arn:aws:logs:eu-west-1:")
    assert rows(envdb, "SELECT * FROM iasql_modules_installed() ORDER BY 1") == [
        ("aws_account", "0.1.0", [], 1),
        ("aws_cloudwatch", "0.1.0", ["aws_account"], 1),
        *BUILT_IN,
    ]
    # The audit log never holds the secret.
    audit = rows(
        envdb, "SELECT change::text FROM iasql_audit_log WHERE table_name = 'aws_credentials'"
    )
    assert audit and all("a-very-secret-key" not in text for (text,) in audit)


def test_install_errors(envdb: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.UndefinedObject) as error:
        envdb.execute("SELECT * FROM iasql_install('aws_cloudwach')")
    assert error.value.diag.message_hint == 'did you mean "aws_cloudwatch"?'
    envdb.execute("CREATE TABLE queue (id int)")
    with pytest.raises(psycopg.errors.DuplicateTable) as error:
        envdb.execute("SELECT * FROM iasql_install('aws_sqs')")
    assert "queue" in str(error.value)
    # Nothing of the failed install is left behind.
    assert rows(envdb, "SELECT * FROM iasql_modules_installed()") == BUILT_IN


def test_the_built_in_modules_are_always_installed(envdb: psycopg.Connection) -> None:
    """iasql_platform and iasql_functions are the engine itself: installed in every
    environment database, listed with the others; installing one does nothing, and
    uninstalling one is refused before anything is dropped."""
    assert rows(envdb, "SELECT * FROM iasql_modules_installed()") == BUILT_IN
    listed = dict(rows(envdb, "SELECT module_name, dependencies::text FROM iasql_modules_list()"))
    assert json.loads(listed["iasql_functions"]) == ["iasql_platform"]
    assert json.loads(listed["iasql_platform"]) == []
    assert rows(envdb, "SELECT * FROM iasql_install('iasql_platform', 'iasql_functions')") == []
    assert rows(envdb, "SELECT * FROM iasql_install('iasql_platform', 'aws_account')") == [
        ("aws_account", "aws_credentials", 0),
        ("aws_account", "aws_regions", 0),
    ]
    for names in ("'iasql_platform'", "'iasql_functions'", "'aws_account', 'iasql_platform'"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            envdb.execute(f"SELECT * FROM iasql_uninstall({names})")
        message = refused.value.diag.message_primary or ""
        assert message.endswith(": built into every environment database"), message
        assert "\n" not in message
        assert "always installed" in (refused.value.diag.message_hint or "")
    assert rows(envdb, "SELECT module_name FROM iasql_modules_installed()") == [
        ("aws_account",),
        ("iasql_functions",),
        ("iasql_platform",),
    ]
    assert rows(envdb, "SELECT name FROM iasql_module") == [("aws_account",)]
    assert rows(envdb, "SELECT to_regclass('aws_credentials') IS NOT NULL") == [(True,)]
    help_modules = dict(rows(envdb, "SELECT name, module FROM iasql_help()"))
    assert help_modules["iasql_install"] == help_modules["iasql_help"] == "iasql_functions"


def test_uninstall_refuses_while_needed_then_drops(
    envdb: psycopg.Connection, moto_accounts
) -> None:
    moto = moto_accounts()
    logs_client(moto, "us-east-1").create_log_group(logGroupName="/kept")  # type: ignore[attr-defined]
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_cloudwatch')")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as error:
        envdb.execute("SELECT * FROM iasql_uninstall('aws_account')")
    assert "aws_cloudwatch needs aws_account" in str(error.value)
    dropped = rows(envdb, "SELECT * FROM iasql_uninstall('aws_cloudwatch')")
    assert sorted(dropped) == [
        ("aws_cloudwatch", "log_group", 1),
        ("aws_cloudwatch", "metric_alarm", 0),
    ]
    assert rows(envdb, "SELECT to_regclass('log_group')") == [(None,)]
    # The cloud is untouched, and a new install imports the group again.
    names = logs_client(moto, "us-east-1").describe_log_groups()["logGroups"]  # type: ignore[attr-defined]
    assert [g["logGroupName"] for g in names] == ["/kept"]
    assert rows(envdb, "SELECT * FROM iasql_install('aws_cloudwatch')") == [
        ("aws_cloudwatch", "log_group", 1),
        ("aws_cloudwatch", "metric_alarm", 0),
    ]


def test_uninstalling_a_module_that_is_not_installed_skips_it(
    envdb: psycopg.Connection, moto_accounts
) -> None:
    """As in IaSQL, a module that is not installed is skipped (with a NOTICE); the others
    named are uninstalled. An unknown name is still an error."""
    notices: list[str] = []
    envdb.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    assert rows(envdb, "SELECT * FROM iasql_uninstall('aws_sqs')") == []
    assert notices == ["module aws_sqs is not installed: skipped"]
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto_accounts())
    envdb.execute("SELECT * FROM iasql_install('aws_cloudwatch')")
    notices.clear()
    dropped = rows(envdb, "SELECT * FROM iasql_uninstall('aws_sqs', 'aws_cloudwatch', 'aws_s3')")
    assert sorted(dropped) == [
        ("aws_cloudwatch", "log_group", 0),
        ("aws_cloudwatch", "metric_alarm", 0),
    ]
    assert notices[0] == "modules aws_sqs, aws_s3 are not installed: skipped"
    assert rows(envdb, "SELECT module_name FROM iasql_modules_installed()") == [
        ("aws_account",),
        ("iasql_functions",),
        ("iasql_platform",),
    ]
    with pytest.raises(psycopg.errors.UndefinedObject) as error:
        envdb.execute("SELECT * FROM iasql_uninstall('aws_sq')")
    assert error.value.diag.message_primary == "module 'aws_sq' does not exist"


def test_uninstall_leaves_no_function_or_type_behind(envdb: psycopg.Connection) -> None:
    """Every module's triggers, functions and types go with it: after installing every module
    and uninstalling them all, the database has the same functions and types as before."""

    def objects() -> list[tuple[str, str]]:
        return rows(
            envdb,
            "SELECT 'function', p.oid::regprocedure::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            " UNION ALL SELECT 'type', t.typname::text FROM pg_type t"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0"
            " ORDER BY 1, 2",
        )

    names = [r[0] for r in rows(envdb, "SELECT module_name FROM iasql_modules_list()")]
    envdb.execute("SELECT * FROM iasql_modules_installed()")  # sets the platform up
    before = objects()
    envdb.execute("SELECT * FROM iasql_install(VARIADIC %s::text[])", (names,))
    assert len(objects()) > len(before)  # the modules did make functions
    installed = [
        r[0]
        for r in rows(envdb, "SELECT module_name FROM iasql_modules_installed()")
        if r[0] not in ("iasql_platform", "iasql_functions")
    ]
    envdb.execute("SELECT * FROM iasql_uninstall(VARIADIC %s::text[])", (installed,))
    left = objects()
    assert left == before, (sorted(set(left) - set(before)), sorted(set(before) - set(left)))


def test_environment_role_reads_platform_tables_but_cannot_write_them(
    postgres: LocalPostgres, iasql: RunningServer
) -> None:
    alias = f"env_{secrets.token_hex(4)}"
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        url = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()[0]  # type: ignore[index]
    try:
        # The handed-out URL names the proxy; as the environment's own role:
        with psycopg.connect(url, autocommit=True) as env:
            env.execute("SELECT * FROM iasql_install('aws_account')")
            assert rows(env, "SELECT name FROM iasql_module") == [("aws_account",)]
            assert rows(env, "SELECT count(*) FROM iasql_audit_log") == [(0,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                env.execute("INSERT INTO iasql_module VALUES ('x', '1')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                env.execute("DELETE FROM iasql_audit_log")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                env.execute("DROP TABLE aws_regions")
            env.execute(
                "INSERT INTO aws_credentials (access_key_id, secret_access_key) VALUES ('k', 's')"
            )
            [(user, change_type)] = rows(
                env, 'SELECT "user", change_type::text FROM iasql_audit_log'
            )
            assert (user, change_type) == (alias, "INSERT")
        # Straight on the backing Postgres, the function stubs explain where to go.
        with psycopg.connect(postgres.dsn(database=alias), autocommit=True) as direct:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as error:
                direct.execute("SELECT * FROM iasql_install('aws_sqs')")
            assert "only through the iasql server" in str(error.value)
    finally:
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            admin.execute("SELECT * FROM iasql_disconnect(%s)", (alias,))
            # The same alias again is a new, empty database (no stale engine connections).
            url = admin.execute("SELECT url FROM iasql_connect(%s)", (alias,)).fetchone()[0]  # type: ignore[index]
        with psycopg.connect(url, autocommit=True) as env:
            assert rows(env, "SELECT * FROM iasql_modules_installed()") == BUILT_IN
        with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
            admin.execute("SELECT * FROM iasql_disconnect(%s)", (alias,))


def test_regions_of_a_new_account_get_one_default(envdb: psycopg.Connection, moto_accounts) -> None:
    """iasql_sync() straight after the credentials reads the account's regions and makes
    us-east-1 the default. As in IaSQL, setting another region's flag moves the default
    there; clearing the only default's flag, or picking two at once, is refused."""
    moto = moto_accounts()
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    # Before the regions are read, the UPDATE meets no row, and a NOTICE says why.
    notices: list[str] = []
    envdb.add_notice_handler(
        lambda diag: notices.append(f"{diag.message_primary} {diag.message_hint}")
    )
    envdb.execute("UPDATE aws_regions SET is_default = TRUE WHERE region = 'us-west-2'")
    assert len(notices) == 1 and "aws_regions is empty" in notices[0], notices
    assert "iasql_sync()" in notices[0]
    envdb.execute("SELECT * FROM iasql_sync()")
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("us-east-1",)]
    assert rows(envdb, "SELECT count(*) > 10 FROM aws_regions") == [(True,)]
    assert rows(envdb, "SELECT default_aws_region('eu-west-1')") == [("eu-west-1",)]
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("eu-west-1",)]
    # IaSQL's way of picking the default region.
    envdb.execute("UPDATE aws_regions SET is_default = TRUE WHERE region = 'us-west-2'")
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("us-west-2",)]
    assert rows(envdb, "SELECT default_aws_region()") == [("us-west-2",)]
    # Setting it again, or setting the default of a region that is it already, changes nothing.
    envdb.execute("UPDATE aws_regions SET is_default = TRUE WHERE region = 'us-west-2'")
    assert rows(envdb, "SELECT default_aws_region('us-west-2')") == [("us-west-2",)]
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("us-west-2",)]
    # Inside one Postgres transaction too (IaSQL's own default_aws_region(r) clears first).
    with envdb.transaction():
        envdb.execute("UPDATE aws_regions SET is_default = FALSE WHERE is_default")
        envdb.execute("UPDATE aws_regions SET is_default = TRUE WHERE region = 'eu-west-1'")
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("eu-west-1",)]
    with pytest.raises(psycopg.errors.CheckViolation) as error:
        envdb.execute("UPDATE aws_regions SET is_default = FALSE WHERE region = 'eu-west-1'")
    assert str(error.value.diag.message_primary) == (
        "aws_regions needs a default region: eu-west-1 was the only one"
    )
    assert "SET is_default = true WHERE region = " in (error.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.CheckViolation) as error:
        envdb.execute(
            "UPDATE aws_regions SET is_default = TRUE WHERE region IN ('us-east-2', 'us-west-1')"
        )
    assert str(error.value.diag.message_primary) == (
        "only one region can be the default; this statement picks us-east-2, us-west-1"
    )
    assert error.value.diag.message_hint == (
        "pick one: UPDATE aws_regions SET is_default = true WHERE region = 'us-east-2'"
    )
    assert rows(envdb, "SELECT region FROM aws_regions WHERE is_default") == [("eu-west-1",)]


def test_import_pages_through_more_than_a_thousand_queues(
    envdb: psycopg.Connection, moto_accounts
) -> None:
    """list_queues answers at most 1000 queues unless asked for pages: all are imported."""
    moto = moto_accounts()
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint)
    for i in range(1005):
        sqs.create_queue(QueueName=f"q{i:04}")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    only_regions(envdb)
    installed = rows(envdb, "SELECT * FROM iasql_install('aws_sqs')")
    assert installed == [("aws_sqs", "queue", 1005)]
    assert rows(envdb, "SELECT count(DISTINCT url), max(name) FROM queue") == [(1005, "q1004")]


def test_modules_list_shows_every_module(envdb: psycopg.Connection) -> None:
    listed = dict(rows(envdb, "SELECT module_name, dependencies::text FROM iasql_modules_list()"))
    for name in (
        "aws_account", "aws_s3", "aws_cloudwatch", "aws_sqs", "aws_vpc", "aws_security_group",
        "aws_iam", "aws_acm", "aws_elb", "aws_ec2", "aws_ec2_metadata",
    ):  # fmt: skip
        assert name in listed, name
    assert set(json.loads(listed["aws_ec2"])) == {
        "aws_account", "aws_security_group", "aws_vpc", "aws_iam", "aws_elb",
    }  # fmt: skip


def test_each_built_in_function_is_declared_on_the_method_that_runs_it() -> None:
    """@builtin declares a function on its handler; Engine() binds each to itself. The stub
    every database gets has the signature iasql_help() shows."""
    engine = Engine(EngineConfig("postgres://unused", PublicAddress("127.0.0.1", 5432)))
    built_in = [s for s in engine.functions.values() if s.name not in engine.function_modules]
    assert len(built_in) == len({s.name for s in built_in}) >= 20
    for spec in built_in:
        assert getattr(spec.handler, "__self__", None) is engine, spec.name
    assert engine.functions["iasql_install"].handler == engine._install
    assert engine.functions["iasql_apply"].handler == engine._deprecated
    stubs = platform.function_stubs(built_in)
    exposed = [s for s in built_in if not s.admin_only]
    assert len(stubs) == len(exposed)
    for spec, stub in zip(exposed, stubs, strict=True):
        assert stub.startswith(f"CREATE OR REPLACE FUNCTION {spec.signature()} RETURNS TABLE")
