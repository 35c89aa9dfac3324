"""The engine: functions, environment databases and (later) transactions and the audit log."""

from engine.core import Engine, EngineConfig
from engine.functions import CallContext, EngineError, FunctionSpec

__all__ = ["CallContext", "Engine", "EngineConfig", "EngineError", "FunctionSpec"]
