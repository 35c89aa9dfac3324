"""aws_ec2 and aws_ec2_metadata through SQL (iasql_begin / iasql_preview / iasql_commit) on
moto, every cloud effect read back with boto3; the key pair RPCs run directly too."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_ec2.key_pair import key_pair_import, key_pair_request
from tests.support.aws import only_one_region
from tests.support.env import (
    RunningServer,
    add_credentials,
    commit,
    in_cloud,
    one,
    reachable_tempdir,
    rows,
)

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

REGION = "us-east-1"
SSM_AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"
EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


@pytest.fixture(scope="module")
def aws(moto_accounts: Callable[[], MotoServer]) -> MotoServer:
    return moto_accounts()


def client(moto: MotoServer, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",  # module fixtures run before the per-test environment
        aws_secret_access_key="testing",
    )


@dataclass
class Made:
    """What boto3 made before the install, for the import test."""

    image: str
    instance: dict[str, Any]
    volume_id: str


@pytest.fixture(scope="module")
def made(aws: MotoServer) -> Made:
    ec2 = client(aws, "ec2")
    ec2.import_key_pair(KeyName="ops", PublicKeyMaterial=public_key().encode())
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        KeyName="ops",
        UserData="#!/bin/sh\necho hi\n",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "a"}]}],
    )["Instances"][0]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=5, VolumeType="gp3")
    return Made(image, instance, volume["VolumeId"])


@pytest.fixture(scope="module")
def envdb(iasql: RunningServer, aws: MotoServer, made: Made) -> Iterator[psycopg.Connection]:
    """One environment for the whole file, which reads only us-east-1: the import test runs
    first and removes what it imported; every later test cleans up after itself."""
    with psycopg.connect(iasql.dsn(database="iasql"), autocommit=True) as admin:
        [(url,)] = admin.execute("SELECT url FROM iasql_connect('ec2_tests')").fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM iasql_install('aws_account')")
        add_credentials(conn, aws)
        only_one_region(conn)
        conn.execute("SELECT * FROM iasql_install('aws_ec2', 'aws_ec2_metadata')")
        yield conn


def public_key() -> str:
    folder = reachable_tempdir("iasql-test-key-")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(folder / "k")],
        check=True,
    )
    return (folder / "k.pub").read_text().strip()


def preview(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return rows(conn, "SELECT action, table_name, changes FROM iasql_preview() ORDER BY 2, 1")


def instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    return dict(found[0])


# --- import at install ---------------------------------------------------------------------


def test_install_imports_what_boto3_made(
    envdb: psycopg.Connection, aws: MotoServer, made: Made
) -> None:
    ec2 = client(aws, "ec2")
    image, volume = made.image, {"VolumeId": made.volume_id}

    assert rows(envdb, "SELECT name, type, key_pair_id IS NOT NULL FROM key_pair") == [
        ("ops", "rsa", True)
    ]
    assert rows(
        envdb,
        "SELECT instance_id, ami, instance_type, key_pair_name, state, user_data, tags::text,"
        " hibernation_enabled, role_name, subnet_id IS NOT NULL FROM instance",
    ) == [
        (
            made.instance["InstanceId"],
            image,
            "t3.micro",
            "ops",
            "running",
            "#!/bin/sh\necho hi\n",
            '{"Name": "a"}',
            False,
            None,
            True,
        )
    ]
    default_group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]
    assert rows(
        envdb,
        "SELECT g.group_id FROM instance_security_groups j"
        " JOIN security_group g ON g.id = j.security_group_id",
    ) == [(default_group["GroupId"],)]
    # The root volume and its mapping come with the instance; the loose volume too.
    root = made.instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert rows(
        envdb,
        "SELECT volume_id, volume_type, size, is_root_device, state FROM general_purpose_volume"
        " ORDER BY is_root_device",
    ) == [(volume["VolumeId"], "gp3", 5, False, "available"), (root, "gp2", 8, True, "in-use")]
    assert rows(
        envdb,
        "SELECT m.device_name, v.volume_id, m.delete_on_termination"
        " FROM instance_block_device_mapping m JOIN general_purpose_volume v ON v.id = m.volume_id",
    ) == [("/dev/sda1", root, True)]
    # Metadata: cpu_cores from the type (t3.micro: 1 core), since moto has no CpuOptions.
    assert rows(
        envdb,
        "SELECT m.instance_id, architecture, host(private_ip_address), cpu_cores, mem_size_mb,"
        " root_device_type, root_device_name FROM instance_metadata m"
        " JOIN instance i ON i.id = m.id",
    ) == [
        (
            made.instance["InstanceId"],
            "x86_64",
            made.instance["PrivateIpAddress"],
            1,
            1024,
            "ebs",
            "/dev/sda1",
        )
    ]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # instance_metadata is read-only for users: refused at once (IaSQL accepts the write and
    # its next commit puts the row back), with what to change instead; the row untouched.
    for change, verb in (
        ("UPDATE instance_metadata SET cpu_cores = 64", "UPDATE"),
        ("DELETE FROM instance_metadata", "DELETE"),
        ("INSERT INTO instance_metadata SELECT * FROM instance_metadata", "INSERT"),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            envdb.execute(change)
        diag = refused.value.diag
        assert diag.message_primary == (
            f"cannot {verb} instance_metadata: it is read-only, AWS reports its values"
        )
        assert diag.message_hint is not None and "change the instance row" in diag.message_hint
    assert one(envdb, "SELECT cpu_cores FROM instance_metadata") == 1

    # Deleting what was imported: the instance with its root volume, the loose volume, the key.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    envdb.execute("DELETE FROM general_purpose_volume")
    envdb.execute("DELETE FROM key_pair")
    planned = [(a, t) for a, t, _ in preview(envdb)]
    assert sorted(set(planned)) == [
        ("delete", "general_purpose_volume"),
        ("delete", "instance"),
        ("delete", "instance_block_device_mapping"),
        ("delete", "instance_metadata"),
        ("delete", "instance_security_groups"),
        ("delete", "key_pair"),
    ]
    commit(envdb)
    assert instance(ec2, made.instance["InstanceId"])["State"]["Name"] == "terminated"
    assert ec2.describe_volumes()["Volumes"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    for table in ("instance", "general_purpose_volume", "instance_metadata", "key_pair"):
        assert one(envdb, f"SELECT count(*) FROM {table}") == 0


# --- key pairs -----------------------------------------------------------------------------


def test_key_pair_lifecycle(envdb: psycopg.Connection, aws: MotoServer) -> None:
    ec2 = client(aws, "ec2")
    first, second = public_key(), public_key()

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("INSERT INTO key_pair (name, public_key) VALUES ('deploy', %s)", (first,))
    [(action, table, changes)] = preview(envdb)
    assert (action, table) == ("create", "key_pair")
    assert changes["name"] == {"old": None, "new": "deploy"}
    commit(envdb)
    [pair] = ec2.describe_key_pairs(KeyNames=["deploy"], IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == first.split()[:2]
    assert rows(envdb, "SELECT key_pair_id, fingerprint, type FROM key_pair") == [
        (pair["KeyPairId"], pair["KeyFingerprint"], "rsa")
    ]

    # A new public key replaces the pair.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE key_pair SET public_key = %s WHERE name = 'deploy'", (second,))
    [(action, _, changes)] = preview(envdb)
    assert action == "replace" and changes["public_key"]["forces_replace"] is True
    commit(envdb)
    [pair] = ec2.describe_key_pairs(KeyNames=["deploy"], IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == second.split()[:2]

    # Without a public key there is nothing to import: a clear error, nothing made.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("INSERT INTO key_pair (name) VALUES ('nokey')")
    with pytest.raises(psycopg.Error, match="key_pair_request"):
        envdb.execute("SELECT * FROM iasql_commit()")
    assert rows(envdb, "SELECT name FROM key_pair") == [("deploy",)]

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM key_pair WHERE name = 'deploy'")
    assert [(a, t) for a, t, _ in preview(envdb)] == [("delete", "key_pair")]
    commit(envdb)
    assert ec2.describe_key_pairs()["KeyPairs"] == []


def test_key_pair_rpcs_run_and_through_sql(envdb: psycopg.Connection, aws: MotoServer) -> None:
    ec2 = client(aws, "ec2")
    key = public_key()
    [imported] = in_cloud(aws, lambda cloud: key_pair_import(cloud, "direct", key, REGION))
    assert imported["status"] == "OK" and imported["type"] == "rsa"
    [requested] = in_cloud(aws, lambda cloud: key_pair_request(cloud, "made", REGION))
    assert requested["private_key"].startswith("-----BEGIN")
    names = {p["KeyName"] for p in ec2.describe_key_pairs()["KeyPairs"]}
    assert names == {"direct", "made"}

    [(name, status, secret)] = rows(
        envdb, "SELECT name, status, private_key FROM key_pair_request('sql-made', 'us-east-1')"
    )
    assert (name, status) == ("sql-made", "OK") and "PRIVATE KEY" in secret
    [(name, status)] = rows(
        envdb, f"SELECT name, status FROM key_pair_import('sql-imported', '{key}')"
    )
    assert (name, status) == ("sql-imported", "OK")
    # The sync after each RPC brings the pairs in; the private key is kept nowhere.
    assert rows(envdb, "SELECT name FROM key_pair ORDER BY name") == [
        ("direct",),
        ("made",),
        ("sql-imported",),
        ("sql-made",),
    ]
    helped = rows(envdb, "SELECT name FROM iasql_help() WHERE module = 'aws_ec2' ORDER BY 1")
    assert helped == [("describe_ami",), ("key_pair_import",), ("key_pair_request",)]
    stored = rows(envdb, "SELECT change::text FROM iasql_audit_log")
    body = secret.split("-----")[2].strip().splitlines()[1]
    assert not any(body in text for (text,) in stored)
    assert preview(envdb) == []


def test_describe_ami_as_iasql_returns_it(envdb: psycopg.Connection, aws: MotoServer) -> None:
    """IaSQL's describe_ami(ami_id): attributes (the DescribeImages entry as JSON text), status
    and message; an AMI id or a resolve:ssm: path; a failed look-up is a KO row, as there."""
    ec2 = client(aws, "ec2")
    image = ec2.describe_images()["Images"][0]
    [(attributes, status, message)] = rows(
        envdb, f"SELECT * FROM describe_ami('{image['ImageId']}')"
    )
    assert (status, message) == ("OK", "")
    assert json.loads(attributes)["ImageId"] == image["ImageId"]
    architecture = one(
        envdb,
        "SELECT attributes::json ->> 'Architecture'"
        f" FROM describe_ami('{image['ImageId']}', 'us-east-1')",
    )
    assert architecture == image["Architecture"]
    parameter = client(aws, "ssm").get_parameter(Name=SSM_AMI.removeprefix("resolve:ssm:"))
    resolved = one(envdb, f"SELECT attributes::json ->> 'ImageId' FROM describe_ami('{SSM_AMI}')")
    assert resolved == parameter["Parameter"]["Value"]

    [(attributes, status, message)] = rows(envdb, "SELECT * FROM describe_ami('ami-00000000')")
    assert (attributes, status) == ("", "KO") and "InvalidAMIID" in message
    [(_, status, message)] = rows(envdb, "SELECT * FROM describe_ami('resolve:ssm:/no/such')")
    assert status == "KO" and "ParameterNotFound" in message
    with pytest.raises(psycopg.errors.NullValueNotAllowed):  # 22004, not an internal error
        envdb.execute("SELECT * FROM describe_ami(NULL)")


# --- instances, their groups and volumes ---------------------------------------------------

STACK = f"""
INSERT INTO security_group (group_name, description) VALUES ('GROUP', 'web servers');
INSERT INTO instance (ami, instance_type, tags, user_data)
    VALUES ('{SSM_AMI}', 't3.micro', '{{"Name": "web-1"}}', '#!/bin/sh\nrun web');
