"""How a module describes itself. Modules import nothing from the engine or the proxy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    version: str
    dependencies: tuple[str, ...] = ()
    description: str = ""
