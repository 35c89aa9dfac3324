"""RDS: what moto lacks or gets wrong for aws_rds.

- ModifyDBSubnetGroup pops the group from its dict and never puts it back, so the group is
  gone after a successful modify. AWS changes it in place.
- ResetDBParameterGroup is not implemented (HTTP 500). AWS puts the named parameters (or all
  of them) back to the engine's defaults; moto keeps only the parameters a user set, so a
  reset parameter simply goes away.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    from moto.core.responses import ActionResult
    from moto.rds.exceptions import DBParameterGroupNotFoundError, DBSubnetGroupNotFoundError
    from moto.rds.models import RDSBackend
    from moto.rds.responses import RDSResponse

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

    def reset_db_parameter_group(self: RDSResponse) -> ActionResult:
        name = str(self.params.get("DBParameterGroupName") or "")
        group = self.backend.db_parameter_groups.get(name.lower())
        if group is None:
            raise DBParameterGroupNotFoundError(name)
        if str(self.params.get("ResetAllParameters", "")).lower() in ("true", "1"):
            group.parameters.clear()
        else:
            for parameter in self.params.get("Parameters", []) or []:
                fields = (
                    parameter.original_dict() if hasattr(parameter, "original_dict") else parameter
                )
                group.parameters.pop(fields.get("ParameterName"), None)
        return ActionResult({"DBParameterGroupName": group.name})

    RDSBackend.modify_db_subnet_group = modify_db_subnet_group  # type: ignore[method-assign]
    RDSResponse.reset_db_parameter_group = reset_db_parameter_group  # type: ignore[attr-defined]
