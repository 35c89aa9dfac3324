"""The module kit, checked without a cloud or a database:

- a module's code imports only the kit (`modules`, `modules._aws`, `modules.concurrency`,
  `modules.errors`, `modules.spec`), its own package and the modules its ModuleSpec declares as
  dependencies;
- `spec_dump()` renders every module's spec as stable text, so a refactoring of the kit can be
  checked to leave the specs as they were (`python -m tests.test_module_kit > before.txt`);
- the keyed lock of `modules.concurrency` is one lock per key and event loop.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import modules
from modules import available_modules
from modules.concurrency import KeyedLocks
from modules.spec import ModuleSpec

KIT = ("modules", "modules._aws", "modules.concurrency", "modules.errors", "modules.spec")
ROOT = Path(modules.__file__).parent


def _packages() -> dict[str, ModuleSpec]:
    """Module package name -> its spec, for every package exposing MODULE."""
    found = {}
    for info in pkgutil.iter_modules(modules.__path__):
        if info.ispkg:
            spec = getattr(importlib.import_module(f"modules.{info.name}"), "MODULE", None)
            if isinstance(spec, ModuleSpec):
                found[info.name] = spec
    return found


def _imports(path: Path) -> set[str]:
    """The `modules.*` names a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the file's package, less one part per extra dot
                home = list(parts[:-1])
                base = home[: len(home) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            names.add(name)
            if name == "modules":  # `from modules import aws_vpc` imports a module package
                names.update(f"modules.{alias.name}" for alias in node.names)
    return {n for n in names if n == "modules" or n.startswith("modules.")}


def _allowed(name: str, package: str, spec: ModuleSpec) -> bool:
    owners = (*KIT, f"modules.{package}", *(f"modules.{d}" for d in spec.dependencies))
    return any(
        name == owner or (owner != "modules" and name.startswith(owner + ".")) for owner in owners
    ) or (name.startswith("modules.") and name.split(".")[1] in ("VERSION", "available_modules"))


def test_modules_import_only_the_kit_and_their_dependencies() -> None:
    wrong = []
    for package, spec in _packages().items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(_imports(path)):
                if not _allowed(name, package, spec):
                    wrong.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_kit_belongs_to_no_module() -> None:
    assert "_aws" not in _packages()
    for path in [*sorted((ROOT / "_aws").rglob("*.py")), *sorted(ROOT.glob("*.py"))]:
        for name in _imports(path):
            assert any(name == k or name.startswith(k + ".") for k in KIT), (path, name)


def test_keyed_locks_are_one_per_key_and_loop() -> None:
    locks: KeyedLocks[str] = KeyedLocks()

    async def pair() -> tuple[asyncio.Lock, asyncio.Lock, asyncio.Lock]:
        return locks("a"), locks("a"), locks("b")

    first, again, other = asyncio.run(pair())
    assert first is again and first is not other
    later, _, _ = asyncio.run(pair())  # a new loop gets locks of its own
    assert later is not first

    async def contended() -> list[int]:
        order: list[int] = []

        async def one(n: int) -> None:
            async with locks("a"):
                order.append(n)
                await asyncio.sleep(0)
                order.append(n)

        await asyncio.gather(one(1), one(2))
        return order

    assert asyncio.run(contended()) == [1, 1, 2, 2]


# --- the spec dump ---------------------------------------------------------------------------


def _render(value: Any, indent: str = "") -> list[str]:
    """A dataclass as `field: value` lines; callables as a marker (their home may move)."""
    lines = []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            lines.append(f"{indent}{f.name}:")
            lines += _render(item, indent + "  ")
        elif isinstance(item, (tuple, list)) and item and dataclasses.is_dataclass(item[0]):
            lines.append(f"{indent}{f.name}:")
            for element in item:
                lines.append(f"{indent}  -")
                lines += _render(element, indent + "    ")
        elif f.name == "mapper":
            lines.append(f"{indent}{f.name}: {type(item).__name__ if item else None}")
        elif callable(item):
            lines.append(f"{indent}{f.name}: <callable>")
        else:
            lines.append(f"{indent}{f.name}: {item!r}")
    return lines


def spec_dump() -> str:
    """Every module's spec: tables, every attribute of every column, keys, functions."""
    lines = []
    for name, spec in available_modules().items():
        lines.append(f"== {name}")
        lines += _render(spec, "  ")
    return "\n".join(lines) + "\n"


def test_spec_dump_is_stable_and_complete() -> None:
    dump = spec_dump()
    assert dump == spec_dump()
    for spec in available_modules().values():
        assert f"== {spec.name}\n" in dump
        for table in spec.tables:
            assert f"    name: {table.name!r}\n" in dump
    assert "<function" not in dump and " at 0x" not in dump


if __name__ == "__main__":
    print(spec_dump(), end="")
