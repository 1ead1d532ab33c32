"""Several processes as one JAX program: joining the runtime, global arrays from host data, results back to the host.

Every process runs the same command and loads the same data; the mesh spans every process's devices. Process 0
writes the human-facing record (metrics, results, summaries, plots, progress); Orbax writes checkpoints from all.
On CPU the processes talk through gloo collectives, so the same code runs as several local processes on a laptop.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mnist_jax.errors import UserError

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: int = 120) -> None:
    """Joins the distributed runtime these describe (all three given, the same address and count on every process)
    or the cluster's environment does (a TPU pod slice, SLURM, Open MPI); else does nothing."""
    given = {"--coordinator-address": coordinator_address, "--num-processes": num_processes,
             "--process-id": process_id}
    if all(value is None for value in given.values()):
        _initialize_if_detected()
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
        rendezvous(host.strip("[]"), int(port), num_processes, process_id, timeout)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout)
    if jax.process_index() != 0:
        sys.stdout = open(os.devnull, "w")  # process 0 speaks for the run; errors still reach stderr


def rendezvous(host: str, port: int, num_processes: int, process_id: int, timeout: float) -> None:
    """Checks that all processes agree and are there before JAX's runtime starts, which on a missing or mismatched
    process aborts the interpreter (a fatal C++ error, no exception) instead of raising.

    Process 0 listens on the coordinator's port and waits for the others to say (process count, id); it answers
    each "ok" once all have come, or the problem. The port is free again for JAX's service afterwards.
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
                    their_count, their_id = map(int, connection.makefile().readline().split())
                except (OSError, ValueError):
                    connection.close()
                    continue
                peers.append(connection)
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
                connection.close()
        if problem:
            raise UserError(f"{problem}: {hint}")
        return
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"no process 0 answered at {host}:{port} within {timeout:g} s: {hint}") from None
            time.sleep(0.2)
    with connection:
        connection.settimeout(max(deadline - time.monotonic(), 1.0) + 5)
        connection.sendall(f"{num_processes} {process_id}\n".encode())
        try:
            answer = connection.makefile().readline().strip()
        except OSError:
            answer = ""
    if answer != "ok":
        problem = answer.removeprefix("error: ") or "process 0 gave up waiting (see its error)"
        raise UserError(f"{problem}: {hint}")


def _initialize_if_detected() -> None:
    """JAX's own detection of a TPU pod slice, SLURM or Open MPI; a plain host, or a process whose JAX is already
    running (a notebook, a library call), stays a single process."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize()
    except ValueError:  # no cluster environment detected
        pass
    except RuntimeError as e:
        if "must be called before" not in str(e) and "more than once" not in str(e):
            raise


def is_primary() -> bool:
    """Whether this process writes the human-facing record."""
    return jax.process_index() == 0


def primary_says(ok: bool) -> bool:
    """Process 0's `ok`, on every process: how the others learn that a step only process 0 takes went well."""
    if jax.process_count() == 1:
        return ok
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
    return multihost_utils.process_allgather(tree, tiled=True)
