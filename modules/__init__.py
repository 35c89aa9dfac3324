"""Every module is one sub-package exposing `MODULE`, a ModuleSpec; this finds them all."""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache

from modules.spec import AccountCapability, ModuleSpec

VERSION = "0.1.0"

# Folders of more module packages (a module of your own, a test's), searched after the
# built-in ones: IASQL_MODULE_PATH at import, or add_module_path().
MODULE_PATH_VARIABLE = "IASQL_MODULE_PATH"


def add_module_path(folders: list[str]) -> None:
    """Makes the module packages in `folders` available (a built-in module's name wins)."""
    for folder in folders:
        path = os.path.abspath(folder)
        if folder and path not in __path__:
            __path__.append(path)
    available_modules.cache_clear()


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


add_module_path(os.environ.get(MODULE_PATH_VARIABLE, "").split(os.pathsep))
