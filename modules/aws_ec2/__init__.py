"""aws_ec2: instances and their security groups, key pairs, general purpose volumes and
their attachments, and instances registered in load balancer target groups."""

from __future__ import annotations

from modules import VERSION
from modules._aws.tags import tags_as_text_teardown
from modules.aws_ec2.ami import DESCRIBE_AMI
from modules.aws_ec2.instance import INSTANCE, INSTANCE_SECURITY_GROUPS, ROOT_VOLUME_TRIGGER
from modules.aws_ec2.key_pair import KEY_PAIR, KEY_PAIR_IMPORT, KEY_PAIR_REQUEST
from modules.aws_ec2.registered import REGISTERED_INSTANCE
from modules.aws_ec2.volume import GENERAL_PURPOSE_VOLUME, INSTANCE_BLOCK_DEVICE_MAPPING
from modules.spec import ModuleSpec

MODULE = ModuleSpec(
    name="aws_ec2",
    version=VERSION,
    dependencies=("aws_account", "aws_vpc", "aws_security_group", "aws_iam", "aws_elb"),
    description="EC2 instances, key pairs, general purpose volumes and target registrations",
    tables=(
        KEY_PAIR,
        INSTANCE,
        INSTANCE_SECURITY_GROUPS,
        GENERAL_PURPOSE_VOLUME,
        INSTANCE_BLOCK_DEVICE_MAPPING,
        REGISTERED_INSTANCE,
    ),
    # The instance's root-volume trigger names the volume tables: it runs after they exist.
    after_tables_sql=ROOT_VOLUME_TRIGGER,
    functions=(DESCRIBE_AMI, KEY_PAIR_IMPORT, KEY_PAIR_REQUEST),
    teardown_sql=(
        "DROP FUNCTION IF EXISTS instance_root_volume_goes()",
        "DROP FUNCTION IF EXISTS registered_instance_default_port()",
        tags_as_text_teardown(INSTANCE.name),
        tags_as_text_teardown(GENERAL_PURPOSE_VOLUME.name),
    ),
)
