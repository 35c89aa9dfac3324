"""CIDR blocks in the form Postgres's cidr type prints them."""

from __future__ import annotations

import ipaddress
from typing import Any


def normalize_cidr(value: Any) -> str | None:
    """A CIDR as Postgres's cidr type prints it: host bits cleared ("10.0.0.1/8" is
    "10.0.0.0/8"), IPv6 compressed and lower case. Something that is no CIDR is left for AWS
    to reject."""
    if value is None:
        return None
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=False))
    except ValueError:
        return str(value)
