"""A YAML loader that refuses what would silently weaken a policy.

Duplicate keys are errors (PyYAML keeps the last one), and only `true`/`false` are booleans
(YAML 1.1 reads `yes`, `no`, `on` and `off` as booleans; YAML 1.2 and Intercept's Go loader do
not); dates stay strings. Merge keys (`<<`) are not supported.

`load_yaml_document` also returns the node tree, whose marks give validation errors their line
and column; nothing extra is computed for that (it is what `yaml.load` builds anyway).
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
    return load_yaml_document(text)[0]


def load_yaml_document(text: str) -> tuple[Any, yaml.Node | None]:
    """The document and its root node (None for an empty document), as `yaml.load` makes them.

    Mappings keep their keys in node order (duplicates and merge keys are refused), so the i-th key
    of a dict is the i-th pair of its MappingNode.
    """
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        refuse_expansion(node)
        try:
            return loader.construct_document(node), node
        except RecursionError:
            raise DocumentTooLarge("the document is nested too deeply", node.start_mark) from None
    finally:
        loader.dispose()


MAX_EXPANDED_NODES = 100_000  # a policy is a few thousand nodes; an alias bomb is billions


class DocumentTooLarge(yaml.MarkedYAMLError):
    """Aliases that would expand the document beyond MAX_EXPANDED_NODES nodes (a few hundred bytes
    can stand for billions: "billion laughs"), an alias inside what it names, or nesting too deep."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def refuse_expansion(root: yaml.Node) -> None:
    """Raise DocumentTooLarge if `root`, with every alias expanded, has more than MAX_EXPANDED_NODES
    nodes or refers to itself. Aliases are shared nodes of the composed tree: each node's expanded
    size is counted once (iteratively: no recursion limit), before anything is constructed."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        key = id(node)
        if counted:
            ancestors.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_EXPANDED_NODES:
                raise DocumentTooLarge(
                    f"aliases expand the document beyond {MAX_EXPANDED_NODES} nodes", node.start_mark
                )
            sizes[key] = size
        elif key not in sizes:
            if key in ancestors:
                raise DocumentTooLarge("an alias refers to the node that contains it", node.start_mark)
            ancestors.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


# The words YAML 1.1 reads as booleans (lower-cased) and what it reads them as; this loader keeps
# them as strings.
YAML11_BOOLEANS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}


def yaml11_boolean(node: yaml.Node | None) -> bool | None:
    """What YAML 1.1 would read an unquoted `yes`/`no`/`on`/`off`/`y`/`n` as (this loader keeps
    them as strings); None for any other node, and for quoted ones (a string was meant)."""
    if not isinstance(node, yaml.ScalarNode) or node.style or node.tag != "tag:yaml.org,2002:str":
        return None
    return YAML11_BOOLEANS.get(str(node.value).lower())
