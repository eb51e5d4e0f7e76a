"""The event log: JSONL records of what the proxy and approvers did (arguments only as hashes)."""
