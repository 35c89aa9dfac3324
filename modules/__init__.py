"""Every module is one sub-package exposing `MODULE`, a ModuleSpec; this finds them all."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from modules.spec import AccountCapability, ModuleSpec

VERSION = "0.1.0"


@cache
def available_modules() -> dict[str, ModuleSpec]:
    found: dict[str, ModuleSpec] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        package = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(package, "MODULE", None)
        if isinstance(spec, ModuleSpec):
            found[spec.name] = spec
    return dict(sorted(found.items()))


def account_module() -> tuple[ModuleSpec, AccountCapability]:
    """The module that declares the account capability, and the capability."""
    for spec in available_modules().values():
        if spec.account is not None:
            return spec, spec.account
    raise LookupError("no module declares the AWS account capability")
