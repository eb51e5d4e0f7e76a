"""The policy file: strict YAML loading, validation with located errors, and the immutable model."""

from intercept.policy.load import PolicyError, load_policy, parse_policy, policy_notices
from intercept.policy.model import (
    ApprovalSettings,
    Condition,
    CounterSpec,
    Policy,
    Rule,
    ToolPolicy,
)

__all__ = [
    "ApprovalSettings",
    "Condition",
    "CounterSpec",
    "Policy",
    "PolicyError",
    "Rule",
    "ToolPolicy",
    "load_policy",
    "parse_policy",
    "policy_notices",
]
