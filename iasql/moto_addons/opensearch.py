"""OpenSearch: AWS cannot move a domain made without VPC options into a VPC (an update that
adds VPCOptions to a public domain is refused); moto accepts it. Refusing it here lets the
tests see that a new domain gets its VPC when it is made."""

from __future__ import annotations

from typing import Any

from iasql.moto_addons import argument


def install() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.opensearch.models import OpenSearchServiceBackend

    update = OpenSearchServiceBackend.update_domain_config

    def checked_update(self: OpenSearchServiceBackend, *args: Any, **kwargs: Any) -> Any:
        name = argument(update, "domain_name", self, *args, **kwargs)
        vpc = argument(update, "vpc_options", self, *args, **kwargs)
        domain = self.domains.get(name) if name else None
        if vpc and domain is not None and not (domain.vpc_options or {}).get("SubnetIds"):
            raise JsonRESTError(
                "ValidationException",
                "A domain created without a VPC cannot be moved into one: VPCOptions can be"
                " changed only for a domain in a VPC",
            )
        return update(self, *args, **kwargs)

    OpenSearchServiceBackend.update_domain_config = checked_update  # type: ignore[method-assign]
