"""The engine: functions, environment databases, modules, infrastructure transactions (plan,
apply, sync) and the audit log."""

from engine.contract import CallContext, EngineError, FunctionSpec
from engine.core import Engine, EngineConfig

__all__ = ["CallContext", "Engine", "EngineConfig", "EngineError", "FunctionSpec"]
