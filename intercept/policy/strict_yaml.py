"""A YAML loader that refuses what would silently weaken a policy.

Duplicate keys are errors (PyYAML keeps the last one), and only `true`/`false` are booleans
(YAML 1.1 reads `yes`, `no`, `on` and `off` as booleans; YAML 1.2 and Intercept's Go loader do
not); dates stay strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice."""


class StrictLoader(_Loader):  # type: ignore[misc, valid-type]
    """SafeLoader with duplicate-key detection and YAML 1.2 booleans."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: SafeConstructor reports it below
                continue
            if duplicate:
                raise DuplicateKeyError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
# Timestamps stay strings: a condition value such as 2024-01-01 compares as text, as in Go.
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")

StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))


def _construct_yaml12_bool(loader: StrictLoader, node: yaml.ScalarNode) -> bool:
    return str(loader.construct_scalar(node)).lower() == "true"


StrictLoader.add_constructor(_BOOL_TAG, _construct_yaml12_bool)


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly; raises yaml.YAMLError with a position on bad input."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
