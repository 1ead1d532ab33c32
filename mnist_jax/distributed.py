"""Several processes as one JAX program: joining the runtime, global arrays from host data, results back to the host.

Every process runs the same command and loads the same data; the mesh spans every process's devices. Process 0
writes the human-facing record (metrics, results, summaries, plots, progress); Orbax writes checkpoints from all.
On CPU the processes talk through gloo collectives, so the same code runs as several local processes on a laptop.

A lost process (killed, crashed, its host gone) or a stopped one (SIGSTOP, a hung host) ends every other process
within --distributed-timeout plus MARGIN_SECONDS, each with one line naming it and saying how to resume: each process
keeps its rendezvous connection to process 0 open and beats on it every second (see `_Watch`), and every exchange
between processes (`exchange`: a collective, a checkpoint save) has a deadline. JAX's own heartbeat timeout, which
aborts a process with a C++ fatal error, is set to come later.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import socket
import sys
import threading
import time
from typing import Any, Iterator, NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils

from mnist_jax.errors import UserError, first_line

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
# A lost or stopped process is detected at most this long after --distributed-timeout: the watch looks every
# POLL_SECONDS, a peer beats every BEAT_SECONDS, and a failed collective waits up to SETTLE_SECONDS for the watch to
# learn which process was lost.
MARGIN_SECONDS = 5
BEAT_SECONDS = 1.0
POLL_SECONDS = 0.25
SETTLE_SECONDS = 2.0
# JAX's runtime aborts every process (a C++ fatal error, SIGABRT) once it misses a peer's heartbeats for this much
# longer than --distributed-timeout; the watch has ended them, in one line each, long before.
JAX_HEARTBEAT_EXTRA_SECONDS = 60
RELAUNCH = "relaunch the same command on every process to resume from the last checkpoint"
# What a collective whose peer vanished says (gloo, gRPC, the coordination service).
_PEER_TROUBLE = re.compile(r"gloo|connect|socket|unavailable|deadline|peer|barrier|heartbeat|closed|reset|broken pipe|"
                           r"timed? ?out", re.IGNORECASE)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: int = 120) -> None:
    """Joins the distributed runtime these describe (all three given, the same address and count on every process)
    or the cluster's environment does (a TPU pod slice, SLURM, Open MPI); else does nothing."""
    given = {"--coordinator-address": coordinator_address, "--num-processes": num_processes,
             "--process-id": process_id}
    if all(value is None for value in given.values()):
        _initialize_if_detected(timeout)
    else:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise UserError(f"{', '.join(missing)} missing: --coordinator-address, --num-processes and "
                            "--process-id go together, on every process")
        address = _ADDRESS.match(coordinator_address)
        if not address or int(address[2]) > 65535:
            raise UserError(f"--coordinator-address {coordinator_address!r} is not HOST:PORT, e.g. "
                            "10.0.0.1:1234 or localhost:1234")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id {process_id} must be in 0 .. {num_processes - 1} "
                            f"(--num-processes {num_processes})")
        host, port = coordinator_address.rsplit(":", 1)
        links = rendezvous(host.strip("[]"), int(port), num_processes, process_id, timeout)
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout,
                                       heartbeat_timeout_seconds=timeout + JAX_HEARTBEAT_EXTRA_SECONDS)
        except BaseException:
            for link in links.values():
                link.close()
            raise
        watch(links, process_id, num_processes, timeout)
        _native_output_to_stderr()
    if jax.process_index() != 0:
        sys.stdout = open(os.devnull, "w")  # process 0 speaks for the run; errors still reach stderr


def _native_output_to_stderr() -> None:
    """Gloo prints its connection lines to the C-level stdout, which is the run's record for whoever reads it:
    native output goes to stderr from here on, Python's print to the stdout it had."""
    sys.stdout.flush()
    kept = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(kept, "w", buffering=1, encoding=sys.stdout.encoding, errors=sys.stdout.errors)


