"""aws_elasticache: clusters made with boto3 and imported at install or by iasql_sync(); create,
replace (every column replaces, as in IaSQL: delete, then a new cluster of the same id), rollback
and delete through begin / preview / commit, each checked with boto3; and AWS refusing a
cluster without a node type. moto keeps a deleted cluster `deleting` forever: the add-on
iasql.moto_addons.elasticache removes it, as AWS does after some minutes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from tests.support.aws import REGION
from tests.support.env import add_credentials, commit, no_drift, only_regions, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

CLUSTERS = "SELECT cluster_id, node_type, engine, num_nodes, region FROM cache_cluster ORDER BY 1"


@pytest.fixture(scope="module")
def elasticache_moto(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


def clusters(aws: Any) -> dict[str, tuple[str, str, int, str]]:
    return {
        c["CacheClusterId"]: (c["CacheNodeType"], c["Engine"], c["NumCacheNodes"], c["ARN"])
        for c in aws.describe_cache_clusters()["CacheClusters"]
    }


def test_cache_cluster_life_cycle(envdb: psycopg.Connection, elasticache_moto: MotoServer) -> None:
    moto = elasticache_moto
    moto.reset()
    aws = boto3.client("elasticache", region_name=REGION, endpoint_url=moto.endpoint)
    aws.create_cache_cluster(
        CacheClusterId="pre-redis", Engine="redis", CacheNodeType="cache.t3.micro"
    )
    conn = envdb
    conn.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(conn, moto)
    only_regions(conn)
    conn.execute("SELECT * FROM iasql_install('aws_elasticache')")

    # Import at install.
    assert rows(conn, CLUSTERS) == [("pre-redis", "cache.t3.micro", "redis", 1, REGION)]
    no_drift(conn)

    # A cluster made outside iasql comes in with iasql_sync().
    aws.create_cache_cluster(
        CacheClusterId="sync-mc",
        Engine="memcached",
        CacheNodeType="cache.t3.micro",
        NumCacheNodes=2,
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, CLUSTERS) == [
        ("pre-redis", "cache.t3.micro", "redis", 1, REGION),
        ("sync-mc", "cache.t3.micro", "memcached", 2, REGION),
    ]
    no_drift(conn)

    # Create: the engine's default (redis), and one node when none is given.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO cache_cluster (cluster_id, node_type) VALUES ('new-redis', 'cache.t3.small')"
    )
    [(action, changes)] = rows(conn, "SELECT action, changes FROM iasql_preview()")
    assert action == "create"
    assert changes["node_type"] == {"old": None, "new": "cache.t3.small"}
    assert changes["engine"] == {"old": None, "new": "redis"}
    assert changes["num_nodes"] == {"old": None, "new": 1}
    commit(conn)
    assert clusters(aws)["new-redis"][:3] == ("cache.t3.small", "redis", 1)
    no_drift(conn)
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 1 and "'new-redis'" in replay[0], replay
    assert not any("arn:aws" in sql for sql in replay)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE cache_cluster SET node_type = 'cache.m5.large' WHERE cluster_id = 'new-redis'"
    )
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT node_type FROM cache_cluster WHERE cluster_id = 'new-redis'") == [
        ("cache.t3.small",)
    ]
    assert clusters(aws)["new-redis"][0] == "cache.t3.small"

    # Replace: the node type of one, the node count of another, and the engine of a third;
    # each is deleted, then made again with the same id.
    before = clusters(aws)
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE cache_cluster SET node_type = 'cache.m5.large' WHERE cluster_id = 'new-redis'"
    )
    conn.execute("UPDATE cache_cluster SET num_nodes = 3 WHERE cluster_id = 'sync-mc'")
    conn.execute(
        "UPDATE cache_cluster SET engine = 'memcached', num_nodes = 2 WHERE cluster_id = 'pre-redis'"
    )
    planned_actions = rows(conn, "SELECT action, changes FROM iasql_preview() ORDER BY 1")
    assert [a for a, _ in planned_actions] == ["replace", "replace", "replace"], planned_actions
    by_change = {tuple(sorted(c)): c for _, c in planned_actions}
    assert by_change[("node_type",)]["node_type"] == {
        "old": "cache.t3.small",
        "new": "cache.m5.large",
        "forces_replace": True,
    }
    assert by_change[("num_nodes",)]["num_nodes"] == {"old": 2, "new": 3, "forces_replace": True}
    assert by_change[("engine", "num_nodes")]["engine"]["forces_replace"] is True
    commit(conn)
    after = clusters(aws)
    assert after["new-redis"][:3] == ("cache.m5.large", "redis", 1)
    assert after["sync-mc"][:3] == ("cache.t3.micro", "memcached", 3)
    assert after["pre-redis"][:3] == ("cache.t3.micro", "memcached", 2)
    assert set(after) == set(before)
    assert rows(conn, CLUSTERS) == [
        ("new-redis", "cache.m5.large", "redis", 1, REGION),
        ("pre-redis", "cache.t3.micro", "memcached", 2, REGION),
        ("sync-mc", "cache.t3.micro", "memcached", 3, REGION),
    ]
    no_drift(conn)

    # A cloud error: AWS wants a node type. The commit says so in one line, and is undone.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO cache_cluster (cluster_id) VALUES ('no-type')")
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate is not None and failed.value.sqlstate.startswith("58")
    message = failed.value.diag.message_primary or ""
    assert "InvalidParameterValue" in message and "CacheNodeType" in message, message
    assert "\n" not in message
    assert rows(conn, "SELECT count(*) FROM cache_cluster WHERE cluster_id = 'no-type'") == [(0,)]
    assert "no-type" not in clusters(aws)

    # Delete.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("DELETE FROM cache_cluster WHERE cluster_id IN ('pre-redis', 'sync-mc')")
    assert sorted(a for a, _ in rows(conn, "SELECT action, changes FROM iasql_preview()")) == [
        "delete",
        "delete",
    ]
    commit(conn)
    assert set(clusters(aws)) == {"new-redis"}
    no_drift(conn)
