"""The relay: line framing, the child process, the two pumps, and the replies the proxy makes itself."""
