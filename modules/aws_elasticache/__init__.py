"""aws_elasticache: ElastiCache clusters (Redis or Memcached), as IaSQL's cache_cluster.

As in IaSQL, a change to any column replaces the cluster: it is deleted, and once AWS has
removed it, made again with the same id. A cluster AWS is deleting is not read."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from modules import VERSION
from modules._aws.region import region_column
from modules.errors import error_code, ignoring
from modules.spec import Cloud, Column, ModuleSpec, Record, Table

ENGINES = ("memcached", "redis")

# AWS takes minutes to make or remove a cluster: poll every 15 s, for up to 30 minutes.
_WAIT = {"Delay": 15, "MaxAttempts": 120}


def _engine(value: str | None) -> str:
    """The engine column: IaSQL reads every engine that is not Memcached as Redis."""
    return "memcached" if value == "memcached" else "redis"


def normalize_nodes(value: Any) -> int:
    """A cluster made without a node count has AWS's default of one node."""
    return 1 if value is None else int(value)


# A row without a node count holds AWS's default, one node, as the cluster will read back.
_ONE_NODE_BY_DEFAULT = (
    """CREATE OR REPLACE FUNCTION cache_cluster_default_nodes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.num_nodes IS NULL THEN
            NEW.num_nodes := 1;
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER cache_cluster_default_nodes BEFORE INSERT OR UPDATE OF num_nodes
        ON cache_cluster FOR EACH ROW EXECUTE FUNCTION cache_cluster_default_nodes()""",
)


def _record(cluster: dict[str, Any]) -> Record:
    return {
        "cluster_id": cluster["CacheClusterId"],
        "node_type": cluster.get("CacheNodeType"),
        "engine": _engine(cluster.get("Engine")),
        "num_nodes": cluster.get("NumCacheNodes"),
    }


def _same(record: Record, current: Record) -> bool:
    return (
        record.get("engine") == current["engine"]
        and record.get("node_type") == current["node_type"]
        and normalize_nodes(record.get("num_nodes")) == normalize_nodes(current["num_nodes"])
    )


class CacheClusterMapper:
    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        async with cloud.client("elasticache", region) as aws:
            pages = aws.get_paginator("describe_cache_clusters").paginate()
            return [
                _record(cluster)
                async for page in pages
                for cluster in page.get("CacheClusters", [])
                if cluster.get("CacheClusterStatus") != "deleting"
            ]

    async def _read_one(self, aws: Any, cluster_id: str) -> Record:
        answer = await aws.describe_cache_clusters(CacheClusterId=cluster_id)
        return _record(answer["CacheClusters"][0])

    async def create(self, cloud: Cloud, record: Record) -> Record:
        cluster_id = record["cluster_id"]
        arguments: dict[str, Any] = {"CacheClusterId": cluster_id, "Engine": record["engine"]}
        if record.get("node_type") is not None:
            arguments["CacheNodeType"] = record["node_type"]
        if record.get("num_nodes") is not None:
            arguments["NumCacheNodes"] = record["num_nodes"]
        async with cloud.client("elasticache", record["region"]) as aws:
            try:
                await aws.create_cache_cluster(**arguments)
            except ClientError as error:
                # A retried commit finds the cluster it made: the same one is taken as made.
                if error_code(error) != "CacheClusterAlreadyExists":
                    raise
                if not _same(record, await self._read_one(aws, cluster_id)):
                    raise
            await aws.get_waiter("cache_cluster_available").wait(
                CacheClusterId=cluster_id, WaiterConfig=_WAIT
            )
            return await self._read_one(aws, cluster_id)

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        # Every column replaces the cluster: nothing is left to change in place.
        return current

    async def delete(self, cloud: Cloud, current: Record) -> None:
        cluster_id = current["cluster_id"]
        async with cloud.client("elasticache", current["region"]) as aws:
            with ignoring("CacheClusterNotFound"):
                await aws.delete_cache_cluster(CacheClusterId=cluster_id)
            # A replace makes one of the same id next, which AWS refuses until this is gone.
            await aws.get_waiter("cache_cluster_deleted").wait(
                CacheClusterId=cluster_id, WaiterConfig=_WAIT
            )


CACHE_CLUSTER = Table(
    name="cache_cluster",
    columns=(
        Column("cluster_id", "varchar", nullable=False, replaces=True),
        Column("node_type", "varchar", replaces=True),
        Column(
            "engine",
            "varchar",
            nullable=False,
            default="'redis'",
            check=f"engine IN {ENGINES!r}",
            replaces=True,
        ),
        Column("num_nodes", "integer", replaces=True),
        region_column(),
    ),
    mapper=CacheClusterMapper(),
    extra_ddl=_ONE_NODE_BY_DEFAULT,
    natural_key=("cluster_id", "region"),
    cloud_id=("cluster_id", "region"),
)

MODULE = ModuleSpec(
    name="aws_elasticache",
    version=VERSION,
    dependencies=("aws_account",),
    description="ElastiCache clusters (Redis and Memcached)",
    tables=(CACHE_CLUSTER,),
    teardown_sql=("DROP FUNCTION IF EXISTS cache_cluster_default_nodes()",),
)
