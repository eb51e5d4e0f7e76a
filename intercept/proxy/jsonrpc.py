"""Strict parsing of client lines and building of the JSON-RPC messages the proxy sends itself.

A client line is acted on only if it is exactly one unambiguous JSON value: the upstream's parser
might read anything else differently from ours (duplicate keys, NaN, lenient UTF-8, a lone CR).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APPROVAL_REQUIRED = -32003

_BOM = b"\xef\xbb\xbf"


class RefusedLine(Exception):
    """A client line that is not forwarded; answered with a JSON-RPC error `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse keys that repeat, exactly or only in letter case.

    Go's encoding/json (mcp-go and most Go servers) matches field names case-insensitively and
    keeps the last match, so `"name"` and `"NAME"` in one object are a duplicate for such an
    upstream: `{"name":"echo","NAME":"delete_repository"}` must not pass as a call to echo.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RefusedLine(PARSE_ERROR, f"Parse error: duplicate key {json.dumps(duplicate)}")
    if len(pairs) > 1:
        joined = "".join(obj)
        # Lowercase ASCII keys fold to themselves: only exact duplicates (refused above) could collide.
        if not (joined.isascii() and joined == joined.lower()) and len({k.casefold() for k in obj}) != len(obj):
            raise RefusedLine(PARSE_ERROR, "Parse error: keys that differ only in letter case")
    return obj


def _no_constants(name: str) -> Any:
    raise RefusedLine(PARSE_ERROR, f"Parse error: {name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise RefusedLine(PARSE_ERROR, f"Parse error: number {text[:40]} is out of range")
    return value


# Built once: json.loads with hooks builds a new decoder per call, which shows on the hot path.
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constants, parse_float=_finite_float
)


def parse_client_line(line: bytes) -> Any:
    """Parse one line (without its trailing LF) strictly; raises RefusedLine.

    The fast path: an ASCII line that is exactly orjson's own encoding of its value.
    `dumps(loads(line)) == line` proves the line has one reading: no duplicate key (dumps never
    repeats one), no whitespace, escape or number spelling a parser could take differently, no
    integer beyond 64 bits (orjson reads those as floats, which do not spell back the same). Keys
    that collide up to letter case are caught the same way on the lowercased line: for ASCII,
    lowercasing is case folding. Any other line takes the strict path, which accepts or refuses
    it with a precise message.
    """
    if line.isascii():
        try:
            value = orjson.loads(line)
            if orjson.dumps(value) == line and (line.islower() or _no_case_collision(line)):
                return value
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # e.g. nested deeper than orjson writes
            pass
    return _parse_strictly(line)


def parse_client_lines(lines: list[bytes | None]) -> list[Any] | None:
    """What `parse_client_line` gives for each of `lines` when every one takes its fast path,
    with the spelling compared once for all of them: each line is parsed on its own, so
    `dumps([v1, v2, ...]) == b"[" + b",".join(lines) + b"]"` holds exactly when every
    `dumps(vi) == line_i` (a JSON value is never a proper prefix of another value followed by a
    comma, so the pieces cannot shift). None when any line would not (then parse each on its own)."""
    try:
        values = list(map(orjson.loads, lines))  # type: ignore[arg-type]  # None (too long) raises TypeError
        joined = b",".join(lines)  # type: ignore[arg-type]
        if not joined.isascii() or orjson.dumps(values) != b"[" + joined + b"]":
            return None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        return None
    if not joined.islower():
        for line in lines:
            if not line.islower() and not _no_case_collision(line):  # type: ignore[union-attr]
                return None
    return values


def _no_case_collision(line: bytes) -> bool:
    """For a canonical ASCII line with some uppercase letter (or none at all): no object in it
    has two keys that are equal up to letter case."""
    lowered = line.lower()
    return orjson.dumps(orjson.loads(lowered)) == lowered


def _parse_strictly(line: bytes) -> Any:
    """Any line, with the duplicate-key, case-fold, NaN and surrogate checks done in Python."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(_BOM):
        raise RefusedLine(PARSE_ERROR, "Parse error: byte order mark at start of message")
    if b"\r" in line:
        raise RefusedLine(PARSE_ERROR, "Parse error: carriage return inside a message")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedLine(PARSE_ERROR, "Parse error: message is not valid UTF-8") from None
    try:
        value = _STRICT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise RefusedLine(PARSE_ERROR, f"Parse error: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RefusedLine(PARSE_ERROR, "Parse error: message nests too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise RefusedLine(PARSE_ERROR, f"Parse error: {exc}"[:200]) from None
    if "\\u" in text and _has_lone_surrogate(value):
        raise RefusedLine(PARSE_ERROR, "Parse error: \\u escape of a lone surrogate (not valid Unicode)")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """True if a string (key or value) holds an unpaired surrogate, which UTF-8 cannot carry."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_trusted_line(line: bytes) -> tuple[Any, bool]:
    """Parse an upstream line leniently (the upstream is not the party we police): (value, exact),
    value None if the line is not JSON. `exact` when the line is exactly orjson's encoding of the
    value, so `encode_relayed(value, exact=True)` re-encodes only what we changed (a big integer,
    NaN or lone surrogate never passes that test: they take the slower path)."""
    try:
        value = orjson.loads(line)
        if orjson.dumps(value) == line:
            return value, True
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    try:
        return json.loads(line), False
    except (ValueError, RecursionError):
        return None, False


def encode(message: Any) -> bytes:
    """Compact JSON plus the newline that frames it, for a message of ours or the client's (whose
    numbers are finite: the client parse refuses others, and orjson would write NaN as null)."""
    try:
        return orjson.dumps(message) + b"\n"
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate, deep nesting
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def encode_relayed(message: Any, exact: bool = False) -> bytes:
    """Re-encode an upstream message we had to change: ASCII escapes keep lone surrogates the
    upstream sent, and NaN stays NaN, so what we pass on is what it said. `exact`: the message
    was parsed from an exact orjson line (`parse_trusted_line`), so orjson writes it faithfully."""
    if exact:
        try:
            return orjson.dumps(message) + b"\n"
        except orjson.JSONEncodeError:  # e.g. a client id beyond 64 bits put back in
            pass
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode() + b"\n"


def error_message(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response, as a message."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error response, encoded and framed."""
    return encode(error_message(request_id, code, message, data))


def result_response(request_id: Any, result: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def id_key(request_id: Any) -> tuple[bool, Any]:
    """A dict key for a JSON-RPC id: 1 and 1.0 match, "1" and 1 do not."""
    return (isinstance(request_id, str), request_id)


_ID_TYPES = frozenset({str, int, float, type(None)})  # parsers build exactly these (bool is not int here)


def valid_id(request_id: Any) -> bool:
    return type(request_id) in _ID_TYPES


ENVELOPE_KEYS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
ID_PREFIX = "intercept-"  # ids the proxy makes for its own and watched requests; refused from clients


def envelope_problem(message: Any) -> str:
    """Why a single message is refused before anything else, or ""."""
    if type(message) is not dict:
        return "Invalid Request: not a JSON-RPC message"
    if not message.keys() <= ENVELOPE_KEYS and misspelled(message, ENVELOPE_KEYS):
        return "Invalid Request: a JSON-RPC member name in the wrong letter case"
    if "method" in message and "id" in message and type(message["id"]) not in _ID_TYPES:  # `valid_id` inlined
        return "Invalid Request: id must be a string, number or null"
    return ""


def misspelled(obj: dict[str, Any], names: frozenset[str]) -> bool:
    """A key that is one of `names` up to letter case only (`Method`): case-insensitive decoders
    (Go) would read it as that member while we would not."""
    if obj.keys() <= names:  # the usual case, checked in C
        return False
    return any(key not in names and key.casefold() in names for key in obj)


def passes_before_policy(line: bytes) -> bool:
    """Whether a client line may go upstream before the interceptor is assembled: a well-formed
    `initialize` request (the first message of a session, which no policy judges). Anything else
    waits for the interceptor."""
    try:
        message = parse_client_line(line)
    except RefusedLine:
        return False
    return (
        type(message) is dict
        and message.get("method") == "initialize"
        and "id" in message
        and not envelope_problem(message)
        and not (type(message["id"]) is str and message["id"].startswith(ID_PREFIX))
    )
