"""The engine: functions, environment databases, modules, infrastructure transactions (plan,
apply, sync) and the audit log."""

from engine.core import Engine, EngineConfig
from engine.functions import CallContext, EngineError, FunctionSpec

__all__ = ["CallContext", "Engine", "EngineConfig", "EngineError", "FunctionSpec"]
