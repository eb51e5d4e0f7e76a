"""intercept: a policy-enforcing proxy between an MCP client and an MCP server."""

__version__ = "0.1.0"
