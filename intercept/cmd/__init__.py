"""Click commands, one module each: thin wrappers that parse flags, call the layers below and print."""
