"""Container definitions: how a container_definition row and a task definition's
`containerDefinitions` entry map to each other, and the canonical form the task_definition row
holds them in (its `container_definitions` column, kept by a trigger on container_definition).

A task definition is immutable and AWS takes its containers in the one register call, so the
task definition's row carries its containers: a change to any of them is a change to the task
definition (a new revision)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modules.spec import Record

# The keys of one container in the task_definition row's `container_definitions` column: the
# container_definition row's columns, with its references as the names the cloud uses.
CONTAINER_KEYS = (
    "name",
    "image",
    "tag",
    "digest",
    "essential",
    "cpu",
    "memory",
    "memory_reservation",
    "host_port",
    "container_port",
    "protocol",
    "env_variables",
    "repository",
    "public_repository",
    "log_group",
)


def normalize_env(value: Any) -> dict[str, str] | None:
    """Environment variables (a JSON object, as text or parsed) as a sorted dict of text; none
    is None, as AWS reports no variables as an empty list."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"": value}  # no JSON: compared as written, AWS's register refuses it
    if not isinstance(value, dict):
        return value
    pairs = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return dict(sorted(pairs.items())) or None


def env_text(variables: dict[str, str] | None) -> str | None:
    """The env_variables column for variables read from AWS."""
    return json.dumps(variables, sort_keys=True) if variables else None


def normalize_cpu(value: Any) -> Any:
    """AWS reports a container without CPU units as 0."""
    return None if value == 0 else value


def normalize_containers(value: Any) -> list[dict[str, Any]]:
    """The containers of a task definition as compared: each without its empty keys, with its
    variables as a dict and no CPU as none, in order of name."""
    if value is None:
        return []
    if isinstance(value, str):
        value = json.loads(value)
    out = []
    for container in value or ():
        item = {k: container.get(k) for k in CONTAINER_KEYS}
        item["env_variables"] = normalize_env(item["env_variables"])
        item["cpu"] = normalize_cpu(item["cpu"])
        out.append({k: v for k, v in item.items() if v is not None})
    return sorted(out, key=lambda c: str(c.get("name")))


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """An image reference as (name, tag, digest): `repo@sha256:..`, `repo:tag` or `repo`. A
    registry's port (`host:5000/repo`) is no tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, None, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag, None
    return image, None, None


def private_repository_name(image: str) -> str | None:
    """The repository of a private ECR image (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME)."""
    host, _, path = image.partition("/")
    if ".dkr.ecr." in host and "amazonaws.com" in host and path:
        return path
    return None


def public_repository_name(image: str) -> str | None:
    """The repository of a public ECR image (public.ecr.aws/ALIAS/NAME)."""
    if image.startswith("public.ecr.aws/"):
        return image.rsplit("/", 1)[-1]
    return None


def container_from_aws(
    c: dict[str, Any],
    private: Mapping[str, str] | None = None,
    public_uris: Mapping[str, str] | None = None,
) -> Record:
    """A containerDefinitions entry as one container of the task_definition row (the keys of
    CONTAINER_KEYS). An image from one of the account's repositories (`private` and
    `public_uris`: repository URI -> name) names that repository; any other is an image."""
    name, tag, digest = split_image(str(c.get("image") or ""))
    # Without the account's repositories, every ECR image is taken as one of them.
    repository = private_repository_name(name) if private is None else private.get(name)
    public = public_repository_name(name) if public_uris is None else public_uris.get(name)
    mappings = c.get("portMappings") or []
    mapping = mappings[-1] if mappings else {}
    logs = c.get("logConfiguration") or {}
    log_group = None
    if logs.get("logDriver") == "awslogs":
        log_group = (logs.get("options") or {}).get("awslogs-group")
    variables = {e["name"]: e.get("value", "") for e in c.get("environment") or ()}
    return {
        "name": c["name"],
        "image": None if repository or public else (name or None),
        "tag": tag,
        "digest": digest,
        "essential": bool(c.get("essential", True)),
        "cpu": normalize_cpu(c.get("cpu")),
        "memory": c.get("memory"),
        "memory_reservation": c.get("memoryReservation"),
        "host_port": mapping.get("hostPort"),
        "container_port": mapping.get("containerPort"),
        "protocol": mapping.get("protocol"),
        "env_variables": env_text(normalize_env(variables)),
        "repository": repository,
        "public_repository": public,
        "log_group": log_group,
    }


def container_to_aws(
    container: dict[str, Any], image: str, region: str, family: str
) -> dict[str, Any]:
    """One entry of register_task_definition's containerDefinitions; `image` is the image's
    repository (the `image` column or a repository's URI), without tag or digest."""
    if container.get("digest"):
        image = f"{image}@{container['digest']}"
    elif container.get("tag"):
        image = f"{image}:{container['tag']}"
    out: dict[str, Any] = {
        "name": container["name"],
        "image": image,
        "essential": bool(container.get("essential")),
    }
    for key, column in (
        ("cpu", "cpu"),
        ("memory", "memory"),
        ("memoryReservation", "memory_reservation"),
    ):
        if container.get(column) is not None:
            out[key] = container[column]
    if container.get("container_port") is not None:
        mapping = {"containerPort": container["container_port"]}
        if container.get("host_port") is not None:
            mapping["hostPort"] = container["host_port"]
        if container.get("protocol") is not None:
            mapping["protocol"] = container["protocol"]
        out["portMappings"] = [mapping]
    variables = normalize_env(container.get("env_variables"))
    if variables is not None and not isinstance(variables, dict):
        raise ValueError(
            f"container {container['name']} of task definition {family}: env_variables must"
            " be a JSON object"
        )
    out["environment"] = [{"name": k, "value": v} for k, v in (variables or {}).items()]
    if container.get("log_group"):
        out["logConfiguration"] = {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": container["log_group"],
                "awslogs-region": region,
                "awslogs-stream-prefix": f"awslogs-{container['name']}",
            },
        }
    return out
