"""Connection limits, counted by the proxy: a server-wide one, one per database, and a share
of the server-wide one kept for the admin database.

A client counts from the moment the proxy opens its backend connection (after the proxy has
checked its password, or at startup for a login relayed to the backing Postgres) until it
disconnects. So clients that never log in count for nothing; the auth timeout ends them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class ConnectionLimits:
    max_connections: int | None = None  # server-wide; None: no limit
    per_database: int | None = None  # each database (environment); None: no limit
    admin_reserved: int = 0  # of max_connections, kept for the admin database
    admin_database: str = "iasql"
    total: int = 0
    by_database: collections.Counter[str] = field(default_factory=collections.Counter)

    def admit(self, database: str) -> str | None:
        """Counts a new backend connection to `database`; or the reason it is refused
        (the message of a FATAL 53300), naming the limit."""
        if self.max_connections is not None:
            if self.total >= self.max_connections:
                return (
                    "sorry, too many clients already: the server-wide limit of"
                    f" {self.max_connections} connections is reached (--max-connections)"
                )
            reserved_from = self.max_connections - self.admin_reserved
            if database != self.admin_database and self.total >= reserved_from:
                return (
                    f"sorry, too many clients already: the last {self.admin_reserved} of the"
                    f" server's {self.max_connections} connections are reserved for the admin"
                    f' database "{self.admin_database}" (--admin-reserved-connections)'
                )
        if (
            self.per_database is not None
            and database != self.admin_database
            and self.by_database[database] >= self.per_database
        ):
            return (
                f'too many connections for database "{database}": the limit is'
                f" {self.per_database} per database (--max-connections-per-db)"
            )
        self.total += 1
        self.by_database[database] += 1
        return None

    def release(self, database: str) -> None:
        self.total -= 1
        self.by_database[database] -= 1
        if self.by_database[database] <= 0:
            del self.by_database[database]
