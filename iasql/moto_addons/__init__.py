"""What moto lacks, filled in for the local sandbox and the tests.

moto answers HTTP 500 for some operations that IaSQL's tables need (CodeDeploy has no update or
delete, ECR Public has no backend at all, ...). Each module here fills one service's gap, the
smallest way that behaves as AWS documents, and is loaded into the moto server process by
`iasql.sandbox_server` (which `iasql serve --local-cloud` and the test suite both start).

An add-on module defines either or both of:

- `install() -> None`: patches moto's backend and response classes in place (adds a missing
  operation, fixes one that loses state);
- `wrap(app) -> app`: a WSGI middleware in front of moto, for a service moto has no backend
  for; it answers that service's requests itself and passes every other request on.

Add-ons are found by listing this package, as modules are: adding one touches no other file.
The README's "What moto does not model" list says, per module, which gaps are filled here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def addons() -> list[ModuleType]:
    """Every add-on module of this package, in name order."""
    found = pkgutil.iter_modules(__path__)
    names = sorted(info.name for info in found if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def install(app: WsgiApp) -> WsgiApp:
    """Applies every add-on's patches, and returns `app` behind every add-on's middleware."""
    for addon in addons():
        patch = getattr(addon, "install", None)
        if patch is not None:
            patch()
        wrap = getattr(addon, "wrap", None)
        if wrap is not None:
            app = wrap(app)
    return app


def argument(function: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """The value the call `function(*args, **kwargs)` passes for its parameter `name` (moto's
    responses pass some by position, some by name)."""
    bound = inspect.signature(function).bind_partial(*args, **kwargs)
    return bound.arguments.get(name)
