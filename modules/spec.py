"""How a module describes itself: its tables, like a Terraform provider's resource schemas, and
one mapper per table that reads and writes that resource in the cloud.

Modules import nothing from the engine or the proxy. The engine hands mappers a `Cloud` (AWS
clients for one environment database) and speaks to them in *records*: dicts keyed by column
name, holding the cloud's view of one resource. A foreign-key column holds the referenced
resource's cloud id (e.g. a subnet's `vpc_id` is "vpc-0abc"), never a serial id: the engine
translates between the two, so a mapper never sees the database.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from modules.migration import Migration

Record = dict[str, Any]

# The engine puts a unique token into every record it asks a mapper to create. A mapper whose
# resource gets its id from the cloud (a VPC, a subnet) tags the resource with it (tag key
# TOKEN_TAG) and reports it back under the record key TOKEN when it reads, so that a create cut
# short by a crash can be found again and nothing is orphaned. Mappers of resources named by
# the user (a bucket, a queue) may ignore it: the name finds them.
TOKEN = "iasql_token"
TOKEN_TAG = "iasql:token"
# Where the record given to a create holds the rows of Table.created_with made in the same
# commit: {table name: [their records]}.
CREATED_WITH = "iasql_created_with"


class CloudError(Exception):
    """A cloud operation that failed for good; the message is the cloud's own."""


class ArgumentError(CloudError):
    """A module function refuses an argument before calling the cloud: the caller's mistake,
    which the engine reports as 22023 (the message says what to write instead)."""


@dataclass(frozen=True)
class Ref:
    """A foreign key: this column holds `table.key`. In records it holds the referenced row's
    `cloud` column instead (the cloud's own name for it); when `cloud` is None the key itself
    is what the cloud uses (e.g. a bucket name or a region)."""

    table: str
    key: str = "id"
    cloud: str | None = None
    on_delete: str = "NO ACTION"  # like RESTRICT, but deferrable (the engine undoes in bulk)
    # A resource naming a parent that has no row is normally left out (a rule naming another
    # account's group). An optional reference (a VPC's DHCP options) is stored as NULL
    # instead, so the resource itself is never mistaken for a missing one.
    optional: bool = False


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Postgres type, e.g. "varchar", "integer", "json", "boolean", "cidr"
    nullable: bool = True
    default: str | None = None  # an SQL expression
    check: str | None = None  # an SQL boolean expression
    ref: Ref | None = None
    # Set by the cloud (ids, arns, states, creation times): written back by the engine,
    # ignored in comparisons, never emitted in generated SQL.
    cloud_assigned: bool = False
    replaces: bool = False  # changing it needs a delete and a create
    local: bool = False  # a setting of this database only: never compared with the cloud
    secret: bool = False  # never written to the audit log, never emitted
    # The canonical form used to compare this column (policy JSON, tag order, CIDR forms).
    normalize: Callable[[Any], Any] | None = None
    # The column holds cloud ids (one, or an array of them) of rows of `cloud_ref.table`, found
    # by its column `cloud_ref.key`, as IaSQL's load_balancer.subnets does. Rows and records
    # both hold the ids; generated SQL turns each into a sub-select by natural key, and a
    # commit deletes the referenced resources only after the rows naming them.
    cloud_ref: Ref | None = None


def foreign_key(
    name: str,
    table: str,
    cloud: str,
    *,
    on_delete: str = "NO ACTION",
    nullable: bool = False,
    replaces: bool = True,
    optional: bool = False,
) -> Column:
    """An integer column holding the serial `id` of a row of `table`, which records hold as
    that row's `cloud` column (e.g. `foreign_key("vpc_id", "vpc", "vpc_id")`: a subnet's VPC).

    The defaults fit most references: the column is required and changing it means a new
    resource. `on_delete` is Ref's own default (NO ACTION): a cascade is always asked for by
    name. `optional` is Ref's: a parent without a row is stored as NULL."""
    ref = Ref(table, key="id", cloud=cloud, on_delete=on_delete, optional=optional)
    return Column(name, "integer", nullable=nullable, ref=ref, replaces=replaces)


