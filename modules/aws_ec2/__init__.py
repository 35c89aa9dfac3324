"""aws_ec2: instances and their security groups, key pairs, general purpose volumes and
their attachments, and instances registered in load balancer target groups."""

from __future__ import annotations

from dataclasses import replace

from modules import VERSION
from modules.aws_ec2.instance import INSTANCE, INSTANCE_EXTRA_DDL, INSTANCE_SECURITY_GROUPS
from modules.aws_ec2.key_pair import KEY_PAIR, KEY_PAIR_IMPORT, KEY_PAIR_REQUEST
from modules.aws_ec2.registered import REGISTERED_INSTANCE
from modules.aws_ec2.volume import GENERAL_PURPOSE_VOLUME, INSTANCE_BLOCK_DEVICE_MAPPING
from modules.spec import ModuleSpec

# The instance's root-volume trigger names the volume tables, so it runs after they exist.
_LAST = replace(INSTANCE_BLOCK_DEVICE_MAPPING, extra_ddl=INSTANCE_EXTRA_DDL)

MODULE = ModuleSpec(
    name="aws_ec2",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc", "aws_security_group", "aws_iam", "aws_elb"),
    description="EC2 instances, key pairs, general purpose volumes and target registrations",
    tables=(  # referenced tables first
        KEY_PAIR,
        INSTANCE,
        INSTANCE_SECURITY_GROUPS,
        GENERAL_PURPOSE_VOLUME,
        _LAST,
        REGISTERED_INSTANCE,
    ),
    functions=(KEY_PAIR_IMPORT, KEY_PAIR_REQUEST),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS instance_root_volume_goes()",
        "DROP FUNCTION IF EXISTS registered_instance_default_port()",
    ),
)