def rendezvous(host: str, port: int, num_processes: int, process_id: int,
               timeout: float) -> dict[int, socket.socket]:
    """Checks that all processes agree and are there before JAX's runtime starts, which on a missing or mismatched
    process aborts the interpreter (a fatal C++ error, no exception) instead of raising.

    Process 0 listens on the coordinator's port and waits for the others to say (process count, id); it answers
    each "ok" once all have come, or the problem. The port is free again for JAX's service afterwards; the
    connections stay open and are returned ({process id: connection}: process 0 holds one per other process, the
    others one to process 0), for the watch to tell a lost process by.
    """
    deadline = time.monotonic() + timeout
    hint = ("start every process with the same --coordinator-address and --num-processes and its own "
            "--process-id")
    if process_id == 0:
        try:
            server = socket.create_server(("", port))
        except OSError as e:
            raise UserError(f"process 0 cannot listen on port {port} ({e.strerror}): choose another port in "
                            "--coordinator-address, the same for every process") from None
        with server:
            server.settimeout(1.0)
            peers: list[socket.socket] = []
            links: dict[int, socket.socket] = {}
            joined: set[int] = set()
            problem = None
            while len(joined) < num_processes - 1 and problem is None:
                if time.monotonic() > deadline:
                    problem = (f"only {len(joined) + 1} of {num_processes} processes joined at port {port} within "
                               f"{timeout:g} s")
                    break
                try:
                    connection, _ = server.accept()
                except socket.timeout:
                    continue
                connection.settimeout(max(deadline - time.monotonic(), 1.0))
                try:
                    with connection.makefile() as said:
                        their_count, their_id = map(int, said.readline().split())
                except (OSError, ValueError):
                    connection.close()
                    continue
                peers.append(connection)
                links[their_id] = connection
                if their_count != num_processes:
                    problem = (f"process {their_id} was started with --num-processes {their_count}, process 0 "
                               f"with {num_processes}")
                elif their_id in joined or not 0 < their_id < num_processes:
                    problem = f"--process-id {their_id} was given twice or is out of range"
                joined.add(their_id)
            for connection in peers:
                try:
                    connection.sendall(b"ok\n" if problem is None else f"error: {problem}\n".encode())
                except OSError:
                    pass
                if problem is not None:
                    connection.close()
        if problem:
            raise UserError(f"{problem}: {hint}")
        return links
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"no process 0 answered at {host}:{port} within {timeout:g} s: {hint}") from None
            time.sleep(0.2)
    connection.settimeout(max(deadline - time.monotonic(), 1.0) + 5)
    try:
        connection.sendall(f"{num_processes} {process_id}\n".encode())
        with connection.makefile() as said:
            answer = said.readline().strip()
    except OSError:
        answer = ""
    if answer != "ok":
        connection.close()
        problem = answer.removeprefix("error: ") or "process 0 gave up waiting (see its error)"
        raise UserError(f"{problem}: {hint}")
    return {0: connection}