class Cloud(Protocol):
    """AWS access for one environment database (credentials, endpoint, retries)."""

    def client(self, service: str, region: str | None) -> AbstractAsyncContextManager[Any]:
        """An aiobotocore client for `service` in `region` (None: the global endpoint)."""
        ...


class Mapper(Protocol):
    """Reads and writes one kind of cloud resource."""

    async def read(self, cloud: Cloud, region: str | None) -> list[Record]:
        """Every resource of this kind (in `region`, for a regional table). A record may carry
        keys that are not columns (e.g. `default_for_az` for `Table.protected`); they are not
        stored."""
        ...

    async def create(self, cloud: Cloud, record: Record) -> Record:
        """Creates the resource; returns it as the cloud now has it (assigned values included)."""
        ...

    async def update(self, cloud: Cloud, record: Record, current: Record) -> Record:
        """Changes `current` in place to match `record`; returns the new cloud state."""
        ...

    async def delete(self, cloud: Cloud, current: Record) -> None: ...


@runtime_checkable
class ReadsSome(Protocol):
    """Optional for a mapper: reads only the resources named by `wanted` (records holding at
    least the table's cloud id), so a commit can read back what it made without reading the
    whole account. Without it, the engine reads the whole table."""

    async def read_some(
        self, cloud: Cloud, region: str | None, wanted: list[Record]
    ) -> list[Record]: ...


# `Table.unique` left out: worked out from the other keys (see Table). Typed as the field so
# that a constructed Table's `unique` is always a tuple.
_INFER_UNIQUE: Any = None


@dataclass(frozen=True)
class Table:
    """One resource's table. The spec works out what every table would repeat:

    - a primary key of `("id",)` with no `id` column declared gets `id serial NOT NULL` as its
      first column;
    - `unique` left out is the cloud id, when there is one and it is not the primary key
      (`unique=()` asks for no unique constraint).
    """

    name: str
    columns: tuple[Column, ...]
    mapper: Mapper | None  # None: a table of this database only (e.g. credentials)
    # What identifies the resource in another environment, for generated SQL.
    natural_key: tuple[str, ...]
    # What identifies it in the cloud; matched between rows and records.
    cloud_id: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ("id",)
    unique: tuple[tuple[str, ...], ...] = _INFER_UNIQUE
    regional: bool = True  # has a `region` column; reads fan out over enabled regions
    # AWS-created resources (a default VPC) that a user's DELETE must not remove.
    protected: Callable[[Record], bool] | None = None
    extra_ddl: tuple[str, ...] = ()  # statements run after CREATE TABLE (indexes, triggers)
    # Tables whose resources, when a commit makes them, bring resources of this table along
    # in the cloud (an instance brings its root volume): the commit re-reads this one too.
    synced_with: tuple[str, ...] = ()
    # The other way round: tables whose resources this table's make in the cloud (one
    # ecs_simplified row makes a load balancer, a service...): a commit of this table
    # re-reads those that are installed.
    brings_along: tuple[str, ...] = ()
    # Tables whose creates in the same commit come before this table's creates and updates,
    # for a need no foreign key shows (an ECS service needs its target group's listener).
    create_after: tuple[str, ...] = ()
    # Tables of rows referencing this one that the resource takes only when it is made (an
    # OpenSearch domain's VPC subnets): a create gets those made in the same commit in
    # record[CREATED_WITH], after what they need.
    created_with: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.primary_key == ("id",) and all(c.name != "id" for c in self.columns):
            serial = Column("id", "serial", nullable=False)
            object.__setattr__(self, "columns", (serial, *self.columns))
        if self.unique is _INFER_UNIQUE:
            inferred = self.cloud_id and self.cloud_id != self.primary_key
            object.__setattr__(self, "unique", (self.cloud_id,) if inferred else ())

    def column(self, name: str) -> Column:
        return self._columns_by_name[name]

    @property
    def column_names(self) -> set[str]:
        return set(self._columns_by_name)

    @functools.cached_property
    def _columns_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @property
    def references(self) -> list[Column]:
        return [c for c in self.columns if c.ref is not None]

    @property
    def cloud_references(self) -> list[Column]:
        return [c for c in self.columns if c.cloud_ref is not None]


