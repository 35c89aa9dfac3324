"""ECR Public: moto has no backend for it, and answers every `ecr-public` call with HTTP 500.

This middleware answers the calls the aws_ecr module makes (repositories: create, describe,
delete; images: put, describe, batch delete) from an in-memory store per account, with AWS's
response shapes and error codes, and passes every other request on to moto. ECR Public is a
JSON-protocol service (X-Amz-Target `SpencerFrontendService.<Operation>`) in us-east-1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Json = dict[str, Any]

_TARGET = "SpencerFrontendService."
_DEFAULT_ACCOUNT = "123456789012"  # moto's default account
_CREDENTIAL = re.compile(r"Credential=(\d{12})/")  # a 12-digit access key id names the account
_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


class _Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Registry:
    """One account's public repositories: name -> repository, and name -> digest -> image."""

    def __init__(self, account: str) -> None:
        self.account = account
        # AWS gives each public registry a random default alias; this one is the account's.
        self.alias = "a" + hashlib.sha256(account.encode()).hexdigest()[:7]
        self.repositories: dict[str, Json] = {}
        self.images: dict[str, dict[str, Json]] = {}

    def repository(self, name: str) -> Json:
        found = self.repositories.get(name)
        if found is None:
            raise _Error(
                "RepositoryNotFoundException",
                f"The repository with name '{name}' does not exist in the registry with id"
                f" '{self.account}'",
            )
        return found

    def create_repository(self, body: Json) -> Json:
        name = str(body.get("repositoryName") or "")
        if not (2 <= len(name) <= 205 and _NAME.match(name)):
            raise _Error(
                "InvalidParameterException",
                f"Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must"
                f" satisfy regular expression {_NAME.pattern}': {name}",
            )
        if name in self.repositories:
            raise _Error(
                "RepositoryAlreadyExistsException",
                f"The repository with name '{name}' already exists in the registry with id"
                f" '{self.account}'",
            )
        repository = {
            "repositoryArn": f"arn:aws:ecr-public::{self.account}:repository/{name}",
            "registryId": self.account,
            "repositoryName": name,
            "repositoryUri": f"public.ecr.aws/{self.alias}/{name}",
            "createdAt": time.time(),
        }
        self.repositories[name] = repository
        self.images[name] = {}
        return {"repository": repository, "catalogData": body.get("catalogData") or {}}

    def describe_repositories(self, body: Json) -> Json:
        names = body.get("repositoryNames")
        if names:
            return {"repositories": [self.repository(n) for n in names]}
        return {"repositories": list(self.repositories.values())}

    def delete_repository(self, body: Json) -> Json:
        name = str(body.get("repositoryName") or "")
        repository = self.repository(name)
        if self.images[name] and not body.get("force"):
            raise _Error(
                "RepositoryNotEmptyException",
                f"The repository with name '{name}' in registry with id '{self.account}' cannot"
                " be deleted because it still contains images",
            )
        del self.repositories[name], self.images[name]
        return {"repository": repository}

    def put_image(self, body: Json) -> Json:
        name = str(body.get("repositoryName") or "")
        self.repository(name)
        manifest = str(body.get("imageManifest") or "")
        digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        tag = body.get("imageTag")
        images = self.images[name]
        for other in images.values():  # a tag names one image
            if tag in other["imageTags"]:
                other["imageTags"].remove(tag)
        image = images.setdefault(
            digest,
            {
                "registryId": self.account,
                "repositoryName": name,
                "imageDigest": digest,
                "imageTags": [],
                "imageSizeInBytes": len(manifest),
                "imagePushedAt": time.time(),
                "imageManifestMediaType": body.get("imageManifestMediaType") or _MANIFEST_TYPE,
            },
        )
        if tag and tag not in image["imageTags"]:
            image["imageTags"].append(tag)
        image_id = {"imageDigest": digest, **({"imageTag": tag} if tag else {})}
        return {
            "image": {
                "registryId": self.account,
                "repositoryName": name,
                "imageId": image_id,
                "imageManifest": manifest,
                "imageManifestMediaType": image["imageManifestMediaType"],
            }
        }

    def _find(self, name: str, image_id: Json) -> Json | None:
        for image in self.images[name].values():
            digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
            if (digest is None or image["imageDigest"] == digest) and (
                tag is None or tag in image["imageTags"]
            ):
                return image
        return None

    def describe_images(self, body: Json) -> Json:
        name = str(body.get("repositoryName") or "")
        self.repository(name)
        wanted = body.get("imageIds")
        if not wanted:
            return {"imageDetails": list(self.images[name].values())}
        found = []
        for image_id in wanted:
            image = self._find(name, image_id)
            if image is None:
                raise _Error(
                    "ImageNotFoundException",
                    f"The image with imageId {json.dumps(image_id)} does not exist within the"
                    f" repository with name '{name}' in the registry with id '{self.account}'",
                )
            found.append(image)
        return {"imageDetails": found}

    def batch_delete_image(self, body: Json) -> Json:
        name = str(body.get("repositoryName") or "")
        self.repository(name)
        deleted, failures = [], []
        for image_id in body.get("imageIds") or []:
            image = self._find(name, image_id)
            if image is None:
                failures.append(
                    {
                        "imageId": image_id,
                        "failureCode": "ImageNotFound",
                        "failureReason": "Requested image not found",
                    }
                )
                continue
            tag = image_id.get("imageTag")
            if tag is not None and image_id.get("imageDigest") is None:
                image["imageTags"].remove(tag)  # a tag alone untags; the last one deletes
                if image["imageTags"]:
                    deleted.append({"imageDigest": image["imageDigest"], "imageTag": tag})
                    continue
            del self.images[name][image["imageDigest"]]
            deleted.append(
                {"imageDigest": image["imageDigest"], **({"imageTag": tag} if tag else {})}
            )
        return {"imageIds": deleted, "failures": failures}