def _initialize_if_detected(timeout: int) -> None:
    """JAX's own detection of a TPU pod slice, SLURM or Open MPI; a plain host, or a process whose JAX is already
    running (a notebook, a library call), stays a single process. Its exchanges are bounded by `timeout` (there is
    no rendezvous connection to tell which process was lost by)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(heartbeat_timeout_seconds=timeout + JAX_HEARTBEAT_EXTRA_SECONDS)
    except ValueError:  # no cluster environment detected
        return
    except RuntimeError as e:
        if "must be called before" not in str(e) and "more than once" not in str(e):
            raise
        return
    if jax.process_count() > 1:
        watch({}, jax.process_index(), jax.process_count(), timeout)


def is_primary() -> bool:
    """Whether this process writes the human-facing record."""
    return jax.process_index() == 0


def primary_says(ok: bool) -> bool:
    """Process 0's `ok`, on every process: how the others learn that a step only process 0 takes went well."""
    if jax.process_count() == 1:
        return ok
    with exchange("agreeing with process 0"):
        return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def put(tree: Any, sharding) -> Any:
    """Host arrays (the same on every process) -> global arrays laid out by `sharding`."""
    def one(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
    """Global arrays -> NumPy arrays with every process's part, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    with exchange("gathering results from every process"):
        return multihost_utils.process_allgather(tree, tiled=True)


@contextlib.contextmanager
def exchange(what: str) -> Iterator[None]:
    """Bounds a step every process takes together (a collective, a checkpoint save): `what` ("saving checkpoint 3")
    must end within --distributed-timeout, and an error in it that a lost peer explains (gloo's "Connection reset",
    an unavailable coordination service) ends this process in one line naming the lost process, as the watch does.
    A single process, or a step nested in another one, is not watched."""
    watching = _watching
    if watching is None or watching.busy():
        yield
        return
    watching.enter(what)
    try:
        yield
    except Exception as e:
        watching.failed(what, e)  # returns only where no peer explains it
        raise
    finally:
        watching.leave()


_watching: _Watch | None = None


def watch(links: dict[int, socket.socket], me: int, count: int, timeout: float) -> None:
    """Watches the other processes of this run through `links` (from `rendezvous`; none where a cluster's runtime
    joined them) and bounds each `exchange` by `timeout`: a lost process ends this one in one line (`_Watch`)."""
    global _watching
    _watching = _Watch(links, me, count, timeout)
    atexit.register(_watching.goodbye)  # after JAX's own handlers, so it runs before JAX shuts the runtime down


class _Watch:
    """A daemon thread that ends this process in one line as soon as another process of the run is lost.

    Each process keeps its rendezvous connection to process 0 open (process 0 holds one per process) and says "."
    on it every BEAT_SECONDS. A connection that closes without "bye" (said at a normal exit) is a lost process:
    killed, crashed, its host gone. One silent for the timeout is a stopped or unreachable process. An exchange that
    runs past the timeout is a lost peer too, the one silent longest where one has been silent a while. Whichever
    process notices first tells the others through process 0 ("lost <why>"), so every process ends with the same
    line. It ends with os._exit(2): with a peer missing, JAX's runtime can be shut down neither cleanly nor in time
    (its atexit waits for every process), and the checkpoints are written to survive a kill at any moment anyway.
    A thread does this because the main thread may be stuck in a collective in native code, where Python's signal
    handlers do not run.
    """

    def __init__(self, links: dict[int, socket.socket], me: int, count: int, timeout: float):
        self._links, self._me, self._count, self._timeout = links, me, count, timeout
        self._heard = {peer: time.monotonic() for peer in links}
        self._said = {peer: b"" for peer in links}
        self._left: dict[int, float] = {}  # who said bye (ended normally, or with an error of their own), and when
        self.said_goodbye = False
        self._closed: set[int] = set()
        self._current: tuple[str, float, float] | None = None  # the exchange under way, its start and deadline
        self._ending = threading.Lock()
        self._stderr = os.dup(2)  # checkpoint saves hold back fd 2 meanwhile; the line must not be held back
        for link in links.values():
            link.setblocking(False)
        threading.Thread(target=self._run, name="mnist_jax-peers", daemon=True).start()

    def busy(self) -> bool:
        return self._current is not None

    def enter(self, what: str) -> None:
        now = time.monotonic()
        self._current = (what, now, now + self._timeout)
        self._check_left()

    def _check_left(self) -> None:
        """A process that had exited (said bye) before the exchange under way began never joins it: no need to wait
        it out. (One that leaves during it took its part: the exchange ends as it would.)"""
        current = self._current
        early = sorted(peer for peer, when in self._left.items() if current is not None and when < current[1])
        if early:
            self.end(f"process {early[0]} of {self._count} ended before {current[0]} (see its own error)")

    def leave(self) -> None:
        self._current = None

    def failed(self, what: str, error: Exception) -> None:
        """Ends the process if a lost peer explains `error`, raised inside exchange `what`; else returns (for the
        caller to report it as it would in a single process): a peer is known lost or gone, or the runtime says a
        collective lost its connection."""
        reason = first_line(error)
        peerish = _PEER_TROUBLE.search(reason) is not None
        runtime = isinstance(error, jax.errors.JaxRuntimeError)
        if peerish or runtime:  # give the watch a moment to see the lost process's connection close, and name it
            time.sleep(SETTLE_SECONDS)
        evidence = self.blame(time.monotonic())
        if evidence is not None or (peerish and runtime):
            self.end(f"{evidence or 'a peer was lost'} ({what} failed: {reason})")

    def goodbye(self) -> None:
        """A normal exit: the others are told this process ended of its own accord, not lost."""
        self.said_goodbye = True
        self._tell(b"bye\n")

    def end(self, reason: str, tell: bool = True) -> NoReturn:
        """Says `reason` in one line on stderr (and to the other processes) and ends this process with status 2."""
        self._ending.acquire()  # never released: the first to get here speaks, and the process ends
        if tell:
            self._tell(f"lost {reason}\n".encode(errors="replace"))
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        line = f"error: {reason}: {RELAUNCH}\n"
        with contextlib.suppress(Exception):
            if os.isatty(self._stderr):
                line = "\n" + line  # below a progress bar
        with contextlib.suppress(OSError):
            os.write(self._stderr, line.encode(errors="replace"))
        os._exit(2)

    def _tell(self, message: bytes) -> None:
        for peer, link in self._links.items():
            if peer not in self._closed:
                with contextlib.suppress(OSError):
                    link.send(message)

    def blame(self, now: float) -> str | None:
        """Which process the evidence points at: one whose connection closed, one silent for several beats, or one
        that ended early; else None (a peer this process has no connection to, or one alive but stuck)."""
        silent = {peer: now - heard for peer, heard in self._heard.items() if peer not in self._left}
        gone = sorted(self._closed - set(self._left))
        if gone:
            return f"process {gone[0]} of {self._count} was lost (its connection closed)"
        if silent and max(silent.values()) > 3 * BEAT_SECONDS:
            peer = max(silent, key=silent.get)
            return f"process {peer} of {self._count} was lost (it has not answered for {silent[peer]:.0f} s)"
        if self._left:
            return f"process {min(self._left)} of {self._count} ended early (see its own error)"
        return None

    def _run(self) -> None:
        beaten = 0.0
        while True:
            open_links = {link: peer for peer, link in self._links.items() if peer not in self._closed}
            try:
                readable = select.select(list(open_links), [], [], POLL_SECONDS)[0]
            except (OSError, ValueError):
                readable = list(open_links)
            now = time.monotonic()
            for link in readable:
                self._read(open_links[link], link, now)
            if now - beaten >= BEAT_SECONDS:
                self._tell(b".\n")
                beaten = now
            for peer, heard in self._heard.items():
                if peer not in self._left and peer not in self._closed and now - heard > self._timeout:
                    self.end(f"process {peer} of {self._count} was lost (it has not answered for "
                             f"{now - heard:.0f} s, --distributed-timeout {self._timeout:g})")
            self._check_left()
            current = self._current
            if current is not None and now > current[2]:
                self.end(f"{self.blame(now) or 'a peer was lost'}: {current[0]} did not finish within "
                         f"--distributed-timeout {self._timeout:g} s")

    def _read(self, peer: int, link: socket.socket, now: float) -> None:
        try:
            data = link.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed.add(peer)
            if peer not in self._left:
                self.end(f"process {peer} of {self._count} was lost (its connection closed)")
            return
        self._heard[peer] = now
        *lines, self._said[peer] = (self._said[peer] + data).split(b"\n")
        for line in lines:
            if line == b"bye":
                self._left[peer] = now
            elif line.startswith(b"lost "):  # another process noticed first; process 0 passes it on
                self.end(line[5:].decode(errors="replace"), tell=self._me == 0)
