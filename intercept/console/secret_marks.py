"""Where the web inbox marks secret-looking parts of exact arguments: the same parts `approvals show`
marks on a terminal (`approvals.highlight`), as data the page can lay over the value it renders.

One mark per secret-looking part, in document order:
- `{"path": [...], "start": i, "end": j}`: characters i to j of the string at `path` (offsets in
  Unicode code points, as Python counts them; the page slices `Array.from(text)`);
- `{"path": [...]}`: the whole value at `path`, a non-string under a secret-named key.

A path is the list of object keys (strings) and array indices (integers) from the top. The page
hides marked parts when its "Mask secrets" toggle is on; the detector stays in one place (Python),
so the inbox and the CLI cannot disagree about what looks secret.
"""

from __future__ import annotations

from typing import Any

from intercept.approvals.highlight import secret_spans
from intercept.approvals.redact import _secret_key

PathPart = str | int


def secret_marks(value: Any) -> list[dict[str, Any]]:
    """The marks for `value` (see the module doc). Walks without recursion: any depth the JSON
    parser accepted is fine here."""
    marks: list[dict[str, Any]] = []
    # (value, path, under a secret-named key); pushed in reverse so marks come out in document order.
    stack: list[tuple[Any, list[PathPart], bool]] = [(value, [], False)]
    while stack:
        item, path, secret = stack.pop()
        if isinstance(item, str):
            spans = [(0, len(item))] if secret else secret_spans(item)
            marks.extend({"path": path, "start": start, "end": end} for start, end in spans)
        elif secret:
            marks.append({"path": path})
        elif isinstance(item, dict):
            children = [(child, [*path, str(key)], _secret_key(str(key))) for key, child in item.items()]
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(child, [*path, index], False) for index, child in enumerate(item)]))
    return marks
