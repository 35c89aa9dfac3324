"""ECS: AWS refuses a service whose target group no load balancer uses yet ("does not have an
associated load balancer"); moto accepts it. Refusing it here lets the tests see a commit
that creates a service before its target group's listener."""

from __future__ import annotations

from typing import Any

from iasql.moto_addons import argument


def install() -> None:
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend
    from moto.elbv2.models import elbv2_backends

    create_service = EC2ContainerServiceBackend.create_service

    def checked_create_service(self: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> Any:
        balancers = argument(create_service, "load_balancers", self, *args, **kwargs)
        groups = elbv2_backends[self.account_id][self.region_name].target_groups
        for balancer in balancers or []:
            arn = balancer.get("targetGroupArn")
            group = groups.get(arn) if arn else None
            if group is not None and not group.load_balancer_arns:
                raise InvalidParameterException(
                    f"The target group with targetGroupArn {arn} does not have an associated"
                    " load balancer."
                )
        return create_service(self, *args, **kwargs)

    EC2ContainerServiceBackend.create_service = checked_create_service  # type: ignore[method-assign]
