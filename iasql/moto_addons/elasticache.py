"""ElastiCache: moto's DeleteCacheCluster leaves the cluster in `deleting` forever, so the
`cache_cluster_deleted` waiter never passes and a cluster of the same id can never be made
again. AWS removes a deleted cluster after some minutes: here it is gone by the next describe
(the delete's own answer still shows it `deleting`, as AWS's does).

moto also makes a Redis cluster of one node whatever NumCacheNodes says; AWS refuses more
than one, and so does this."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from moto.elasticache.exceptions import InvalidParameterValueException
    from moto.elasticache.models import ElastiCacheBackend

    describe = ElastiCacheBackend.describe_cache_clusters
    create = ElastiCacheBackend.create_cache_cluster

    def forget_deleted(backend: ElastiCacheBackend) -> None:
        for name, cluster in list(backend.cache_clusters.items()):
            if cluster.cache_cluster_status == "deleting":
                del backend.cache_clusters[name]

    def describe_cache_clusters(
        self: ElastiCacheBackend, cache_cluster_id: str | None = None
    ) -> list[Any]:
        forget_deleted(self)
        return describe(self, cache_cluster_id)

    def create_cache_cluster(self: ElastiCacheBackend, *args: Any, **kwargs: Any) -> Any:
        engine = kwargs.get("engine") or "redis"
        nodes = kwargs.get("num_cache_nodes")
        if engine == "redis" and nodes is not None and nodes > 1:
            raise InvalidParameterValueException(
                "Cannot create a Redis cluster with a NumCacheNodes parameter greater than 1."
            )
        return create(self, *args, **kwargs)

    ElastiCacheBackend.describe_cache_clusters = describe_cache_clusters  # type: ignore[method-assign]
    ElastiCacheBackend.create_cache_cluster = create_cache_cluster  # type: ignore[method-assign]