INSERT INTO instance_security_groups (instance_id, security_group_id)
    SELECT i.id, g.id FROM instance i, security_group g WHERE g.group_name = 'GROUP';
INSERT INTO general_purpose_volume (volume_type, size, availability_zone, tags)
    VALUES ('gp3', 10, 'us-east-1a', '{{"Name": "data"}}');
"""


def test_instance_lifecycle(envdb: psycopg.Connection, aws: MotoServer) -> None:
    ec2 = client(aws, "ec2")
    subnet = ec2.describe_subnets(
        Filters=[{"Name": "availability-zone", "Values": ["us-east-1a"]}]
    )["Subnets"][0]["SubnetId"]
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(STACK.replace("GROUP", "web"))
    envdb.execute(
        "UPDATE instance SET subnet_id = (SELECT id FROM subnet WHERE subnet_id = %s)", (subnet,)
    )
    planned = preview(envdb)
    assert [(a, t) for a, t, _ in planned] == [
        ("create", "general_purpose_volume"),
        ("create", "instance"),
        ("create", "instance_security_groups"),
        ("create", "security_group"),
    ]
    assert planned[1][2]["ami"] == {"old": None, "new": SSM_AMI}
    commit(envdb)

    instance_id = one(envdb, "SELECT instance_id FROM instance")
    found = instance(ec2, instance_id)
    parameter = client(aws, "ssm").get_parameter(Name=SSM_AMI.removeprefix("resolve:ssm:"))
    assert found["ImageId"] == parameter["Parameter"]["Value"]
    assert one(envdb, "SELECT ami FROM instance") == SSM_AMI  # kept as written
    assert found["SubnetId"] == subnet and found["State"]["Name"] == "running"
    web = ec2.describe_security_groups(GroupNames=["web"])["SecurityGroups"][0]["GroupId"]
    # The group of the commit replaced the one AWS gave at launch.
    assert [g["GroupId"] for g in found["SecurityGroups"]] == [web]
    assert {t["Key"]: t["Value"] for t in found["Tags"]}["Name"] == "web-1"
    assert one(envdb, "SELECT count(*) FROM instance_metadata") == 1
    volume_id = one(envdb, "SELECT volume_id FROM general_purpose_volume WHERE NOT is_root_device")
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert (volume["VolumeType"], volume["Size"], volume["Iops"]) == ("gp3", 10, 3000)

    # Attach the volume; then grow it and raise its IOPS in place.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO instance_block_device_mapping (device_name, instance_id, volume_id)"
        " SELECT '/dev/sdf', i.id, v.id FROM instance i, general_purpose_volume v"
        " WHERE NOT v.is_root_device"
    )
    assert [(a, t) for a, t, _ in preview(envdb)] == [("create", "instance_block_device_mapping")]
    commit(envdb)
    attached = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Attachments"]
    assert [(a["InstanceId"], a["Device"]) for a in attached] == [(instance_id, "/dev/sdf")]

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE general_purpose_volume SET size = 20, iops = 4000 WHERE volume_id = %s",
        (volume_id,),
    )
    [(action, _, changes)] = preview(envdb)
    assert action == "update"
    assert changes == {"size": {"old": 10, "new": 20}, "iops": {"old": 3000, "new": 4000}}
    commit(envdb)
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert (volume["VolumeId"], volume["Size"], volume["Iops"]) == (volume_id, 20, 4000)

    # Stop and start in place; tags in place.
    for state, aws_state in (("stopped", "stopped"), ("running", "running")):
        envdb.execute("SELECT * FROM iasql_begin()")
        envdb.execute("UPDATE instance SET state = %s", (state,))
        [(action, _, changes)] = preview(envdb)
        assert action == "update" and changes["state"]["new"] == state
        commit(envdb)
        assert instance(ec2, instance_id)["State"]["Name"] == aws_state
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("""UPDATE instance SET tags = '{"Name": "web-1", "tier": "front"}'""")
    assert [(a, t) for a, t, _ in preview(envdb)] == [("update", "instance")]
    commit(envdb)
    tags = {t["Key"]: t["Value"] for t in instance(ec2, instance_id)["Tags"]}
    assert tags["tier"] == "front" and one(envdb, "SELECT instance_id FROM instance") == instance_id

    # A new type replaces the instance; its groups, data volume and metadata follow it,
    # and its new root volume replaces the old one's row.
    old_root = one(envdb, "SELECT volume_id FROM general_purpose_volume WHERE is_root_device")
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE instance SET instance_type = 't3.small'")
    # The root volume's rows go (they'd name a volume AWS deletes); the data volume's
    # mapping, the groups and the metadata row follow the new instance.
    assert [(a, t) for a, t, _ in preview(envdb)] == [
        ("delete", "general_purpose_volume"),
        ("replace", "instance"),
        ("delete", "instance_block_device_mapping"),
        ("replace", "instance_block_device_mapping"),
        ("replace", "instance_metadata"),
        ("replace", "instance_security_groups"),
    ]
    commit(envdb)
    new_id = one(envdb, "SELECT instance_id FROM instance")
    assert new_id != instance_id
    assert instance(ec2, instance_id)["State"]["Name"] == "terminated"
    found = instance(ec2, new_id)
    assert found["InstanceType"] == "t3.small"
    assert [g["GroupId"] for g in found["SecurityGroups"]] == [web]
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in found["BlockDeviceMappings"]}
    assert devices["/dev/sdf"] == volume_id
    new_root = one(envdb, "SELECT volume_id FROM general_purpose_volume WHERE is_root_device")
    assert new_root == devices["/dev/sda1"] != old_root
    assert rows(envdb, "SELECT instance_id FROM instance_metadata") == [(new_id,)]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]

    # Deleting the instance terminates it; the data volume is detached and stays.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    planned = [(a, t) for a, t, _ in preview(envdb)]
    assert ("delete", "instance") in planned
    commit(envdb)
    assert instance(ec2, new_id)["State"]["Name"] == "terminated"
    assert rows(envdb, "SELECT volume_id, state FROM general_purpose_volume") == [
        (volume_id, "available")
    ]
    for table in ("instance_metadata", "instance_security_groups", "instance_block_device_mapping"):
        assert one(envdb, f"SELECT count(*) FROM {table}") == 0

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM general_purpose_volume")
    commit(envdb)
    assert ec2.describe_volumes(VolumeIds=[])["Volumes"] == []


def test_volume_attachment_and_replace(envdb: psycopg.Connection, aws: MotoServer) -> None:
    ec2 = client(aws, "ec2")
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        f"INSERT INTO instance (ami, instance_type, tags) VALUES ('{SSM_AMI}', 't3.micro',"
        """ '{"Name": "disks"}')"""
    )
    commit(envdb)
    instance_id = one(envdb, "SELECT instance_id FROM instance")
    launched = instance(ec2, instance_id)
    zone = launched["Placement"]["AvailabilityZone"]
    # The root volume the launch made is a row as soon as the commit ends (the volume table
    # is synced with the instance table), joined to the instance by its mapping.
    root = launched["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert rows(
        envdb,
        "SELECT v.volume_id, v.is_root_device, m.device_name, i.instance_id"
        " FROM instance_block_device_mapping m JOIN general_purpose_volume v ON v.id = m.volume_id"
        " JOIN instance i ON i.id = m.instance_id",
    ) == [(root, True, "/dev/sda1", instance_id)]
    assert rows(envdb, "SELECT count(*) FROM iasql_drift()") == [(0,)]
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO general_purpose_volume (volume_type, size, availability_zone)"
        " SELECT 'gp2', 4, name FROM availability_zone WHERE name <> %s AND region = %s"
        " ORDER BY name LIMIT 1",
        (zone, REGION),
    )
    commit(envdb)
    volume_id = one(envdb, "SELECT volume_id FROM general_purpose_volume WHERE size = 4")
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["VolumeType"] == "gp2"

    # A new zone replaces the (unattached) volume.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE general_purpose_volume SET availability_zone = %s WHERE size = 4", (zone,)
    )
    [(action, _, changes)] = preview(envdb)
    assert action == "replace" and changes["availability_zone"]["forces_replace"] is True
    commit(envdb)
    new_volume = one(envdb, "SELECT volume_id FROM general_purpose_volume WHERE size = 4")
    assert new_volume != volume_id
    assert ec2.describe_volumes(VolumeIds=[new_volume])["Volumes"][0]["AvailabilityZone"] == zone
    assert volume_id not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}

    # gp2 to gp3 in place; attached without delete-on-termination, then with it, in place.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE general_purpose_volume SET volume_type = 'gp3' WHERE size = 4")
    envdb.execute(
        "INSERT INTO instance_block_device_mapping"
        " (device_name, instance_id, volume_id, delete_on_termination)"
        " SELECT '/dev/sdg', i.id, v.id, false FROM instance i, general_purpose_volume v"
        " WHERE v.size = 4"
    )
    assert [(a, t) for a, t, _ in preview(envdb)] == [
        ("update", "general_purpose_volume"),
        ("create", "instance_block_device_mapping"),
    ]
    commit(envdb)
    volume = ec2.describe_volumes(VolumeIds=[new_volume])["Volumes"][0]
    assert volume["VolumeId"] == new_volume and volume["VolumeType"] == "gp3"

    def mapping() -> dict[str, Any]:
        found = instance(ec2, instance_id)["BlockDeviceMappings"]
        return next(m["Ebs"] for m in found if m["DeviceName"] == "/dev/sdg")

    assert mapping()["VolumeId"] == new_volume and mapping()["DeleteOnTermination"] is False
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "UPDATE instance_block_device_mapping SET delete_on_termination = true"
        " WHERE device_name = '/dev/sdg'"
    )
    [(action, table, changes)] = preview(envdb)
    assert (action, table) == ("update", "instance_block_device_mapping")
    assert changes == {"delete_on_termination": {"old": False, "new": True}}
    commit(envdb)
    assert mapping()["DeleteOnTermination"] is True

    # Rolling back a detach restores the row; committing it detaches.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance_block_device_mapping WHERE device_name = '/dev/sdg'")
    envdb.execute("SELECT * FROM iasql_rollback()")
    assert one(envdb, "SELECT count(*) FROM instance_block_device_mapping") == 2
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance_block_device_mapping WHERE device_name = '/dev/sdg'")
    [(action, _, _)] = preview(envdb)
    assert action == "delete"
    commit(envdb)
    assert ec2.describe_volumes(VolumeIds=[new_volume])["Volumes"][0]["Attachments"] == []

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    envdb.execute("DELETE FROM general_purpose_volume WHERE NOT is_root_device")
    commit(envdb)
    assert ec2.describe_volumes()["Volumes"] == []


def ubuntu_ami(ec2: Any) -> str:
    """moto's Ubuntu AMI, whose root device is /dev/sda1 (as Canonical's are)."""
    found = ec2.describe_images(Filters=[{"Name": "name", "Values": ["ubuntu/images/*xenial*"]}])
    return str(found["Images"][0]["ImageId"])


def test_iasql_launch_mappings_size_the_root_and_skip_null_devices(
    envdb: psycopg.Connection, aws: MotoServer
) -> None:
    """IaSQL's general_purpose_volume test, as written there: a volume row with
    is_root_device mapped at /dev/sda1 sets the root's size; another mapped at /dev/sdb is a
    data volume; a NULL mapping (/dev/sdc) asks for no device there."""
    ec2 = client(aws, "ec2")
    ubuntu = ubuntu_ami(ec2)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        f"""
        BEGIN;
          INSERT INTO general_purpose_volume (volume_type, size, availability_zone, tags,
              is_root_device)
          VALUES ('gp2', 15, 'us-east-1a', '{{"Name": "gpv"}}', TRUE);
          INSERT INTO instance (ami, instance_type, tags, subnet_id)
            SELECT '{ubuntu}', 't3.micro', '{{"name":"gpv-1"}}', id
            FROM subnet
            WHERE availability_zone = 'us-east-1a'
            LIMIT 1;
          INSERT INTO instance_block_device_mapping (device_name, volume_id, instance_id)
            values ('/dev/sda1',
              (SELECT id FROM general_purpose_volume WHERE tags ->>'Name' = 'gpv' LIMIT 1),
              (SELECT id FROM instance WHERE tags ->>'name' = 'gpv-1' LIMIT 1));
        COMMIT;
        """
    )
    commit(envdb)
    joined = """
        SELECT size FROM general_purpose_volume INNER JOIN instance_block_device_mapping
            ON general_purpose_volume.id = instance_block_device_mapping.volume_id
        WHERE instance_block_device_mapping.instance_id =
            (SELECT id FROM instance WHERE tags ->> 'name' = '{}') ORDER BY size"""
    assert rows(envdb, joined.format("gpv-1")) == [(15,)]
    first = one(envdb, "SELECT instance_id FROM instance WHERE tags ->> 'name' = 'gpv-1'")
    [root] = instance(ec2, first)["BlockDeviceMappings"]
    [volume] = ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"]
    assert (root["DeviceName"], volume["Size"], volume["VolumeType"]) == ("/dev/sda1", 15, "gp2")
    assert {t["Key"]: t["Value"] for t in volume.get("Tags", [])}.get("Name") == "gpv"
    # One volume, the root: no stray 15 GiB volume beside the 8 GiB one AWS would launch with.
    assert rows(envdb, "SELECT volume_id, size, is_root_device FROM general_purpose_volume") == [
        (volume["VolumeId"], 15, True)
    ]
    assert len(ec2.describe_volumes()["Volumes"]) == 1

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        f"""
        BEGIN;
          INSERT INTO general_purpose_volume (volume_type, size, availability_zone, tags,
              is_root_device)
          VALUES ('gp2', 15, 'us-east-1a', '{{"Name": "gpv-test-1"}}', TRUE),
                 ('gp2', 20, 'us-east-1a', '{{"Name": "gpv-test-2"}}', TRUE);
          INSERT INTO instance (ami, instance_type, tags, subnet_id)
            SELECT '{ubuntu}', 't3.micro', '{{"name":"gpv-2"}}', id
            FROM subnet
            WHERE availability_zone = 'us-east-1a'
            LIMIT 1;
          INSERT INTO instance_block_device_mapping (device_name, volume_id, instance_id) values
            ('/dev/sda1',
              (SELECT id FROM general_purpose_volume WHERE tags ->>'Name' = 'gpv-test-1' LIMIT 1),
              (SELECT id FROM instance WHERE tags ->>'name' = 'gpv-2' LIMIT 1)),
            ('/dev/sdb',
              (SELECT id FROM general_purpose_volume WHERE tags ->>'Name' = 'gpv-test-2' LIMIT 1),
              (SELECT id FROM instance WHERE tags ->>'name' = 'gpv-2' LIMIT 1)),
            ('/dev/sdc', NULL, (SELECT id FROM instance WHERE tags ->>'name' = 'gpv-2' LIMIT 1));
        COMMIT;
        """
    )
    commit(envdb)  # the NULL mapping attaches nothing: its row goes, as in IaSQL
    assert rows(envdb, joined.format("gpv-2")) == [(15,), (20,)]
    second = one(envdb, "SELECT instance_id FROM instance WHERE tags ->> 'name' = 'gpv-2'")
    devices = {
        m["DeviceName"]: ec2.describe_volumes(VolumeIds=[m["Ebs"]["VolumeId"]])["Volumes"][0]
        for m in instance(ec2, second)["BlockDeviceMappings"]
    }
    assert {d: v["Size"] for d, v in devices.items()} == {"/dev/sda1": 15, "/dev/sdb": 20}
    assert rows(
        envdb,
        "SELECT device_name FROM instance_block_device_mapping m JOIN instance i"
        " ON i.id = m.instance_id WHERE i.tags ->> 'name' = 'gpv-2' ORDER BY 1",
    ) == [("/dev/sda1",), ("/dev/sdb",)]
    # Two instances: two roots and one data volume, each a row.
    assert one(envdb, "SELECT count(*) FROM general_purpose_volume") == 3
    assert len(ec2.describe_volumes()["Volumes"]) == 3
    assert rows(envdb, "SELECT * FROM iasql_drift()") == []

    # A smaller root than the AMI's is refused with the size to write.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO general_purpose_volume (volume_type, size, availability_zone, tags)"
        """ VALUES ('gp2', 4, 'us-east-1a', '{"Name": "tiny"}')"""
    )
    envdb.execute(
        f"INSERT INTO instance (ami, instance_type, tags) VALUES ('{ubuntu}', 't3.micro',"
        """ '{"name": "gpv-3"}')"""
    )
    envdb.execute(
        "INSERT INTO instance_block_device_mapping (device_name, volume_id, instance_id)"
        " SELECT '/dev/sda1', v.id, i.id FROM general_purpose_volume v, instance i"
        " WHERE v.tags ->> 'Name' = 'tiny' AND i.tags ->> 'name' = 'gpv-3'"
    )
    with pytest.raises(psycopg.Error, match=r"set size >= 8") as refused:
        envdb.execute("SELECT * FROM iasql_commit()")
    assert refused.value.sqlstate != "XX000"
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    commit(envdb)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM general_purpose_volume")
    commit(envdb)
    assert ec2.describe_volumes()["Volumes"] == []


def test_instance_created_stopped_then_hibernated(
    envdb: psycopg.Connection, aws: MotoServer
) -> None:
    ec2 = client(aws, "ec2")
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        f"INSERT INTO instance (ami, instance_type, state, hibernation_enabled)"
        f" VALUES ('{SSM_AMI}', 't3.micro', 'stopped', true)"
    )
    commit(envdb)
    instance_id = one(envdb, "SELECT instance_id FROM instance")
    found = instance(ec2, instance_id)
    assert found["State"]["Name"] == "stopped"
    assert found["HibernationOptions"]["Configured"] is True
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE instance SET state = 'running'")
    commit(envdb)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE instance SET state = 'hibernate'")
    [(action, _, _)] = preview(envdb)
    assert action == "update"
    commit(envdb)
    assert instance(ec2, instance_id)["State"]["Name"] == "stopped"
    # As in IaSQL, `hibernate` asks for a hibernating stop: the row then reads `stopped`.
    assert one(envdb, "SELECT state FROM instance") == "stopped"
    assert preview(envdb) == []
    assert rows(envdb, "SELECT table_name FROM iasql_drift() WHERE table_name = 'instance'") == []
    # Hibernating a stopped instance leaves it stopped.
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE instance SET state = 'hibernate'")
    commit(envdb)
    assert one(envdb, "SELECT state FROM instance") == "stopped"
    assert instance(ec2, instance_id)["State"]["Name"] == "stopped"
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    commit(envdb)


# --- target groups and roles ---------------------------------------------------------------


def test_registered_instance_and_role(envdb: psycopg.Connection, aws: MotoServer) -> None:
    ec2, elb, iam = client(aws, "ec2"), client(aws, "elbv2"), client(aws, "iam")
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(
        "INSERT INTO iam_role (role_name, assume_role_policy_document) VALUES ('web-role', %s)",
        (EC2_TRUST,),
    )
    envdb.execute(
        "INSERT INTO target_group (target_group_name, target_type, protocol, port, vpc)"
        " SELECT 'web-tg', 'instance', 'HTTP', 80, id FROM vpc WHERE is_default"
    )
    envdb.execute(
        f"INSERT INTO instance (ami, instance_type, role_name)"
        f" VALUES ('{SSM_AMI}', 't3.micro', 'web-role')"
    )
    envdb.execute(
        "INSERT INTO registered_instance (instance, target_group_id)"
        " SELECT i.id, t.id FROM instance i, target_group t"
    )
    assert one(envdb, "SELECT port FROM registered_instance") == 80  # the group's port
    planned = [(a, t) for a, t, _ in preview(envdb)]
    assert ("create", "registered_instance") in planned
    commit(envdb)
    instance_id = one(envdb, "SELECT instance_id FROM instance")
    profile = instance(ec2, instance_id)["IamInstanceProfile"]["Arn"]
    assert profile.endswith("/web-role")
    assert iam.get_instance_profile(InstanceProfileName="web-role")["InstanceProfile"]["Roles"]
    arn = one(envdb, "SELECT target_group_arn FROM target_group")
    health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert [(h["Target"]["Id"], h["Target"]["Port"]) for h in health] == [(instance_id, 80)]

    # Another port: a new registration (the port is part of its identity).
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE registered_instance SET port = 8080")
    assert sorted((a, t) for a, t, _ in preview(envdb)) == [
        ("create", "registered_instance"),
        ("delete", "registered_instance"),
    ]
    commit(envdb)
    health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert [(h["Target"]["Id"], h["Target"]["Port"]) for h in health] == [(instance_id, 8080)]

    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM registered_instance")
    commit(envdb)
    assert elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"] == []
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    commit(envdb)


def test_generated_sql_names_instances_by_natural_key(
    envdb: psycopg.Connection, aws: MotoServer
) -> None:
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute(STACK.replace("GROUP", "sqlgen"))
    commit(envdb)
    statements = [s for (s,) in rows(envdb, "SELECT * FROM iasql_get_sql_for_transaction()")]
    join = next(s for s in statements if s.startswith('INSERT INTO "instance_security_groups"'))
    # The instance is found by its tags (as jsonb), AMI, type and region; no cloud id.
    assert (
        """(SELECT "id" FROM "instance" WHERE "tags"::jsonb = '{"Name": "web-1"}'::jsonb""" in join
    )
    cloud_ids = rows(envdb, "SELECT instance_id FROM instance") + rows(
        envdb, "SELECT group_id FROM security_group WHERE group_name = 'sqlgen'"
    )
    assert len(cloud_ids) == 2 and not any(cloud_id in join for (cloud_id,) in cloud_ids)
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("UPDATE instance SET state = 'stopped'")
    commit(envdb)
    statements = [s for (s,) in rows(envdb, "SELECT * FROM iasql_get_sql_for_transaction()")]
    assert len(statements) == 1
    assert statements[0].startswith('UPDATE "instance" SET "state" = \'stopped\' WHERE')
    assert "::jsonb" in statements[0] and "instance_id" not in statements[0]
    envdb.execute("SELECT * FROM iasql_begin()")
    envdb.execute("DELETE FROM instance")
    envdb.execute("DELETE FROM general_purpose_volume")
    commit(envdb)
