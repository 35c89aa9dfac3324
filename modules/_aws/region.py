"""The `region` column every regional table has (aws_account holds the regions)."""

from __future__ import annotations

from modules.spec import Column, Ref

# The default of every region column: the database's default region, an SQL function that
# aws_account installs.
DEFAULT_REGION = "default_aws_region()"


def region_column() -> Column:
    """The `region` column of every regional table."""
    return Column(
        "region",
        "varchar",
        nullable=False,
        default=DEFAULT_REGION,
        ref=Ref("aws_regions", key="region"),
        replaces=True,
    )
