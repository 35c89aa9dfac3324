"""The module kit, checked without a cloud or a database:

- a module's code imports only the kit (`modules`, `modules._aws`, `modules.concurrency`,
  `modules.errors`, `modules.spec`), its own package and the modules its ModuleSpec declares as
  dependencies;
- `spec_dump()` renders every module's spec as stable text, so a refactoring of the kit can be
  checked to leave the specs as they were (`python -m tests.test_module_kit > before.txt`);
- the keyed lock of `modules.concurrency` is one lock per key and event loop;
- the spec orders a module's tables (referenced tables first), and install creates them in
  that order, then runs the module's after-tables SQL;
- `modules._aws.attributes` maps columns to an API's attribute dict and back.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import modules
from engine.install import _create
from modules import available_modules
from modules._aws.attributes import AttributeMap
from modules.concurrency import KeyedLocks
from modules.spec import Column, ModuleSpec, Table, foreign_key

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


# --- what the spec works out --------------------------------------------------------------


def _table(name: str, *parents: str) -> Table:
    references = tuple(foreign_key(f"{p}_id", p, f"{p}_cloud_id") for p in parents)
    columns = (Column(f"{name}_cloud_id", "varchar"), *references)
    return Table(name, columns, None, natural_key=(f"{name}_cloud_id",), regional=False)


class _RecordingConnection:
    """Stands in for asyncpg: keeps the statements `_create` runs."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def execute(self, statement: str, *args: Any) -> str:
        self.statements.append(statement)
        return "OK"


def test_tables_listed_children_first_are_created_parents_first() -> None:
    listed = (
        _table("route", "route_table", "gateway"),
        _table("route_table", "network"),
        _table("gateway"),
        _table("network"),
        _table("tree", "tree"),  # a reference to itself needs no order
    )
    spec = ModuleSpec(
        "test_children_first",
        "0",
        tables=listed,
        setup_sql=("SELECT 'setup'",),
        after_tables_sql=("SELECT 'after the tables'",),
    )
    names = [t.name for t in spec.tables]
    assert names == ["network", "route_table", "gateway", "route", "tree"]
    assert dataclasses.replace(spec).tables == spec.tables  # ordered once and for all

    conn = _RecordingConnection()
    asyncio.run(_create(conn, spec))  # type: ignore[arg-type]
    statements = conn.statements
    created = [s.split()[2] for s in statements if s.startswith("CREATE TABLE")]
    assert created == [f'"{n}"' for n in names]
    assert statements[0] == "SELECT 'setup'"
    after = statements.index("SELECT 'after the tables'")
    ddl = [i for i, s in enumerate(statements) if s.startswith(("CREATE", "GRANT"))]
    registered = next(i for i, s in enumerate(statements) if "iasql_module" in s)
    assert max(ddl) < after < registered


def test_a_cycle_of_tables_is_refused() -> None:
    with pytest.raises(ValueError, match="a -> b -> a"):
        ModuleSpec("test_cycle", "0", tables=(_table("a", "b"), _table("b", "a")))


def test_installed_modules_list_parents_first() -> None:
    for spec in available_modules().values():
        seen: set[str] = set()
        own = {t.name for t in spec.tables}
        for table in spec.tables:
            parents = {c.ref.table for c in table.references if c.ref} & own - {table.name}
            assert parents <= seen, (spec.name, table.name, parents - seen)
            seen.add(table.name)


def test_attribute_map_reads_and_writes_an_attribute_dict() -> None:
    queue = AttributeMap("delay_seconds", "visibility_timeout", to_column=int, to_api=str)
    assert queue.columns == {
        "delay_seconds": "DelaySeconds",
        "visibility_timeout": "VisibilityTimeout",
    }
    assert queue.record({"DelaySeconds": "5", "VisibilityTimeout": "30", "QueueArn": "arn"}) == {
        "delay_seconds": 5,
        "visibility_timeout": 30,
    }
    row = {"delay_seconds": 5, "visibility_timeout": None}
    assert queue.attributes(row) == {"DelaySeconds": "5"}  # None: the API's default
    assert queue.attributes(row, current={"delay_seconds": 5}) == {}  # unchanged
    vpc = AttributeMap(named={"enable_dns_support": "enableDnsSupport"})
    assert vpc.attributes({"enable_dns_support": False}) == {"enableDnsSupport": False}


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
