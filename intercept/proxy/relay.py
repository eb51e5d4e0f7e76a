"""The stdio relay: client stdin -> upstream stdin, upstream stdout -> client stdout.

Bytes move through asyncio protocols with no per-message work unless the interceptor must look:
every client line is handed to it (it parses strictly and decides), while upstream output is
passed through in raw chunks until the interceptor is waiting for a reply it must inspect.

Client lines are forwarded in the order they arrive, except a call whose decision waits for the
state store (`Deciding`): it is forwarded (or answered) when decided, and the lines behind it do
not wait. At client EOF the upstream's stdin is closed only once those calls are decided.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import stat
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

from intercept.proxy.child import (
    disarm_supervisor,
    exit_status,
    kill_rest_of_group,
    signal_group,
    spawn_options,
    start_supervisor,
)
from intercept.proxy.framing import LineSplitter
from intercept.proxy.outcomes import (
    INTERNAL_ERROR_TEXT,
    UNPARSED,
    ClientOutcome,
    Deciding,
    FastPathFault,
    Hold,
    Rewritten,
    Settled,
)

if TYPE_CHECKING:
    from intercept.proxy.interceptor import Interceptor

log = logging.getLogger("intercept")

MAX_CLIENT_LINE_BYTES = 64 * 1024 * 1024
STDIN_CLOSE_GRACE_S = 5.0
TERMINATE_GRACE_S = 3.0
HOUSEKEEPING_INTERVAL_S = 0.25
BACKGROUND_START_S = 1.0
LISTING_WAIT_S = 3.0  # how long client lines wait for the proxy's own tools/list before strict judging
UPSTREAM_EXIT_WAIT_S = 0.25  # after the upstream's stdout ends, how long it has to exit on its own
DECISIONS_WAIT_S = 5.0  # at client EOF or exit, how long calls waiting for the store may still take
# Passed on to the upstream's process group: since it has a session of its own, a terminal's signals
# reach only the proxy.
PASSED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_DECIDING = 128  # calls waiting for the store at once; beyond, client input pauses until one is decided


PIPE_READ_BYTES = 64 * 1024


def _limit_read_size(transport: object) -> None:
    """Read at most a pipe's capacity at a time.

    asyncio reads 256 KiB per call into a fresh object; above glibc's mmap threshold that is an
    mmap/munmap pair per message. A pipe never holds more than 64 KiB anyway.
    """
    if hasattr(transport, "max_size"):
        transport.max_size = PIPE_READ_BYTES


def _pollable(fd: int) -> bool:
    """Whether the event loop's selector can watch `fd` (pipes, sockets, ttys: yes; regular files
    and /dev/null: no)."""
    if not hasattr(select, "epoll"):
        return stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)
    probe = select.epoll()
    try:
        probe.register(fd, select.EPOLLIN)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class UpstreamStartError(Exception):
    """The upstream command could not be started; `exit_status` follows the shell (127, 126)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class RelayOptions:
    command: list[str]
    stdin_close_grace_s: float = STDIN_CLOSE_GRACE_S
    terminate_grace_s: float = TERMINATE_GRACE_S
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Runs right after the spawn, before a client byte is read (it overlaps the upstream's start-up);
    # if it raises, the upstream is killed before it has received anything and the error propagates.
    prepare: Callable[[], object] | None = None


class _ClientWriter(asyncio.Protocol):
    """Writes to our stdout; pauses the upstream when the client reads slower than it writes."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.relay.pause_upstream_output(True)

    def resume_writing(self) -> None:
        self.relay.pause_upstream_output(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_output_closed.set()
        self.relay.client_gone()


class _BlockingWriter:
    """Fallback for a stdout that is a regular file (asyncio pipes refuse those)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _ClientReader(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.on_client_data(data)

    def eof_received(self) -> bool:
        self.relay.on_client_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.on_client_eof()


class _UpstreamProtocol(asyncio.SubprocessProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.relay.on_upstream_data(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.relay.on_upstream_eof()

    def process_exited(self) -> None:
        self.relay.on_upstream_exit()

    def pause_writing(self) -> None:
        self.relay.pause_client_input(True)

    def resume_writing(self) -> None:
        self.relay.pause_client_input(False)


class _Starting:
    """Stands in for the interceptor while it is being made: upstream output that arrives before
    the first client line is relayed as is."""

    watching = False


_STARTING = _Starting()


class Relay:
    """One proxy session: the child process and both directions of traffic."""

    def __init__(self, interceptor: Interceptor | Callable[[], Interceptor], options: RelayOptions) -> None:
        """`interceptor`, or a function that makes it. The function is called once the upstream
        has given its first answer (or BACKGROUND_START_S after the spawn), or earlier when a client line
        other than `initialize` arrives: the first answer waits neither for loading and assembling
        the interceptor nor for the background jobs."""
        self.options = options
        self.loop = asyncio.get_running_loop()
        self._make_interceptor: Callable[[], Interceptor] | None = None
        self._deciding: set[Deciding] = set()  # calls waiting for the store
        self._all_decided: asyncio.Future[None] | None = None  # set when `_deciding` empties (at exit)
        self._upstream_input_closed = False
        self._upstream_gone = ""  # how, once its output ended while it still ran
        self._supervisor: int | None = None  # the write end of the supervisor's pipe (Linux)
        self.interceptor = _STARTING  # type: ignore[assignment]  # until the real one is made
        self._early_initialize: bytes | None = None  # the initialize line forwarded before the interceptor was made
        if hasattr(interceptor, "on_client_line"):
            self._adopt(interceptor)  # type: ignore[arg-type]
        else:
            self._make_interceptor = interceptor  # type: ignore[assignment]
        self._client_lines = LineSplitter(MAX_CLIENT_LINE_BYTES)
        self._upstream_lines = LineSplitter()
        self._upstream_mid_raw_line = False
        # Lines decided in this turn of the event loop, written upstream together (see _queue_upstream),
        # and client output gathered while one upstream chunk is handled (see on_upstream_data).
        self._upstream_queue: list[bytes] = []
        self._client_batch: list[bytes] | None = None
        self._out: Any = None
        self._in_transport: asyncio.ReadTransport | None = None
        self._child: asyncio.SubprocessTransport | None = None
        self._child_stdin: asyncio.WriteTransport | None = None
        self._stdout_closed = asyncio.Event()
        self._exited = asyncio.Event()
        self.client_output_closed = asyncio.Event()
        self._client_closed = False
        self._stop_timer: asyncio.TimerHandle | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        # Client input held while the proxy lists the tools itself (see interceptor.Hold):
        # complete lines not yet judged, then raw chunks that arrived meanwhile, then maybe EOF.
        self._held_lines: list[bytes | None] | None = None
        self._held_chunks: list[bytes] = []
        self._eof_while_held = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._background_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._input_paused_for: set[str] = set()

    def _adopt(self, interceptor: Interceptor) -> None:
        self.interceptor = interceptor
        interceptor.on_listing_done = lambda: self.loop.call_soon(self._release_held)
        interceptor.to_client = self.write_to_client
        if self._early_initialize is not None:  # what the client said of itself, forwarded before we were ready
            interceptor.on_client_line(self._early_initialize)
            self._early_initialize = None
        interceptor.upstream_input_closed = self._upstream_input_closed
        if self._upstream_gone:  # it went before the interceptor was made: nothing may be forwarded
            interceptor.on_upstream_gone(self._upstream_gone)

    # -- start and finish ------------------------------------------------------------------

    async def run(self) -> int:
        await self._open_client_output()
        try:
            self._child, _ = await self.loop.subprocess_exec(
                lambda: _UpstreamProtocol(self),
                *self.options.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                **spawn_options(),
            )
            # kills the upstream's process group if the proxy dies first (disarmed once it is reaped)
            self._supervisor = start_supervisor(self._child.get_pid())
        except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, OSError) as exc:
            reason = exc.strerror or str(exc)
            status = 127 if isinstance(exc, FileNotFoundError) else 126
            raise UpstreamStartError(f"cannot start upstream {self.options.command[0]!r}: {reason}", status) from None
        if self.options.prepare is not None:
            try:
                self.options.prepare()
            except BaseException:
                await self._stop_unused_child()
                raise
        self._child_stdin = self._child.get_pipe_transport(0)  # type: ignore[assignment]
        _limit_read_size(self._child.get_pipe_transport(1))
        for sig in PASSED_SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        await self._open_client_input()
        if self._make_interceptor is None:
            self._housekeep()
        # The interceptor (if still to be made) and the background jobs (the policy watcher, the
        # instance record) import and touch the disk: start them once the upstream has said
        # something (its first answer is relayed first) or after BACKGROUND_START_S.
        self._background_timer = self.loop.call_later(BACKGROUND_START_S, self._start_background)
        await self._exited.wait()
        try:  # a process the server left behind may hold its stdout open: do not wait for it forever
            await asyncio.wait_for(self._stdout_closed.wait(), self.options.terminate_grace_s)
        except TimeoutError:
            log.warning("the upstream exited but its stdout is still open (a child of it?); closing it")
        self._end_upstream_group()
        self._flush_upstream_tail()
        if self.interceptor is not _STARTING:
            self.write_to_client(self.interceptor.on_upstream_gone())
            await self._decisions_settled(DECISIONS_WAIT_S)  # they answer that the call was not forwarded
            await self.interceptor.wind_down(DECISIONS_WAIT_S)
        await self._drain_client_output()
        for sig in PASSED_SIGNALS:
            self.loop.remove_signal_handler(sig)
        for timer in (self._stop_timer, self._housekeeping, self._hold_timer, self._background_timer):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        returncode = self._child.get_returncode()
        self._child.close()
        if self._in_transport is not None:
            self._in_transport.close()
        return exit_status(returncode)

    async def _stop_unused_child(self) -> None:
        """Kill the upstream the session cannot go on with, and wait for it."""
        assert self._child is not None
        self._signal_child(signal.SIGKILL)
        try:
            await asyncio.wait_for(self._exited.wait(), self.options.terminate_grace_s)
        except TimeoutError:
            log.warning("the upstream did not exit after SIGKILL")
        self._end_upstream_group()
        self._child.close()

    async def _open_client_output(self) -> None:
        try:
            transport, _ = await self.loop.connect_write_pipe(lambda: _ClientWriter(self), sys.stdout.buffer)
            self._out = transport
        except ValueError:  # a regular file: plain blocking writes
            self._out = _BlockingWriter(sys.stdout.fileno())

    async def _open_client_input(self) -> None:
        if _pollable(sys.stdin.fileno()):
            try:
                self._in_transport, _ = await self.loop.connect_read_pipe(lambda: _ClientReader(self), sys.stdin.buffer)
                _limit_read_size(self._in_transport)
                return
            except ValueError:
                pass
        # A regular file or /dev/null: asyncio accepts the latter but epoll cannot watch it, so the
        # proxy would never see its end. Read those in a thread.
        self.loop.run_in_executor(None, self._read_stdin_blocking)

    def _read_stdin_blocking(self) -> None:
        fd = sys.stdin.fileno()
        while chunk := os.read(fd, 1 << 16):
            self.loop.call_soon_threadsafe(self.on_client_data, chunk)
        self.loop.call_soon_threadsafe(self.on_client_eof)

    async def _drain_client_output(self) -> None:
        """Close our stdout after what is buffered has been written (bounded if the client stalls)."""
        out = self._out
        if isinstance(out, asyncio.WriteTransport) and not out.is_closing():
            out.close()  # flushes the buffer, then calls connection_lost
            try:
                await asyncio.wait_for(self.client_output_closed.wait(), self.options.terminate_grace_s)
            except TimeoutError:
                log.warning("the client did not read the last %d bytes; exiting anyway", out.get_write_buffer_size())

    @staticmethod
    async def _guarded(job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A background job (e.g. the policy watcher) that fails is logged, never fatal."""
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("background task stopped: %s", exc)

    def _housekeep(self) -> None:
        try:
            self.interceptor.tick()
        except Exception:  # housekeeping must keep running whatever one round hit
            log.exception("housekeeping failed")
        finally:
            self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL_S, self._housekeep)

    # -- client -> upstream ----------------------------------------------------------------

    def on_client_data(self, data: bytes) -> None:
        if self._held_lines is not None:  # waiting for the tool schemas: keep the order of everything
            self._held_chunks.append(data)
            return
        had_partial = self._client_lines.pending
        lines = self._client_lines.feed(data)
        self._judge_lines(lines, data if not had_partial and not self._client_lines.pending else None)

    def _judge_lines(self, lines: list[bytes | None], exact_chunk: bytes | None) -> None:
        """Judge complete client lines and forward what passes, in one write; `exact_chunk` is the
        chunk these lines were, if it held nothing else (forwarded without a copy when untouched)."""
        from intercept.proxy import jsonrpc  # here, not at the top: not on the way to the first spawn

        untouched = True
        # Parsed together when every line is canonical JSON (the usual chunk): one spelling check,
        # then the leading run of usual calls forwarded as sent in one loop (`allowed_as_sent`)
        parsed = jsonrpc.parse_client_lines(lines) if len(lines) > 1 and self.interceptor is not _STARTING else None
        faulted = False
        try:
            taken = self.interceptor.allowed_as_sent(parsed) if parsed else 0
        except FastPathFault as fault:  # a bug costs that one message (it may be recorded): answered, not forwarded
            log.exception("internal error while handling a client message; it was not forwarded")
            self.write_to_client(jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, INTERNAL_ERROR_TEXT))
            taken, faulted = fault.index, True
        if parsed and taken == len(lines) and exact_chunk is not None:
            self._to_upstream(exact_chunk)  # the usual chunk: every line a call forwarded as sent
            return
        forward: list[bytes] = lines[:taken]  # type: ignore[assignment]  # parsed: no line is None
        if faulted:
            untouched = False
            taken += 1
        if parsed:
            rest = zip(lines[taken:], parsed[taken:], strict=True)
        else:
            rest = zip(lines, repeat(UNPARSED, len(lines)), strict=True)
        for line, message in rest:
            outcome = self._outcome(line, message)
            if outcome is None:
                forward.append(line)  # type: ignore[arg-type]  # None outcome means a real line
                continue
            untouched = False
            if type(outcome) is Deciding:
                self._start_deciding(outcome, line)  # type: ignore[arg-type]
                continue
            if type(outcome) is Hold:
                forward.append(outcome.request.rstrip(b"\n"))
                index = next(i for i, held in enumerate(lines) if held is line)  # rare: no index kept per line
                self._hold(lines[index:])
                break
            out = self._forwarded(outcome)  # type: ignore[arg-type]
            if out is not None:
                forward.append(out)
        if not forward:
            return
        if untouched and exact_chunk is not None:
            self._to_upstream(exact_chunk)  # the chunk was exactly these lines, unchanged: no copy
        else:
            forward.append(b"")
            self._to_upstream(b"\n".join(forward))

    def _start_deciding(self, deciding: Deciding, line: bytes) -> None:
        """The call is decided on the side; `_decided` acts on its outcome. At most MAX_DECIDING
        at once: beyond, client input pauses (as a full upstream pipe pauses it) until one is decided."""
        self._deciding.add(deciding)
        if len(self._deciding) >= MAX_DECIDING:
            self.pause_client_input(True, "deciding")
        deciding.then(lambda result: self._decided(deciding, line, result))

    def _decided(self, deciding: Deciding, line: bytes, result: Settled) -> None:
        """Act on a decision in the step that ended it (see `Deciding`): forward the line (or what
        replaces it), or answer the client."""
        try:
            forward = line if result is None else self._forwarded(result)
            if forward is not None:
                self._queue_upstream(forward + b"\n")
        except Exception:  # a last guard: the decision's own errors were answered by the interceptor
            log.exception("internal error while acting on a decided client message")
        self._deciding.discard(deciding)
        if len(self._deciding) < MAX_DECIDING:
            self.pause_client_input(False, "deciding")
        if not self._deciding:
            if self._all_decided is not None and not self._all_decided.done():
                self._all_decided.set_result(None)
            if self._client_closed:
                self._close_upstream_input()

    async def _decisions_settled(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until no call is being decided."""
        if not self._deciding:
            return
        if self._all_decided is None or self._all_decided.done():
            self._all_decided = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._all_decided), timeout_s)
        except TimeoutError:
            log.warning("%d calls were still being decided at exit", len(self._deciding))

    def _hold(self, lines: list[bytes | None]) -> None:
        """Keep `lines` (and all later input) until the proxy's own tools/list is answered."""
        self._held_lines = lines
        self.pause_client_input(True, "hold")
        self._hold_timer = self.loop.call_later(LISTING_WAIT_S, self._listing_timed_out)

    def _listing_timed_out(self) -> None:
        log.warning("the upstream did not answer the proxy's tools/list within %.0fs: judging calls strictly", LISTING_WAIT_S)
        self.interceptor.listing_finished()

    def _release_held(self) -> None:
        """Judge the held lines and then the input that arrived meanwhile, in order."""
        if self._held_lines is None:
            return
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        lines, chunks = self._held_lines, self._held_chunks
        self._held_lines, self._held_chunks = None, []
        self._judge_lines(lines, None)
        for index, chunk in enumerate(chunks):
            if self._held_lines is not None:  # held again (never in practice: one listing per session)
                self._held_chunks.extend(chunks[index:])
                return
            self.on_client_data(chunk)
        self.pause_client_input(False, "hold")
        if self._eof_while_held:
            self._eof_while_held = False
            self.on_client_eof()

    def _outcome(self, line: bytes | None, message: Any = UNPARSED) -> ClientOutcome:
        """What the interceptor says of the line (None: forward it as is); `message` is its value
        if it was parsed already."""
        if line is None or self._make_interceptor is not None:
            from intercept.proxy import jsonrpc  # not at the top: not on the way to the first spawn

            if line is None:
                return jsonrpc.error_response(
                    None, jsonrpc.PARSE_ERROR, f"Parse error: message longer than {MAX_CLIENT_LINE_BYTES} bytes"
                )
            if jsonrpc.passes_before_policy(line):  # still starting: only `initialize` may go ahead
                self._early_initialize = line  # shown to the interceptor once it is made (client info)
                return None
            self._make_interceptor_now()
        try:
            return self.interceptor.on_client_line(line, message)
        except Exception:  # a bug must cost one message, never the session: refuse it and go on
            from intercept.proxy import jsonrpc

            log.exception("internal error while handling a client message; it was not forwarded")
            return jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, INTERNAL_ERROR_TEXT)

    def _forwarded(self, outcome: bytes | Rewritten) -> bytes | None:
        """Act on an outcome other than None: what to forward instead (without LF), or None after
        answering the client (or dropping the line) ourselves."""
        if isinstance(outcome, Rewritten):
            return outcome.line.rstrip(b"\n")
        if outcome:
            self.write_to_client(outcome)
        return None

    def _to_upstream(self, data: bytes) -> None:
        """Write to the upstream's stdin, after the decided lines still queued (order is kept)."""
        if self._upstream_queue:
            self._upstream_queue.append(data)
            data = b"".join(self._upstream_queue)
            self._upstream_queue.clear()
        stdin = self._child_stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    def _queue_upstream(self, data: bytes) -> None:
        """Forward a decided call's line together with the others decided in the same turn of the
        loop (a batch of counter decisions resumes its calls at once): one write, not one each.
        Anything written upstream meanwhile goes after it (`_to_upstream`), so a cancel can never
        overtake the call it cancels."""
        if not self._upstream_queue:
            self.loop.call_soon(self._flush_upstream_queue)
        self._upstream_queue.append(data)

    def _flush_upstream_queue(self) -> None:
        if self._upstream_queue:
            self._to_upstream(b"")

    def on_client_eof(self) -> None:
        if self._held_lines is not None:  # judge what is held first; EOF comes after it
            self._eof_while_held = True
            return
        if self._client_closed:
            return
        tail = self._client_lines.flush()
        if tail is None or tail.strip():
            self._judge_lines([tail], None)
            if self._held_lines is not None:
                self._eof_while_held = True
                return
        self._client_closed = True
        if self.interceptor is not _STARTING:
            self.interceptor.end_waits()  # nobody will answer an elicitation or wait for a held call
        if self._deciding:  # their outcomes go upstream first; bounded by their store deadlines
            self.loop.call_later(DECISIONS_WAIT_S, self._close_upstream_input)
            return
        self._close_upstream_input()

    def _close_upstream_input(self) -> None:
        """The client is gone and no call waits for the store: close the upstream's stdin (once)."""
        if self._upstream_input_closed:
            return
        self._upstream_input_closed = True
        if self.interceptor is not _STARTING:
            self.interceptor.upstream_input_closed = True  # calls decided from now on are not forwarded
        self._flush_upstream_queue()
        stdin = self._child_stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()  # flushes what is buffered first
        self._schedule_stop(self.options.stdin_close_grace_s, signal.SIGTERM)

    def client_gone(self) -> None:
        """Our stdout broke: nobody is listening, so wind the upstream down."""
        self.on_client_eof()

    def pause_client_input(self, paused: bool, reason: str = "upstream") -> None:
        """Stop or resume reading the client for `reason` ("upstream": its stdin is full; "hold":
        waiting for the tool schemas); reading resumes only when no reason is left."""
        if paused:
            self._input_paused_for.add(reason)
        else:
            self._input_paused_for.discard(reason)
        if self._in_transport is not None and not self._in_transport.is_closing():
            (self._in_transport.pause_reading if self._input_paused_for else self._in_transport.resume_reading)()

    # -- upstream -> client ----------------------------------------------------------------

    def _make_interceptor_now(self) -> None:
        """Make the interceptor if it is still to be made; a failure stops the upstream (every
        later client line is then refused as an internal error)."""
        make, self._make_interceptor = self._make_interceptor, None
        if make is None:
            return
        try:
            self._adopt(make())
        except Exception:
            log.exception("could not assemble the proxy session: stopping the upstream")
            self._signal_child(signal.SIGKILL)
            return
        self._housekeep()

    def _start_background(self) -> None:
        """Make the interceptor and start the background jobs (once)."""
        if self._background_timer is None:
            return
        self._background_timer.cancel()
        self._background_timer = None
        self._make_interceptor_now()
        self._tasks = [asyncio.create_task(self._guarded(job)) for job in self.options.background]

    def on_upstream_data(self, data: bytes) -> None:
        if self._background_timer is not None:
            self.loop.call_soon(self._start_background)  # after this chunk has been relayed
        if self._upstream_mid_raw_line:
            newline = data.find(b"\n")
            if newline < 0:
                self.write_to_client(data)
                return
            self.write_to_client(data[: newline + 1])
            data = data[newline + 1 :]
            self._upstream_mid_raw_line = False
        if not self.interceptor.watching and not self._upstream_lines.pending:
            if data:
                self.write_to_client(data)
                self._upstream_mid_raw_line = not data.endswith(b"\n")
            return
        self._client_batch = []  # the replies in this chunk go to the client in one write
        try:
            for line in self._upstream_lines.feed(data):
                assert line is not None
                self._upstream_line(line)
        finally:
            batch, self._client_batch = self._client_batch, None
            if batch:
                self.write_to_client(b"".join(batch))

    def _upstream_line(self, line: bytes) -> None:
        replacement = None
        if self.interceptor.watching:
            try:
                replacement = self.interceptor.on_upstream_line(line)
            except Exception:  # pass the reply on rather than stall the client
                log.exception("internal error while inspecting an upstream message; passed on unchanged")
        self.write_to_client(replacement if replacement is not None else line + b"\n")

    def _flush_upstream_tail(self) -> None:
        """A last reply without its newline still goes through the watchers (it may be the reply a watched call waits for)."""
        tail = self._upstream_lines.flush()
        if tail:
            self._upstream_line(tail)

    def write_to_client(self, data: bytes) -> None:
        if self._client_batch is not None:
            self._client_batch.append(data)
            return
        out = self._out
        if out is None or out.is_closing():
            return
        try:
            out.write(data)
        except OSError:  # BrokenPipe from the blocking fallback
            self._out = None
            self.client_gone()

    def pause_upstream_output(self, paused: bool) -> None:
        if self._child is None:
            return
        pipe = self._child.get_pipe_transport(1)
        if pipe is not None and not pipe.is_closing():
            (pipe.pause_reading if paused else pipe.resume_reading)()  # type: ignore[attr-defined]

    def on_upstream_eof(self) -> None:
        self._stdout_closed.set()
        if not self._exited.is_set():  # usually the exit follows at once; if not, see below
            self.loop.call_later(UPSTREAM_EXIT_WAIT_S, self._upstream_output_ended)

    def _upstream_output_ended(self) -> None:
        """The upstream closed its stdout but keeps running: nothing it does can reach the client
        any more, so it counts as gone. Answer the requests we watch, close our stdout (the client
        fails its other requests on EOF), and stop the upstream (stdin closed, then TERM, KILL)."""
        if self._exited.is_set():
            return
        log.warning("the upstream closed its stdout but is still running: treating it as gone and stopping it")
        self._flush_upstream_tail()
        self._upstream_gone = "closed its output"
        self.pause_client_input(True, "gone")  # nothing the client sends can be answered any more
        if self.interceptor is not _STARTING:
            self.write_to_client(self.interceptor.on_upstream_gone(self._upstream_gone))
        out = self._out
        if out is not None and not out.is_closing():
            out.close()  # flushes what is buffered first; then client_gone() winds the upstream down
        self._client_closed = True
        self._close_upstream_input()

    def on_upstream_exit(self) -> None:
        self._exited.set()

    def _end_upstream_group(self) -> None:
        """After the upstream was reaped and what is left of its group had the grace to finish
        (its stdout closed, or `terminate_grace_s`): kill the rest while that group id still
        names them (a live member keeps it allocated), then tell the supervisor not to kill it
        later, when the id may belong to someone else."""
        if self._child is not None:
            kill_rest_of_group(self._child.get_pid())
        disarm_supervisor(self._supervisor)
        self._supervisor = None

    # -- signals and stopping --------------------------------------------------------------

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: passing it to the upstream", signal.Signals(sig).name)
        self._signal_child(sig)
        self._schedule_stop(self.options.terminate_grace_s, signal.SIGKILL)

    def _signal_child(self, sig: int) -> None:
        """Signal the upstream's whole process group (a launcher's children too), while it is unreaped."""
        if self._child is not None and self._child.get_returncode() is None:
            signal_group(self._child.get_pid(), sig)

    def _schedule_stop(self, delay_s: float, sig: int) -> None:
        """After `delay_s` send `sig` (then SIGKILL after a further grace) if still running."""
        if self._stop_timer is not None:
            return

        def escalate() -> None:
            if self._child is None or self._child.get_returncode() is not None:
                return
            log.warning("upstream still running after %.1fs: sending %s", delay_s, signal.Signals(sig).name)
            self._signal_child(sig)
            if sig != signal.SIGKILL:
                self._stop_timer = self.loop.call_later(
                    self.options.terminate_grace_s, self._signal_child, signal.SIGKILL
                )

        self._stop_timer = self.loop.call_later(delay_s, escalate)


async def run_relay(interceptor: Interceptor | Callable[[], Interceptor], options: RelayOptions) -> int:
    relay = Relay(interceptor, options)
    return await relay.run()
