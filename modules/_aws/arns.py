"""The parts of an ARN: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE."""

from __future__ import annotations


def region_of(arn: str) -> str:
    """arn:aws:SERVICE:REGION:ACCOUNT:... -> REGION."""
    return arn.split(":")[3]