_OPERATIONS: dict[str, Callable[[_Registry, Json], Json]] = {
    "CreateRepository": _Registry.create_repository,
    "DescribeRepositories": _Registry.describe_repositories,
    "DeleteRepository": _Registry.delete_repository,
    "PutImage": _Registry.put_image,
    "DescribeImages": _Registry.describe_images,
    "BatchDeleteImage": _Registry.batch_delete_image,
}

_registries: dict[str, _Registry] = {}


def _account(environ: dict[str, Any]) -> str:
    """As the sandbox works it out: moto's account header or setting, else a 12-digit
    access key id, else moto's default account."""
    named = environ.get("HTTP_X_MOTO_ACCOUNT_ID") or os.environ.get("MOTO_ACCOUNT_ID")
    if named:
        return str(named)
    found = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    return found[1] if found is not None else _DEFAULT_ACCOUNT


def _answer(
    start_response: Callable[..., Any], status: str, body: Json, error: str | None = None
) -> list[bytes]:
    content = json.dumps(body).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("Content-Length", str(len(content))),
    ]
    if error is not None:
        headers.append(("x-amzn-ErrorType", error))
    start_response(status, headers)
    return [content]


def _handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    operation = str(environ["HTTP_X_AMZ_TARGET"])[len(_TARGET) :]
    handler = _OPERATIONS.get(operation)
    if handler is None:
        message = f"The operation {operation} of ECR Public is not modelled by this sandbox"
        return _answer(start_response, "501 Not Implemented", {"message": message})
    length = environ.get("CONTENT_LENGTH") or "0"
    raw = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        error = {"__type": "SerializationException", "message": "the body is no JSON object"}
        return _answer(start_response, "400 Bad Request", error, "SerializationException")
    account = _account(environ)
    registry = _registries.setdefault(account, _Registry(account))
    try:
        return _answer(start_response, "200 OK", handler(registry, body))
    except _Error as error:
        answer = {"__type": error.code, "message": error.message}
        return _answer(start_response, "400 Bad Request", answer, error.code)


def wrap(app: WsgiApp) -> WsgiApp:
    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(_TARGET):
            return _handle(environ, start_response)
        if (
            environ.get("PATH_INFO") == "/moto-api/reset"
            and environ.get("REQUEST_METHOD") == "POST"
        ):
            _registries.clear()
        return app(environ, start_response)

    return middleware
