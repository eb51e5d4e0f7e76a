"""The OpenAPI 3.1 description of the admin API, served at `/api/openapi.json`."""

from __future__ import annotations

from typing import Any

_ID = {
    "name": "approval_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^apr_[0-9a-f]{32}$"},
}
_RECORD = {"$ref": "#/components/schemas/Approval"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _answer("No or wrong credentials; nothing changed", _ERROR),
    "403": _answer("Cross-site request, wrong Host/Origin, or a missing CSRF token; nothing changed", _ERROR),
    "503": _answer("The approval store cannot be used", _ERROR),
}
_DECISION_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "actor": {"type": "string", "maxLength": 128, "description": "Ignored for a person's token"},
                    "reason": {"type": "string", "maxLength": 2000},
                },
            }
        }
    },
}


def _decision(verb: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{verb.capitalize()} a pending request (the same decision again: 200, changed false)",
            "parameters": [_ID],
            "requestBody": _DECISION_BODY,
            "responses": {
                "200": _answer("The record after the decision", _RECORD),
                "404": _answer("Unknown id", _ERROR),
                "409": _answer(
                    "Decided otherwise, consumed, expired, or its rule changed; `approval` is its state", _ERROR
                ),
                "413": _answer("Body over 64 KiB; nothing changed", _ERROR),
                "422": _answer("Malformed body", _ERROR),
                **_ERRORS,
                "403": _answer(
                    "Not an approver who may decide it, or a vote that must be signed and cannot be here; "
                    "or a cross-site request, wrong Host/Origin, or a missing CSRF token. Nothing changed",
                    _ERROR,
                ),
            },
        }
    }


def _single(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [_ID],
            "responses": {"200": _answer("The record", _RECORD), "404": _answer("Unknown id", _ERROR), **_ERRORS},
        }
    }


def openapi_schema() -> dict[str, Any]:
    listing = {"type": "array", "items": _RECORD}
    return {
        "openapi": "3.1.0",
        "info": {"title": "intercept admin API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "approval": _RECORD},
                    "required": ["error"],
                },
                "Approval": {
                    "type": "object",
                    "description": "As `intercept approvals show --json`: lists carry redacted arguments, one "
                    "record the exact ones while they exist (`arguments_exact`), with `history`.",
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"enum": ["pending", "approved", "denied", "consumed", "expired"]},
                        "server": {"type": "string"},
                        "tool": {"type": "string"},
                        "rule": {"type": "string"},
                        "created_at": {"type": "string"},
                        "expires_at": {"type": "string"},
                        "decided_at": {"type": ["string", "null"]},
                        "decided_by": {"type": ["string", "null"]},
                        "reason": {"type": ["string", "null"]},
                        "arguments": {},
                        "arguments_exact": {"type": "boolean"},
                        "secret_spans": {
                            "type": "array",
                            "description": "One record alone: the secret-looking parts of `arguments` the inbox "
                            "marks, `{path, start, end}` (code points of the string at path) or `{path}` (a whole "
                            "value under a secret-named key)",
                            "items": {"type": "object"},
                        },
                        "stale": {"type": "boolean"},
                        "history": {"type": "array", "items": {"type": "object"}},
                        "votes": {
                            "type": "array",
                            "description": "One record alone: each vote, `{actor, decision, decided_at, channel, "
                            "reason, signed}`",
                            "items": {"type": "object"},
                        },
                        "agent": {"type": ["string", "null"]},
                        "client": {"type": ["string", "null"]},
                        "changed": {"type": "boolean"},
                        "quorum": {"type": "integer", "description": "After a decision: the approvals it needs"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/pending": {
                "get": {
                    "summary": "Pending requests (Intercept)",
                    "responses": {"200": _answer("Records", listing), **_ERRORS},
                }
            },
            "/api/pending/{approval_id}": _single("One request (Intercept)"),
            "/api/approve/{approval_id}": _decision("approve"),
            "/api/deny/{approval_id}": _decision("deny"),
            "/api/approvals": {
                "get": {
                    "summary": "Requests, filtered",
                    "parameters": [
                        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                        for name in ("status", "tool", "server")
                    ],
                    "responses": {
                        "200": _answer("Records", {"type": "object", "properties": {"approvals": listing}}),
                        "422": _answer("Unknown status", _ERROR),
                        **_ERRORS,
                    },
                }
            },
            "/api/approvals/{approval_id}": _single("One request with its exact arguments and history"),
            "/api/approvals/{approval_id}/approve": _decision("approve"),
            "/api/approvals/{approval_id}/deny": _decision("deny"),
            "/api/events": {
                "get": {
                    "summary": "Recent events",
                    "parameters": [
                        {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
                    ],
                    "responses": {"200": _answer("Events, oldest first", {"type": "object"}), **_ERRORS},
                }
            },
            "/api/events/stream": {
                "get": {
                    "summary": "New events as server-sent events",
                    "responses": {"200": {"description": "text/event-stream"}, **_ERRORS},
                }
            },
            "/api/status": {
                "get": {
                    "summary": "Proxies alive, calls in the last hour, pending count",
                    "responses": {"200": _answer("Status", {"type": "object"}), **_ERRORS},
                }
            },
            "/api/session": {
                "get": {
                    "summary": "Who you are, and the CSRF token of a browser session",
                    "responses": {"200": _answer("Session", {"type": "object"}), **_ERRORS},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"}), **_ERRORS},
                }
            },
        },
    }
