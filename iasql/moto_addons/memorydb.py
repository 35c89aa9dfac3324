"""MemoryDB: moto has no UpdateSubnetGroup (HTTP 500), and its UpdateCluster stores new
SecurityGroupIds but keeps answering with the groups the cluster was made with. AWS changes a
subnet group's description and subnets in place, and a cluster's groups to the list given."""

from __future__ import annotations

import json
from typing import Any


def install() -> None:
    from moto.core.responses import ActionResult
    from moto.memorydb.exceptions import (
        InvalidParameterValueException,
        InvalidSubnetError,
        SubnetGroupNotFoundFault,
    )
    from moto.memorydb.models import MemoryDBBackend, MemoryDBCluster, MemoryDBSubnetGroup
    from moto.memorydb.responses import MemoryDBResponse

    def update_subnet_group_model(
        self: MemoryDBBackend,
        subnet_group_name: str,
        description: str | None,
        subnet_ids: list[str] | None,
    ) -> MemoryDBSubnetGroup:
        group = self.subnet_groups.get(subnet_group_name)
        if group is None:
            raise SubnetGroupNotFoundFault(msg=f"Subnet group {subnet_group_name} not found.")
        if subnet_group_name == "default":
            raise InvalidParameterValueException(msg="default is reserved and cannot be modified.")
        if subnet_ids:
            found = self.ec2_backend.describe_subnets(filters={"subnet-id": subnet_ids})
            if len(found) != len(set(subnet_ids)):
                raise InvalidSubnetError(subnet_ids)
            group.subnet_ids = subnet_ids
        if description is not None:
            group.description = description
        return group

    def update_subnet_group(self: MemoryDBResponse) -> ActionResult:
        params = json.loads(self.body)
        group = self.memorydb_backend.update_subnet_group(  # type: ignore[attr-defined]
            subnet_group_name=params.get("SubnetGroupName"),
            description=params.get("Description"),
            subnet_ids=params.get("SubnetIds"),
        )
        return ActionResult({"SubnetGroup": group.to_dict()})

    cluster_update = MemoryDBCluster.update

    def update(self: MemoryDBCluster, *args: Any, **kwargs: Any) -> None:
        cluster_update(self, *args, **kwargs)
        self.security_groups = [
            {"SecurityGroupId": group, "Status": "active"} for group in self.security_group_ids
        ]

    MemoryDBBackend.update_subnet_group = update_subnet_group_model  # type: ignore[attr-defined]
    MemoryDBResponse.update_subnet_group = update_subnet_group  # type: ignore[attr-defined]
    MemoryDBCluster.update = update  # type: ignore[method-assign]
