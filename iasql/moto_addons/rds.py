"""RDS: moto's ModifyDBSubnetGroup pops the group from its dict and never puts it back, so the
group is gone after a successful modify. AWS changes it in place."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from moto.rds.exceptions import DBSubnetGroupNotFoundError
    from moto.rds.models import RDSBackend

    def modify_db_subnet_group(
        self: RDSBackend, subnet_name: str, description: str, subnets: list[Any]
    ) -> Any:
        group = self.subnet_groups.get(subnet_name)
        if group is None:
            raise DBSubnetGroupNotFoundError(subnet_name)
        group.subnets = subnets
        if description is not None:
            group.description = description
        return group

    RDSBackend.modify_db_subnet_group = modify_db_subnet_group  # type: ignore[method-assign]
