"""aws_ecr: a private repository with a policy and a pushed image, and a public repository, made
with boto3 and imported at install; more imported by iasql_sync() (an image pushed to a public
repository too). Then, through begin / preview / commit: a repository with its policy and a
public repository made, the repository's settings and policy changed in place, images deleted
(an INSERT of one refused at once), a rollback, a rename (a new repository), deletes, and a
cloud error. ECR Public is answered by the sandbox's add-on (moto has no backend for it).
Every cloud effect is read back with boto3."""

from __future__ import annotations

import json
from typing import Any

import boto3
import psycopg
import pytest

from iasql.sandbox import MotoServer
from modules.aws_ecr import MODULE, region_of, repository_name_of
from tests.support.aws import REGION, only_one_region
from tests.support.env import add_credentials, commit, no_drift, preview, rows

pytestmark = pytest.mark.slow  # not in the fast edit-test loop (-m "not slow")

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def manifest(layer: str) -> str:
    """A small image manifest: what a docker push uploads last."""
    layers = [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer}]
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": {}, "layers": layers}
    )


def policy(principal: str, actions: list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "pull",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": actions,
            }
        ],
    }


class Aws:
    def __init__(self, moto: MotoServer) -> None:
        self.ecr = boto3.client("ecr", region_name=REGION, endpoint_url=moto.endpoint)
        self.public = boto3.client("ecr-public", region_name=REGION, endpoint_url=moto.endpoint)

    def repository(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.ecr.describe_repositories(repositoryNames=[name])["repositories"][0])
        except self.ecr.exceptions.RepositoryNotFoundException:
            return None

    def public_names(self) -> set[str]:
        return {r["repositoryName"] for r in self.public.describe_repositories()["repositories"]}

    def policy(self, name: str) -> Any:
        return json.loads(self.ecr.get_repository_policy(repositoryName=name)["policyText"])

    def tags(self, name: str, public: bool = False) -> set[str]:
        client = self.public if public else self.ecr
        details = client.describe_images(repositoryName=name)["imageDetails"]
        return {t for d in details for t in d.get("imageTags", [])}


def test_arn_forms() -> None:
    arn = "arn:aws:ecr:eu-west-2:123456789012:repository/team/app"
    assert (repository_name_of(arn), region_of(arn)) == ("team/app", "eu-west-2")
    assert [t.name for t in MODULE.tables][:2] == ["repository", "public_repository"]


@pytest.fixture
def ecr_env(envdb: psycopg.Connection, moto_accounts: Any) -> tuple[psycopg.Connection, Aws]:
    moto: MotoServer = moto_accounts()
    aws = Aws(moto)
    aws.ecr.create_repository(
        repositoryName="pre-repo",
        imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True},
    )
    aws.ecr.set_repository_policy(
        repositoryName="pre-repo",
        policyText=json.dumps(policy("arn:aws:iam::123456789012:root", ["ecr:BatchGetImage"])),
    )
    aws.ecr.put_image(repositoryName="pre-repo", imageManifest=manifest("sha256:a"), imageTag="v1")
    aws.ecr.put_image(repositoryName="pre-repo", imageManifest=manifest("sha256:b"), imageTag="v2")
    aws.public.create_repository(repositoryName="pre-public")
    envdb.execute("SELECT * FROM iasql_install('aws_account')")
    add_credentials(envdb, moto)
    envdb.execute("SELECT * FROM iasql_install('aws_iam')")  # cheap; fills aws_regions
    only_one_region(envdb)
    envdb.execute("SELECT * FROM iasql_install('aws_ecr')")
    return envdb, aws


