"""Policy documents (IAM, S3 bucket, SQS queue and VPC endpoint policies): one canonical form
to compare them in, so that what AWS treats as the same document never shows as drift."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

# AWS's reading of a document without a Version element.
DEFAULT_POLICY_VERSION = "2008-10-17"
_PRINCIPAL_KEYS = ("Principal", "NotPrincipal")


def load_policy(value: Any) -> Any:
    """A policy document as Python data: JSON text (URL-encoded, as IAM's raw answers are)
    is parsed; text that is no JSON is left as it is, for AWS to reject."""
    if not isinstance(value, str):
        return value
    for text in (value, urllib.parse.unquote(value)):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return value


def policy_text(document: Any) -> str:
    """The document to send to AWS: text as written, anything else as JSON."""
    return document if isinstance(document, str) else json.dumps(document)


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _principal_id(value: Any) -> Any:
    """AWS stores a bare account id as a principal in its ARN form."""
    text = str(value)
    return f"arn:aws:iam::{text}:root" if text.isdigit() and len(text) == 12 else value


def _canonical(value: Any, key: str | None = None) -> Any:
    """Every list position of the policy grammar (Statement, Action, Resource, a principal's
    ids, condition values) is a set that takes a bare value too: list order and duplicates
    don't count and ["x"] means "x"."""
    if isinstance(value, dict):
        items = {k: _canonical(v, k) for k, v in value.items()}
        if key in _PRINCIPAL_KEYS and "AWS" in items:
            ids = items["AWS"] if isinstance(items["AWS"], list) else [items["AWS"]]
            items["AWS"] = _canonical([_principal_id(v) for v in ids])
        if items.get("Sid") == "":  # an empty Sid is no Sid
            del items["Sid"]
        return items
    if isinstance(value, list):
        unique = {_sort_key(v): v for v in (_canonical(v, key) for v in value)}
        ordered = [unique[k] for k in sorted(unique)]
        return ordered[0] if len(ordered) == 1 else ordered
    return value


def canonical_policy(value: Any) -> str | None:
    """A policy document as compact, key-sorted JSON in which what AWS treats as the same
    reads the same: key order, a JSON string or an object, a Statement object or a one-element
    list, the order of statements and actions, duplicates, an empty Sid, a missing Version
    (read as 2008-10-17), an account id or its root ARN as principal. Text that is no JSON is
    compared as written."""
    if value is None:
        return None
    document = load_policy(value)
    if not isinstance(document, dict):
        return document if isinstance(document, str) else _sort_key(document)
    document = _canonical({"Version": DEFAULT_POLICY_VERSION, **document})
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
