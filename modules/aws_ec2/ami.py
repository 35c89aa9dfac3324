"""describe_ami(ami_id): an AMI's attributes, as IaSQL's RPC of that name returns them."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from modules.aws_ec2.instance import resolve_ami
from modules.errors import error_code
from modules.spec import Cloud, ModuleFunction, Record


def _failed(error: ClientError) -> list[Record]:
    """IaSQL answers a failed look-up with a row (status KO and AWS's message), not an error:
    scripts that check `status` keep working."""
    message = str(error.response.get("Error", {}).get("Message") or "")
    return [{"attributes": "", "status": "KO", "message": f"{error_code(error)}: {message}"}]


async def describe_ami(cloud: Cloud, ami_id: str, region: str) -> list[Record]:
    """The image `ami_id` names (an id, or `resolve:ssm:<parameter>` as in `instance.ami`):
    its DescribeImages entry as JSON text, in the database's default region unless told."""
    try:
        image_id = await resolve_ami(cloud, region, ami_id)
        async with cloud.client("ec2", region) as ec2:
            answer = await ec2.describe_images(ImageIds=[image_id])
    except ClientError as error:
        return _failed(error)
    images: list[dict[str, Any]] = answer.get("Images") or []
    if not images:
        return [{"attributes": "", "status": "ERROR", "message": "Error reading image attributes"}]
    # JSON text (IaSQL's column is varchar): `attributes::json ->> 'Architecture'` reads it.
    attributes = json.dumps(images[0], default=str)
    return [{"attributes": attributes, "status": "OK", "message": ""}]


DESCRIBE_AMI = ModuleFunction(
    name="describe_ami",
    columns=(("attributes", "varchar"), ("status", "varchar"), ("message", "varchar")),
    params=(("ami_id", "text"), ("region", "text")),
    run=describe_ami,
    description="An AMI's attributes (DescribeImages) as JSON; takes an id or resolve:ssm:",
    changes_cloud=False,
    optional=("region",),
    sample="SELECT attributes::json ->> 'Architecture' FROM describe_ami('ami-0abc')",
)
