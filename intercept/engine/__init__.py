"""Pure policy evaluation: a policy, a call, counter values in, a Decision out. No I/O, no clock."""

from intercept.engine.decision import Decision, ToolCall
from intercept.engine.evaluate import evaluate

__all__ = ["Decision", "ToolCall", "evaluate"]
