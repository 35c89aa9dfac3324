"""The order of a commit's steps (engine.apply.build_steps) for the orders a table declares
beyond its references: create_after and created_with. Without a cloud or a database."""

from __future__ import annotations

from typing import Any

from engine.apply import Step, build_steps
from engine.plan import Operation, Plan
from engine.records import References
from modules.spec import Column, Table, foreign_key


class _NoCloud:
    async def read(self, cloud: Any, region: str | None) -> list[dict[str, Any]]:
        return []


def _table(name: str, *refs: str, **order: tuple[str, ...]) -> Table:
    columns = (Column("name", "varchar"), *(foreign_key(f"{r}_id", r, "name") for r in refs))
    return Table(name=name, columns=columns, mapper=_NoCloud(), natural_key=("name",), **order)  # type: ignore[arg-type]


def _creates(*rows: tuple[Table, dict[str, Any]]) -> list[Step]:
    operations = [Operation(t, "create", row, None, None) for t, row in rows]
    return build_steps(Plan(operations, References(), [t for t, _ in rows]))


def _order(steps: list[Step]) -> list[str]:
    """The tables in an order the steps can run in; fails on a cycle."""
    waiting = {id(s): s.waiting for s in steps}
    ready = [s for s in steps if s.waiting == 0]
    done: list[str] = []
    while ready:
        step = ready.pop(0)
        done.append(f"{step.table.name}:{step.operation.row['name']}")  # type: ignore[index]
        for dependent in step.dependents:
            waiting[id(dependent)] -= 1
            if waiting[id(dependent)] == 0:
                ready.append(dependent)
    assert len(done) == len(steps), f"a cycle: {done}"
    return done


def test_create_after_orders_what_no_reference_shows() -> None:
    group = _table("target_group")
    listener = _table("listener", "target_group")
    service = _table("service", "target_group", create_after=("listener",))
    steps = _creates(
        (service, {"id": 1, "name": "s", "target_group_id": 1}),
        (group, {"id": 1, "name": "g"}),
        (listener, {"id": 1, "name": "l", "target_group_id": 1}),
    )
    assert _order(steps) == ["target_group:g", "listener:l", "service:s"]


def test_created_with_hands_the_children_over_after_what_they_need() -> None:
    subnet = _table("subnet")
    domain = _table("domain", created_with=("domain_subnets",))
    link = _table("domain_subnets", "domain", "subnet")
    steps = _creates(
        (link, {"id": 1, "name": "x", "domain_id": 1, "subnet_id": 1}),
        (link, {"id": 2, "name": "y", "domain_id": 2, "subnet_id": 1}),  # another domain's
        (domain, {"id": 1, "name": "d"}),
        (subnet, {"id": 1, "name": "s"}),
    )
    made = next(s for s in steps if s.table.name == "domain")
    assert [c.operation.row["name"] for c in made.made_with] == ["x"]  # type: ignore[index]
    order = _order(steps)
    # The subnet first: the domain is made with it; then the link, which finds it there.
    assert order.index("subnet:s") < order.index("domain:d") < order.index("domain_subnets:x")


def test_declared_orders_never_make_a_cycle() -> None:
    # c names p and q, q names p: handing c to p's create would make p wait for q, which
    # waits for p. The reference wins; p is made without waiting for q.
    parent = _table("p", created_with=("c",), create_after=("q",))
    middle = _table("q", "p")
    child = _table("c", "p", "q")
    steps = _creates(
        (parent, {"id": 1, "name": "p"}),
        (middle, {"id": 1, "name": "q", "p_id": 1}),
        (child, {"id": 1, "name": "c", "p_id": 1, "q_id": 1}),
    )
    assert _order(steps) == ["p:p", "q:q", "c:c"]
