"""The floor for any Python stdio proxy: spawn the command after `--` and copy bytes both ways, parsing nothing.

Same asyncio machinery and flow control as intercept's relay (subprocess_exec, connect_read_pipe,
connect_write_pipe), minus every per-message step. stdin and stdout must be pipes or sockets.
Usage: python bench/null_relay.py -- COMMAND [ARGS]...
"""

from __future__ import annotations

import asyncio
import sys

# asyncio pipe transports read with os.read(fd, 256 KiB): a fresh 256 KiB bytes object per read,
# which glibc serves with mmap + page faults + mremap + munmap while its mmap threshold is at the
# default 128 KiB. A pipe never holds more than 64 KiB by default, so read at most that: every
# read then comes from the heap (on an 8 MiB result: ~8 600 page faults instead of ~77 000).
READ_SIZE = 64 * 1024


class _Upstream(asyncio.SubprocessProtocol):
    def __init__(self, relay: NullRelay) -> None:
        self.relay = relay

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.relay.to_client(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.relay.upstream_stdout_closed.set()

    def process_exited(self) -> None:
        self.relay.upstream_exited.set()

    def pause_writing(self) -> None:
        self.relay.pause_client_input(True)

    def resume_writing(self) -> None:
        self.relay.pause_client_input(False)


class _ClientIn(asyncio.Protocol):
    def __init__(self, relay: NullRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.to_upstream(data)

    def eof_received(self) -> bool:
        self.relay.client_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_eof()


class _ClientOut(asyncio.Protocol):
    def __init__(self, relay: NullRelay) -> None:
        self.relay = relay

    def pause_writing(self) -> None:
        self.relay.pause_upstream_output(True)

    def resume_writing(self) -> None:
        self.relay.pause_upstream_output(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_out_closed.set()
        self.relay.client_eof()


class NullRelay:
    """One session: the child process and both byte streams."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.loop = asyncio.get_running_loop()
        self.upstream_stdout_closed = asyncio.Event()
        self.upstream_exited = asyncio.Event()
        self.client_out_closed = asyncio.Event()
        self._child: asyncio.SubprocessTransport | None = None
        self._child_stdin: asyncio.WriteTransport | None = None
        self._child_stdout: asyncio.ReadTransport | None = None
        self._in: asyncio.ReadTransport | None = None
        self._out: asyncio.WriteTransport | None = None
        self._client_done = False

    async def run(self) -> int:
        stdout = open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
        stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
        self._out, _ = await self.loop.connect_write_pipe(lambda: _ClientOut(self), stdout)
        self._child, _ = await self.loop.subprocess_exec(
            lambda: _Upstream(self),
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
        )
        self._child_stdin = self._child.get_pipe_transport(0)  # type: ignore[assignment]
        self._child_stdout = self._child.get_pipe_transport(1)  # type: ignore[assignment]
        self._in, _ = await self.loop.connect_read_pipe(lambda: _ClientIn(self), stdin)
        for transport in (self._child_stdout, self._in):
            transport.max_size = READ_SIZE  # type: ignore[union-attr]
        await self.upstream_exited.wait()
        await self.upstream_stdout_closed.wait()
        self._out.close()  # flushes what is buffered, then reports connection_lost
        await self.client_out_closed.wait()
        returncode = self._child.get_returncode()
        self._child.close()
        self._in.close()
        return 1 if returncode is None else (128 - returncode if returncode < 0 else returncode)

    def to_client(self, data: bytes) -> None:
        if self._out is not None and not self._out.is_closing():
            self._out.write(data)

    def to_upstream(self, data: bytes) -> None:
        if self._child_stdin is not None and not self._child_stdin.is_closing():
            self._child_stdin.write(data)

    def client_eof(self) -> None:
        if self._client_done:
            return
        self._client_done = True
        if self._child_stdin is not None and not self._child_stdin.is_closing():
            self._child_stdin.close()  # flushes what is buffered first

    def pause_client_input(self, paused: bool) -> None:
        if self._in is not None and not self._in.is_closing():
            (self._in.pause_reading if paused else self._in.resume_reading)()

    def pause_upstream_output(self, paused: bool) -> None:
        pipe = self._child_stdout
        if pipe is not None and not pipe.is_closing():
            (pipe.pause_reading if paused else pipe.resume_reading)()


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: null_relay.py -- COMMAND [ARGS]...", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]

    async def session() -> int:
        return await NullRelay(command).run()

    return asyncio.run(session())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
