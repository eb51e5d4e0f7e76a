"""The database: one SQLite file (WAL) under the state dir, with schema versioning.

The store knows rows, not JSON-RPC: callers pass plain values and get dataclasses back.
"""
