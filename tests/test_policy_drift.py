"""Policy names the server does not offer (pure table tests; the end-to-end case runs against
server-filesystem in tests/e2e/test_filesystem_server.py)."""

from __future__ import annotations

from intercept.policy import parse_policy
from intercept.policy.drift import Mismatch, policy_mismatches

TOOLS = {
    "drop_table": {"type": "object", "properties": {"table": {"type": "string"}}},
    "query": {"type": "object", "properties": {"sql": {"type": "string"}, "limit": {"type": "integer"}}},
    "opaque": {},
}


def test_names_paths_and_hide_entries_not_offered() -> None:
    policy = parse_policy(
        'version: "1"\nhide: [drop_tables, "*"]\ntools:\n'
        "  drop_tables:\n    rules:\n      - {name: never, action: deny}\n"
        "  query:\n    rules:\n      - name: small\n        conditions: [{path: args.limt, op: lte, value: 10},"
        " {path: args.sql, op: exists, value: true}]\n"
        "  opaque:\n    rules:\n      - name: any\n        conditions: [{path: args.whatever, op: exists, value: true}]\n"
        '  "*":\n    rules:\n      - name: everywhere\n        conditions: [{path: args.table, op: neq, value: users},'
        " {path: args.nowhere, op: exists, value: false}]\n"
    )
    assert policy_mismatches(policy, TOOLS) == [
        Mismatch("tool", "drop_tables", "drop_table"),
        Mismatch("hide", "drop_tables", "drop_table"),
        Mismatch("argument", "query: args.limt", "limit"),
        Mismatch("argument", "*: args.nowhere", ""),  # "*" rules: only when no listed tool has it
    ]


def test_a_policy_that_matches_says_nothing() -> None:
    policy = parse_policy('version: "1"\ntools:\n  query:\n    rules:\n      - {name: r, conditions: [{path: args.sql, op: exists, value: true}]}\n')
    assert policy_mismatches(policy, TOOLS) == []
    assert Mismatch("tool", "x", "y").describe() == "policy tool x matches nothing the server offers (closest: y)"
