"""The platform every environment database has: module registry and audit log tables."""

from modules import VERSION
from modules.spec import ModuleSpec

MODULE = ModuleSpec(
    name="iasql_platform",
    version=VERSION,
    description="platform tables: installed modules, their tables and the audit log",
)
