"""Child processes that never outlive the process that started them (``gatewayctl up``).

``up`` starts Envoy and the aggregation service as child processes. Three ways it can end
must take them along (docs/decisions/0032):

* a signal that stops it (SIGINT, SIGTERM, SIGHUP): :class:`StopSignals` turns each into an
  asyncio event, so the normal clean-up runs - also when SIGINT was ignored by a
  non-interactive parent (a shell's background job), where Python installs no
  KeyboardInterrupt handler;
* an exception: :class:`Children` stops every child it started, newest first;
* SIGKILL (or a crash), where no clean-up can run: on Linux each child asks the kernel for
  SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), set between fork and exec.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

__all__ = [
    "Children",
    "StopSignals",
    "die_with_parent",
    "skip_grpc_fork_handlers",
    "wake_loop_on_signals",
]

log = logging.getLogger(__name__)

#: linux/prctl.h
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    Linux only (None elsewhere). The death signal survives ``exec`` (run-envoy.sh execs
    Envoy) and fires when the *thread* that forked exits, so children must be started from
    a thread that lives as long as the process (``up`` starts them from its main thread).
    If this process died between fork and prctl, the child kills itself right away. libc
    and the parent's pid are looked up here, before fork, so the function run in the child
    only makes two system calls.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


class Children:
    """Processes started by this one, each tied to its life; :meth:`stop` ends them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Popen ``args`` tied to this process (call from the main thread).

        The child gets the parent-death signal and a process group of its own: a Ctrl-C
        at the terminal reaches only this process, which then stops its children in order
        (rather than each child racing to exit on its own, tracebacks and all).
        """
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(args), preexec_fn=die_with_parent(), process_group=0, **popen
        )
        self.procs.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Stop ``proc`` with the others (a child started elsewhere, already tied)."""
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every running child, newest first; SIGKILL one that outlasts ``timeout``."""
        running = [p for p in reversed(self.procs) if p.poll() is None]
        for proc in running:
            with suppress(ProcessLookupError):
                proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pid %d did not stop within %.0f s of SIGTERM: killed", proc.pid, timeout
                )
                with suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()


def wake_loop_on_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Make every signal wake ``loop``'s selector, so Python-level handlers run at once.

    A ``signal.signal`` handler runs in the main thread between bytecodes. The kernel may
    deliver a process signal to any thread (gRPC's, the executor's); the main thread then
    stays asleep in the selector until its next timer or I/O, and the handler waits with
    it. CPython writes a byte to the wakeup fd from whichever thread took the signal: a
    socket the loop watches turns that byte into a wake-up. Plain handlers are kept
    (rather than ``loop.add_signal_handler``) because they also run while the loop is
    busy in Python code, which a shutdown's second-signal exit relies on.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)

    def drain(pair: tuple[socket.socket, socket.socket] = (reader, writer)) -> None:
        # the loop's reader callback holds both sockets open (the writer by this default)
        with suppress(BlockingIOError, InterruptedError):
            while pair[0].recv(4096):
                pass

    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    loop.add_reader(reader.fileno(), drain)

    def undo() -> None:
        """Give the process its previous wakeup fd back (in-process callers, tests)."""
        signal.set_wakeup_fd(previous)
        with suppress(RuntimeError):  # the loop is closed: its selector is gone already
            loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()

    return undo


class StopSignals:
    """Set by the first of SIGINT, SIGTERM or SIGHUP; :attr:`name` says which.

    SIGINT is handled even when the parent ignored it; SIGHUP is left alone when ignored
    (``nohup``), since whoever ignored it meant the process to outlive its terminal.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = asyncio.Event()
        self.name: str | None = None
        watched = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            watched.append(signal.SIGHUP)
        self._loop = loop
        self._previous = {sig: signal.signal(sig, self._handler) for sig in watched}
        self._unwake = wake_loop_on_signals(loop)

    def close(self) -> None:
        """Restore the handlers and wakeup fd found (the loop is still running)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._unwake()

    def _handler(self, signum: int, _frame: object) -> None:
        self._loop.call_soon_threadsafe(self._received, signal.Signals(signum).name)

    def _received(self, name: str) -> None:
        if self.name is None:
            self.name = name
        self.event.set()


def skip_grpc_fork_handlers() -> None:
    """Turn gRPC's fork handlers off for this process; call before grpc is imported.

    A ``preexec_fn`` makes Python fork (rather than vfork) while the controller's gRPC
    threads run; gRPC's handlers, meant for children that go on using gRPC, then print
    "skipping fork() handlers" on every start. These children exec at once and never use
    gRPC. An explicit GRPC_ENABLE_FORK_SUPPORT in the environment is respected.
    """
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