def test_ecr(ecr_env: tuple[psycopg.Connection, Aws]) -> None:
    conn, aws = ecr_env

    # Import at install: the repository with its settings, policy and images; the public one.
    pre = aws.repository("pre-repo")
    assert pre is not None
    assert rows(
        conn,
        "SELECT image_tag_mutability, scan_on_push, repository_arn, region FROM repository"
        " WHERE repository_name = 'pre-repo'",
    ) == [("IMMUTABLE", True, pre["repositoryArn"], REGION)]
    [(imported_policy, policy_region)] = rows(
        conn,
        "SELECT p.policy, p.region FROM repository_policy p JOIN repository r"
        " ON r.id = p.repository_id WHERE r.repository_name = 'pre-repo'",
    )
    assert imported_policy["Statement"][0]["Action"] in ("ecr:BatchGetImage", ["ecr:BatchGetImage"])
    assert policy_region == REGION
    assert rows(
        conn,
        "SELECT i.image_tag, i.private_repository_region, i.public_repository FROM"
        " repository_image i JOIN repository r ON r.id = i.private_repository_id"
        " ORDER BY i.image_tag",
    ) == [("v1", REGION, None), ("v2", REGION, None)]
    [(image_id, digest)] = rows(
        conn, "SELECT image_id, image_digest FROM repository_image WHERE image_tag = 'v1'"
    )
    assert image_id == f"{digest}|v1|private|pre-repo|{REGION}"
    [(public_arn, public_uri)] = rows(
        conn,
        "SELECT repository_arn, repository_uri FROM public_repository"
        " WHERE repository_name = 'pre-public'",
    )
    assert public_arn == "arn:aws:ecr-public::123456789012:repository/pre-public"
    assert public_uri.startswith("public.ecr.aws/") and public_uri.endswith("/pre-public")
    no_drift(conn)

    # Made outside iasql after install: imported by iasql_sync().
    aws.ecr.create_repository(repositoryName="synced-repo")
    aws.public.create_repository(repositoryName="synced-public")
    aws.public.put_image(
        repositoryName="synced-public", imageManifest=manifest("sha256:c"), imageTag="p1"
    )
    conn.execute("SELECT * FROM iasql_sync()")
    assert rows(conn, "SELECT count(*) FROM repository WHERE repository_name = 'synced-repo'") == [
        (1,)
    ]
    assert rows(
        conn,
        "SELECT image_tag, image_id LIKE '%|p1|public|synced-public' FROM repository_image"
        " WHERE public_repository = 'synced-public'",
    ) == [("p1", True)]
    no_drift(conn)

    # An image is made by a push, never by an INSERT: refused at once, saying so.
    with pytest.raises(psycopg.Error, match="push") as refused:
        conn.execute(
            "INSERT INTO repository_image (image_id, image_digest, image_tag, public_repository)"
            " VALUES ('x|y|public|pre-public', 'x', 'y', 'pre-public')"
        )
    assert refused.value.sqlstate == "0A000"
    with pytest.raises(psycopg.Error, match="cannot change") as frozen:
        conn.execute("UPDATE repository_image SET image_tag = 'v9' WHERE image_tag = 'v1'")
    assert frozen.value.sqlstate == "0A000"

    # Create: a repository with its policy, and a public repository.
    first = policy("*", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"])
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "INSERT INTO repository (repository_name, image_tag_mutability)"
        " VALUES ('new-repo', 'IMMUTABLE')"
    )
    conn.execute(
        "INSERT INTO repository_policy (repository_id, policy) VALUES"
        " ((SELECT id FROM repository WHERE repository_name = 'new-repo'), %s)",
        (json.dumps(first),),
    )
    conn.execute("INSERT INTO public_repository (repository_name) VALUES ('new-public')")
    planned = preview(conn)
    [(action, changes)] = planned["repository"]
    assert action == "create"
    assert changes["image_tag_mutability"]["new"] == "IMMUTABLE"
    assert changes["repository_name"]["new"] == "new-repo"
    assert [a for a, _ in planned["repository_policy"]] == ["create"]
    assert [a for a, _ in planned["public_repository"]] == ["create"]
    commit(conn)
    made = aws.repository("new-repo")
    assert made is not None
    assert made["imageTagMutability"] == "IMMUTABLE"
    assert not made["imageScanningConfiguration"]["scanOnPush"]
    assert aws.policy("new-repo")["Statement"][0]["Principal"] == first["Statement"][0]["Principal"]
    assert "new-public" in aws.public_names()
    assert rows(
        conn,
        "SELECT repository_arn, registry_id FROM repository WHERE repository_name = 'new-repo'",
    ) == [(made["repositoryArn"], made["registryId"])]
    assert rows(
        conn,
        "SELECT registry_id FROM repository_policy WHERE repository_id ="
        " (SELECT id FROM repository WHERE repository_name = 'new-repo')",
    ) == [(made["registryId"],)]
    assert rows(
        conn, "SELECT repository_arn FROM public_repository WHERE repository_name = 'new-public'"
    ) == [("arn:aws:ecr-public::123456789012:repository/new-public",)]
    no_drift(conn)
    # The SQL that replays this elsewhere names rows by natural key, never by cloud id.
    replay = [r[0] for r in rows(conn, "SELECT sql FROM iasql_get_sql_for_transaction()")]
    assert len(replay) == 3, replay
    assert not any(x in sql for sql in replay for x in ("arn:aws", "123456789012", "ecr.aws"))
    [linked] = [sql for sql in replay if "repository_policy" in sql]
    assert "'new-repo'" in linked

    # In place: mutability, scan-on-push and the policy; images deleted (one tag of the
    # private image, the public image).
    second = policy("*", ["ecr:*"])
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE repository SET image_tag_mutability = 'MUTABLE', scan_on_push = true"
        " WHERE repository_name = 'new-repo'"
    )
    conn.execute(
        "UPDATE repository_policy SET policy = %s WHERE repository_id ="
        " (SELECT id FROM repository WHERE repository_name = 'new-repo')",
        (json.dumps(second),),
    )
    conn.execute("DELETE FROM repository_image WHERE image_tag IN ('v1', 'p1')")
    planned = preview(conn)
    [(action, changes)] = planned["repository"]
    assert action == "update"
    assert changes["image_tag_mutability"] == {"old": "IMMUTABLE", "new": "MUTABLE"}
    assert changes["scan_on_push"] == {"old": False, "new": True}
    assert "forces_replace" not in json.dumps(changes)
    [(action, changes)] = planned["repository_policy"]
    assert action == "update" and "policy" in changes
    assert sorted(a for a, _ in planned["repository_image"]) == ["delete", "delete"]
    commit(conn)
    after = aws.repository("new-repo")
    assert after is not None
    assert after["createdAt"] == made["createdAt"]  # the same repository
    assert after["imageTagMutability"] == "MUTABLE"
    assert after["imageScanningConfiguration"]["scanOnPush"]
    assert aws.policy("new-repo")["Statement"][0]["Action"] in ("ecr:*", ["ecr:*"])
    assert aws.tags("pre-repo") == {"v2"}
    assert aws.tags("synced-public", public=True) == set()
    no_drift(conn)

    # Rollback of an uncommitted change: the row is back, the cloud untouched.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("UPDATE repository SET scan_on_push = false WHERE repository_name = 'new-repo'")
    conn.execute("SELECT * FROM iasql_rollback()")
    assert rows(conn, "SELECT scan_on_push FROM repository WHERE repository_name = 'new-repo'") == [
        (True,)
    ]
    assert aws.repository("new-repo")["imageScanningConfiguration"]["scanOnPush"]  # type: ignore[index]

    # A rename (a new repository) and deletes: the imported repository with its
    # policy and image, both public repositories.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute(
        "UPDATE repository SET repository_name = 'renamed-repo'"
        " WHERE repository_name = 'synced-repo'"
    )
    conn.execute("DELETE FROM repository WHERE repository_name = 'pre-repo'")  # cascades
    conn.execute("DELETE FROM public_repository")
    planned = preview(conn)
    # The name is the repository's cloud id: a new name is a delete and a create.
    by_name = {
        c["repository_name"].get("new") or c["repository_name"]["old"]: a
        for a, c in planned["repository"]
    }
    assert by_name == {"renamed-repo": "create", "synced-repo": "delete", "pre-repo": "delete"}
    assert sorted(a for a, _ in planned["public_repository"]) == ["delete", "delete", "delete"]
    # The policy and image rows went with their repository (CASCADE): the repository's
    # delete (forced) takes them along in the cloud, with no step of their own.
    assert "repository_policy" not in planned and "repository_image" not in planned
    commit(conn)
    assert aws.repository("synced-repo") is None and aws.repository("pre-repo") is None
    assert aws.repository("renamed-repo") is not None
    assert aws.public_names() == set()
    assert rows(conn, "SELECT count(*) FROM repository_image") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM repository_policy") == [(1,)]  # new-repo's
    no_drift(conn)

    # A cloud error (an invalid name) reaches the user as one clear line.
    conn.execute("SELECT * FROM iasql_begin()")
    conn.execute("INSERT INTO public_repository (repository_name) VALUES ('Bad Name')")
    with pytest.raises(psycopg.Error, match="InvalidParameterException") as failed:
        conn.execute("SELECT * FROM iasql_commit()")
    assert failed.value.sqlstate == "58000"
    assert "\n" not in str(failed.value.diag.message_primary)
    # The failed commit undid its own changes: the row is gone, nothing was made.
    assert rows(conn, "SELECT count(*) FROM public_repository") == [(0,)]
    assert aws.public_names() == set()
    no_drift(conn)
