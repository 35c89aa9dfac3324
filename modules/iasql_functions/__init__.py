"""The built-in iasql_* functions (install, begin, preview, commit, ...)."""

from modules import VERSION
from modules.spec import ModuleSpec

MODULE = ModuleSpec(
    name="iasql_functions",
    version=VERSION,
    dependencies=("iasql_platform",),
    description="the iasql_* functions: modules, transactions, preview, commit, audit SQL",
)