def dependency_order(tables: Iterable[Table]) -> list[Table]:
    """The tables, each one after the tables it references among them (a reference to a table
    not given, e.g. another module's, is already met). Otherwise they keep their order.
    Raises ValueError for a cycle of references: no order could create their foreign keys."""
    given = list(tables)
    by_name = {t.name: t for t in given}
    ordered: list[Table] = []
    done: set[str] = set()
    path: list[str] = []  # the tables being visited, each referencing the next

    def visit(table: Table) -> None:
        if table.name in done:
            return
        if table.name in path:
            cycle = " -> ".join([*path[path.index(table.name) :], table.name])
            raise ValueError(f"tables reference each other in a cycle: {cycle}")
        path.append(table.name)
        for column in table.references:
            assert column.ref is not None
            parent = by_name.get(column.ref.table)
            if parent is not None and parent is not table:
                visit(parent)
        path.pop()
        done.add(table.name)
        ordered.append(table)

    for table in given:
        visit(table)
    return ordered


@dataclass(frozen=True)
class AccountCapability:
    """What the engine needs from the module that holds the database's AWS account, so that
    it names none of that module's tables. One module declares it (aws_account)."""

    # Its first row (by id) is the account: columns access_key_id, secret_access_key,
    # session_token and endpoint_url.
    credentials: Table
    # The account's regions: columns region and is_enabled; its mapper reads them.
    regions: Table
    # A query whose one value is the default region (NULL when there is none).
    default_region_sql: str


@dataclass(frozen=True)
class ModuleSpec:
    """A module. The spec works out the order of its tables: `tables` may list them in any
    order, and holds them referenced tables first (the order install creates them in, and
    uninstall drops them in reverse)."""

    name: str
    version: str
    dependencies: tuple[str, ...] = ()
    description: str = ""
    tables: tuple[Table, ...] = ()
    # SQL run once at install, before the tables (types, functions the tables use).
    setup_sql: tuple[str, ...] = ()
    # SQL run once at install, after all the tables (a trigger naming several of them).
    after_tables_sql: tuple[str, ...] = ()
    teardown_sql: tuple[str, ...] = ()
    # Module functions the proxy hands to the engine, e.g. `key_pair_request`.
    functions: Sequence[ModuleFunction] = field(default_factory=tuple)
    # Set by the one module that holds the AWS account (credentials, regions).
    account: AccountCapability | None = None
    # The version of its tables' schema, raised by one with each release that changes them,
    # and the migrations from 1 up to it (modules/migration.py): migrations[i] leads to i + 2.
    schema_version: int = 1
    migrations: tuple[Migration, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(dependency_order(self.tables)))
        versions = [m.version for m in self.migrations]
        if versions != list(range(2, self.schema_version + 1)):
            raise ValueError(
                f"module {self.name}: schema version {self.schema_version} needs migrations to"
                f" versions {list(range(2, self.schema_version + 1))}, not {versions}"
            )


class FunctionRun(Protocol):
    """A module function's code: `async def f(cloud, **arguments) -> list[Record]`, called with
    the function's parameters by name (`key_pair_request(cloud, key_name=..., region=...)`).

    The parameters after `cloud` are typed as any: each function names its own, and
    `ModuleFunction.params` declares them to the engine."""

    def __call__(
        self, cloud: Cloud, /, *args: Any, **arguments: Any
    ) -> Awaitable[list[Record]]: ...


@dataclass(frozen=True)
class ModuleFunction:
    """A module RPC such as `key_pair_request(name, region)`, called like an iasql function.
    One that changes the cloud runs as its own infrastructure transaction (or inside the open
    one), and the module's tables are synced from the cloud after it."""

    name: str
    columns: tuple[tuple[str, str], ...]  # result columns: (name, Postgres type)
    params: tuple[tuple[str, str], ...]  # (name, Postgres type)
    run: FunctionRun  # async (cloud, **arguments) -> list[Record]
    description: str
    changes_cloud: bool = True
    # Parameters a caller may leave out (they arrive as None). A parameter named `region`
    # left out gets the database's default region.
    optional: tuple[str, ...] = ()
    sample: str | None = None  # an example call, for iasql_help()
